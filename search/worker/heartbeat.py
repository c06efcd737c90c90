"""The heartbeat thread of a running trial (the settings live in the study:
`search.study.heartbeat_settings`)."""

from __future__ import annotations

import sys
import threading

import optuna


class Heartbeat:
    """Records a trial's heartbeat now and then every `interval` seconds until the block ends.

    A heartbeat that cannot be written (the database restarting) is retried at the next
    interval; only a gap longer than the grace period makes the trial count as dead.
    """

    def __init__(self, storage: optuna.storages.RDBStorage, trial_id: int, interval: float):
        self._storage, self._trial_id, self._interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
        self._warned = False

    def __enter__(self) -> Heartbeat:
        self._storage.record_heartbeat(self._trial_id)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._storage.record_heartbeat(self._trial_id)
            except Exception as error:  # the database may come back before the grace ends
                if not self._warned:
                    print(f"worker: heartbeat of trial id {self._trial_id} failed, retrying "
                          f"({type(error).__name__})", file=sys.stderr, flush=True)
                    self._warned = True
