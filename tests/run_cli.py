"""Running the `search` command from tests: as a user does (a process) or in this process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = str(ROOT / "studies" / "demo.toml")
FAST = ["--spec", DEMO, "--epochs", "1"]
# The console script `pip install` made, when this Python has one; else the module.
SCRIPT = Path(sys.executable).parent / "search"
SEARCH = [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-m", "search"]


def search(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([*SEARCH, *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"search {' '.join(args)} -> {result.returncode}\n{result.stderr}")
    return result


def board(cwd: Path, study: str = "demo") -> list[dict]:
    return json.loads(search("leaderboard", "--study", study, "--format", "json", cwd=cwd).stdout)


def search_in_process(args: list[str], cwd: Path, capsys, monkeypatch) -> tuple[int, str, str]:
    """The CLI's `main` in this process: the same code path without paying torch's import again."""
    from search.cli.main import main

    monkeypatch.chdir(cwd)
    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as stop:  # argparse rejects flags by exiting
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err
