"""Running several claimed trials as one pack on one frozen backbone.

Every member is a `TrialAttempt` of its own (params, checkpoint, history, artifacts, end
state), trained together by `objectives.packed_train.run_pack`:

- a member the pruner stops leaves the pack at once, PRUNED; the others go on;
- a member failed meanwhile by another worker (its heartbeat lost) leaves it too;
- SIGTERM / Ctrl-C puts every unfinished member back in the queue, each to resume after its
  last epoch; a fault of the environment (disk full, out of memory) puts them back too and
  stops the worker; a database gone past the timeout leaves them RUNNING for their retries;
- any other error of the pack is not blamed on every member: each unfinished member then runs
  alone from its last checkpoint, where an error is its own.

Members resuming after different epochs cannot share a batch order, and members whose models
differ in more than their adapters (a DoRA point; fused and split qkv) cannot share a backbone:
each such group is a pack of its own, run one after another.
"""

from __future__ import annotations

import logging

from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from objectives.checkpoint import EpochStats, TrainingState
from objectives.packed_model import members_refusal, pack_groups
from objectives.packed_train import PackMember, run_pack
from objectives.user_error import first_line
from search.study.optuna_private import study_storage, trial_id
from search.study.patient_storage import StorageOutage
from search.worker.context import WorkerContext
from search.worker.faults import WorkerEnvironmentError
from search.worker.progress_bar import progress_wanted
from search.worker.signals import StopRequested
from search.worker.trial_queue import requeue_trial
from search.worker.trial_run import TrialAttempt, run_claimed_trial, train_alone

LOG = logging.getLogger(__name__)


def run_claimed_pack(worker: WorkerContext, frozen: list[FrozenTrial]) -> dict[int, TrialState]:
    """Train the RUNNING trials `frozen` together; each one's final state by trial number
    (WAITING: put back in the queue). Raises WorkerEnvironmentError (all put back) and
    StorageOutage as `run_claimed_trial` does."""
    attempts = [TrialAttempt(worker, trial, show_bar=False, pack_size=len(frozen))
                for trial in frozen]
    resumes: list[TrainingState | None] = []
    for index, attempt in enumerate(attempts):
        try:
            resumes.append(attempt.begin())
        except WorkerEnvironmentError:
            for other in attempts[:index]:
                other.put_back()
            for other in attempts[index + 1:]:  # not begun: back as they came
                requeue_trial(study_storage(worker.study), trial_id(other.frozen))
            raise
    try:
        for indices in shareable_groups(attempts, resumes):
            group = [attempts[i] for i in indices]
            if len(group) == 1:
                train_alone(group[0], resumes[indices[0]])
            else:
                train_together(group, [resumes[i] for i in indices])
            if any(attempt.state == TrialState.WAITING for attempt in group):
                break  # stopped: the rest go back untrained
    except WorkerEnvironmentError:  # the worker stops: the rest go back too
        for attempt in unfinished(attempts):
            attempt.put_back()
        raise
    for attempt in unfinished(attempts):
        attempt.put_back()
    return {attempt.frozen.number: attempt.state for attempt in attempts}


def shareable_groups(attempts: list[TrialAttempt],
                     resumes: list[TrainingState | None]) -> list[list[int]]:
    """The begun attempts' indices, by the packs they train in: one per start epoch, each
    split where its members cannot share a backbone (`pack_groups`: a DoRA point, fused
    and split qkv; a sampled trial's point is known only once it has begun)."""
    by_epoch: dict[int, list[int]] = {}
    for index, resume in enumerate(resumes):
        by_epoch.setdefault(resume.epoch if resume else 0, []).append(index)
    groups = []
    for indices in by_epoch.values():
        points, spec = [attempts[i].point for i in indices], attempts[indices[0]].spec
        split = pack_groups(spec, points)
        if len(split) > 1:
            LOG.info(f"pack: trials {', '.join(str(attempts[i].frozen.number) for i in indices)} "
                     f"train as {len(split)} groups: "
                     f"{members_refusal(spec, points)}")
        groups.extend([indices[k] for k in group] for group in split)
    return groups


def train_together(attempts: list[TrialAttempt], resumes: list[TrainingState | None]) -> None:
    """One pack of begun attempts (same start epoch), each ended when this returns."""
    worker, spec, data = attempts[0].worker, attempts[0].spec, attempts[0].data
    names = ", ".join(str(attempt.frozen.number) for attempt in attempts)
    done = (resumes[0].epoch if resumes[0] else 0) * data.train_size
    bar = tqdm(total=spec.epochs * data.train_size, initial=done, unit="img", unit_scale=True,
               position=worker.position, leave=True, mininterval=1.0, dynamic_ncols=True,
               desc=f"pack of {len(attempts)} (trials {names})", disable=not progress_wanted(LOG))

    def on_step(images: int) -> None:
        bar.update(images)
        worker.stop.raise_if_requested()

    def on_epoch(k: int, stats: EpochStats) -> bool:
        attempt = attempts[k]
        if attempt.finished:  # failed meanwhile by another worker (`lost`)
            return False
        try:
            if attempt.on_epoch(stats):
                return True
            attempt.prune()
        except UpdateFinishedTrialError:
            attempt.lost()
        return False

    def on_checkpoint(k: int, state: TrainingState) -> None:
        if not attempts[k].finished:
            try:
                attempts[k].save_checkpoint(state)
            except UpdateFinishedTrialError:
                attempts[k].lost()

    members = [PackMember(attempt.point, resume)
               for attempt, resume in zip(attempts, resumes, strict=True)]
    try:
        results = run_pack(spec, members, data, on_epoch=on_epoch, on_step=on_step,
                           on_checkpoint=on_checkpoint)
        for attempt, result in zip(attempts, results, strict=True):
            if result is not None and not attempt.finished:
                try:
                    attempt.record(result)
                    attempt.complete(result)
                except UpdateFinishedTrialError:
                    attempt.lost()
    except (StopRequested, KeyboardInterrupt):
        for attempt in unfinished(attempts):
            attempt.put_back()
    except StorageOutage:
        raise
    except Exception as error:
        reasons = [attempt.environment_reason(error) for attempt in unfinished(attempts)]
        reason = next((r for r in reasons if r is not None), None)
        if reason is not None:
            stops = [attempt.stop_for_environment(attempt.epochs, reason)
                     for attempt in unfinished(attempts)]
            raise stops[0] from error
        LOG.warning(f"pack of {len(attempts)} (trials {names}) stopped: {type(error).__name__}: "
                    f"{first_line(error)}; its unfinished trials run alone")
        for attempt in unfinished(attempts):
            rerun_alone(attempt)
    finally:
        bar.close()


def unfinished(attempts: list[TrialAttempt]) -> list[TrialAttempt]:
    return [attempt for attempt in attempts if not attempt.finished]


def rerun_alone(attempt: TrialAttempt) -> None:
    """Run a pack's member alone from its last checkpoint, as a fresh attempt (its params
    stay: Optuna returns a trial's registered value to the same suggest call)."""
    storage = study_storage(attempt.study)
    frozen = storage.get_trial(trial_id(attempt.frozen))
    attempt.state = run_claimed_trial(attempt.worker, frozen)
