"""Where the library's log lines go: one stderr handler, set up by the CLI for one command.

Library modules only call `logging.getLogger(__name__)`; nothing below `search.cli` picks a
stream or a format, so a program that imports `search` or `objectives` keeps its own logging.
By default a line reads exactly as the bare message (what users and scripts have seen so far);
`-v` adds the time and the module and shows DEBUG lines, `-q` keeps warnings and errors only
(and so turns the workers' progress bars off: `search.worker.progress_bar`).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

from tqdm import tqdm

# The two packages whose loggers the CLI shows; everything else (Optuna, urllib3, ...) keeps
# its own settings (Optuna's are set by `search.cli.commands.quiet_optuna`).
PACKAGES = ("search", "objectives")
LEVELS = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}
VERBOSE_FORMAT = "%(asctime)s %(name)s: %(message)s"


class ProgressAwareStderr(logging.Handler):
    """Writes each line with `tqdm.write`, so that a live progress bar is redrawn below it
    instead of being broken, to the `sys.stderr` of the moment. tqdm's own
    `logging_redirect_tqdm` fixes the stream when it is entered, and a stream replaced since
    (pytest's capture between a test's phases) would then be a closed file."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # The line and its newline in one write: workers share the stream, and a separate
            # write of the newline (unbuffered under PYTHONUNBUFFERED) lets their lines run
            # into each other.
            tqdm.write(self.format(record) + "\n", file=sys.stderr, end="")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging's contract: report, never raise
            self.handleError(record)


@contextlib.contextmanager
def console_logging(verbosity: int) -> Iterator[None]:
    """Show the packages' log lines on stderr while the block runs: -1 quiet, 0 normal, 1
    verbose. The loggers are restored afterwards."""
    handler = ProgressAwareStderr()
    handler.setFormatter(logging.Formatter(VERBOSE_FORMAT if verbosity > 0 else "%(message)s"))
    loggers = [logging.getLogger(name) for name in PACKAGES]
    # Handlers are swapped, not added: a nested call (a test's `main` inside a test that shows
    # the log itself) must not print each line twice.
    saved = [(logger.handlers, logger.level, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.handlers = [handler]
        logger.setLevel(LEVELS[max(-1, min(1, verbosity))])
        logger.propagate = False  # a root handler set up elsewhere would print each line twice
    try:
        yield
    finally:
        for logger, (handlers, level, propagate) in zip(loggers, saved, strict=True):
            logger.handlers, logger.level, logger.propagate = handlers, level, propagate
