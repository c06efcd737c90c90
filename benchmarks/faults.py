"""A chaos run: workers on the demo grid in a throwaway PostgreSQL, under a schedule of faults,
bounded in time:

- sigkill / sigterm: a random worker is killed / asked to stop;
- restart: the database restarts; outage: it is stopped for 20 s;
- hang: the whole server is SIGSTOPped for 35 s (longer than a worker's 30 s stall limit), so
  it answers nothing and raises nothing;
- partition: `iptables` drops the server's packets for 35 s (skipped where iptables is
  missing or refused);
- disk full: the database's data folder (a tmpfs of its own) is filled for 20 s; workers
  that write meanwhile stop with exit 75 and are replaced (skipped where no tmpfs can be
  mounted).

    python benchmarks/faults.py [--workers 3] [--faults 20] [--epochs 20] [--seed 0]
                                [--kinds sigkill restart ...] [--format table|json] [--write]

The same grid runs first undisturbed (the reference). At the end it counts, per grid point:
complete exactly once, failed for good, lost (no trial holds it), duplicated (complete more
than once), and retries resumed from a checkpoint vs started from scratch; and whether the
leaderboard (val/test accuracy per point) equals the undisturbed run's. The goal: 0 lost,
0 duplicated, 0 failed for good. A killed or stopped worker is replaced, as a cluster's
restart policy would.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))  # the suite's throwaway-cluster helper
from markdown_section import write_section  # noqa: E402
from postgres_cluster import (  # noqa: E402
    PostgresCluster,
    SmallDiskUnavailable,
    cluster_on_small_disk,
    fill_disk,
    free_disk,
    server_binaries,
)

DEMO = str(ROOT / "studies" / "demo.toml")
SEARCH = [sys.executable, "-m", "search"]
FAULTS = ("sigkill", "restart", "outage", "sigterm", "hang", "partition", "disk full")
OUTAGE_S = 20
HANG_S = 35  # past the workers' stall limit (search.study.patient_storage.STALL_S = 30)
DISK_FULL_S = 20
DISK_MB = 256  # the data folder's tmpfs for "disk full"


def partition_rule(port: int) -> list[str]:
    """iptables arguments (after -A / -D) that drop every packet to or from the server."""
    return ["INPUT", "-p", "tcp", "-i", "lo", "--dport", str(port), "-j", "DROP"]


def can_partition(port: int) -> bool:
    """Whether iptables works here: a rule can be added and taken away again."""
    try:
        added = subprocess.run(["iptables", "-A", *partition_rule(port)], capture_output=True)
    except FileNotFoundError:
        return False
    if added.returncode != 0:
        return False
    subprocess.run(["iptables", "-D", *partition_rule(port)], check=True)
    return True


def inject(fault: str, cluster: PostgresCluster, disk: Path | None) -> None:
    """One database fault, from its start to its end."""
    if fault == "restart":
        cluster.restart_server()
    elif fault == "outage":
        cluster.stop_server()
        time.sleep(OUTAGE_S)
        cluster.start_server()
    elif fault == "hang":
        cluster.freeze()
        time.sleep(HANG_S)
        cluster.thaw()
    elif fault == "partition":
        subprocess.run(["iptables", "-A", *partition_rule(cluster.port)], check=True)
        try:
            time.sleep(HANG_S)
        finally:
            subprocess.run(["iptables", "-D", *partition_rule(cluster.port)], check=True)
    elif fault == "disk full":
        fill_disk(disk)
        try:
            time.sleep(DISK_FULL_S)
        finally:
            free_disk(disk)


def search(*args: str, cwd: Path, url: str) -> subprocess.CompletedProcess:
    """Run a `search` command; SystemExit with its stderr when it fails."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SEARCH_STORAGE": url}
    done = subprocess.run([*SEARCH, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"faults: `search {' '.join(args)}` exited {done.returncode}:\n"
                         f"{done.stderr[-3000:]}")
    return done


def queue(study: str, epochs: int, folder: Path, url: str) -> None:
    search("grid", "--spec", DEMO, "--epochs", str(epochs), "--study", study,
           "--artifacts", str(folder / "artifacts"), "--ranks", "2", "4", "8", "--alphas", "2",
           "4", "8", "--workers", "0", "--heartbeat-interval", "1", "--grace-period", "5",
           "--max-retries", "8", cwd=folder, url=url)


def start_worker(study: str, folder: Path, url: str, log) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SEARCH_STORAGE": url}
    return subprocess.Popen([*SEARCH, "worker", "--study", study, "--threads", "1"], cwd=folder,
                            env=env, stdout=log, stderr=log)


def board(study: str, folder: Path, url: str) -> list[dict]:
    return json.loads(search("leaderboard", "--study", study, "--format", "json", cwd=folder,
                             url=url).stdout)


def open_work(study: str, folder: Path, url: str) -> bool:
    return any(row["state"] in ("WAITING", "RUNNING") for row in board(study, folder, url))


def point(row: dict) -> tuple:
    return (row["rank"], row["alpha"]) if not row["baseline"] else ("baseline",)


def run_undisturbed(epochs: int, workers: int, folder: Path, url: str) -> dict:
    queue("calm", epochs, folder, url)
    with open(folder / "calm.log", "w") as log:
        for process in [start_worker("calm", folder, url, log) for _ in range(workers)]:
            process.wait(timeout=1800)
    return {point(r): (r["val_acc"], r["test_acc"]) for r in board("calm", folder, url)
            if r["state"] == "COMPLETE"}


def run_chaos(args: argparse.Namespace, cluster: PostgresCluster, folder: Path,
              disk: Path | None, kinds: tuple[str, ...]) -> dict:
    url, chance = cluster.url, random.Random(args.seed)
    queue("chaos", args.epochs, folder, url)
    done: collections.Counter = collections.Counter()
    started, deadline = time.monotonic(), time.monotonic() + args.max_seconds
    with open(folder / "chaos.log", "w") as log:
        workers = [start_worker("chaos", folder, url, log) for _ in range(args.workers)]
        time.sleep(8)  # let the workers claim their first trials
        while sum(done.values()) < args.faults and time.monotonic() < deadline:
            fault = chance.choice(kinds)
            alive = [w for w in workers if w.poll() is None]
            if fault in ("sigkill", "sigterm"):
                if alive:
                    victim = chance.choice(alive)
                    victim.send_signal(signal.SIGKILL if fault == "sigkill" else signal.SIGTERM)
                    victim.wait(timeout=120)
            else:
                inject(fault, cluster, disk)
            done[fault] += 1
            print(f"faults: {sum(done.values())}/{args.faults} ({fault}) at "
                  f"{time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
            workers = [w for w in workers if w.poll() is None]
            if open_work("chaos", folder, url):
                workers += [start_worker("chaos", folder, url, log)
                            for _ in range(args.workers - len(workers))]
            time.sleep(chance.uniform(1, 4))
        # The faults are over: replace what died until the study has no work left.
        while time.monotonic() < deadline and open_work("chaos", folder, url):
            workers = [w for w in workers if w.poll() is None]
            workers += [start_worker("chaos", folder, url, log)
                        for _ in range(args.workers - len(workers))]
            time.sleep(2)
        for worker in workers:
            worker.wait(timeout=600)
    codes = collections.Counter()
    for line in (folder / "chaos.log").read_text().splitlines():
        if line.startswith("worker: stopped: database disk full"):
            codes["stopped on a full disk"] += 1
        elif line.startswith("worker: stopped: storage"):
            codes["stopped past --storage-timeout"] += 1
    return {"faults": dict(done), "seconds": round(time.monotonic() - started),
            "worker_stops": dict(codes)}


def tally(rows: list[dict], reference: dict, points: set) -> dict:
    complete = collections.Counter(point(r) for r in rows if r["state"] == "COMPLETE")
    held = {point(r) for r in rows}
    results = {point(r): (r["val_acc"], r["test_acc"]) for r in rows if r["state"] == "COMPLETE"}
    notes = [r.get("note") or "" for r in rows]
    return {
        "points": len(points),
        "complete_once": sum(complete[p] == 1 for p in points),
        "failed_for_good": sum(p in held and complete[p] == 0 and not any(
            point(r) == p and r["state"] in ("WAITING", "RUNNING") for r in rows)
            for p in points),
        "lost": sum(p not in held for p in points),
        "duplicated": sum(complete[p] > 1 for p in points),
        "retried_from_checkpoint": sum("resumed after epoch" in n for n in notes),
        "retried_from_scratch": sum("retry of trial" in n and "resumed" not in n
                                    for n in notes),
        "trials": len(rows),
        "leaderboard_equal": results == reference,
    }


def table(result: dict) -> str:
    faults = ", ".join(f"{count} {name}" for name, count in sorted(result["faults"].items()))
    rows = [("faults", f"{sum(result['faults'].values())} ({faults})"),
            ("wall time", f"{result['seconds']} s"), ("grid points", result["points"]),
            ("complete exactly once", result["complete_once"]),
            ("failed for good", result["failed_for_good"]), ("lost", result["lost"]),
            ("duplicated", result["duplicated"]),
            ("retried from a checkpoint", result["retried_from_checkpoint"]),
            ("retried from scratch", result["retried_from_scratch"]),
            ("trials in the study", result["trials"]),
            ("worker stops (exit 75), replaced", ", ".join(
                f"{n} {why}" for why, n in sorted(result["worker_stops"].items())) or "none"),
            ("leaderboard equal to the undisturbed run's",
             "yes" if result["leaderboard_equal"] else "no")]
    return "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--faults", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", nargs="+", choices=FAULTS, default=list(FAULTS),
                        metavar="KIND", help=f"fault kinds to draw from (default: all of "
                                             f"{', '.join(FAULTS)})")
    parser.add_argument("--max-seconds", type=int, default=1500,
                        help="bound on the chaos run (default 1500)")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument("--keep-log", metavar="FILE", help="copy the workers' log there")
    parser.add_argument("--write", action="store_true",
                        help="also write the table into BENCHMARKS.md")
    args = parser.parse_args()
    if server_binaries() is None:
        sys.exit("faults: no PostgreSQL server binaries (Debian package postgresql)")
    # SIGTERM (`timeout`, pkill) ends the run through its clean-up: the server stopped, the
    # small disk unmounted, the iptables rule taken away.
    signal.signal(signal.SIGTERM, lambda number, _: sys.exit(128 + number))
    with contextlib.ExitStack() as stack:
        kinds = tuple(args.kinds)
        try:
            cluster, disk = stack.enter_context(cluster_on_small_disk(DISK_MB))
        except SmallDiskUnavailable as why:  # a plain cluster, without "disk full"
            print(f"faults: no 'disk full' ({why})", file=sys.stderr)
            cluster, disk = PostgresCluster(server_binaries()), None
            cluster.url = cluster.start()
            stack.callback(cluster.stop)
            kinds = tuple(k for k in kinds if k != "disk full")
        if "partition" in kinds and not can_partition(cluster.port):
            print("faults: no 'partition' (iptables missing or refused)", file=sys.stderr)
            kinds = tuple(k for k in kinds if k != "partition")
        folder = cluster.folder / "run"
        folder.mkdir()
        if os.geteuid() == 0:  # the server's folder belongs to postgres; the run's is ours
            os.chown(folder, 0, 0)
        if args.keep_log:  # also when the run fails: the log says why
            stack.callback(lambda: (folder / "chaos.log").exists() and Path(
                args.keep_log).write_text((folder / "chaos.log").read_text()))
        reference = run_undisturbed(args.epochs, args.workers, folder, cluster.url)
        chaos = run_chaos(args, cluster, folder, disk, kinds)
        result = {**chaos, **tally(board("chaos", folder, cluster.url), reference,
                                   set(reference)), "kinds": list(kinds)}
    print(json.dumps(result) if args.format == "json" else table(result))
    if args.write:
        write_section("faults", f"### Faults: a chaos run\n\n`python benchmarks/faults.py "
                                f"--workers {args.workers} --faults {args.faults} --epochs "
                                f"{args.epochs} --seed {args.seed} --write` on a "
                                f"{os.cpu_count()}-core machine without GPU, {date.today()}: "
                                f"the demo grid (baseline + 3 x 3), heartbeat 1 s, grace 5 s, "
                                f"max 8 retries; outages of {OUTAGE_S} s, hangs and "
                                f"partitions of {HANG_S} s, full disks for {DISK_FULL_S} s; "
                                f"kinds drawn from: {', '.join(result['kinds'])}."
                                f"\n\n{table(result)}")


if __name__ == "__main__":
    main()
