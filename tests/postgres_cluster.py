"""A throwaway PostgreSQL cluster for tests: initdb + pg_ctl on a free port in a temp folder.

The server binaries come from Debian's `postgresql` package (`.ci/run` installs it where
missing). PostgreSQL refuses to run as root, so under root the cluster belongs to the
`postgres` system user that the package creates.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

USER = "search"
PASSWORD = "not-in-ps-1"  # TCP logins need it (scram-sha-256), as on a real server


def server_binaries() -> Path | None:
    """The newest installed server's bin folder (with initdb and pg_ctl), if any."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresCluster:
    """`start()` gives a URL to an empty database; `stop()` ends the server."""

    def __init__(self, binaries: Path) -> None:
        # Its own folder right under /tmp: pytest's temp folders are private to root, and the
        # server may run as `postgres`.
        self.folder, self.binaries = Path(tempfile.mkdtemp(prefix="search-pg-")), binaries
        self.data = self.folder / "data"
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0

    def run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self.as_postgres else []
        subprocess.run([*prefix, str(self.binaries / command[0]), *command[1:]], check=True,
                       capture_output=True, text=True, timeout=120)

    def start(self) -> str:
        """Start the server; the URL (with the password) of its empty `search` database."""
        if self.as_postgres:
            shutil.chown(self.folder, "postgres", "postgres")
        password_file = self.folder / "password"
        password_file.write_text(PASSWORD + "\n")
        if self.as_postgres:
            shutil.chown(password_file, "postgres", "postgres")
        # The test process itself logs in over TCP with a password; only the set-up below
        # uses the trusted socket in the cluster's folder.
        self.run("initdb", "-D", str(self.data), "-U", USER, "--auth-local=trust",
                 "--auth-host=scram-sha-256", f"--pwfile={password_file}", "-E", "UTF8")
        password_file.unlink()
        self.start_server()
        self.run("createdb", "-h", str(self.folder), "-p", str(self.port), "-U", USER, "search")
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/search"

    def start_server(self) -> None:
        """Start the server on the cluster's data (again, after `stop_server`)."""
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "server.log"), "-w",
                 "-o", f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
                       "-c max_connections=300 -c fsync=off", "start")

    def stop_server(self, mode: str = "fast") -> None:
        """Stop the server, keeping its data: an outage the tests can end with start_server."""
        self.run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart_server(self, mode: str = "fast") -> None:
        # Not `pg_ctl restart`: without -l the new server would log into our pipes.
        self.stop_server(mode)
        self.start_server()

    def stop(self) -> None:
        try:
            self.run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def running_cluster() -> Iterator[PostgresCluster]:
    """A started cluster (its URL in `.url`), stopped afterwards; the test skips, saying why,
    where no PostgreSQL server is installed."""
    import pytest

    binaries = server_binaries()
    if binaries is None:
        pytest.skip("no PostgreSQL server binaries (Debian package postgresql; .ci/run "
                    "installs it)")
    cluster = PostgresCluster(binaries)
    cluster.url = cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
