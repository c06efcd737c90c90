"""A study's queue as workers see it: claim the next waiting trial, put an interrupted one
back, and wait while other workers' trials may still die and come back as retries.

Trial states, for one worker:

    WAITING --claim_next_trial--> RUNNING --(trained)--> COMPLETE | PRUNED | FAIL
                                  RUNNING --requeue_trial (SIGTERM, Ctrl-C)--> WAITING
                                  RUNNING --(no heartbeat for the grace period)--> FAIL,
                                            and a WAITING copy with the same params

Claiming is Optuna's own compare-and-set (`set_trial_state_values(RUNNING)` succeeds for one
process only), done here rather than through `study.ask()` because `ask()` invents a new
sampled trial when the queue is empty, and a grid worker must never do that. This module
needs no torch, so that load benchmarks can run many workers cheaply.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

FIRST_POLL_SECONDS = 0.5
# The longest pause between two looks at the queue while other workers' trials run: short
# enough that waiting workers end soon after the last trial, 64 of them still a light load.
MAX_POLL_SECONDS = 5.0


def has_heartbeats(storage: optuna.storages.BaseStorage) -> bool:
    """Whether the storage was opened with heartbeats (only RDB storages have them)."""
    return getattr(storage, "get_heartbeat_interval", lambda: None)() is not None


def claim_next_trial(storage: optuna.storages.BaseStorage, study: optuna.Study
                     ) -> FrozenTrial | None:
    """Move the oldest WAITING trial to RUNNING for this process; None when none is left.

    The queue is read through the study (which registers the trials in Optuna's storage
    cache, needed to set their params later); the claim goes to the database itself.
    """
    heartbeats = has_heartbeats(storage)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if heartbeats:
                # Before the claim, so that no trial is ever RUNNING without a fresh heartbeat
                # (one left over from an earlier run would make it look dead at once); a
                # waiting trial's heartbeat is harmless when another worker wins the claim.
                storage.record_heartbeat(trial._trial_id)
            if storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING):
                return storage.get_trial(trial._trial_id)
        except UpdateFinishedTrialError:
            continue  # another process finished it between our read and our claim
    return None


def requeue_trial(storage: optuna.storages.BaseStorage, trial_id: int) -> bool:
    """Put a RUNNING trial back in the queue (its params, reports and checkpoint stay)."""
    try:
        return storage.set_trial_state_values(trial_id, state=TrialState.WAITING)
    except UpdateFinishedTrialError:
        return False  # failed meanwhile by another worker that thought this one dead


def running_trials(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def next_trial(storage: optuna.storages.BaseStorage, study: optuna.Study, poll_seconds: float,
               stop_requested: Callable[[], bool],
               on_wait: Callable[[int], None] = lambda running: None) -> FrozenTrial | None:
    """Claim the next trial, first failing (and so re-queueing) trials of dead workers.

    When nothing waits but other workers' trials still run, poll: one of them may die and
    come back as a retry, which some live worker must run. Polls start at half a second (the
    last trials of a run end soon) and back off to `poll_seconds`. None once nothing waits
    or runs, or when a stop is requested.
    """
    pause = min(FIRST_POLL_SECONDS, poll_seconds)
    announced = False
    adopted: set[int] = set()
    while not stop_requested():
        fail_stale_trials(study)
        trial = claim_next_trial(storage, study)
        if trial is not None:
            return trial
        running = running_trials(study)
        if not running:
            return None
        adopt_heartbeats(storage, running, adopted)
        if not announced:
            on_wait(len(running))
            announced = True
        deadline = time.monotonic() + pause
        while time.monotonic() < deadline and not stop_requested():
            time.sleep(min(0.1, pause))
        pause = min(2 * pause, poll_seconds)
    return None


def adopt_heartbeats(storage: optuna.storages.BaseStorage, running: list[FrozenTrial],
                     adopted: set[int]) -> None:
    """Record one heartbeat for each running trial this worker has not seen yet.

    A trial claimed without heartbeats (by an older version of this tool, or by plain Optuna)
    has none and would never count as dead, so waiting for it could last forever. One beat
    gives it a clock: it is failed and retried after the grace period unless its own worker
    keeps beating, for which the extra beat is harmless (it delays noticing a trial that just
    died by at most one grace period).
    """
    if not has_heartbeats(storage):
        return
    for trial in running:
        if trial._trial_id not in adopted:
            storage.record_heartbeat(trial._trial_id)
            adopted.add(trial._trial_id)
