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
import signal
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

    def __init__(self, binaries: Path, data: Path | None = None) -> None:
        # Its own folder right under /tmp: pytest's temp folders are private to root, and the
        # server may run as `postgres`.
        self.folder, self.binaries = Path(tempfile.mkdtemp(prefix="search-pg-")), binaries
        self.data = data or self.folder / "data"
        self.wal: Path | None = None  # the write-ahead log's folder, when not in the data
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
                 "--auth-host=scram-sha-256", f"--pwfile={password_file}", "-E", "UTF8",
                 *([f"--waldir={self.wal}"] if self.wal else []))
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

    def server_processes(self) -> list:
        """The postmaster and every backend and helper process it started."""
        import psutil

        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        postmaster = psutil.Process(pid)
        return [postmaster, *postmaster.children(recursive=True)]

    def freeze(self) -> None:
        """SIGSTOP the whole server: it keeps its sockets (the kernel still accepts and
        acknowledges) but answers nothing: a hung database, not a stopped one."""
        for process in self.server_processes():
            with contextlib.suppress(Exception):
                process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        for process in self.server_processes():
            with contextlib.suppress(Exception):
                process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.thaw()  # pg_ctl cannot stop a frozen server
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


class SmallDiskUnavailable(Exception):
    """No tmpfs can be mounted here (not root, or no mount permission in a container)."""


@contextlib.contextmanager
def cluster_on_small_disk(megabytes: int) -> Iterator[tuple[PostgresCluster, Path]]:
    """A started cluster whose data folder is a tmpfs of `megabytes` MiB, and that folder: a
    database disk that a test can fill. The write-ahead log lives elsewhere, so a full disk
    fails a table's write (SQLSTATE 53100) rather than the log's, which would stop the server.
    Raises SmallDiskUnavailable where no tmpfs can be mounted."""
    binaries = server_binaries()
    if binaries is None:
        raise SmallDiskUnavailable("no PostgreSQL server binaries")
    cluster = PostgresCluster(binaries)
    mount = cluster.folder / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs",
                           str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(cluster.folder, ignore_errors=True)
        raise SmallDiskUnavailable(done.stderr.strip() or "mount failed")
    try:
        cluster.data, cluster.wal = mount / "data", cluster.folder / "wal"
        if cluster.as_postgres:
            shutil.chown(mount, "postgres", "postgres")
        cluster.url = cluster.start()
        try:
            yield cluster, mount
        finally:
            with contextlib.suppress(Exception):
                cluster.thaw()
            with contextlib.suppress(Exception):
                cluster.run("pg_ctl", "-D", str(cluster.data), "-m", "immediate", "-w", "stop")
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
        shutil.rmtree(cluster.folder, ignore_errors=True)


def fill_disk(folder: Path) -> None:
    """Fill the file system of `folder` to the last byte (files `filler*`)."""
    for name, chunk in (("filler", 1 << 20), ("filler-small", 4096)):
        with contextlib.suppress(OSError), open(folder / name, "wb") as filler:
            while True:
                filler.write(b"\0" * chunk)
                filler.flush()


def free_disk(folder: Path) -> None:
    for filler in folder.glob("filler*"):
        filler.unlink()
