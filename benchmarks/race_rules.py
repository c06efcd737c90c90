"""What one race decision (`search.results.race_rules.decide_round`) costs, by configurations,
seeds and validation examples; prints a Markdown table.

Worst case for the work: every configuration has the same true accuracy, so none is dropped
and every survivor gets a tie test and an equivalence interval. `cold`: a fresh bootstrap
(a host that just started, or `replay` without a kept resampling); `next round`: the
resampling kept from round S - 1, as a worker that keeps its cache would decide round S (only
the new seed's rows are resampled). BLAS on one thread, as a worker runs it.

    python benchmarks/race_rules.py [--repeat 1]
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
from scipy.special import ndtri

from search.results.bootstrap import ExampleResampling
from search.results.race_rules import RaceSettings, decide_round


def outcomes(configurations: int, seeds: int, examples: int) -> dict:
    rng = np.random.default_rng([configurations, seeds, examples])
    difficulty = rng.standard_normal(examples)
    return {(rank, 2.0 * rank, 0.0): np.sqrt(0.8) * difficulty
            + np.sqrt(0.2) * rng.standard_normal((seeds, examples)) < ndtri(0.9)
            for rank in range(1, configurations + 1)}


def timed(call, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def measure(configurations: int, seeds: int, examples: int, repeat: int
            ) -> tuple[float, float | None]:
    """Seconds of a cold decision and of the next round's, the best of `repeat`."""
    settings = RaceSettings(max_seeds=20)
    data = outcomes(configurations, seeds, examples)
    costs = {key: key[0] for key in data}

    def cold():
        decide_round(data, costs, settings=settings,
                     resampling=ExampleResampling(examples, threads=1))

    def next_round() -> float:
        kept = ExampleResampling(examples, threads=1)
        decide_round({k: v[:seeds - 1] for k, v in data.items()}, costs, settings=settings,
                     resampling=kept)
        start = time.perf_counter()
        decide_round(data, costs, settings=settings, resampling=kept)
        return time.perf_counter() - start

    cold_s = timed(cold, repeat)
    return cold_s, (min(next_round() for _ in range(repeat)) if seeds > 1 else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    print("| configurations | seeds | examples | cold (s) | next round (s) |")
    print("|---:|---:|---:|---:|---:|")
    for examples, configurations, seeds in itertools.product((216, 10_000), (9, 27, 81),
                                                              (1, 5, 10)):
        cold_s, next_s = measure(configurations, seeds, examples, args.repeat)
        print(f"| {configurations} | {seeds} | {examples:,} | {cold_s:.3f} | "
              + (f"{next_s:.3f} |" if next_s is not None else "- |"), flush=True)


if __name__ == "__main__":
    main()
