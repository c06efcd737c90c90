"""Optuna's own storage tests, run on our storage as workers build it (issue 25, item 7).

The tests come from the source distribution of the installed Optuna version on the package
index (the wheel ships none), fetched once into tests/.optuna-suite/ (git-ignored). On each
backend (SQLite, and PostgreSQL on a throwaway cluster) they run twice, in pytests of their
own (`optuna_suite_plugin` supplies the storage): with Optuna's plain `RDBStorage`, and with
`open_storage(...)` as `run_worker` calls it; whatever passes with the first must pass with
the second.

Run: Optuna's storage tests that take their storage from its `StorageSupplier` or a helper
of their own (storages_tests: test_storages, test_heartbeat, test_callbacks,
test_cached_storage, test_with_server), the study and trial tests parametrized by storage
(study_tests: test_study, test_optimize, test_dataframe; trial_tests: test_trial,
test_frozen; there without the cached modes, see the plugin). Left out: storages_tests/
rdb_tests (RDBStorage's constructor arguments and the Alembic upgrades of old SQLite files,
which build `RDBStorage` themselves: our storage would not be what they test), journal and
gRPC tests (other storages), and tests that only use a hard-coded "sqlite" storage as a
sampler's or search space's backdrop.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import pytest
from postgres_cluster import running_cluster
from run_cli import ROOT

CACHE = ROOT / "tests" / ".optuna-suite"
SELECTED = ["storages_tests/test_storages.py", "storages_tests/test_heartbeat.py",
            "storages_tests/test_callbacks.py", "storages_tests/test_cached_storage.py",
            "storages_tests/test_with_server.py", "study_tests/test_study.py",
            "study_tests/test_optimize.py", "study_tests/test_dataframe.py",
            "trial_tests/test_trial.py", "trial_tests/test_frozen.py"]
SHARDS = 2  # per backend and storage; see `suite_runs`
RUN_TIMEOUT_S = 900
# A healthy plain run passes about 430 of them; far fewer means the run itself broke.
FEWEST_PASSES = 300


def fetch_optuna_tests(version: str) -> Path:
    """The `tests/` folder of Optuna `version`'s source distribution (with its pytest
    settings beside it, and without its `optuna/` package, so that the installed Optuna is
    what runs), fetched and unpacked on first use; skips, saying why, where it cannot be."""
    suite = CACHE / f"optuna-{version}"
    if (suite / "tests").is_dir():
        return suite
    CACHE.mkdir(parents=True, exist_ok=True)
    archive = CACHE / f"optuna-{version}.tar.gz"
    if not archive.is_file():
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             "--retries", "1", "--timeout", "20", f"optuna=={version}", "-d", str(CACHE)],
            capture_output=True, text=True, timeout=600)
        if done.returncode != 0 or not archive.is_file():
            last = (done.stderr.strip().splitlines() or ["no archive"])[-1]
            pytest.skip(f"cannot fetch the source distribution of optuna=={version} from the "
                        f"package index: {last}")
    top = f"optuna-{version}/"
    with tarfile.open(archive) as sdist, tempfile.TemporaryDirectory(dir=CACHE) as scratch:
        members = [m for m in sdist.getmembers()
                   if m.name.startswith(top + "tests/") or m.name == top + "pyproject.toml"]
        if not any(m.name.startswith(top + "tests/") for m in members):
            pytest.skip(f"the source distribution of optuna=={version} has no tests/")
        # Python's safe unpacking (no links out, no odd modes), where it has it (3.11.4+).
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        sdist.extractall(scratch, members=members, **safe)
        # Renamed whole, so that a run stopped halfway leaves nothing that looks unpacked.
        try:
            Path(scratch, top).rename(suite)
        except OSError:
            if not (suite / "tests").is_dir():  # else another session unpacked it first
                raise
    return suite


@pytest.fixture(scope="module")
def optuna_tests() -> Path:
    pytest.importorskip("fakeredis", reason="optuna.testing needs fakeredis "
                                            "(pip install -e '.[test]')")
    return fetch_optuna_tests(optuna.__version__)


@contextmanager
def scratch_folder(tmp_path: Path) -> Iterator[Path]:
    """The runs' temporary folder (their SQLite files), in memory where possible: SQLite
    syncs every commit to disk, which makes the suite about three times slower on a disk;
    what is under test is the storage, not the disk (the PostgreSQL cluster runs without
    fsync for the same reason)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 2**30:
        folder = Path(tempfile.mkdtemp(prefix="optuna-suite-", dir=shm))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    else:
        yield tmp_path


def run_shard(suite: Path, storage: str, postgres: str | None, shard: int,
              scratch: Path) -> tuple[dict[str, str], str]:
    """One shard of the selected tests on `storage` ("plain" or "ours"), in a pytest of its
    own: {node id: outcome} and the run's output."""
    name = f"{'postgresql' if postgres else 'sqlite'}-{storage}-{shard}"
    outcomes, temp = scratch / f"{name}.json", scratch / name
    temp.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
           "OPTUNA_SUITE_STORAGE": storage, "OPTUNA_SUITE_OUTCOMES": str(outcomes),
           "OPTUNA_SUITE_SHARD": f"{shard}/{SHARDS}", "TMPDIR": str(temp),
           "COLUMNS": "250"}  # failures in the short summary with their reason
    for variable in ("PYTEST_ADDOPTS", "OPTUNA_SUITE_POSTGRES"):
        env.pop(variable, None)
    if postgres:
        env["OPTUNA_SUITE_POSTGRES"] = postgres
    files = [f"tests/{file}" for file in SELECTED if (suite / "tests" / file).is_file()]
    # In the unpacked folder, so that Optuna's pytest settings and conftest are the ones.
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "optuna_suite_plugin", "-p", "no:cacheprovider",
         "--color=no", "-q", "-rfE", *files],
        cwd=suite, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    log = done.stdout + done.stderr
    if not outcomes.is_file():
        raise AssertionError(f"{name}: Optuna's tests ran no test (exit {done.returncode}):"
                             f"\n{log[-5000:]}")
    print(f"{name}: {log.strip().splitlines()[-1]}")
    return json.loads(outcomes.read_text()), log


@pytest.fixture(scope="module")
def suite_runs(request, optuna_tests: Path, tmp_path_factory) -> Iterator[dict[str, Any]]:
    """Starts every run at once, SQLite and PostgreSQL (those of the backends selected),
    plain and ours, each in SHARDS shards: they mostly wait (on sleeps in the heartbeat
    tests, on the databases), so side by side they take little longer than the longest.
    {backend: {storage: [shard futures]}}, or the reason PostgreSQL is skipped."""
    selected = {item.callspec.params["backend"] for item in request.session.items
                if getattr(item, "module", None) is request.module and hasattr(item, "callspec")}
    with contextlib.ExitStack() as stack:
        scratch = stack.enter_context(scratch_folder(tmp_path_factory.mktemp("suite")))
        backends: dict[str, Any] = {"sqlite": None} if "sqlite" in selected else {}
        if "postgresql" in selected:
            try:
                backends["postgresql"] = stack.enter_context(running_cluster()).url
            except pytest.skip.Exception as skipped:
                backends["postgresql"] = skipped
        # Entered after the cluster, so left (all runs finished) before the cluster stops.
        pool = stack.enter_context(ThreadPoolExecutor(2 * len(backends) * SHARDS))
        yield {backend: url if isinstance(url, pytest.skip.Exception) else
               {storage: [pool.submit(run_shard, optuna_tests, storage, url, shard, scratch)
                          for shard in range(SHARDS)] for storage in ("plain", "ours")}
               for backend, url in backends.items()}


def merged(shards: list[Future]) -> tuple[dict[str, str], str]:
    results = [shard.result() for shard in shards]
    return ({test: outcome for outcomes, _ in results for test, outcome in outcomes.items()},
            "\n".join(log for _, log in results))


def summary(name: str, outcomes: dict[str, str]) -> str:
    counts = {state: list(outcomes.values()).count(state)
              for state in sorted(set(outcomes.values()))}
    return f"{name}: " + ", ".join(f"{n} {state}" for state, n in counts.items())


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_optuna_storage_tests_that_pass_with_rdbstorage_pass_with_ours(backend, suite_runs):
    runs = suite_runs[backend]
    if isinstance(runs, pytest.skip.Exception):
        pytest.skip(str(runs))
    (plain, plain_log), (ours, ours_log) = merged(runs["plain"]), merged(runs["ours"])
    print(summary(f"{backend}, plain RDBStorage", plain), summary(f"{backend}, ours", ours),
          sep="\n")
    passed = {test for test, outcome in plain.items() if outcome == "passed"}
    assert len(passed) >= FEWEST_PASSES, \
        f"only {len(passed)} of Optuna's tests passed with plain RDBStorage:\n{plain_log[-5000:]}"
    lost = sorted(test for test in passed if ours.get(test) != "passed")
    reasons = [line for line in ours_log.splitlines()
               if line.startswith(("FAILED", "ERROR")) and any(t in line for t in lost)]
    assert not lost, (f"{len(lost)} of Optuna's tests pass with plain RDBStorage but not with "
                      "ours:\n" + "\n".join(f"  {test}: {ours.get(test, 'not run')}"
                                            for test in lost)
                      + "\n" + "\n".join(reasons))
