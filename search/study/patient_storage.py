"""A storage that rides out a database outage: every call is retried until the database is
back or a timeout passes.

Optuna's `RDBStorage` turns every SQLAlchemy error into `StorageInternalError` ("invalid data
in the commit ..."), so a worker whose database restarts sees its trial's report fail as if
the trial were at fault. `PatientRDBStorage` tells them apart by the driver's own code
(`search.study.storage_errors`): a lost, refused or timed-out connection is an outage and is
retried with backoff; a full database disk stops the worker at once with `StorageDiskFull`
(nothing to wait for); any other error is raised at once, as plain `RDBStorage` does. A
server that stops answering without an error (frozen, or cut off by a partition) is made
into an outage by `search.study.stall_watch`. Only workers use it: a read-only command
should say at once that the database is away, not wait ten minutes.

Retrying is safe for the calls a worker makes: setting attributes, intermediate values and
heartbeats writes the same row again. A state change whose first commit reached the server
before the connection broke is recognised on the retry (the trial already has that state).
A claim (WAITING -> RUNNING) whose reply was lost reads as lost to another worker: that trial
then stays RUNNING without heartbeats and is retried after the grace period, never dropped.

Staleness after an outage. Heartbeats are compared with the database's own clock, so an
outage longer than the grace period makes every live worker's trial look dead the moment the
database returns, before their heartbeat threads (retrying as well) have written again. So
`_get_stale_trial_ids` judges nothing while the storage has been back, for this process or
since the PostgreSQL server started, for less than one heartbeat interval plus the longest
backoff: by then every worker that rode out the outage has written a fresh heartbeat, and
only the trials of workers that really died are stale.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from objectives.user_error import first_line
from search.study.optuna_private import CACHED_BACKEND_CALLS
from search.study.stall_watch import StallWatch
from search.study.storage_errors import StorageFault, classify, storage_fault

LOG = logging.getLogger(__name__)

MAX_BACKOFF_S = 2.0  # short, so that a worker notices within seconds that the database is back
# A call running longer than this is taken for a server that stopped answering (or the
# storage timeout, if shorter). A worker's slowest call is the dashboard refresh's read of
# every trial: ~1 s at 5,000 trials (BENCHMARKS.md, results at scale); an epoch's report is
# a few KiB. So 30 s is far above any answer a live server gives, and short next to the
# default --storage-timeout of 600 s.
STALL_S = 30.0
# Reads and writes a worker makes; Alembic's schema calls and session handling are not retried.
RETRIED = ("check_trial_is_updatable", "create_new_study", "create_new_trial", "delete_study",
           "get_all_studies", "get_all_trials", "get_best_trial", "get_n_trials",
           "get_study_directions", "get_study_id_from_name", "get_study_name_from_id",
           "get_study_system_attrs", "get_study_user_attrs", "get_trial",
           "get_trial_id_from_study_id_trial_number", "get_trial_number_from_id",
           "get_trial_param", "get_trial_params", "get_trial_system_attrs",
           "get_trial_user_attrs", "record_heartbeat", "set_study_system_attr",
           "set_study_user_attr", "set_trial_intermediate_value", "set_trial_param",
           "set_trial_system_attr", "set_trial_user_attr", *CACHED_BACKEND_CALLS)


class StorageOutage(Exception):
    """The database stayed away longer than the worker waits; one line naming the storage.
    Not a trial's failure: the trial stays as the database last saw it (RUNNING, its
    heartbeat going stale), and a worker retries it once the database is back."""


class StorageDiskFull(StorageOutage):
    """The database's disk is full ("database disk full: ..."): the worker stops at once, as
    for an outage; the write that failed was rolled back, so nothing is in a wrong state."""


def is_outage(error: BaseException) -> bool:
    """Whether `error` (or what caused it) says the database could not be reached."""
    return storage_fault(error) is StorageFault.OUTAGE


class PatientRDBStorage(RDBStorage):
    """`RDBStorage` whose calls wait out an outage of up to `outage_timeout` seconds, saying
    once that the database is away and once that it is back; past the timeout they raise
    `StorageOutage` naming the storage (`shown_url`, password hidden). A full database disk
    raises `StorageDiskFull` at once. On PostgreSQL a call that runs longer than `stall_s`
    (at most `outage_timeout`) counts as an outage too: its connections are cut and it is
    retried (`search.study.stall_watch`)."""

    def __init__(self, url: str, *, outage_timeout: float, shown_url: str,
                 stall_s: float = STALL_S, **kwargs: Any) -> None:
        self._outage_timeout, self._shown_url = outage_timeout, shown_url
        # A call stalled this long is an outage (no longer than the timeout, at least 2 s).
        self._stall_s = max(min(stall_s, outage_timeout), 2.0)
        self._away_since: float | None = None  # monotonic time the current outage was noted
        self._first_failed: float = 0.0  # when the call that noted it had started
        self._back_at: float | None = None  # monotonic time the last outage ended
        super().__init__(url, **kwargs)
        self._start_watching()

    def _start_watching(self) -> None:
        self._outage_lock = threading.Lock()
        self._inside = threading.local()  # .depth: retried calls running in this thread
        # SQLite answers or fails by itself (busy_timeout); only a server can stall.
        self._stall_watch = (StallWatch(self.engine, self._stall_s)
                             if self.engine.dialect.name == "postgresql" else None)

    def __getstate__(self) -> dict[str, Any]:
        """What a pickle keeps (Optuna pickles a storage to hand it to another process): no
        lock or watcher, and no outage: the process that unpickles it has seen none yet."""
        state = super().__getstate__()
        for name in ("_outage_lock", "_inside", "_stall_watch"):
            del state[name]
        state["_away_since"] = state["_back_at"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # a new engine, without the hooks `open_storage` added
        self._start_watching()
        if self.engine.dialect.name == "sqlite":
            from search.study.storage import harden_sqlite  # storage imports this module

            harden_sqlite(self.engine)

    def _patiently(self, call: Callable[[], Any]) -> Any:
        depth = getattr(self._inside, "depth", 0)
        if depth:  # inside a retried call (Optuna's writes call check_trial_is_updatable):
            return call()  # the outer call retries the whole, and says away/back once
        self._inside.depth = 1
        try:
            return self._retry(call)
        finally:
            self._inside.depth = 0

    def _retry(self, call: Callable[[], Any]) -> Any:
        delay, started = 0.1, time.monotonic()
        while True:
            attempt_started = time.monotonic()
            watch = self._stall_watch.watching() if self._stall_watch else contextlib.nullcontext()
            try:
                with watch:
                    result = call()
            except Exception as error:
                fault, source = classify(error)
                if fault is StorageFault.DISK_FULL:
                    raise StorageDiskFull(f"database disk full: {first_line(source)} "
                                          f"(storage {self._shown_url})") from None
                if fault is not StorageFault.OUTAGE:
                    raise
                self._note_away(source, attempt_started)
                if time.monotonic() - started > self._outage_timeout:
                    raise StorageOutage(f"storage {self._shown_url} unreachable for more than "
                                        f"{self._outage_timeout:.0f} s "
                                        f"({first_line(source)})") from None
                time.sleep(delay)
                delay = min(2 * delay, MAX_BACKOFF_S)
                continue
            self._note_back(attempt_started)
            return result

    def _note_away(self, error: BaseException, attempt_started: float) -> None:
        with self._outage_lock:
            if self._away_since is None:
                self._away_since, self._first_failed = time.monotonic(), attempt_started
                LOG.warning(f"worker: storage {self._shown_url} unreachable "
                            f"({type(error).__name__}: {first_line(error)}); training goes on, "
                            f"writes are retried for up to {self._outage_timeout:.0f} s")

    def _note_back(self, attempt_started: float) -> None:
        """The outage is over when a call that began after it began succeeds: one that was
        already under way (a read answered just before the server went) proves nothing, and
        would make the away/back lines flap."""
        if self._away_since is None:  # the common case, without taking the lock
            return
        with self._outage_lock:
            if self._away_since is not None and attempt_started > self._away_since:
                away = time.monotonic() - self._first_failed  # a stall counts from its start
                self._away_since, self._back_at = None, time.monotonic()
                LOG.warning(f"worker: storage {self._shown_url} reachable again after {away:.0f} s")

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Any = None) -> bool:
        attempts = 0

        def call() -> bool:
            nonlocal attempts
            attempts += 1
            try:
                return RDBStorage.set_trial_state_values(self, trial_id, state, values)
            except optuna.exceptions.UpdateFinishedTrialError:
                # A retry after a commit that reached the server before its reply was lost.
                if attempts > 1 and RDBStorage.get_trial(self, trial_id).state == state:
                    return True
                raise

        return self._patiently(call)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:  # STALE_TRIALS_HOOK
        if self._recently_back():
            return []
        return self._patiently(lambda: RDBStorage._get_stale_trial_ids(self, study_id))

    def _recently_back(self) -> bool:
        """Whether the storage came back too recently for heartbeats to be judged (see the
        module doc)."""
        settle = (self.heartbeat_interval or 0) + MAX_BACKOFF_S + 1
        if self._back_at is not None and time.monotonic() - self._back_at < settle:
            return True
        if self.engine.dialect.name != "postgresql":
            return False
        up = self._patiently(lambda: self._seconds_since_server_start())
        return up < settle

    def _seconds_since_server_start(self) -> float:
        with self.engine.connect() as connection:
            return connection.execute(sqlalchemy.text(
                "SELECT EXTRACT(EPOCH FROM now() - pg_postmaster_start_time())")).scalar()


def _retried(name: str) -> Callable[..., Any]:
    method = getattr(RDBStorage, name)

    @functools.wraps(method)
    def call(self: PatientRDBStorage, *args: Any, **kwargs: Any) -> Any:
        return self._patiently(lambda: method(self, *args, **kwargs))
    return call


for _name in RETRIED:
    setattr(PatientRDBStorage, _name, _retried(_name))
