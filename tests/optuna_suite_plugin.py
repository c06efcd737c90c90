"""pytest plugin that runs Optuna's own tests (from its source distribution) on the storage
the environment names; tests/test_optuna_storage_suite.py loads it with `-p` in a pytest of
its own, so that Optuna's conftest and ours never meet.

Optuna's storage tests take their storages from `optuna.testing.storages.StorageSupplier`
and parametrize over `STORAGE_MODES`; this plugin narrows the modes to the RDB ones and
makes the supplier build, on a new empty database each time (as Optuna's fresh SQLite file):

- OPTUNA_SUITE_STORAGE=plain: Optuna's `RDBStorage`, the baseline;
- OPTUNA_SUITE_STORAGE=ours: `open_storage(...)` with the arguments a worker passes
  (`search.worker.claim_loop.run_worker`): heartbeat settings and an outage timeout.

Two test modules build their RDB storages with a helper of their own instead
(test_with_server.py: `get_storage`, test_cached_storage.py: `create_rdb_storage`); those
helpers are replaced to build the same storage. With OPTUNA_SUITE_POSTGRES (the URL of a
throwaway cluster's database) every RDB storage a test asks for, "sqlite" ones included,
lives on that PostgreSQL server instead. OPTUNA_SUITE_SHARD="i/n" runs the i-th of n
shards of the tests (from 0). Each test's outcome goes to the JSON file
OPTUNA_SUITE_OUTCOMES ({node id: "passed" | "failed" | "skipped" | "xfailed"}).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.testing import storages as optuna_storages
from optuna.testing.tempfile_pool import NamedTemporaryFilePool

from search.study.heartbeat_settings import HeartbeatSettings
from search.study.patient_storage import PatientRDBStorage
from search.study.storage import open_storage, with_driver

STORAGE = os.environ["OPTUNA_SUITE_STORAGE"]
POSTGRES = os.environ.get("OPTUNA_SUITE_POSTGRES")
# A worker waits out 600 s (--storage-timeout); the test databases never go away, so only a
# test that provokes a connection error on purpose would wait, and it need not wait long. Not
# under 30 s: the stall watch cuts a call running longer than min(30 s, this), and Optuna's
# query of 500,000 trial ids (test_get_trials_included_trial_ids) took over 10 s on PostgreSQL
# with the suite's four runs sharing two busy cores (2026-12-04); 30 s is what workers get.
OUTAGE_TIMEOUT_S = 60.0
MODES = ["postgresql", "cached_postgresql"] if POSTGRES else ["sqlite", "cached_sqlite"]
RDB_SPECIFIERS = {"sqlite", "cached_sqlite", "postgresql", "cached_postgresql"}
OUTCOMES: dict[str, str] = {}  # node id -> outcome


@dataclasses.dataclass(frozen=True)
class OptunaTestsHeartbeat(HeartbeatSettings):
    """The heartbeat arguments an Optuna test gives its storage, handed to `open_storage`
    where a worker hands the study's heartbeat settings: the tests pass values our settings
    refuse (a negative interval, to see `RDBStorage` refuse it) and callbacks of their own."""

    arguments: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        pass  # `RDBStorage` validates them, as those tests expect

    def storage_kwargs(self) -> dict[str, Any]:
        return dict(self.arguments)


def build_storage(url: str, extra_args: dict[str, Any]) -> optuna.storages.RDBStorage:
    """The storage under test on `url`; `extra_args` are the test's own `RDBStorage`
    arguments (heartbeat ones only, in Optuna's tests)."""
    if STORAGE == "ours":
        # A worker always has heartbeat settings: the study's, the defaults for an old one.
        heartbeat = (OptunaTestsHeartbeat(arguments=extra_args) if extra_args
                     else HeartbeatSettings())
        storage = open_storage(url, must_exist=True, heartbeat=heartbeat,
                               outage_timeout=OUTAGE_TIMEOUT_S)
        # Else the suite would pass on something other than what workers run.
        assert isinstance(storage, PatientRDBStorage), type(storage)
        return storage
    # As Optuna's own supplier builds it.
    engine_kwargs = ({} if POSTGRES else
                     {"connect_args": {"timeout": optuna_storages.SQLITE3_TIMEOUT}})
    return optuna.storages.RDBStorage(with_driver(url), engine_kwargs=engine_kwargs,
                                      **extra_args)


class SqliteDatabases:
    """New databases are temporary files (of Optuna's pool, as its supplier makes them)."""

    def create(self) -> str:
        return f"sqlite:///{NamedTemporaryFilePool().tempfile().name}"

    def drop(self, url: str) -> None:
        # Now rather than when the pool deletes them at exit, so that a run's files do not
        # pile up (in memory: see `scratch_folder`); with the files named after the
        # database (its write-ahead log, our storage's lock file).
        database = Path(sqlalchemy.engine.make_url(url).database)
        for path in database.parent.glob(f"{database.name}*"):
            path.unlink(missing_ok=True)

    def for_url(self, url: str) -> str:
        """Where a test's own storage URL points under test: a file of its own for SQLite
        in memory, which workers never open (`open_storage` would take it for a server); a
        file stays that file."""
        return self.create() if url.endswith(":memory:") else url


class PostgresDatabases:
    """A new empty database each time, cloned from a template that already holds Optuna's
    tables (cloning is much faster than Alembic creating them for every test)."""

    def __init__(self, url: str) -> None:
        self.url = sqlalchemy.engine.make_url(url)
        self.admin = sqlalchemy.create_engine(with_driver(url), isolation_level="AUTOCOMMIT",
                                              poolclass=sqlalchemy.pool.NullPool)
        self.prefix = f"suite_{os.getpid()}"  # the plain and our run share one server
        self.numbers = itertools.count()
        self.template: str | None = None
        self.for_files: dict[str, str] = {}

    def url_of(self, database: str) -> str:
        return self.url.set(database=database).render_as_string(hide_password=False)

    def execute(self, statement: str) -> None:
        with self.admin.connect() as connection:
            connection.exec_driver_sql(statement)

    def create(self) -> str:
        if self.template is None:
            self.template = f"{self.prefix}_template"
            self.execute(f"CREATE DATABASE {self.template}")
            optuna.storages.RDBStorage(with_driver(self.url_of(self.template))).engine.dispose()
        name = f"{self.prefix}_{next(self.numbers)}"
        self.execute(f"CREATE DATABASE {name} TEMPLATE {self.template}")
        return self.url_of(name)

    def drop(self, url: str) -> None:
        # FORCE: a pickled copy of the storage (in another process) may hold a connection.
        database = sqlalchemy.engine.make_url(url).database
        self.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")

    def for_url(self, url: str) -> str:
        """A test's own SQLite URL, as a database of the server: one per file, so that
        storages opened on one file share their data."""
        if url.endswith(":memory:"):
            return self.create()
        if url not in self.for_files:
            self.for_files[url] = self.create()
        return self.for_files[url]


databases = PostgresDatabases(POSTGRES) if POSTGRES else SqliteDatabases()
original_enter = optuna_storages.StorageSupplier.__enter__
original_exit = optuna_storages.StorageSupplier.__exit__


def supplier_enter(self: optuna_storages.StorageSupplier) -> Any:
    if self.storage_specifier not in RDB_SPECIFIERS:
        return original_enter(self)
    self.database_url = databases.create()
    storage = build_storage(self.database_url, self.extra_args)
    self.storage = (optuna.storages._CachedStorage(storage)
                    if self.storage_specifier.startswith("cached") else storage)
    return self.storage


def supplier_exit(self: optuna_storages.StorageSupplier, *exc_info: Any) -> None:
    original_exit(self, *exc_info)  # disposes of the engine
    if getattr(self, "database_url", None) is not None:
        databases.drop(self.database_url)


@contextmanager
def storage_on(url: str = "sqlite:///:memory:") -> Iterator[optuna.storages.RDBStorage]:
    """Stands in for the test modules' own helpers: the storage under test where the test's
    URL points (`for_url`)."""
    database_url = databases.for_url(url)
    storage = build_storage(database_url, {})
    try:
        yield storage
    finally:
        storage.engine.dispose()
        if url.endswith(":memory:"):
            databases.drop(database_url)


@contextmanager
def server_storage() -> Iterator[optuna.storages.RDBStorage]:
    """Stands in for `get_storage` of test_with_server.py (Optuna's tests against a server
    in TEST_DB_URL): one database shared by all its tests and their worker processes."""
    storage = build_storage(os.environ["TEST_DB_URL"], {})
    try:
        yield storage
    finally:
        storage.engine.dispose()


def pytest_configure(config: Any) -> None:
    # In place: the test modules import these lists, and parametrize over them when
    # collected, after this hook.
    optuna_storages.STORAGE_MODES[:] = MODES
    optuna_storages.STORAGE_MODES_HEARTBEAT[:] = MODES
    optuna_storages.StorageSupplier.__enter__ = supplier_enter
    optuna_storages.StorageSupplier.__exit__ = supplier_exit
    # Also read by test_with_server.py's own `get_storage`, should a worker process it
    # starts not be a fork of this one (and so run unpatched).
    os.environ["TEST_DB_URL"] = (databases.create() if POSTGRES else
                                 f"sqlite:///{NamedTemporaryFilePool().tempfile().name}")


HELPERS = {"test_with_server": ("get_storage", server_storage),
           "test_cached_storage": ("create_rdb_storage", storage_on)}


# A study wraps an RDBStorage in the same `_CachedStorage` itself (`optuna.storages.
# get_storage`), so in the study and trial tests the cached modes would run the same code again.
WRAPPED_BY_THE_STUDY = ("/study_tests/", "/trial_tests/")


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    for item in items:
        module = getattr(item, "module", None)
        helper = HELPERS.get(module.__name__.rpartition(".")[2]) if module else None
        if helper is not None:
            if not hasattr(module, helper[0]):  # else it would run Optuna's storage unseen
                raise RuntimeError(f"{module.__name__} has no {helper[0]}() to replace")
            setattr(module, *helper)
    kept = [item for item in items
            if not (any(folder in f"/{item.nodeid}" for folder in WRAPPED_BY_THE_STUDY)
                    and on_cached_storage(item))]
    # Every n-th test from the i-th on: the long heartbeat tests, which mostly sleep, follow
    # each other, and so are spread over the shards that run side by side.
    index, count = map(int, os.environ.get("OPTUNA_SUITE_SHARD", "0/1").split("/"))
    kept = kept[index::count]
    chosen = set(kept)
    config.hook.pytest_deselected(items=[item for item in items if item not in chosen])
    items[:] = kept


def on_cached_storage(item: Any) -> bool:
    callspec = getattr(item, "callspec", None)
    return callspec is not None and any(str(value).startswith("cached_")
                                        for value in callspec.params.values())


def pytest_runtest_logreport(report: Any) -> None:
    """Records each test's outcome: failed if any phase failed, else skipped (or xfailed)
    if a phase skipped, else passed."""
    if report.failed:
        OUTCOMES[report.nodeid] = "failed"
    elif report.skipped and OUTCOMES.get(report.nodeid) != "failed":
        OUTCOMES[report.nodeid] = "xfailed" if hasattr(report, "wasxfail") else "skipped"
    elif report.passed and report.when == "call":
        OUTCOMES.setdefault(report.nodeid, "passed")


def pytest_unconfigure(config: Any) -> None:
    path = os.environ.get("OPTUNA_SUITE_OUTCOMES")
    if path:
        Path(path).write_text(json.dumps(OUTCOMES, indent=0))
