"""The heartbeat thread of running trials (the settings live in the study:
`search.study.heartbeat_settings`)."""

from __future__ import annotations

import logging
import threading

import optuna

LOG = logging.getLogger(__name__)


class Heartbeat:
    """Records the heartbeat of each of `trial_ids` now and then every `interval` seconds
    until the block ends.

    One thread for all trials of a pack: heartbeats share one database connection, so a pack
    of K needs no more connections than a single trial (a thread each would need K + 1, and
    exhaust the worker's small pool when a stalled database holds them all). A heartbeat that
    cannot be written (the database restarting) is retried at the next interval; only a gap
    longer than the grace period makes a trial count as dead.
    """

    def __init__(self, storage: optuna.storages.RDBStorage, trial_ids: list[int],
                 interval: float):
        self._storage, self._trial_ids, self._interval = storage, list(trial_ids), interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
        self._warned = False

    def __enter__(self) -> Heartbeat:
        for trial_id in self._trial_ids:
            self._storage.record_heartbeat(trial_id)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            for trial_id in self._trial_ids:
                if self._stop.is_set():
                    return
                try:
                    self._storage.record_heartbeat(trial_id)
                except Exception as error:  # the database may come back before the grace ends
                    if not self._warned:
                        LOG.warning(f"worker: heartbeat of trial id {trial_id} failed, retrying "
                                    f"({type(error).__name__})")
                        self._warned = True
