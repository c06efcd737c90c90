"""Storage load: many worker processes on one study with a trivial objective.

    python benchmarks/storage_load.py --workers 8 --backends sqlite   # a quick check, print only
    python benchmarks/storage_load.py --write       # 32 and 64 workers, both backends, recorded

Each worker process runs the real worker's queue code (`search.worker.trial_queue.next_trial`:
fail stale trials, claim by compare-and-set, wait while others run; a heartbeat thread per
trial, as `search worker` does) but the objective is trivial: register the grid point's
params, report one value, finish. What is left is the storage's cost. PostgreSQL runs in a
throwaway cluster (tests/postgres_cluster.py) unless `--postgres URL` names one.

Per run it reports trials per second (from the first claim to the last finish, as the
database recorded them), errors raised in workers, lost trials (queued but not COMPLETE at
the end) and duplicated trials (run to completion more than once, or more trials than
queued), and for PostgreSQL the most connections open at once. "span" runs from the first
claim to the last finish as the database recorded them, "wall" from the start signal to the
last worker's exit (workers wait, ready, until all are started). The table is printed; with
`--write` it also goes into BENCHMARKS.md between the `storage_load` markers.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import optuna  # noqa: E402
import sqlalchemy  # noqa: E402

from benchmarks.markdown_section import write_section  # noqa: E402
from search.study.heartbeat_settings import HeartbeatSettings  # noqa: E402
from search.study.storage import open_storage, with_driver  # noqa: E402
from search.worker.heartbeat import Heartbeat  # noqa: E402
from search.worker.trial_queue import MAX_POLL_SECONDS, next_trial  # noqa: E402

STUDY = "load"
BEATS = HeartbeatSettings()  # the defaults a user gets: 60 s / 180 s / 2 retries


def quiet() -> None:
    import warnings

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def run_worker(url: str, start_line: Path) -> None:
    """One worker process: claim and finish trials until none is queued or running; prints
    `ran N` per trial and `error TYPE: message` per exception (then carries on).

    It starts claiming only once `start_line` exists, so that all workers start together
    rather than as fast as the host can start Python processes."""
    quiet()
    storage = open_storage(url, must_exist=True, heartbeat=BEATS)
    study = optuna.load_study(study_name=STUDY, storage=storage)
    (start_line.parent / f"ready-{os.getpid()}").touch()
    while not start_line.exists():
        time.sleep(0.01)
    while True:
        try:
            frozen = next_trial(storage, study, MAX_POLL_SECONDS, lambda: False)
            if frozen is None:
                break
            with Heartbeat(storage, [frozen._trial_id], BEATS.interval):
                trial = optuna.Trial(study, frozen._trial_id)
                rank = trial.suggest_int("rank", 1, 64)
                trial.report(rank / 64, 1)
                trial.set_user_attr("worker", os.getpid())
                study.tell(trial, rank / 64)
            print(f"ran {frozen.number}", flush=True)
        except Exception as error:
            print(f"error {type(error).__name__}: {str(error).splitlines()[0][:120]}",
                  flush=True)
            time.sleep(0.1)


def count_connections(url: str, stop: threading.Event, peak: list[int]) -> None:
    engine = sqlalchemy.create_engine(with_driver(url), poolclass=sqlalchemy.pool.NullPool)
    query = sqlalchemy.text("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                            "current_database() AND pid <> pg_backend_pid()")
    while not stop.is_set():
        with engine.connect() as connection:
            peak[0] = max(peak[0], connection.execute(query).scalar())
        stop.wait(0.2)
    engine.dispose()


def measure(url: str, workers: int, trials: int, folder: Path) -> dict:
    quiet()
    storage = open_storage(url, heartbeat=BEATS)
    try:
        optuna.delete_study(study_name=STUDY, storage=storage)
    except KeyError:
        pass
    study = optuna.create_study(study_name=STUDY, storage=storage, direction="maximize")
    for number in range(trials):
        study.enqueue_trial({"rank": number % 64 + 1}, user_attrs={"baseline": False})
    storage.engine.dispose()

    stop, peak = threading.Event(), [0]
    watcher = None
    if url.startswith("postgresql"):
        watcher = threading.Thread(target=count_connections, args=(url, stop, peak))
        watcher.start()
    gate = Path(tempfile.mkdtemp(dir=folder))
    start_line = gate / "go"
    processes = [subprocess.Popen([sys.executable, __file__, "--child", url, str(start_line)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for _ in range(workers)]
    while len(list(gate.glob("ready-*"))) < workers:
        if any(process.poll() is not None for process in processes):
            break  # a worker died before it was ready; its output says why
        time.sleep(0.05)
    started = time.perf_counter()
    start_line.touch()
    outputs = [process.communicate()[0] for process in processes]
    wall = time.perf_counter() - started
    stop.set()
    if watcher is not None:
        watcher.join()

    ran = Counter(int(n) for out in outputs for n in re.findall(r"^ran (\d+)$", out, re.M))
    errors = Counter(line[len("error "):].split(":")[0] for out in outputs
                     for line in out.splitlines() if line.startswith("error "))
    crashed = sum(process.returncode != 0 for process in processes)
    final = optuna.load_study(study_name=STUDY, storage=open_storage(url)).get_trials()
    complete = [t for t in final if t.state == optuna.trial.TrialState.COMPLETE]
    first = min(t.datetime_start for t in complete)
    last = max(t.datetime_complete for t in complete)
    span = (last - first).total_seconds()
    return {
        "workers": workers, "trials": trials, "wall_s": wall, "span_s": span,
        "trials_per_s": len(complete) / span if span > 0 else float("nan"),
        "errors": sum(errors.values()) + crashed,
        "error_kinds": dict(errors, **({"crashed": crashed} if crashed else {})),
        "lost": trials - len(complete),
        "duplicated": sum(count - 1 for count in ran.values() if count > 1)
                      + max(0, len(final) - trials),
        "workers_that_ran": len({t.user_attrs.get("worker") for t in complete}),
        "peak_connections": peak[0] if watcher is not None else None,
    }


def table(rows: list[dict]) -> str:
    lines = ["| backend | workers | trials | trials/s | span s | wall s | errors | lost | "
             "duplicated | workers that ran | peak connections |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        kinds = f" ({row['error_kinds']})" if row["error_kinds"] else ""
        lines.append(
            f"| {row['backend']} | {row['workers']} | {row['trials']} | "
            f"{row['trials_per_s']:.1f} | {row['span_s']:.1f} | {row['wall_s']:.1f} | "
            f"{row['errors']}{kinds} | {row['lost']} | {row['duplicated']} | "
            f"{row['workers_that_ran']} | {row['peak_connections'] or '-'} |")
    return "\n".join(lines)


def machine() -> str:
    cores = os.cpu_count()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{platform.node() or 'host'}: {cores} CPU cores, {memory:.0f} GiB, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
            f"Optuna {optuna.__version__}, SQLAlchemy {sqlalchemy.__version__}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=2, metavar=("URL", "START_LINE"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--workers", nargs="+", type=int, default=[32, 64])
    parser.add_argument("--trials-per-worker", type=int, default=20)
    parser.add_argument("--backends", nargs="+", choices=("sqlite", "postgresql"),
                        default=["sqlite", "postgresql"])
    parser.add_argument("--postgres", metavar="URL", help="an existing database to use")
    parser.add_argument("--write", action="store_true",
                        help="put the table into BENCHMARKS.md (section storage_load); "
                             "without it the table is only printed")
    args = parser.parse_args()
    if args.child:
        run_worker(args.child[0], Path(args.child[1]))
        return 0

    from postgres_cluster import PostgresCluster, server_binaries

    rows, cluster = [], None
    with tempfile.TemporaryDirectory() as folder:
        try:
            for backend in args.backends:
                if backend == "sqlite":
                    url = f"sqlite:///{folder}/load.db"
                elif args.postgres:
                    url = args.postgres
                else:
                    binaries = server_binaries()
                    if binaries is None:
                        print("no PostgreSQL server binaries; skipping", file=sys.stderr)
                        continue
                    cluster = PostgresCluster(binaries)
                    url = cluster.start()
                for workers in args.workers:
                    row = measure(url, workers, workers * args.trials_per_worker,
                                  Path(folder))
                    rows.append({"backend": backend, **row})
                    print(table(rows[-1:]).splitlines()[-1], flush=True)
        finally:
            if cluster is not None:
                cluster.stop()
    today = datetime.date.today().isoformat()
    text = (f"Measured {today} on {machine()}; `python benchmarks/storage_load.py "
            f"--workers {' '.join(map(str, args.workers))} --trials-per-worker "
            f"{args.trials_per_worker}`.\n\n{table(rows)}")
    print(text)
    if args.write:
        write_section("storage_load", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
