"""Racing against fixed seeds on the demo (issue 29): `search grid --seeds auto --max-seeds D`
and `--seeds D` on the same grid and study seed, one after the other on this machine; the
trials and wall time each used, the tied set and recommendation of each, and whether every
configuration the race dropped is one the fixed seeds also tell apart from the best.

    python benchmarks/race_demo.py [--seeds 0 1 2] [--depth 5] [--write]

Grids: "wide" (ranks 1 4 16 x alphas 1 4 16: update scales alpha / r from 1/16 to 16, so some
configurations are clearly worse, on a validation split of 40% instead of the demo's 15%) and
the demo's own (ranks 2 4 8 x alphas 2 4 8, its 216 validation images), study seed 0 only
unless --own-seeds says more. `--write` puts the table in BENCHMARKS.md (section race_demo).
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SEARCH = [str(Path(sys.executable).parent / "search")]
DEMO = str(ROOT / "studies" / "demo.toml")
GRIDS = {
    "wide": ["--ranks", "1", "4", "16", "--alphas", "1", "4", "16", "--val-fraction", "0.4"],
    "demo": ["--ranks", "2", "4", "8", "--alphas", "2", "4", "8"],
}


def run(grid: str, seed: int, seeds: list[str], folder: Path) -> dict:
    url = f"sqlite:///{folder / 'study.db'}"
    command = [*SEARCH, "grid", "--spec", DEMO, *GRIDS[grid], "--train-seed", str(seed),
               *seeds, "--workers", "2", "-q", "--storage", url]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} -> {done.returncode}\n{done.stderr[-3000:]}")
    wall = time.perf_counter() - start
    return {"wall": wall, **read(url)}


def read(url: str) -> dict:
    import optuna

    from search.results.leaderboard import study_board
    from search.results.race import study_race

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="demo", storage=url)
    trials = study.get_trials(deepcopy=False)
    board = study_board(study, by="configuration", trials=trials)
    verdict = board.verdict
    lora = [c for c in verdict.configurations if not c.baseline]
    race = study_race(study, trials)
    dropped = set()
    if race is not None:
        dropped = {key for decision in race[0].rounds for key in decision.dropped}
    return {"trials": sum(t.state.name == "COMPLETE" for t in trials),
            "tied": {c.key for c in lora if verdict.tied(c)},
            "recommended": verdict.recommended.key, "name": verdict.describe(verdict.recommended),
            "dropped": dropped, "all": {c.key for c in verdict.configurations},
            "reason": race[0].rounds[-1].reason.value if race and race[0].finished else "",
            "depth": race[0].rounds[-1].round if race else None}


def point(key) -> str:
    return "baseline" if key[0] == "baseline" else f"r{key[0]} a{key[1]:g}"


def compare(grid: str, seed: int, depth: int) -> dict:
    with tempfile.TemporaryDirectory() as raced, tempfile.TemporaryDirectory() as fixed:
        auto = run(grid, seed, ["--seeds", "auto", "--max-seeds", str(depth)], Path(raced))
        full = run(grid, seed, ["--seeds", str(depth)], Path(fixed))
    lora_dropped = {k for k in auto["dropped"] if k[0] != "baseline"}
    wrong = sorted(point(k) for k in lora_dropped if k in full["tied"])
    return {"grid": grid, "seed": seed, "auto": auto, "fixed": full, "wrong": wrong,
            "same_recommendation": auto["recommended"] == full["recommended"]}


def table(rows: list[dict], depth: int) -> str:
    lines = [f"| grid | study seed | trials: race / --seeds {depth} | share | wall s: race / "
             f"fixed | race ended | tied: race / fixed | recommended: race / fixed | dropped "
             "but tied under fixed seeds |", "|---|---:|---:|---:|---:|---|---|---|---|"]
    for row in rows:
        auto, full = row["auto"], row["fixed"]
        share = auto["trials"] / full["trials"]
        lines.append(
            f"| {row['grid']} | {row['seed']} | {auto['trials']} / {full['trials']} | "
            f"{share:.0%} | {auto['wall']:.0f} / {full['wall']:.0f} | {auto['reason'].strip()} | "
            f"{len(auto['tied'])} / {len(full['tied'])} | {point(auto['recommended'])} / "
            f"{point(full['recommended'])}{'' if row['same_recommendation'] else ' (differ)'} | "
            f"{', '.join(row['wrong']) or 'none'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--own-seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    rows = []
    for grid, seeds in (("wide", args.seeds), ("demo", args.own_seeds)):
        for seed in seeds:
            rows.append(compare(grid, seed, args.depth))
            print(table(rows[-1:], args.depth).splitlines()[-1], flush=True)
    text = (f"`python benchmarks/race_demo.py --write` on {platform.processor() or 'this CPU'} "
            f"(2 cores), {date.today().isoformat()}: the demo study (tiny ViT, digits, 4 "
            f"epochs, 2 workers), `--seeds auto --max-seeds {args.depth}` against `--seeds "
            f"{args.depth}` per grid and study seed (`--train-seed`), each in its own study, "
            "one after the other.\n\n" + table(rows, args.depth))
    print(text)
    if args.write:
        from markdown_section import write_section
        write_section("race_demo", text)


if __name__ == "__main__":
    main()
