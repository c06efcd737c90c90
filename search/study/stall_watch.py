"""Turns a database that stopped answering into an error, so that a worker can wait it out
like any other outage instead of hanging silently.

A frozen server (SIGSTOP, a hung host) or a partition that drops packets raises nothing: the
client's kernel still has the TCP connection, the server's kernel may even acknowledge what
is sent, and libpq waits for a reply forever. PostgreSQL's own `statement_timeout` cannot
help (the server that would enforce it is the one not running), and TCP keepalives are
answered by the server's kernel while its processes are stopped. So the client watches: every
storage call registers while it runs, and when one has run longer than `stall_s`, every
connection of the engine has its socket shut down. The blocked call then fails with the
driver's "server closed the connection unexpectedly" (an outage, see `storage_errors`), its
connection is invalidated, and the retry opens a new one, bounded by `connect_timeout`.

All connections go, not only the stalled call's: a stall means the server does not answer,
so the others would hang next; each is opened again when next used.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import weakref
from collections.abc import Iterator

import sqlalchemy
from sqlalchemy import event


class StallWatch:
    """Cuts the connections of `engine` when a call registered with `watching()` has run for
    more than `stall_s` seconds; at most once per `stall_s` for the same calls."""

    def __init__(self, engine: sqlalchemy.engine.Engine, stall_s: float) -> None:
        self.stall_s = stall_s
        self.cuts = 0  # how many times connections were cut (tests read it)
        self._connections: weakref.WeakSet = weakref.WeakSet()
        self._calls: dict[int, float] = {}  # call token -> when it started (or was last cut)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        event.listen(engine, "connect", self._remember)
        engine.dispose()  # connections opened before the hook (the schema check) are unknown

    def _remember(self, dbapi_connection, _record) -> None:
        self._connections.add(dbapi_connection)

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        token = object()
        with self._lock:
            self._calls[id(token)] = time.monotonic()
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="stall-watch",
                                                daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                del self._calls[id(token)]

    def _watch(self) -> None:
        tick = min(1.0, self.stall_s / 4)
        while True:
            time.sleep(tick)
            now = time.monotonic()
            with self._lock:
                stalled = [key for key, since in self._calls.items() if now - since > self.stall_s]
                for key in stalled:
                    self._calls[key] = now  # cut again only after another stall_s
            if stalled:
                self.cut_connections()

    def cut_connections(self) -> None:
        """Shut down the socket of every open connection (not close: the driver still owns
        the descriptor, and closing it under a blocked call could hand the number to another
        file). A `dup` is shut down instead, which acts on the one shared socket."""
        self.cuts += 1
        for connection in list(self._connections):
            try:
                descriptor = os.dup(connection.fileno())
            except Exception:  # closed meanwhile, or a driver without a socket (SQLite)
                continue
            try:
                shared = socket.socket(fileno=descriptor)
            except OSError:  # not a socket after all
                os.close(descriptor)
                continue
            with contextlib.suppress(OSError), shared:
                shared.shutdown(socket.SHUT_RDWR)
