"""`search COMMAND --help`: every flag explained, nothing shown that the command does not do."""

from __future__ import annotations

import argparse
import re

import pytest
from run_cli import DEMO, ROOT

from search.cli.parser import PREDICT_EXTENSIONS, build_parser


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


@pytest.mark.parametrize("command", sorted(subcommands()))
def test_every_flag_has_help_and_help_never_shows_a_doubled_percent(command):
    parser = subcommands()[command]
    unexplained = [action.option_strings or action.dest for action in parser._actions
                   if not isinstance(action, argparse._HelpAction)
                   and action.help != argparse.SUPPRESS
                   and not (action.help or "").strip()]
    assert unexplained == []
    assert "%%" not in parser.format_help()


def test_the_top_level_help_shows_no_doubled_percent():
    assert "%%" not in build_parser().format_help()


def test_the_leaderboard_says_95_percent():
    assert "95% Wilson interval" in subcommands()["leaderboard"].format_help()


def test_predict_names_the_image_files_it_takes():
    from objectives.data import IMAGE_EXTENSIONS

    assert PREDICT_EXTENSIONS == IMAGE_EXTENSIONS
    text = " ".join(subcommands()["predict"].format_help().split())
    assert " ".join(IMAGE_EXTENSIONS) in text and "not .gif" in text
    assert "any format PIL reads" not in text


def test_export_weights_describes_the_folder_the_docs_list():
    text = " ".join(subcommands()["export"].format_help().split())
    assert "merged weights" in text and "model card" in text
    (weights,) = [a for a in subcommands()["export"]._actions if "--weights" in a.option_strings]
    page = re.search(r"files (docs/\S+\.md) lists \('([^']+)'\)", weights.help)
    assert page, weights.help
    path, title = page.groups()
    assert f"# {title}\n" in (ROOT / path).read_text()


@pytest.mark.parametrize("command", ["grid", "optuna"])
def test_image_size_and_val_fraction_override_the_spec(command):
    from search.cli.commands import spec_from_flags

    args = build_parser().parse_args([command, "--spec", DEMO, "--image-size", "16",
                                      "--val-fraction", "0.25"])
    train = spec_from_flags(args, {}).train
    assert (train.image_size, train.val_fraction) == (16, 0.25)
    assert build_parser().parse_args([command]).image_size is None


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--image-size", "0", "must be a positive integer, got '0'"),
    ("--image-size", "2.5", "must be a positive integer"),
    ("--val-fraction", "0", "must be a number in (0, 1), got '0'"),
    ("--val-fraction", "1", "must be a number in (0, 1)"),
    ("--val-fraction", "nan", "must be a number in (0, 1)"),
    ("--val-fraction", "half", "must be a number in (0, 1)"),
])
def test_a_bad_image_size_or_val_fraction_exits_2_with_one_line(flag, value, message, capsys):
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["optuna", flag, value])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and message in err and len(err.splitlines()) == 1


def test_optuna_takes_dry_run_and_format():
    args = build_parser().parse_args(["optuna", "--dry-run", "--format", "json"])
    assert args.dry_run and args.format == "json"
    assert re.search(r"--dry-run\s+print", subcommands()["optuna"].format_help())
