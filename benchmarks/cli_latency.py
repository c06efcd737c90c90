"""How fast the `search` command answers: a bad flag, a malformed spec, and the read-only
commands on a finished demo study, each timed as a whole process (median of --runs).

    python benchmarks/cli_latency.py [--runs N] [--root CHECKOUT] [--format table|json] [--write]

`--root` times another checkout of this repository (e.g. an older commit in a git worktree)
with this Python, to compare before and after. The demo study it reads is made once, in a
temporary folder, by the checkout under test (baseline + one LoRA trial, one epoch).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from markdown_section import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CASES = {
    "bad flag": ["grid", "--bogus"],
    "TOML syntax error": ["grid", "--spec", "broken.toml"],
    "bad spec value": ["grid", "--spec", "bad_value.toml"],
    "leaderboard": ["leaderboard"],
    "export (no weights)": ["export", "--out", "best.json"],
    "--help": ["--help"],
}


def run_search(root: Path, args: list[str], cwd: Path) -> tuple[float, int]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "search", *args], cwd=cwd, env=env,
                            capture_output=True, text=True)
    return time.perf_counter() - start, result.returncode


def make_study(root: Path, folder: Path) -> None:
    demo = str(root / "studies" / "demo.toml")
    (folder / "broken.toml").write_text("[train\nepochs = 1\n")
    (folder / "bad_value.toml").write_text("[train]\nepochs = 'many'\n")
    _, code = run_search(root, ["grid", "--spec", demo, "--epochs", "1", "--ranks", "2",
                                "--alphas", "2", "--workers", "1"], folder)
    if code != 0:
        sys.exit(f"cli_latency: could not make the demo study with {root}")


def measure(root: Path, runs: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        make_study(root, folder)
        rows = []
        for name, args in CASES.items():
            run_search(root, args, folder)  # warm the file cache
            times, codes = zip(*(run_search(root, args, folder) for _ in range(runs)),
                               strict=True)
            rows.append({"case": name, "command": "search " + " ".join(args),
                         "exit": codes[0], "median_s": round(statistics.median(times), 2),
                         "min_s": round(min(times), 2), "max_s": round(max(times), 2)})
        return rows


def table(rows: list[dict]) -> str:
    lines = ["| case | command | exit | median s | min s | max s |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['case']} | `{r['command']}` | {r['exit']} | {r['median_s']} | "
              f"{r['min_s']} | {r['max_s']} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="checkout to time (default: this one)")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument("--write", action="store_true",
                        help="also write the table into BENCHMARKS.md")
    args = parser.parse_args()
    rows = measure(args.root.resolve(), args.runs)
    print(json.dumps(rows) if args.format == "json" else table(rows))
    if args.write:
        header = (f"### CLI latency\n\n`python benchmarks/cli_latency.py --runs {args.runs} "
                  f"--write` on a {os.cpu_count()}-core machine without GPU, "
                  f"{date.today()}: whole-process wall time, median of {args.runs}.\n\n")
        write_section("cli_latency", header + table(rows))


if __name__ == "__main__":
    main()
