"""One enqueuer per study at a time, across processes and hosts (and, by the same means, one
writer of the study's dashboard notes: `study_lock(..., purpose="notes")`).

Enqueueing reads what the study holds and then adds what is missing; two `search grid` (or
`search optuna` top-ups) running at once on two hosts would both see a point missing and both
queue it. Optuna's `enqueue_trial(skip_if_exists=True)` has the same gap. The read and the
writes therefore run under a lock that lives where the study lives:

- PostgreSQL: a session-level advisory lock keyed by the study name, held on a connection of
  its own (released by the server if the process dies);
- SQLite: an exclusive `flock` on a file beside the database (SQLite is one host anyway;
  SQLite's own locks cannot be held across Optuna's separate transactions).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import optuna
import sqlalchemy

from search.study.storage import sqlite_file_lock, sqlite_path


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
    """Hold the study's lock for `purpose` for the block: an advisory lock of its own on
    PostgreSQL; on SQLite the one file lock of the database (its holders are brief).
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
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"),
                                   {"key": key})
                connection.commit()
        return
    path = sqlite_path(url)
    if path is None:  # in-memory SQLite: one process
        yield
        return
    with sqlite_file_lock(path):
        yield
