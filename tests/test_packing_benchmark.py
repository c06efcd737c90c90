"""benchmarks/packing.py's own logic (no training): ways, stderr parsing, leaderboard check."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import packing  # noqa: E402


def args(**values) -> argparse.Namespace:
    base = {"ks": [2, 5, 10], "processes": None, "device": "cpu", "quick": False}
    return argparse.Namespace(**{**base, **values})


def test_ways_quick_and_full():
    quick = packing.plan_ways(args(quick=True))
    assert [w["name"] for w in quick] == ["solo", "processes x2", "packed K=10"]
    full = packing.plan_ways(args())
    assert [w["pack"] for w in full] == [1, 1, 2, 5, 10, "auto"]
    cuda = packing.plan_ways(args(device="cuda", ks=[2, 4, 10]))
    assert cuda[1]["workers"] == 4  # the largest K <= 4 shares the GPU


def test_commands_cuda_runs_the_worker_in_the_wrapper():
    study = packing.Study(Path("s.toml"), "s", None, "cuda")
    solo, processes = packing.plan_ways(args(device="cuda", ks=[2, 4, 10]))[:2]
    queue, work = study.commands(solo, "sqlite:///x.db", Path("a"))
    assert queue[0] == "grid" and queue[-2:] == ["--workers", "0"]
    assert work[0] == "worker" and work[-2:] == ["--pack", "1"]
    (grid,) = study.commands(processes, "sqlite:///x.db", Path("a"))
    assert grid[-6:] == ["--gpus", "0", "--workers-per-gpu", "4", "--pack", "1"]


def test_pack_sizes_from_stderr():
    stderr = ("pack: auto chose 16 (a member needs 12 MiB by saved activations, 3.0 GiB free)\n"
              "pack of 10: trials 0, 1, 2, 3, 4, 5, 6, 7, 8, 9\n"
              "trial 0 baseline (head only) epoch=1/1 val_acc=0.8704 pack=10\n"
              "worker: pack of 2: trials 11, 12\n")
    assert packing.pack_sizes(stderr) == ([10, 2], 16)
    assert packing.pack_sizes("trial 0 done\n") == ([], None)


def row(number: int, rank, value: float, state: str = "COMPLETE") -> dict:
    return {"number": number, "state": state, "baseline": rank is None, "rank": rank,
            "alpha": rank, "dropout": None if rank is None else 0.1,
            **dict.fromkeys(packing.METRICS, value)}


def test_leaderboard_difference():
    solo = [row(0, None, 0.5), row(1, 2, 0.7)]
    assert packing.max_difference([row(5, 2, 0.7), row(4, None, 0.5)], solo) == 0.0
    assert math.isclose(packing.max_difference([row(0, None, 0.5), row(1, 2, 0.7002)], solo),
                        2e-4)
    assert packing.max_difference([row(0, None, 0.5)], solo) == math.inf  # a trial missing
    assert packing.max_difference([row(0, None, 0.5), row(1, 2, 0.7, "FAIL")], solo) == math.inf
    assert packing.finite({"a": [math.inf, 1.0]}) == {"a": [None, 1.0]}


def test_cuda_section_renders():
    ways = packing.plan_ways(args(device="cuda", ks=[2, 4, 10]))
    for i, way in enumerate(ways):
        way.update(wall_s=100.0 - 10 * i, trials_per_hour=360.0, img_s=1000.0,
                   tree_rss_mib=4000.0, cuda_peak_mib=None if i == 1 else 9000.0,
                   gpu_used_mib=10000, mfu=0.2 if i else None, packs=[] if i < 2 else [i],
                   max_diff=0.0)
    report = {"device": "cuda", "ways": ways, "date": "2026-01-01", "machine": "GPU",
              "torch": "2", "command": "python benchmarks/packing.py --device cuda",
              "study": "ViT-S", "repeats": 1, "leaderboards_match": True, "k": 10,
              "speedup": 2.0, "auto_k": 10, "mfu_note": "MFU: ..."}
    text = packing.section(report)
    assert "| packed auto | auto | 1 | 50.0 |" in text and "unknown" in text
    assert text.count("\n|") == len(ways) + 2  # header, rule, one row per way
