"""A storage that rides out a database outage: every call is retried until the database is
back or a timeout passes.

Optuna's `RDBStorage` turns every SQLAlchemy error into `StorageInternalError` ("invalid data
in the commit ..."), so a worker whose database restarts sees its trial's report fail as if
the trial were at fault. `PatientRDBStorage` tells the two apart: an error whose cause is a
lost or refused connection (SQLAlchemy's OperationalError, InterfaceError, or a DBAPIError that
invalidated its connection) is an outage and is retried with backoff; any other error is
raised at once, as before. Only workers use it: a read-only command should say at once that
the database is away, not wait ten minutes.

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

import functools
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from objectives.user_error import first_line

MAX_BACKOFF_S = 2.0  # short, so that a worker notices within seconds that the database is back
# Reads and writes a worker makes; Alembic's schema calls and session handling are not retried.
RETRIED = ("check_trial_is_updatable", "create_new_study", "create_new_trial", "delete_study",
           "get_all_studies", "get_all_trials", "get_best_trial", "get_n_trials",
           "get_study_directions", "get_study_id_from_name", "get_study_name_from_id",
           "get_study_system_attrs", "get_study_user_attrs", "get_trial",
           "get_trial_id_from_study_id_trial_number", "get_trial_number_from_id",
           "get_trial_param", "get_trial_params", "get_trial_system_attrs",
           "get_trial_user_attrs", "record_heartbeat", "set_study_system_attr",
           "set_study_user_attr", "set_trial_intermediate_value", "set_trial_param",
           "set_trial_system_attr", "set_trial_user_attr")


class StorageOutage(Exception):
    """The database stayed away longer than the worker waits; one line naming the storage.
    Not a trial's failure: the trial stays as the database last saw it (RUNNING, its
    heartbeat going stale), and a worker retries it once the database is back."""


def is_outage(error: BaseException) -> bool:
    """Whether `error` (or what caused it) says the database could not be reached."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return True
        if isinstance(error, sqlalchemy.exc.DBAPIError) and error.connection_invalidated:
            return True
        error = error.__cause__ or error.__context__
    return False


class PatientRDBStorage(RDBStorage):
    """`RDBStorage` whose calls wait out an outage of up to `outage_timeout` seconds, saying
    once that the database is away and once that it is back; past the timeout they raise
    `StorageOutage` naming the storage (`shown_url`, password hidden)."""

    def __init__(self, url: str, *, outage_timeout: float, shown_url: str,
                 **kwargs: Any) -> None:
        self._outage_timeout, self._shown_url = outage_timeout, shown_url
        self._outage_lock = threading.Lock()
        self._away_since: float | None = None  # monotonic time the current outage began
        self._back_at: float | None = None  # monotonic time the last outage ended
        super().__init__(url, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        """What a pickle keeps (Optuna pickles a storage to hand it to another process): no
        lock, and no outage: the process that unpickles it has seen none yet."""
        state = super().__getstate__()
        del state["_outage_lock"]
        state["_away_since"] = state["_back_at"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # a new engine, without the hooks `open_storage` added
        self._outage_lock = threading.Lock()
        if self.engine.dialect.name == "sqlite":
            from search.study.storage import harden_sqlite  # storage imports this module

            harden_sqlite(self.engine)

    def _patiently(self, call: Callable[[], Any]) -> Any:
        delay, started = 0.1, time.monotonic()
        while True:
            try:
                result = call()
            except Exception as error:
                if not is_outage(error):
                    raise
                self._note_away(error)
                if time.monotonic() - started > self._outage_timeout:
                    raise StorageOutage(f"storage {self._shown_url} unreachable for more than "
                                        f"{self._outage_timeout:.0f} s "
                                        f"({first_line(error)})") from None
                time.sleep(delay)
                delay = min(2 * delay, MAX_BACKOFF_S)
                continue
            self._note_back()
            return result

    def _note_away(self, error: BaseException) -> None:
        with self._outage_lock:
            if self._away_since is None:
                self._away_since = time.monotonic()
                print(f"worker: storage {self._shown_url} unreachable "
                      f"({type(error.__cause__ or error).__name__}); training goes on, writes "
                      f"are retried for up to {self._outage_timeout:.0f} s", file=sys.stderr,
                      flush=True)

    def _note_back(self) -> None:
        if self._away_since is None:  # the common case, without taking the lock
            return
        with self._outage_lock:
            if self._away_since is not None:
                away = time.monotonic() - self._away_since
                self._away_since, self._back_at = None, time.monotonic()
                print(f"worker: storage {self._shown_url} reachable again after {away:.0f} s",
                      file=sys.stderr, flush=True)

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

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
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
