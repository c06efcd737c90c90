"""Faults of the worker's environment, as opposed to faults of a trial.

A full disk, an unwritable artifact store or a device out of memory says nothing about the
trial's hyperparameters: the trial goes back to the queue (WAITING, with its last good
checkpoint) and the worker stops with a one-line reason and a non-zero exit, rather than
burning the rest of the queue on the same fault.
"""

from __future__ import annotations

import errno
import os

from objectives.user_error import first_line

# Exit code of a worker stopped by its environment: EX_TEMPFAIL from sysexits.h ("try again
# later": the trials are intact, the host needs attention).
EXIT_ENVIRONMENT = 75


class WorkerEnvironmentError(Exception):
    """This worker cannot run trials here; the trial in hand is already back in the queue.
    The message is one line naming the cause (e.g. "artifact store /data/a: disk full")."""


# Errors of the host's file systems wherever they happen (the artifact store, a temporary
# folder), and permission errors only on the artifact store (elsewhere they are the trial's).
DISK_ERRNOS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded",
               errno.EROFS: "read-only file system"}
PERMISSION_ERRNOS = {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted"}


def is_out_of_memory(error: BaseException) -> bool:
    """A device (or host) out of memory: torch.cuda.OutOfMemoryError, or the RuntimeError other
    backends raise; recognised by name so that this module needs no torch."""
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def environment_fault(error: BaseException, store_folder: str | os.PathLike | None = None,
                      in_store: bool = False) -> str | None:
    """The one-line reason why `error` is a fault of the worker's environment rather than of
    the trial, or None when it is the trial's own.

    `store_folder` is the artifact store's folder; `in_store` says the error came from writing
    to the store (a full disk's error often names no file).
    """
    if is_out_of_memory(error):
        return f"out of memory ({type(error).__name__}: {first_line(error)})"
    if not isinstance(error, OSError) or error.errno is None:
        return None
    filename = getattr(error, "filename", None)
    on_store = in_store or (store_folder is not None and filename is not None
                            and is_inside(filename, store_folder))
    if error.errno in DISK_ERRNOS:
        cause = DISK_ERRNOS[error.errno]
    elif error.errno in PERMISSION_ERRNOS and on_store:
        cause = PERMISSION_ERRNOS[error.errno]
    else:
        return None
    place = (f"artifact store {store_folder}" if on_store and store_folder is not None
             else str(filename) if filename is not None else "file system")
    return f"{place}: {cause} ({errno.errorcode.get(error.errno, error.errno)}: " \
           f"{error.strerror or first_line(error)})"


def is_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    try:
        folder = os.path.abspath(folder)
        return os.path.commonpath([folder, os.path.abspath(path)]) == folder
    except (TypeError, ValueError):  # bytes against str, or another drive
        return False

