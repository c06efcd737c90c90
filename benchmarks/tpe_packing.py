"""What packing TPE trials costs the search: best validation accuracy packed vs one at a time.

    python benchmarks/tpe_packing.py                      # seeds 0 1 2, --pack 1 / auto / 10
    python benchmarks/tpe_packing.py --seeds 0 --epochs 1 # a quick check (prints only)

K TPE trials sampled together never see each other's results (constant liar keeps them
apart), so a 10-trial study packed 10 at a time is a random search. For each sampler seed and
pack setting, a fresh SQLite study of the offline demo (`studies/demo.toml`: 10 finished LoRA
trials, median pruner, 5 start-up trials) runs through the real command, `search optuna
--workers 1 --pack P`; the table gives the best validation accuracy of its LoRA trials, the
mean over seeds, and the wall time. The table goes into BENCHMARKS.md between the
`tpe_packing` markers with --write.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.markdown_section import write_section  # noqa: E402
from benchmarks.packing import cpu_name  # noqa: E402

SEARCH = [sys.executable, "-m", "search"]


def run_study(seed: int, pack: str, epochs: int | None, folder: Path) -> dict:
    url = f"sqlite:///{folder}/s{seed}-p{pack}.db"
    command = [*SEARCH, "optuna", "--spec", str(ROOT / "studies" / "demo.toml"), "--seed",
               str(seed), "--pack", pack, "--workers", "1", "--storage", url,
               "--artifacts", str(folder / f"artifacts-{seed}-{pack}")]
    if epochs is not None:
        command += ["--epochs", str(epochs)]
    start = time.perf_counter()
    run = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(command)} -> {run.returncode}\n{run.stderr[-2000:]}")
    board = json.loads(subprocess.run(
        [*SEARCH, "leaderboard", "--study", "demo", "--storage", url, "--format", "json"],
        cwd=folder, check=True, capture_output=True, text=True).stdout)
    lora = [row for row in board if not row["baseline"] and row["state"] == "COMPLETE"]
    packs = [line for line in run.stderr.splitlines() if line.startswith("pack of ")]
    return {"seed": seed, "pack": pack, "wall_s": wall,
            "best_val_acc": max(row["val_acc"] for row in lora),
            "complete": len(lora), "pruned": sum(row["state"] == "PRUNED" for row in board),
            "packs": [int(line.split()[2].rstrip(":")) for line in packs]}


def table(rows: list[dict], packs: list[str], seeds: list[int], command: str) -> str:
    import torch

    lines = [f"`{command}` on the {cpu_name()} ({torch.get_num_threads()} threads), torch "
             f"{torch.__version__}, {datetime.date.today()}. Best validation accuracy of the "
             "10-trial demo TPE study per sampler seed; packs = sizes of the packs the worker "
             "trained.", "",
             "| --pack | " + " | ".join(f"seed {s}" for s in seeds) +
             " | mean best val_acc | mean wall (s) | packs (seed 0) |",
             "|---|" + "---|" * len(seeds) + "---|---|---|"]
    for pack in packs:
        mine = [row for row in rows if row["pack"] == pack]
        best = [row["best_val_acc"] for row in mine]
        lines.append(f"| {pack} | " + " | ".join(f"{b:.4f}" for b in best) +
                     f" | {statistics.mean(best):.4f} | "
                     f"{statistics.mean(row['wall_s'] for row in mine):.0f} | "
                     f"{mine[0]['packs'] or '-'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--packs", nargs="+", default=["1", "auto", "10"])
    parser.add_argument("--epochs", type=int, help="override the demo's 4 epochs")
    parser.add_argument("--write", action="store_true", help="put the table in BENCHMARKS.md")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="tpe-packing-") as folder:
        for seed in args.seeds:
            for pack in args.packs:
                row = run_study(seed, pack, args.epochs, Path(folder))
                print(json.dumps(row), file=sys.stderr, flush=True)
                rows.append(row)
    text = table(rows, args.packs, args.seeds, "python benchmarks/tpe_packing.py " +
                 " ".join(sys.argv[1:]))
    print(text)
    if args.write:
        write_section("tpe_packing", text)


if __name__ == "__main__":
    main()
