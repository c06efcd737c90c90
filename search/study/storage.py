"""Storage URLs -> Optuna RDB storages that hold up under several worker processes.

SQLite (the default) gets write-ahead logging, a busy timeout and `BEGIN IMMEDIATE`
transactions: Optuna claims a queued trial with `SELECT ... FOR UPDATE`, which SQLite ignores,
so without an immediate write lock two workers could read the same WAITING trial, and a
deferred transaction that later upgrades to a write fails at once with "database is locked"
instead of waiting. PostgreSQL needs none of that; its connections are pre-pinged so a worker
survives a database restart, and carry a connect timeout and TCP keepalives
(`POSTGRES_CONNECT`) so that a server that stops answering is noticed rather than waited on
forever.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from urllib.parse import quote

import optuna
import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import make_url

from objectives.user_error import UserError, first_line
from search.study.heartbeat_settings import HeartbeatSettings
from search.study.patient_storage import PatientRDBStorage

LOG = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///search.db"
# The storage URL from the environment: keeps a password out of `ps` and shell history.
STORAGE_VARIABLE = "SEARCH_STORAGE"
SQLITE_BUSY_TIMEOUT_S = 120
SUPPORTED = ("sqlite", "postgresql")
SCHEMA_RACE = re.compile(r"already exists|duplicate key|unique constraint", re.IGNORECASE)
SCHEMA_RACE_ATTEMPTS = 5


class StorageError(UserError):
    """A storage URL that is malformed, unsupported or unreachable; one line for the user."""


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL, None for other backends or in-memory SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def check_url(url: str) -> None:
    try:
        backend = make_url(url).get_backend_name()
    except sqlalchemy.exc.ArgumentError:
        raise StorageError(f"not a storage URL: {shown(url)!r} (try sqlite:///search.db or "
                           "postgresql://user@host/db)") from None
    except ValueError:  # SQLAlchemy parses the port with int()
        raise StorageError(f"storage URL {shown(url)!r} has a port that is not a number") \
            from None
    if backend not in SUPPORTED:
        raise StorageError(f"unsupported storage {backend!r} in {shown(url)!r}; "
                           f"use one of: {', '.join(SUPPORTED)}")


def with_driver(url: str) -> str:
    """`postgresql://` with the psycopg 3 driver the project installs, whichever default the
    installed SQLAlchemy has (psycopg2 before 2.1); a password with an unencoded "@" is
    read as `parsed_url` reads it (encoded here), so no part of it is taken for the host."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql" or (parsed.host and "@" in parsed.host):
        driver = "postgresql+psycopg" if parsed.drivername == "postgresql" else parsed.drivername
        return parsed_url(url).set(drivername=driver).render_as_string(hide_password=False)
    return url


# Query parameters that carry a password (libpq's password and sslpassword, MySQL's passwd).
SECRET_KEY = re.compile(r"pass(word|wd)", re.IGNORECASE)
MASK = "***"


def parsed_url(url: str) -> sqlalchemy.engine.URL:
    """SQLAlchemy's parse, except that the user info ends at the last "@" before the host:
    SQLAlchemy stops the password at the first one, so `u:p@ss@h` would give password "p" and
    host "ss@h" (an unencoded "@" in a password); here the password is "p@ss", the host "h".
    Raises what `make_url` raises (ArgumentError, ValueError for a bad port)."""
    parsed = make_url(url)
    if parsed.host and "@" in parsed.host:
        rest, host = parsed.host.rsplit("@", 1)
        parsed = parsed.set(host=host, password=f"{parsed.password or ''}@{rest}")
    return parsed


def shown(url: str) -> str:
    """The URL as messages show it: every password form hidden (the user info's password,
    with any "@" in it, and query parameters such as `?password=`), also when it does not
    parse."""
    try:
        parsed = parsed_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        # Unparsable: hide the whole user info (up to the last "@") and password parameters.
        text = re.sub(r"^([\w+.-]+://)?.*@", lambda m: f"{m.group(1) or ''}{MASK}@", url,
                      count=1, flags=re.DOTALL)
        return re.sub(r"([?&;][^=&;]*pass(?:word|wd)[^=&;]*=)[^&;]*", rf"\1{MASK}", text,
                      flags=re.IGNORECASE)
    text = parsed.set(query={}).render_as_string(hide_password=True)
    pairs = [(key, MASK if SECRET_KEY.search(key) else quote(value, safe="/:,"))
             for key, values in parsed.query.items()
             for value in (values if isinstance(values, tuple) else (values,))]
    return text + ("?" + "&".join(f"{key}={value}" for key, value in pairs) if pairs else "")


def secrets_of(url: str) -> list[str]:
    """The clear passwords in `url` (the user info's and those of query parameters)."""
    try:
        parsed = parsed_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return []
    # With the pieces of a password with "@": SQLAlchemy alone takes its tail for the host.
    found = [parsed.password, *parsed.password.split("@")] if parsed.password else []
    for key, values in parsed.query.items():
        if SECRET_KEY.search(key):
            found += [v for v in (values if isinstance(values, tuple) else (values,)) if v]
    return sorted({*found, *(quote(s, safe="") for s in found)} - {""}, key=len, reverse=True)


def without_secrets(text: str, url: str) -> str:
    """`text` (a driver's error message, say) with any password of `url` in it hidden: each
    occurrence not inside a longer word, so that a short password ("p") hides itself, not
    every letter p of the message."""
    for secret in secrets_of(url):
        text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", MASK, text)
    return text


def open_storage(url: str, must_exist: bool = False,
                 heartbeat: HeartbeatSettings | None = None,
                 outage_timeout: float | None = None) -> optuna.storages.RDBStorage:
    """An RDB storage for `url`. With `must_exist`, a missing SQLite file is an error rather
    than a new empty database (read-only commands must not create one). With `heartbeat`,
    running trials record heartbeats and dead workers' trials are failed and retried. With
    `outage_timeout` (workers), every call waits out a database outage of up to that many
    seconds (`search.study.patient_storage`)."""
    check_url(url)
    path = sqlite_path(url)
    if path is not None:
        if must_exist and not path.is_file():
            raise StorageError(f"no database at {path} (from {shown(url)})")
        if not path.parent.is_dir():
            raise StorageError(f"folder {path.parent} of {shown(url)} does not exist")
        engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    else:
        # A worker holds one connection while it trains (its trials' writes), one for the
        # heartbeat thread that all trials of a pack share, and briefly a third (the
        # dashboard's refresh lock beside the refresh's reads). 64 workers fit PostgreSQL's
        # default of 100 connections only with max_connections raised (docker-compose.yml
        # sets 300). Pre-ping survives a database restart.
        engine_kwargs = {"pool_pre_ping": True, "pool_size": 1, "max_overflow": 2,
                         "connect_args": postgres_connect_args(url)}
    for attempt in range(SCHEMA_RACE_ATTEMPTS):
        try:
            # SQLite: one process at a time creates or checks the schema of a file.
            with sqlite_file_lock(path) if path is not None else nullcontext():
                options = {"engine_kwargs": engine_kwargs,
                           **(heartbeat.storage_kwargs() if heartbeat else {})}
                storage = (optuna.storages.RDBStorage(with_driver(url), **options)
                           if outage_timeout is None else
                           PatientRDBStorage(with_driver(url), outage_timeout=outage_timeout,
                                             shown_url=shown(url), **options))
            break
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, RuntimeError) as error:
            reason = without_secrets(first_line(error), url)
            # Two processes creating Optuna's tables in a new database at once: one wins,
            # the other finds them made and only has to open the storage again.
            if SCHEMA_RACE.search(reason) and attempt + 1 < SCHEMA_RACE_ATTEMPTS:
                time.sleep(0.2 * (attempt + 1))
                continue
            raise StorageError(f"cannot open storage {shown(url)}: {reason}") from None
    if path is not None:
        harden_sqlite(storage.engine)
    LOG.debug(f"storage {shown(url)} opened: {type(storage).__name__}, engine "
              f"{without_secrets(str(engine_kwargs), url)}, outage timeout {outage_timeout} s")
    return storage


# libpq settings (PostgreSQL's "Parameter Key Words"), unless the URL sets them:
POSTGRES_CONNECT = {
    # Opening a connection to a server that accepts TCP but never answers (stopped, or its
    # host frozen) fails after 10 s instead of never; a live server answers in milliseconds.
    "connect_timeout": 10,
    # An idle pooled connection whose peer vanished (a partition, a host gone) is found
    # dead within 15 + 3 x 5 = 30 s rather than at the next use, two hours later by default.
    "keepalives": 1, "keepalives_idle": 15, "keepalives_interval": 5, "keepalives_count": 3,
    # Data sent but never acknowledged for 30 s (packets dropped) ends the connection.
    "tcp_user_timeout": 30_000,
}


def postgres_connect_args(url: str) -> dict[str, int]:
    """`POSTGRES_CONNECT` less the settings the URL's query already gives (its own win)."""
    given = set(make_url(url).query)
    return {key: value for key, value in POSTGRES_CONNECT.items() if key not in given}


@contextmanager
def sqlite_file_lock(database: Path) -> Iterator[None]:
    """An exclusive `flock` on a file beside a SQLite database, held for the block.

    SQLite's own locks cannot span Optuna's separate transactions; this serialises whole
    steps (creating the schema, reading then enqueueing) between processes of one host.
    """
    with locked_file(database, "enqueue"):
        yield


# What each lock file serialises, written into it (`locked_file`).
LOCK_PURPOSES = {"enqueue": "create the schema or queue trials",
                 "notes": "rewrite the dashboard's notes"}


def lock_file_path(database: Path, purpose: str) -> Path:
    """The file whose `flock` is the SQLite `database`'s lock for `purpose`: hidden, beside
    the database (`.search.db-enqueue.lock`).

    It is never deleted: a process waiting for the lock has the file open, and were it
    deleted, the next process would lock a new file of the same name while the waiting one
    locks the old one: two holders at once. So it stays, hidden and saying what it is, rather
    than a 0-byte puzzle beside the database. Not the database file itself: closing any
    descriptor of that file drops the POSIX locks SQLite holds on it in this process.
    """
    return database.with_name(f".{database.name}-{purpose}.lock")


@contextmanager
def locked_file(database: Path, purpose: str, wait: bool = True) -> Iterator[bool]:
    """Hold the exclusive `flock` of `lock_file_path(database, purpose)` for the block (True);
    without `wait`, False at once if another process holds it."""
    # Unbuffered: a write that fails (a full disk) leaves nothing to fail again at closing.
    with open(lock_file_path(database, purpose), "ab", buffering=0) as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        if os.fstat(lock_file.fileno()).st_size == 0:  # new; only the holder writes
            explain_lock_file(lock_file, database, purpose)
        yield True  # closing the file releases the lock


def explain_lock_file(lock_file, database: Path, purpose: str) -> None:
    """Say in a new lock file what it is; a courtesy: a full disk leaves it empty, the lock
    works the same."""
    text = (f"search: the flock of this file lets one process at a time "
            f"{LOCK_PURPOSES.get(purpose, purpose)} in {database.name}. Delete it only while "
            "no search command uses that database: one waiting for the lock would get it "
            "while another holds it.\n")
    try:
        lock_file.write(text.encode())
    except OSError:
        pass


def harden_sqlite(engine: sqlalchemy.engine.Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, _record) -> None:
        # Let SQLAlchemy, not the sqlite3 module, issue BEGIN (see `on_begin`).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    # Connections opened while Optuna created the schema predate the hooks.
    engine.dispose()


def default_artifacts_dir(url: str) -> Path:
    """Beside a SQLite file (`search.db` -> `search-artifacts/`), else in the current folder."""
    path = sqlite_path(url)
    if path is None:
        return Path("search-artifacts").resolve()
    return path.resolve().with_name(f"{path.stem}-artifacts")
