"""Flag parsing that needs no database: defaults, the storage variable, --help."""

from __future__ import annotations

import pytest

from search.cli.parser import build_parser


def test_storage_defaults_to_sqlite_in_the_current_folder(monkeypatch):
    monkeypatch.delenv("SEARCH_STORAGE", raising=False)
    assert build_parser().parse_args(["leaderboard"]).storage == "sqlite:///search.db"


def test_storage_comes_from_the_environment_so_passwords_stay_off_the_command_line(monkeypatch):
    monkeypatch.setenv("SEARCH_STORAGE", "postgresql://u:secret@db/search")
    args = build_parser().parse_args(["worker", "--study", "s"])
    assert args.storage == "postgresql://u:secret@db/search"
    assert build_parser().parse_args(["worker", "--study", "s", "--storage",
                                      "sqlite:///x.db"]).storage == "sqlite:///x.db"


@pytest.mark.parametrize("command", ["grid", "optuna", "worker", "leaderboard", "export"])
def test_every_command_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args([command, "--help"])
    assert stop.value.code == 0
    assert "--storage" in capsys.readouterr().out
