"""Aggregate trials per hour with K workers sharing each GPU (`--workers-per-gpu K`).

    python benchmarks/gpu_sharing.py                    # K = 1, 2, 4 on GPU 0
    python benchmarks/gpu_sharing.py --ks 1 2 --epochs 1   # a quick check (prints only)

For each K, a fresh SQLite study of the offline demo (`studies/demo.toml`: tiny ViT at 32 px,
baseline + 3 x 3 grid) runs through the real command, `search grid --gpus 0
--workers-per-gpu K`; the wall clock from start to the last worker's exit gives trials per
hour. The demo's model is far too small to fill a GPU alone, which is the case sharing is for.
Without CUDA the workers fall back to the CPU (each with one thread): that checks the
mechanics, not the speed. The table goes into BENCHMARKS.md between the `gpu_sharing` markers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.markdown_section import write_section  # noqa: E402

SEARCH = [sys.executable, "-m", "search"]


def run_study(k: int, epochs: int, folder: Path) -> dict:
    command = [*SEARCH, "grid", "--spec", str(ROOT / "studies" / "demo.toml"),
               "--ranks", "2", "4", "8", "--alphas", "2", "4", "8", "--epochs", str(epochs),
               "--gpus", "0", "--workers-per-gpu", str(k), "--storage",
               f"sqlite:///{folder}/k{k}.db", "--artifacts", str(folder / f"artifacts{k}")]
    start = time.perf_counter()
    subprocess.run(command, cwd=folder, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    board = json.loads(subprocess.run(
        [*SEARCH, "leaderboard", "--study", "demo", "--storage", f"sqlite:///{folder}/k{k}.db",
         "--format", "json"], cwd=folder, check=True, capture_output=True, text=True).stdout)
    complete = [row for row in board if row["state"] == "COMPLETE"]
    return {"k": k, "trials": len(complete), "wall_s": wall,
            "trials_per_hour": len(complete) / wall * 3600,
            "mean_train_s": sum(row["train_seconds"] for row in complete) / len(complete),
            "best_val_acc": max(row["val_acc"] for row in complete)}


def device() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (GPU 0)"
    return "the CPU (no CUDA: workers fall back to one CPU thread each)"


def table(rows: list[dict]) -> str:
    base = rows[0]["trials_per_hour"]
    lines = ["| workers per GPU | trials | wall s | trials/hour | vs K=1 | mean train s/trial | "
             "best val acc |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['k']} | {row['trials']} | {row['wall_s']:.1f} | "
                     f"{row['trials_per_hour']:,.0f} | {row['trials_per_hour'] / base:.2f}x | "
                     f"{row['mean_train_s']:.1f} | {row['best_val_acc']:.4f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--epochs", type=int, default=20,
                        help="epochs per trial (default 20: long enough to keep a GPU busy)")
    parser.add_argument("--write", action="store_true",
                        help="also write the table into BENCHMARKS.md (default: print only)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for k in args.ks:
            rows.append(run_study(k, args.epochs, Path(folder)))
            print(table(rows).splitlines()[-1], file=sys.stderr, flush=True)
    text = (f"Measured {datetime.date.today().isoformat()} on {device()}; "
            f"`python benchmarks/gpu_sharing.py --ks {' '.join(map(str, args.ks))} "
            f"--epochs {args.epochs}` (demo study: baseline + 9 LoRA trials, "
            f"{args.epochs} epochs each).\n\n{table(rows)}")
    print(text)
    if args.write:
        write_section("gpu_sharing", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
