"""What mattered (`search.results.importance`) at scale: the time `study_importances` takes on
synthetic studies of 1,000 and 5,000 complete LoRA trials, as a worker's refresh and `search
leaderboard` spend it (the trials already read).

    python benchmarks/importance_scale.py [--sizes 1000 5000] [--shapes grid tpe]
        [--repeats 1] [--uncapped] [--format table|json] [--write]

Two shapes of study: `grid`, 3 ranks x 3 alphas x 2 dropouts x 3 learning rates x 2 target
sets x 2 variants, every point repeated (seeds: a forest leaf per point); and `tpe`, dropout
and learning rate drawn from intervals (a leaf per trial, fANOVA's worst case). Accuracy moves
with the learning rate and the layers, plus noise. The trials are made in memory as a worker
stores them (`params_of`'s params only) and timed from `study_importances` (in one process:
scikit-learn's import, ~0.7 s, is paid once and not counted). `--uncapped` also times the
whole study, without `MAX_OBSERVATIONS`. `--write` puts the table in BENCHMARKS.md; nothing
is written without it. No assertion on any time.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from datetime import date
from pathlib import Path
from unittest import mock

import numpy as np
import optuna

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.markdown_section import write_section  # noqa: E402
from objectives.spec import TARGET_SETS, LoraParams  # noqa: E402
from search.results import importance  # noqa: E402
from search.study.space import VARIANTS, params_of  # noqa: E402

SPEC = {"model": "vit_tiny_patch16_224", "lr": 3e-4, "targets": "q,k,v"}
DISTRIBUTIONS = {"rank": optuna.distributions.IntDistribution(1, 64),
                 "alpha": optuna.distributions.FloatDistribution(1, 64),
                 "dropout": optuna.distributions.FloatDistribution(0, 0.9),
                 "lr": optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True),
                 "targets": optuna.distributions.CategoricalDistribution(tuple(TARGET_SETS)),
                 "scaling": optuna.distributions.CategoricalDistribution(tuple(VARIANTS))}


def point(shape: str, number: int, rng: np.random.Generator) -> LoraParams:
    if shape == "grid":
        choices = np.unravel_index(number % 216, (3, 3, 2, 3, 2, 2))
        rank, alpha, dropout, lr, targets, variant = (
            (2, 4, 8)[choices[0]], (2.0, 4.0, 8.0)[choices[1]], (0.05, 0.1)[choices[2]],
            (None, 1e-3, 3e-3)[choices[3]], (None, TARGET_SETS["all"])[choices[4]],
            ("lora", "rslora")[choices[5]])
    else:
        rank, alpha = int(rng.choice((2, 4, 8, 16))), float(rng.choice((2.0, 4.0, 8.0, 16.0)))
        dropout, lr = float(rng.uniform(0.05, 0.3)), float(math.exp(rng.uniform(-9, -5)))
        targets = (None, TARGET_SETS["all"])[int(rng.integers(2))]
        variant = ("lora", "rslora", "dora")[int(rng.integers(3))]
    scaling, dora = VARIANTS[variant]
    return LoraParams(rank, alpha, dropout, scaling=scaling, dora=dora, lr=lr, targets=targets)


def study(shape: str, trials: int, seed: int = 0) -> optuna.Study:
    rng = np.random.default_rng(seed)
    made = []
    for number in range(trials):
        p = point(shape, number, rng)
        lr = p.lr or SPEC["lr"]
        value = (0.85 + 0.03 * math.log10(lr / 3e-4) - 0.02 * math.log10(lr / 3e-4) ** 2
                 + 0.02 * (p.targets is not None) + rng.normal(0, 0.005))
        stored = params_of(p)
        made.append(optuna.trial.create_trial(
            params=stored, distributions={k: DISTRIBUTIONS[k] for k in stored}, value=value,
            user_attrs={"baseline": False}))
    created = optuna.create_study(direction="maximize")
    created.set_user_attr("train_spec", SPEC)
    created.add_trials(made)
    return created


def timed(created: optuna.Study, repeats: int) -> tuple[float, importance.Importances]:
    trials = created.get_trials(deepcopy=False)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = importance.study_importances(created, trials)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--shapes", nargs="+", choices=("grid", "tpe"), default=["grid", "tpe"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--uncapped", action="store_true")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    importance.fanova(*warm_up())  # scikit-learn's import, once
    rows = []
    for shape in args.shapes:
        for size in args.sizes:
            created = study(shape, size)
            seconds, result = timed(created, args.repeats)
            row = {"shape": shape, "trials": size, "used": result.used, "seconds": seconds,
                   "line": importance.importance_lines(result)[0]}
            if args.uncapped:
                with mock.patch.object(importance, "MAX_OBSERVATIONS", size):
                    row["uncapped_seconds"], whole = timed(created, args.repeats)
                row["uncapped_line"] = importance.importance_lines(whole)[0]
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    text = json.dumps(rows, indent=1) if args.format == "json" else table(rows)
    print(text)
    if args.write:
        write_section("importance_scale", "### What mattered at scale (issue 28)\n\n"
                      f"{date.today()}, `python benchmarks/importance_scale.py "
                      f"{' '.join(sys.argv[1:])}`: seconds of `study_importances` (median of "
                      f"{args.repeats}), the trials read.\n\n{table(rows)}")


def warm_up() -> tuple[list[importance.Observation], tuple[str, ...]]:
    found = [importance.Observation(n, {"rank": n % 2, "alpha": n % 3}, float(n % 5))
             for n in range(20)]
    return found, ("rank", "alpha")


def table(rows: list[dict]) -> str:
    uncapped = any("uncapped_seconds" in row for row in rows)
    lines = ["| shape | trials | fit to | seconds |" + (" uncapped seconds |" if uncapped else "")
             + " line |",
             "|---|---:|---:|---:|" + ("---:|" if uncapped else "") + "---|"]
    for row in rows:
        lines.append(f"| {row['shape']} | {row['trials']:,} | {row['used']:,} | "
                     f"{row['seconds']:.2f} |"
                     + (f" {row['uncapped_seconds']:.2f} |" if uncapped else "")
                     + f" {row['line']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
