"""SIGTERM and Ctrl-C: stop a worker at a safe point instead of killing it mid-write.

The first signal only sets a flag; the training loop checks it after every step and the
worker puts its trial back in the queue (it resumes from its last finished epoch elsewhere
or later). A second signal raises KeyboardInterrupt at once, for a user who will not wait.
"""

from __future__ import annotations

import logging
import signal
import threading

LOG = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequested(Exception):
    """Raised inside a trial when the worker was asked to stop."""


class StopSignals:
    """Within `with StopSignals() as stop:`, `stop.requested` says whether to stop."""

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number."""
        return 128 + int(self.signal) if self.signal is not None else 0

    def raise_if_requested(self) -> None:
        if self.requested:
            raise StopRequested(self.signal.name)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # Python's rule for handlers
            for number in SIGNALS:
                self._previous[number] = signal.signal(number, self._receive)
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _receive(self, number: int, _frame) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signal.Signals(number)
        LOG.warning(f"worker: {self.signal.name} received; stopping after the current step and "
                    "putting the trial back in the queue (again to abort at once)")
