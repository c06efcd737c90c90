"""One enqueuer per study at a time, across processes and hosts (and, by the same means, one
writer of the study's dashboard notes: `study_lock(..., purpose="notes")`).

Enqueueing reads what the study holds and then adds what is missing; two `search grid` (or
`search optuna` top-ups) running at once on two hosts would both see a point missing and both
queue it. Optuna's `enqueue_trial(skip_if_exists=True)` has the same gap. The read and the
writes therefore run under a lock that lives where the study lives:

- PostgreSQL: a session-level advisory lock keyed by the study name, held on a connection of
  its own (released by the server if the process dies);
- SQLite: an exclusive `flock` on a hidden file beside the database (SQLite is one host
  anyway; SQLite's own locks cannot be held across Optuna's separate transactions;
  `search.study.storage.lock_file_path` says why the file stays): for enqueueing the one
  file that also guards creating the schema; for another purpose a file of its own, so that
  a refresh of the notes never stalls an enqueuer, nor an enqueuer a refresh.

`try_study_lock` takes the same lock only if it is free at once: a worker that finished a
trial refreshes the dashboard when no other one is refreshing it, and otherwise goes on
training (`search.results.dashboard_notes`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import optuna
import sqlalchemy

from search.study.storage import locked_file, sqlite_path


def advisory_key(study_name: str, purpose: str = "enqueue") -> int:
    """A stable signed 64-bit key (PostgreSQL's bigint) for the study name and purpose."""
    digest = hashlib.sha256(f"search {purpose} {study_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def enqueue_lock(storage: optuna.storages.RDBStorage, url: str, study_name: str):
    """Hold the study's enqueue lock for the block (waits while another process holds it)."""
    return study_lock(storage, url, study_name, "enqueue")


@contextmanager
def study_lock(storage: optuna.storages.RDBStorage, url: str, study_name: str,
               purpose: str) -> Iterator[None]:
    """Hold the study's lock for `purpose` for the block (waiting while another process
    holds it): an advisory lock of its own on PostgreSQL; on SQLite a file lock of its own.
    `storage` may be a study's own (Optuna wraps an RDBStorage in a cache)."""
    engine = getattr(storage, "_backend", storage).engine
    if engine.dialect.name == "postgresql":
        key = advisory_key(study_name, purpose)
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            connection.commit()
            try:
                yield
            finally:
                unlock(connection, key)
        return
    path = sqlite_path(url)
    if path is None:  # in-memory SQLite: one process
        yield
        return
    with locked_file(path, purpose):
        yield


@contextmanager
def try_study_lock(storage: optuna.storages.RDBStorage, url: str, study_name: str,
                   purpose: str) -> Iterator[bool]:
    """The study's lock for `purpose` (as `study_lock`), taken only if it is free now: the
    block gets True holding it, False without it (another process holds it; nothing was
    waited for). PostgreSQL: `pg_try_advisory_lock`; SQLite: `flock` with LOCK_NB."""
    engine = getattr(storage, "_backend", storage).engine
    if engine.dialect.name == "postgresql":
        key = advisory_key(study_name, purpose)
        with engine.connect() as connection:
            held = connection.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:key)"),
                                      {"key": key}).scalar()
            connection.commit()
            if held:
                try:
                    yield True
                finally:
                    unlock(connection, key)
                return
        yield False  # its connection back in the pool first
        return
    path = sqlite_path(url)
    if path is None:  # in-memory SQLite: one process
        yield True
        return
    with locked_file(path, purpose, wait=False) as held:
        yield held


def unlock(connection: sqlalchemy.Connection, key: int) -> None:
    connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    connection.commit()
