"""Whether a worker draws a progress bar: only for a person watching, who wants INFO lines."""

from __future__ import annotations

import logging
import sys


def progress_wanted(logger: logging.Logger) -> bool:
    """A terminal on stderr (a log file or a pipe gets the per-epoch lines instead), and INFO
    lines not turned off by `-q`."""
    return sys.stderr.isatty() and logger.isEnabledFor(logging.INFO)
