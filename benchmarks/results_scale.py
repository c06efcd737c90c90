"""The results code at scale: the read commands, a worker's refresh of the dashboard, the study
note and the dashboard's study API, on synthetic studies of 10 to 5,000 trials.

    python benchmarks/results_scale.py [--sizes 10 100 1000 5000] [--images 216 10000]
        [--seeds 1 3] [--storage sqlite postgresql] [--layout system|user] [--repeats 1]
        [--refreshes 3] [--timeout 600] [--root CHECKOUT] [--format table|json] [--write]

Each study is made by `benchmarks/synthetic_study.py` (every trial COMPLETE as a worker leaves
it: outcomes, artifact records, history; SQLite ones cached under benchmarks/.cache/). Per
study, as whole processes: `optuna best-trial` and `search leaderboard` alternately, in the
same loop (`--repeats` of each; the ratio to Optuna's own reader is what to read on a loaded
machine), `search report`, and a cold `search leaderboard --note` (each run on a fresh copy
of the study, which has no leaderboard notes yet). Then, in one child process: the refresh a
worker makes after finishing a trial (warmed by one refresh, then `--refreshes` times: one more
trial finished, the refresh timed; the median), the study note's size, and the dashboard's
study API (`GET /api/studies/<id>`, the JSON a browser polls, through optuna-dashboard's WSGI
app) in bytes per trial and seconds. A command over `--timeout` is stopped and shown as
"> T s". `--root` times another checkout's code on the same studies (a `git archive` of the
commit before, say; `--layout user` for code that reads outcomes from user attributes only).
`--write` puts the table in BENCHMARKS.md. No assertion on any time.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the suite's throwaway-cluster helper

from benchmarks import synthetic_study  # noqa: E402
from benchmarks.markdown_section import write_section  # noqa: E402
from benchmarks.packing import cpu_name  # noqa: E402

BIN = Path(sys.executable).parent
SEARCH = [str(BIN / "search")] if (BIN / "search").is_file() else [sys.executable, "-m",
                                                                    "search"]
OPTUNA = [str(BIN / "optuna")] if (BIN / "optuna").is_file() else [sys.executable, "-m",
                                                                    "optuna"]
NAME = "synthetic"


@dataclass(frozen=True)
class Case:
    trials: int
    images: int
    seeds: int
    storage: str
    layout: str

    def describe(self) -> str:
        return (f"{self.trials} trials x {self.images} images x {self.seeds} seed(s), "
                f"{self.storage}, outcomes in {self.layout} attrs")


@dataclass(frozen=True)
class Copy:
    """A study a run may change: its storage URL and artifact folder."""
    url: str
    artifacts: Path


# ---------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class Run:
    """A whole process's wall seconds (None: stopped at the timeout) and its last line on
    stderr (what `leaderboard --note` says it wrote)."""
    seconds: float | None
    said: str = ""


def timed(argv: list[str], cwd: Path, timeout: float, root: Path) -> Run:
    """Run `argv` with `root`'s code; past `timeout` its process group is killed."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    start = time.perf_counter()
    process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return Run(None)
    elapsed = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} -> {process.returncode}\n{stderr[-2000:]}")
    return Run(elapsed, (stderr.strip().splitlines() or [""])[-1])


def median(times: list[float | None]) -> float | None:
    """The median, or None (over the timeout) when any run was stopped."""
    return None if not times or None in times else statistics.median(times)


# ---------------------------------------------------------------------------- storages


class SqliteStudies:
    """Built once per case (cached), copied for each run that may write to it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def source(self, case: Case) -> synthetic_study.CachedStudy:
        start = time.perf_counter()
        built = synthetic_study.cached_study(case.trials, case.images, seeds=case.seeds,
                                             layout=case.layout)
        say(f"study ready ({time.perf_counter() - start:.1f} s): {case.describe()}")
        return built

    def copy(self, source: synthetic_study.CachedStudy, name: str) -> Copy:
        database = synthetic_study.copy_database(source.database,
                                                 self.folder / name / "study.db")
        artifacts = synthetic_study.link_folder(source.artifacts, self.folder / name / "art")
        return Copy(f"sqlite:///{database}", artifacts)

    def close(self) -> None:
        pass


class PostgresStudies:
    """Made once per case into a template database of a throwaway cluster; each run gets a
    database copied from it (`createdb -T`)."""

    def __init__(self, folder: Path) -> None:
        from postgres_cluster import USER, PostgresCluster, server_binaries

        binaries = server_binaries()
        if binaries is None:
            sys.exit("results_scale: no PostgreSQL server binaries (Debian package postgresql)")
        self.folder, self.user = folder, USER
        self.cluster = PostgresCluster(binaries)
        self.base_url = self.cluster.start()
        self.count = 0

    def url(self, database: str) -> str:
        return self.base_url.rsplit("/", 1)[0] + "/" + database

    def createdb(self, *args: str) -> None:
        self.cluster.run("createdb", "-h", str(self.cluster.folder), "-p",
                         str(self.cluster.port), "-U", self.user, *args)

    def source(self, case: Case) -> synthetic_study.CachedStudy:
        self.count += 1
        template = f"template_{self.count}"
        self.createdb(template)
        artifacts = self.folder / template
        start = time.perf_counter()
        # In a child: a template database must have no session left when it is copied.
        code = (f"from benchmarks import synthetic_study as s; "
                f"s.make_study({self.url(template)!r}, {NAME!r}, {case.trials}, {case.images}, "
                f"seeds={case.seeds}, layout={case.layout!r}, artifacts_dir={str(artifacts)!r})")
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
        say(f"study made ({time.perf_counter() - start:.1f} s): {case.describe()}")
        return synthetic_study.CachedStudy(Path(template), NAME, artifacts)

    def copy(self, source: synthetic_study.CachedStudy, name: str) -> Copy:
        self.count += 1
        database = f"run_{self.count}"
        self.createdb("-T", str(source.database), database)
        artifacts = synthetic_study.link_folder(source.artifacts, self.folder / database)
        return Copy(self.url(database), artifacts)

    def close(self) -> None:
        self.cluster.stop()


STORAGES = {"sqlite": SqliteStudies, "postgresql": PostgresStudies}


# ---------------------------------------------------------------------------- one case


def search_command(root: Path) -> list[str]:
    """This checkout's console script; another checkout's code through `python -m`."""
    return SEARCH if root == ROOT else [sys.executable, "-m", "search"]


def read_commands(copy: Copy, out: Path, root: Path) -> dict[str, list[str]]:
    study, search = ["--study", NAME, "--storage", copy.url], search_command(root)
    return {"best_trial": [*OPTUNA, "best-trial", "--study-name", NAME, "--storage", copy.url],
            "leaderboard": [*search, "leaderboard", *study],
            "report": [*search, "report", *study, "--artifacts", str(copy.artifacts), "--out",
                       str(out / "report")],
            "note": [*search, "leaderboard", "--note", *study, "--artifacts",
                     str(copy.artifacts)]}


def measure_commands(studies, source, args: argparse.Namespace, folder: Path
                     ) -> dict[str, Any]:
    """The read commands as whole processes (medians); `--note` each time on a fresh copy."""
    commands = read_commands(studies.copy(source, "read"), folder, args.root)
    runs: dict[str, list[Run]] = {"best_trial": [], "leaderboard": [], "report": [],
                                  "note": []}
    for _ in range(args.repeats):  # side by side: the machine's load hits both alike
        for key in ("best_trial", "leaderboard"):
            runs[key].append(timed(commands[key], folder, args.timeout, args.root))
    for _ in range(args.repeats):
        runs["report"].append(timed(commands["report"], folder, args.timeout, args.root))
    for attempt in range(args.repeats):
        fresh = read_commands(studies.copy(source, f"note-{attempt}"), folder, args.root)
        runs["note"].append(timed(fresh["note"], folder, args.timeout, args.root))
    return {**{key: median([r.seconds for r in values]) for key, values in runs.items()},
            "note_said": runs["note"][-1].said}


def measure_in_child(studies, source, case: Case, args: argparse.Namespace, folder: Path
                     ) -> dict[str, Any]:
    """The in-process measures (`in_process`), in a child bounded by `--timeout` per step;
    what it printed before being stopped is kept."""
    copy = studies.copy(source, "refresh")
    request = {"url": copy.url, "artifacts": str(copy.artifacts), "images": case.images,
               "layout": case.layout, "refreshes": args.refreshes, "root": str(args.root)}
    argv = [sys.executable, __file__, "--in-process", json.dumps(request)]
    process = subprocess.Popen(argv, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True,
                               env={**os.environ, "PYTHONPATH": str(args.root)})
    try:
        stdout, stderr = process.communicate(timeout=args.timeout * (args.refreshes + 2))
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
    found: dict[str, Any] = {}
    for line in stdout.splitlines():
        found.update(json.loads(line))
    if process.returncode not in (0, -signal.SIGKILL):
        say(f"in-process measures stopped ({process.returncode}): {stderr.strip()[-1500:]}")
        found["failed"] = True
    return found


def measure_case(case: Case, studies, args: argparse.Namespace) -> dict[str, Any]:
    source = studies.source(case)
    with tempfile.TemporaryDirectory(prefix="results-scale-") as temp:
        folder = Path(temp)
        commands = measure_commands(studies, source, args, folder)
        in_process = measure_in_child(studies, source, case, args, folder)
    refreshes = in_process.get("refreshes", [])
    return {**asdict(case), **commands,
            "refresh": statistics.median(refreshes) if len(refreshes) == args.refreshes
            else None,
            **{key: in_process.get(key) for key in ("failed", "first_refresh", "refreshes",
                                                    "note_bytes",
                                                    "api_s", "api_bytes_per_trial",
                                                    "api_user_attrs_per_trial")}}


# ---------------------------------------------------------------------------- in process


def worker_refresh() -> Callable[[Any, Any, str], None]:
    """What a worker calls after each trial or pack it finishes (`claim_loop.run_worker`),
    as a function of (study, store, url): the one place to change when that call changes.
    Today's worker keeps a `DashboardMemory` for its life and asks `after_finishing`; before
    issue 24 it called `refresh_leaderboard(study, store, url)` (kept, to measure a checkout
    from before)."""
    from search.worker import claim_loop

    if "memory" not in inspect.signature(claim_loop.refresh_leaderboard).parameters:
        return claim_loop.refresh_leaderboard
    from search.results.dashboard_notes import DashboardMemory, after_finishing

    memory = DashboardMemory()
    return lambda study, store, url: claim_loop.refresh_leaderboard(after_finishing, study,
                                                                    store, url, memory)


def study_api(storage, study_id: int) -> dict[str, Any]:
    """The dashboard's `GET /api/studies/<id>` as its first poll of a study gets it
    (uncompressed JSON), through its WSGI app in this process: bytes and seconds, per trial,
    and the user attributes' share (issue 24 wants at most 1.5 KiB a trial)."""
    from wsgiref.util import setup_testing_defaults

    import optuna_dashboard

    app = optuna_dashboard.wsgi(storage)
    environ: dict[str, Any] = {}
    setup_testing_defaults(environ)
    environ.update(PATH_INFO=f"/api/studies/{study_id}", QUERY_STRING="after=0")
    statuses = []
    start = time.perf_counter()
    body = b"".join(app(environ, lambda status, headers, *_: statuses.append(status)))
    elapsed = time.perf_counter() - start
    if not statuses[0].startswith("200"):
        raise RuntimeError(f"dashboard API answered {statuses[0]}: {body[:300]!r}")
    trials = json.loads(body)["trials"]
    attrs = sum(len(json.dumps(t["user_attrs"])) for t in trials)
    return {"api_s": elapsed, "api_bytes_per_trial": round(len(body) / len(trials)),
            "api_user_attrs_per_trial": round(attrs / len(trials))}


def in_process(request: dict[str, Any]) -> None:
    """Print, one JSON line at a time (so that a stopped run keeps what it measured): the
    first refresh, each refresh after one more finished trial, the note's size, the API."""
    sys.path.insert(0, request["root"])  # the checkout measured: its `search`
    import optuna_dashboard

    from search.cli.commands import quiet_optuna
    from search.study.artifacts import artifact_store
    from search.study.open_study import open_study
    from search.study.storage import open_storage

    def emit(**values: Any) -> None:
        print(json.dumps(values), flush=True)

    quiet_optuna()
    url = request["url"]
    storage = open_storage(url, must_exist=True)
    study = open_study(storage, NAME)
    store = artifact_store(request["artifacts"])
    refresh = worker_refresh()
    start = time.perf_counter()
    refresh(study, store, url)
    emit(first_refresh=time.perf_counter() - start)
    refreshes = []
    for index in range(request["refreshes"]):
        synthetic_study.add_finished_trial(study, request["images"], layout=request["layout"],
                                           configuration=10**6 + index,
                                           artifacts_dir=request["artifacts"])
        start = time.perf_counter()
        refresh(study, store, url)
        refreshes.append(time.perf_counter() - start)
        emit(refreshes=refreshes)
    emit(note_bytes=len(optuna_dashboard.get_note(study).encode()))
    emit(**study_api(storage, study._study_id))


# ---------------------------------------------------------------------------- the table


def seconds(value: float | None, timeout: float, digits: int = 1) -> str:
    return f"> {timeout:g}" if value is None else f"{value:.{digits}f}"


def cell(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def refresh_cell(row: dict[str, Any], timeout: float) -> str:
    """The median refresh, the first one in brackets."""
    if row.get("first_refresh") is None:
        return "failed" if row.get("failed") else f"> {timeout:g}"
    return f"{seconds(row['refresh'], timeout)} ({row['first_refresh']:.1f})"


def table(rows: list[dict[str, Any]], timeout: float) -> str:
    lines = ["| trials | images | seeds | storage | `optuna best-trial` s | `search leaderboard` "
             "s (ratio) | `search report` s | cold `leaderboard --note` s | refresh s (first) "
             "| study note bytes | API bytes/trial (user attrs) | API s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = (f" ({r['leaderboard'] / r['best_trial']:.1f}x)"
                 if r["leaderboard"] is not None and r["best_trial"] else "")
        api = "-" if r["api_s"] is None else f"{r['api_s']:.2f}"
        attrs = (f" ({r['api_user_attrs_per_trial']:,})"
                 if r.get("api_user_attrs_per_trial") is not None else "")
        lines.append(
            f"| {r['trials']:,} | {r['images']:,} | {r['seeds']} | {r['storage']} | "
            f"{seconds(r['best_trial'], timeout)} | {seconds(r['leaderboard'], timeout)}{ratio} "
            f"| {seconds(r['report'], timeout)} | {seconds(r['note'], timeout)} | "
            f"{refresh_cell(r, timeout)} | {cell(r['note_bytes'])} | "
            f"{cell(r['api_bytes_per_trial'])}{attrs} | {api} |")
    return "\n".join(lines)


def tree_commit(root: Path) -> str:
    """The commit measured, marked when its code has uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True,
                              text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--", "search", "objectives")
    return git("rev-parse", "--short", "HEAD") + (" + uncommitted changes" if dirty else "")


def section(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    command = "python benchmarks/results_scale.py " + shlex.join(sys.argv[1:])
    where = " and ".join(args.storage)
    return (f"### Results at scale ({where})\n\n`{command}` on the {cpu_name()} "
            f"({os.cpu_count()} cores, "
            f"shared), {date.today()}, commit {tree_commit(args.root)}: synthetic studies "
            "(`benchmarks/synthetic_study.py`, outcomes in trial "
            f"{args.layout} attributes); whole-process wall seconds, median of {args.repeats}; "
            f"refresh: a worker's, after one more finished trial, median of {args.refreshes} "
            "(first: the one before them); API: the dashboard's `GET /api/studies/<id>`, "
            f"uncompressed. \"> T\": stopped at the {args.timeout:g} s timeout.\n\n"
            + table(rows, args.timeout) + before_table(args))


def before_table(args: argparse.Namespace) -> str:
    """The rows of earlier `--format json` runs (`--before`), e.g. of the code before a
    change timed with `--root`, as a table of their own under the new one."""
    if not args.before:
        return ""
    rows = [row for path in args.before for row in json.loads(Path(path).read_text())]
    return (f"\n\nBefore: {args.before_label}\n\n" + table(rows, args.timeout))


# ---------------------------------------------------------------------------- main


def say(text: str) -> None:
    print(f"results_scale: {text}", file=sys.stderr, flush=True)


@contextmanager
def opened(storage: str, folder: Path) -> Iterator[Any]:
    studies = STORAGES[storage](folder)
    try:
        yield studies
    finally:
        studies.close()


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="results-scale-copies-") as temp:
        for storage in args.storage:
            with opened(storage, Path(temp) / storage) as studies:
                for trials in args.sizes:
                    for images in args.images:
                        for seeds in args.seeds:
                            case = Case(trials, images, seeds, storage, args.layout)
                            rows.append(measure_case(case, studies, args))
                            say(json.dumps(rows[-1]))
                            cleanup(Path(temp) / storage)
    return rows


def cleanup(folder: Path) -> None:
    """Copies of finished cases: SQLite files of up to a few hundred MB each."""
    for child in folder.iterdir() if folder.is_dir() else []:
        if child.name in ("read", "refresh") or child.name.startswith(("note-", "run_")):
            shutil.rmtree(child, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000, 5000],
                        help="trials per study, all seeds included")
    parser.add_argument("--images", type=int, nargs="+", default=[216, 10_000],
                        help="validation (and as many test) images")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--storage", nargs="+", choices=tuple(STORAGES), default=["sqlite"])
    parser.add_argument("--layout", choices=synthetic_study.LAYOUTS, default="system",
                        help="where trials keep their outcomes (user: studies made before)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each command")
    parser.add_argument("--refreshes", type=int, default=3,
                        help="refreshes timed, each after one more finished trial")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per command")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument("--write", action="store_true",
                        help="also write the table into BENCHMARKS.md")
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="checkout whose code to time (e.g. a git worktree of the commit "
                             "before; with --layout user if it predates outcomes in system "
                             "attributes); default: this one")
    parser.add_argument("--before", nargs="+", metavar="JSON", default=[],
                        help="rows of earlier `--format json` runs to show under the new "
                             "table with --write (e.g. the code before, timed with --root)")
    parser.add_argument("--before-label", default="the rows of --before",
                        help="what the --before rows measured (commit, date, options)")
    parser.add_argument("--in-process", metavar="JSON", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    args.root = args.root.resolve()
    if args.in_process:
        in_process(json.loads(args.in_process))
        return
    rows = run(args)
    print(json.dumps(rows) if args.format == "json" else table(rows, args.timeout))
    if args.write:  # a section per choice of storages: a PostgreSQL run keeps SQLite's
        name = "_".join(["results_scale", *(x for x in args.storage if x != "sqlite")])
        write_section(name, section(rows, args))


if __name__ == "__main__":
    main()
