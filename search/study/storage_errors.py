"""Which database errors are an outage, which a full disk, and which neither: by the driver's
own code (PostgreSQL's SQLSTATE, SQLite's result code), not by the exception's class.

SQLAlchemy calls nearly every driver error an `OperationalError`: a refused connection, but
also PostgreSQL's "could not extend file: No space left on device" and SQLite's "no such
table" or "attempt to write a readonly database". A worker waits out the first kind (the
database comes back by itself), must stop at once on the second (waiting fills nothing; the
user has to act) and must raise the others at once, as plain `RDBStorage` does.
"""

from __future__ import annotations

import enum
import sqlite3

import sqlalchemy


class StorageFault(enum.Enum):
    OUTAGE = "outage"  # the database could not be reached, or stopped answering
    DISK_FULL = "disk full"  # the database's disk (or its quota) is full


# SQLSTATE classes and codes (PostgreSQL's appendix A) that say the server is away or busy.
OUTAGE_CLASSES = ("08",)  # connection exception: refused, lost, failed to establish
OUTAGE_CODES = {
    "57P01",  # admin_shutdown: `pg_ctl stop -m fast` ended the session
    "57P02",  # crash_shutdown: another backend crashed, the server restarts
    "57P03",  # cannot_connect_now: the server is starting up or shutting down
    "53300",  # too_many_connections: a connection slot frees when a worker leaves
    "53200",  # out_of_memory: the server's, passing
    "57014",  # query_canceled: a statement cancelled by the server or an operator
}
DISK_FULL_CODES = {"53100"}  # disk_full
# SQLite's primary result codes (the low byte of the extended code).
SQLITE_OUTAGE = {
    5,   # SQLITE_BUSY: another process holds the lock past busy_timeout
    6,   # SQLITE_LOCKED
    10,  # SQLITE_IOERR: the file system failed a read or write (a network mount away)
    14,  # SQLITE_CANTOPEN: the file or its folder cannot be opened right now
    15,  # SQLITE_PROTOCOL: a WAL lock race
}
SQLITE_FULL = 13


def storage_fault(error: BaseException) -> StorageFault | None:
    """What `error` (or an error that caused it) says about the database; None: an error of
    the call itself, to be raised as it is."""
    return classify(error)[0]


def classify(error: BaseException) -> tuple[StorageFault | None, BaseException]:
    """`storage_fault(error)` and the error that says so: the driver's own where there is one
    (its message names the cause, e.g. "No space left on device"; Optuna's wrapper says only
    "invalid data in the commit"), else `error`."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        fault = _own_fault(current)
        if fault is not None:
            source = current.orig if isinstance(current, sqlalchemy.exc.DBAPIError) else current
            return fault, source if source is not None else current
        current = current.__cause__ or current.__context__
    return None, error


def _own_fault(error: BaseException) -> StorageFault | None:
    if isinstance(error, sqlalchemy.exc.TimeoutError):
        # No pooled connection freed in time: every one is stuck on the unresponsive server.
        return StorageFault.OUTAGE
    if isinstance(error, sqlalchemy.exc.DBAPIError):
        if error.connection_invalidated:
            return StorageFault.OUTAGE
        return _driver_fault(error.orig)
    return _driver_fault(error)


def _driver_fault(error: BaseException | None) -> StorageFault | None:
    if isinstance(error, sqlite3.Error):
        code = getattr(error, "sqlite_errorcode", None)
        if code is None:
            return None
        if code & 0xFF == SQLITE_FULL:
            return StorageFault.DISK_FULL
        return StorageFault.OUTAGE if code & 0xFF in SQLITE_OUTAGE else None
    module = type(error).__module__ or ""
    if not module.startswith("psycopg"):
        return None
    sqlstate = getattr(error, "sqlstate", None)
    if sqlstate is None:
        # libpq's own errors carry no SQLSTATE: refused or timed-out connections, a socket
        # closed under a statement ("server closed the connection unexpectedly").
        return StorageFault.OUTAGE if _is_connection_error(error) else None
    if sqlstate in DISK_FULL_CODES:
        return StorageFault.DISK_FULL
    if sqlstate[:2] in OUTAGE_CLASSES or sqlstate in OUTAGE_CODES:
        return StorageFault.OUTAGE
    return None


def _is_connection_error(error: BaseException) -> bool:
    import psycopg

    return isinstance(error, (psycopg.OperationalError, psycopg.InterfaceError))
