"""The CLI's one log handler: bare lines by default, -q for warnings only, -v for debug lines
with time and module, and no line twice when `main` runs inside a block that shows the log."""

import logging

import pytest

from search.cli.console_log import console_logging
from search.cli.parser import build_parser

LOG = logging.getLogger("search.worker.example")


def lines_at(verbosity: int, capsys) -> list[str]:
    capsys.readouterr()
    with console_logging(verbosity):
        LOG.debug("claimed trial 3")
        LOG.info("trial 3 r=2 epoch=1/2")
        LOG.warning("worker: storage unreachable")
    return capsys.readouterr().err.splitlines()


def test_by_default_a_line_is_the_bare_message_and_debug_is_hidden(capsys):
    assert lines_at(0, capsys) == ["trial 3 r=2 epoch=1/2", "worker: storage unreachable"]


def test_quiet_keeps_warnings_only(capsys):
    assert lines_at(-1, capsys) == ["worker: storage unreachable"]


def test_verbose_adds_debug_lines_with_time_and_module(capsys):
    shown = lines_at(1, capsys)
    assert len(shown) == 3
    assert all(" search.worker.example: " in line for line in shown)
    assert shown[0].endswith("claimed trial 3")


def test_nested_blocks_print_each_line_once_and_restore_the_loggers(capsys):
    before = logging.getLogger("search").handlers[:]
    with console_logging(0):
        with console_logging(0):
            LOG.info("once")
        LOG.info("outer")
    assert capsys.readouterr().err.splitlines() == ["once", "outer"]
    assert logging.getLogger("search").handlers == before
    LOG.info("after the block: not on stderr")
    assert "after the block" not in capsys.readouterr().err


@pytest.mark.parametrize("command", ["grid", "optuna", "worker", "dashboard", "leaderboard",
                                     "report", "export", "predict"])
def test_every_command_takes_v_or_q_but_not_both(command, capsys):
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert {"-v", "-q"} <= set(commands[command]._option_string_actions)
    with pytest.raises(SystemExit):
        parser.parse_args([command, "-v", "-q"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_quiet_reaches_the_local_workers(tmp_path):
    """`search grid -q` with two local worker processes: their epoch lines and the workers'
    summary are INFO, so nothing but the leaderboard (stdout) comes out."""
    from run_cli import FAST, search

    result = search("grid", *FAST, "--ranks", "2", "--alphas", "4", "--workers", "2", "-q",
                    "--storage", f"sqlite:///{tmp_path / 'quiet.db'}", cwd=tmp_path)
    assert result.stderr == ""
    assert "COMPLETE" in result.stdout
