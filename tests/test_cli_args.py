"""Flag parsing that needs no database: defaults, the storage variable, --help."""

from __future__ import annotations

import pytest
from run_cli import DEMO

from search.cli.parser import build_parser
from search.study.storage import DEFAULT_STORAGE, STORAGE_VARIABLE


def test_storage_defaults_to_sqlite_in_the_current_folder(monkeypatch):
    monkeypatch.delenv("SEARCH_STORAGE", raising=False)
    assert build_parser().parse_args(["leaderboard"]).storage == "sqlite:///search.db"


def test_storage_comes_from_the_environment_so_passwords_stay_off_the_command_line(monkeypatch):
    monkeypatch.setenv("SEARCH_STORAGE", "postgresql://u:secret@db/search")
    args = build_parser().parse_args(["worker", "--study", "s"])
    assert args.storage == "postgresql://u:secret@db/search"
    assert build_parser().parse_args(["worker", "--study", "s", "--storage",
                                      "sqlite:///x.db"]).storage == "sqlite:///x.db"


@pytest.mark.parametrize("command", ["grid", "optuna", "worker", "dashboard", "leaderboard",
                                     "report", "export"])
def test_help_names_the_storage_variable_and_default_but_never_the_url_it_holds(
        command, capsys, monkeypatch):
    """--help says where the storage comes from ($SEARCH_STORAGE, else the SQLite file), as
    `search.study.storage` defines them, and does not print the variable's value: a password
    kept out of `ps` must not land in a terminal or a log through --help either."""
    monkeypatch.setenv(STORAGE_VARIABLE, "postgresql://u:S3cret@db.internal/search")
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args([command, "--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines at spaces
    assert f"default: ${STORAGE_VARIABLE} if set, else {DEFAULT_STORAGE}" in text
    assert "S3cret" not in text and "db.internal" not in text


@pytest.mark.parametrize("command", [["grid"], ["optuna"], ["worker", "--study", "s"]])
def test_pack_defaults_to_auto_and_takes_a_positive_size(command):
    assert build_parser().parse_args(command).pack == "auto"
    assert build_parser().parse_args([*command, "--pack", "4"]).pack == 4
    assert build_parser().parse_args([*command, "--pack", "auto"]).pack == "auto"


@pytest.mark.parametrize("value", ["0", "-2", "many", "2.5", ""])
def test_a_bad_pack_size_exits_2_with_one_line(value, capsys):
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["grid", "--pack", value])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--pack: must be 'auto' or a positive integer" in err[0]


@pytest.mark.parametrize("command", ["grid", "optuna"])
def test_seeds_come_from_the_spec_unless_given(command, tmp_path):
    """No --seeds: the spec's `study.seeds`, or None when the spec has none either (an
    existing study keeps its own); --seeds N wins over the spec."""
    from search.cli.commands import spec_from_flags

    seeded = tmp_path / "seeded.toml"
    seeded.write_text('[study]\nname = "seeded"\nseeds = 4\n')

    def seeds(*flags: str) -> int | None:
        return spec_from_flags(build_parser().parse_args([command, *flags]), {}).seeds

    assert seeds("--spec", str(seeded)) == 4
    assert seeds("--spec", str(seeded), "--seeds", "3") == 3
    assert seeds("--spec", DEMO) is None
    assert seeds("--spec", DEMO, "--seeds", "2") == 2


@pytest.mark.parametrize("value, message", [("0", "must be 'auto' or a positive integer, got '0'"),
                                            ("x", "must be 'auto' or a positive integer, got 'x'"),
                                            ("21", "must be at most 20, got 21")])
def test_a_bad_seed_count_exits_2_with_one_line(value, message, capsys):
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["grid", "--seeds", value])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--seeds: {message}" in err[0]


def test_export_takes_a_pick_or_a_trial_not_both(capsys):
    assert build_parser().parse_args(["export"]).pick == "best"
    assert build_parser().parse_args(["export", "--pick", "recommended"]).pick == "recommended"
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["export", "--pick", "recommended", "--trial", "2"])
    assert stop.value.code == 2
    assert "not allowed with argument --pick" in capsys.readouterr().err
