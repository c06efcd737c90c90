"""A study's queue as workers see it: claim the next waiting trial, put an interrupted one
back, and wait while other workers' trials may still die and come back as retries.

Trial states, for one worker:

    WAITING --claim_next_trial / claim_waiting--> RUNNING --(trained)--> COMPLETE | PRUNED | FAIL
                                  RUNNING --requeue_trial (SIGTERM, Ctrl-C)--> WAITING
                                  RUNNING --(no heartbeat for the grace period)--> FAIL,
                                            and a WAITING copy with the same params
                                  RUNNING --(environment fault: disk full, ...)--> WAITING

A retry inherits its dead trial's checkpoint pointer; once the last try of a trial failed,
`discard_abandoned_checkpoints` removes the checkpoint no trial will resume from.

Claiming is Optuna's own compare-and-set (`set_trial_state_values(RUNNING)` succeeds for one
process only), done here rather than through `study.ask()` because `ask()` invents a new
sampled trial when the queue is empty, and a grid worker must never do that. This module
needs no torch, so that load benchmarks can run many workers cheaply.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import optuna
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

from search.study.contained_store import is_checkpoint_id
from search.study.optuna_private import study_id, trial_id
from search.study.trials import is_last_try, retried_as, study_max_retries

LOG = logging.getLogger(__name__)

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
    claimed = claim_waiting(storage, study, limit=1)
    return claimed[0] if claimed else None


def claim_waiting(storage: optuna.storages.BaseStorage, study: optuna.Study, limit: int,
                  fits: Callable[[FrozenTrial], bool] = lambda trial: True
                  ) -> list[FrozenTrial]:
    """Move up to `limit` WAITING trials that `fits` to RUNNING for this process, oldest
    first (a pack's companions: `fits` says which can share it)."""
    heartbeats = has_heartbeats(storage)
    claimed: list[FrozenTrial] = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if len(claimed) == limit:
            break
        if not fits(trial):
            continue
        try:
            if heartbeats:
                # Before the claim, so that no trial is ever RUNNING without a fresh heartbeat
                # (one left over from an earlier run would make it look dead at once); a
                # waiting trial's heartbeat is harmless when another worker wins the claim.
                storage.record_heartbeat(trial_id(trial))
            if storage.set_trial_state_values(trial_id(trial), state=TrialState.RUNNING):
                claimed.append(storage.get_trial(trial_id(trial)))
                LOG.debug(f"claimed trial {trial.number} (id {trial_id(trial)})")
            else:
                LOG.debug(f"trial {trial.number}: another worker claimed it first")
        except UpdateFinishedTrialError:
            continue  # another process finished it between our read and our claim
    return claimed


def pending_count(study: optuna.Study, fits: Callable[[FrozenTrial], bool]) -> int:
    """Trials waiting or running (in any worker's hands) that `fits`."""
    pending = (TrialState.WAITING, TrialState.RUNNING)
    return sum(1 for trial in study.get_trials(deepcopy=False, states=pending) if fits(trial))


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
               on_wait: Callable[[int], None] = lambda running: None,
               store: optuna.artifacts.FileSystemArtifactStore | None = None
               ) -> FrozenTrial | None:
    """Claim the next trial, first failing (and so re-queueing) trials of dead workers.

    When nothing waits but other workers' trials still run, poll: one of them may die and
    come back as a retry, which some live worker must run. Polls start at half a second (the
    last trials of a run end soon) and back off to `poll_seconds`. None once nothing waits
    or runs, or when a stop is requested. With the artifact `store`, the checkpoints of
    trials whose last try failed are removed before it returns.
    """
    trial = claim_or_wait(storage, study, poll_seconds, stop_requested, on_wait)
    if store is not None:
        discard_abandoned_checkpoints(study, store, max_retries_of(storage))
    return trial


def claim_or_wait(storage: optuna.storages.BaseStorage, study: optuna.Study,
                  poll_seconds: float, stop_requested: Callable[[], bool],
                  on_wait: Callable[[int], None]) -> FrozenTrial | None:
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
        if trial_id(trial) not in adopted:
            storage.record_heartbeat(trial_id(trial))
            adopted.add(trial_id(trial))


def max_retries_of(storage: optuna.storages.BaseStorage) -> int | None:
    """The retries this worker's storage grants a dead worker's trial (None: unknown)."""
    callback = getattr(storage, "get_heartbeat_stale_trial_callback", lambda: None)()
    return getattr(callback, "_max_retry", None)


# Trials whose checkpoint this process has already removed (study id, trial id).
_discarded: set[tuple[int, int]] = set()


def discard_abandoned_checkpoints(study: optuna.Study,
                                  store: optuna.artifacts.FileSystemArtifactStore,
                                  max_retries: int | None = None) -> list[str]:
    """Remove the checkpoint of each FAIL trial whose last try it was (no retry follows and
    none will) unless a waiting or running trial points to the same one; the removed ids.

    A trial failed by a dead worker keeps its `checkpoint` pointer (a finished trial's
    attributes cannot change), and its retry inherits it; only the failure of the last retry
    leaves the file to nobody.
    """
    failed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
              if checkpoint_artifact(t) and (study_id(study), trial_id(t)) not in _discarded]
    if not failed:
        return []
    trials = study.get_trials(deepcopy=False)
    retried = retried_as(trials)
    max_retries = study_max_retries(study) if max_retries is None else max_retries
    in_use = {checkpoint_artifact(t) for t in trials
              if t.state in (TrialState.WAITING, TrialState.RUNNING)}
    removed = []
    for trial in failed:
        if not is_last_try(trial, retried, max_retries):
            continue
        artifact = checkpoint_artifact(trial)
        # Only a checkpoint's id: a pointer edited in the database cannot name weights.
        if artifact not in in_use and is_checkpoint_id(artifact):
            try:
                store.remove(artifact)
                removed.append(artifact)
            except (ArtifactNotFound, OSError, ValueError):  # gone already, not ours to
                pass  # remove, or not an artifact id: cleaning up must not stop the worker
        _discarded.add((study_id(study), trial_id(trial)))
    return removed


def checkpoint_artifact(trial: FrozenTrial) -> str | None:
    pointer = trial.user_attrs.get("checkpoint")
    artifact = pointer.get("artifact") if isinstance(pointer, dict) else None
    return artifact if isinstance(artifact, str) else None

