"""Running one claimed Optuna trial: params in, curves/metrics/weights out to the study.

The trial's lifecycle is explicit: a worker has already moved it WAITING -> RUNNING; this
module trains it and moves it RUNNING -> COMPLETE (value = validation accuracy), -> PRUNED,
-> FAIL with the error's first line in the `error` user attribute, or, when the worker is
asked to stop, back to WAITING (see `search.worker.trial_queue`).

`TrialAttempt` is one attempt at a claimed trial, from its start (params, checkpoint) to one of
those ends; `run_claimed_trial` trains it alone, `search.worker.pack_run` with others on one
backbone. Its checkpoints: `search.worker.attempt_store`.

A fault of the worker's environment rather than of the trial (a full disk, an artifact store
it may not write, a device out of memory; `search.worker.faults`) puts the trial back in the
queue with its last good checkpoint, takes back what this attempt wrote, and raises
`WorkerEnvironmentError`: the worker must stop rather than fail the rest of the queue.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial, TrialState
from safetensors.torch import save_file
from tqdm import tqdm

from objectives.checkpoint import EpochStats, TrainingState
from objectives.spec import LoraParams
from objectives.train import TrialResult, run_trial
from objectives.user_error import first_line
from search.results.dashboard_notes import baseline_note
from search.results.note_store import write_notes
from search.results.trial_artifacts import upload_trial_artifacts
from search.study.enqueue import enqueue_replicates
from search.study.optuna_private import study_id, study_storage, trial_id
from search.study.outcomes import ATTR as OUTCOMES_ATTR
from search.study.outcomes import outcomes_attr, record_outcomes
from search.study.patient_storage import StorageOutage
from search.study.replicates import replicate_of
from search.study.space import EXTRA_PARAMS, params_of, point_of
from search.study.study_record import StudyRecord
from search.study.tpe_search import is_sampled
from search.study.trials import HISTORY_ATTR, is_baseline, trial_point, trial_train_spec
from search.worker.attempt_store import AttemptStore, Checkpoints
from search.worker.context import WorkerContext
from search.worker.faults import WorkerEnvironmentError, environment_fault
from search.worker.progress_bar import progress_wanted
from search.worker.signals import StopRequested
from search.worker.trial_queue import requeue_trial

if TYPE_CHECKING:
    from search.study.optuna_private import ArtifactStore

LOG = logging.getLogger(__name__)

WEIGHTS_FILE = "trained_weights.safetensors"


def describe_point(point: LoraParams | None, model: str | None = None) -> str:
    if point is None:
        return f"baseline {model + ' ' if model else ''}(head only)"
    extras = "".join(f" {name}={value:g}" if isinstance(value, float) else f" {name}={value}"
                     for name, value in params_of(point).items() if name in EXTRA_PARAMS)
    return f"r={point.rank} alpha={point.alpha:g} dropout={point.dropout:g}{extras}"


def param_bounds(study: optuna.Study, queued: LoraParams | None) -> dict[str, tuple]:
    """What each param of the trial is registered with (`SearchedSpace.bounds`)."""
    return StudyRecord(study).searched_space.bounds(queued)


def suggest_point(trial: optuna.Trial, bounds: dict[str, tuple]) -> LoraParams:
    """Register the trial's LoRA params: a queued grid point's fixed values, or, for a trial
    queued without params, the study sampler's choice.

    Rank, alpha and dropout use integer/float distributions rather than categorical ones
    because Optuna forbids a categorical parameter's choices to change within a study, and a
    wider grid changes them (`search.worker.sampler.LoraSpaceSampler` samples rank and alpha
    from their sets all the same); `targets` and `scaling` are categorical over every name
    there is, which never changes. The params beside rank, alpha and dropout are registered
    first: a worker stopped halfway (a full database disk) leaves a trial without all three,
    which reads as a point not known yet (`search.study.trials.trial_point`), never as a
    point without its learning rate.
    """
    params: dict[str, float | int | str] = {}
    if "lr" in bounds:
        params["lr"] = trial.suggest_float("lr", *bounds["lr"], log=True)
    for name in ("targets", "scaling"):
        if name in bounds:
            params[name] = trial.suggest_categorical(name, bounds[name])
    params["rank"] = trial.suggest_int("rank", *map(int, bounds["rank"]))
    params["alpha"] = trial.suggest_float("alpha", *bounds["alpha"])
    params["dropout"] = trial.suggest_float("dropout", *bounds["dropout"])
    return point_of(params)


def record_history(trial: optuna.Trial, epochs: list[EpochStats]) -> None:
    """How far the trial got, and each epoch's losses and accuracies. The per-epoch list is a
    system attribute (`search.study.trials.trial_history`): ~100 bytes an epoch that
    optuna-dashboard would send with every trial on every poll as a user attribute, and that
    its charts already show (the intermediate values) or the trial's curves do."""
    trial.set_user_attr("epochs_done", len(epochs))
    trial.storage.set_trial_system_attr(trial_id(trial), HISTORY_ATTR, [
        {"epoch": e.epoch, "train_loss": round(e.train_loss, 5), "train_acc": round(e.train_acc, 5),
         "val_loss": round(e.val_loss, 5), "val_acc": round(e.val_acc, 5)}
        for e in epochs])


def record_result(trial: optuna.Trial, result: TrialResult) -> None:
    for key, value in result.summary().items():
        trial.set_user_attr(key, value)
    record_history(trial, result.epochs)


# What a finished attempt records (`TrialResult.summary`, and its outcomes); a retry inherits
# its dead trial's user and system attributes, so they are cleared when an attempt starts: a
# trial shows only its own. (Outcomes were user attributes in studies made before.)
RESULT_ATTRS = ("val_acc", "test_acc", "f1", "auc_micro", "auc_macro", "trainable_params",
                "total_params", "trainable_pct", "train_seconds", "images_per_second", "device",
                "resumed_from_epoch", OUTCOMES_ATTR)


def clear_inherited_results(trial: optuna.Trial, frozen: FrozenTrial) -> None:
    for key in RESULT_ATTRS:
        if frozen.user_attrs.get(key) is not None:
            trial.set_user_attr(key, None)
    if frozen.system_attrs.get(OUTCOMES_ATTR) is not None:
        record_outcomes(trial, None)


def upload_weights(trial: optuna.Trial, result: TrialResult, store: ArtifactStore) -> str:
    """Adapters + head as safetensors in the artifact store, so export needs no retraining;
    returns the artifact id (the caller records it once every upload has succeeded)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / WEIGHTS_FILE
        save_file(result.weights, str(path))
        return optuna.artifacts.upload_artifact(
            artifact_store=store, file_path=str(path), study_or_trial=trial,
            mimetype="application/octet-stream")


class TrialAttempt:
    """One attempt at the RUNNING trial `frozen`, from its start to its end.

    `begin` registers its params (a queued point's, or the sampler's for a TPE trial) and
    finds the checkpoint to resume from; the training loop calls `on_step`, `on_epoch` and
    `save_checkpoint`; then exactly one of `complete`, `prune`, `put_back` or `fail` ends it
    and returns its state (or `fail` raises `WorkerEnvironmentError` for a fault of the
    environment, after `stop_for_environment`). `finished` says whether it has ended.

    Only sampled (TPE) trials may be pruned: the baseline and grid points are reference
    points and always run every epoch.
    """

    def __init__(self, worker: WorkerContext, frozen: FrozenTrial, show_bar: bool = True,
                 pack_size: int = 1) -> None:
        self.worker, self.frozen = worker, frozen
        self.study, self.data = worker.study, worker.data
        self.trial = optuna.Trial(self.study, trial_id(frozen))
        self.spec = trial_train_spec(worker.spec, frozen)  # with the trial's own overrides
        self.show_bar = show_bar
        self.pack_size = pack_size  # trials trained together, this one included (1: alone)
        self.point: LoraParams | None = None
        self.title = f"trial {frozen.number}"
        self.epochs: list[EpochStats] = []
        self.store = AttemptStore(worker.store)
        self.checkpoints = Checkpoints(self.trial, frozen, self.store)
        self.state: TrialState | None = None  # set once the attempt has ended
        self.bar: tqdm | None = None

    @property
    def finished(self) -> bool:
        return self.state is not None

    def begin(self) -> TrainingState | None:
        """Register the params and the trial's attributes; the state to resume from."""
        trial, frozen, spec = self.trial, self.frozen, self.spec
        if not is_baseline(frozen):
            self.point = suggest_point(trial, param_bounds(self.study, trial_point(frozen)))
        point = self.point
        trial.set_user_attr("baseline", point is None)
        trial.set_user_attr("model", spec.model)
        trial.set_user_attr("method", "lora" if point is not None else "head")
        trial.set_user_attr("pack", self.pack_size)  # stored as "pack": studies hold that name
        trial.set_user_attr("seed", spec.seed)  # its replicate's (`search.study.replicates`)
        if point is None:  # the dashboard shows a trial's note on top of its page
            write_notes(study_storage(self.study), study_id(self.study),
                        {trial_id(trial): baseline_note(spec.model)})
        extra_model = spec.model if "train_overrides" in frozen.user_attrs else None
        self.title = f"trial {frozen.number} {describe_point(point, extra_model)}"
        clear_inherited_results(trial, frozen)
        try:
            resume = self.checkpoints.load(point, spec.epochs)
        except OSError as error:  # only environment faults get here
            reason = environment_fault(error, self.store.folder)
            raise self.stop_for_environment(None, reason) from error
        if resume is not None:
            LOG.info(f"{self.title}: resuming after epoch {resume.epoch} of {spec.epochs}")
        self.epochs = list(resume.history) if resume is not None else []
        if resume is not None or frozen.user_attrs.get("epochs_done") is not None:
            record_history(trial, self.epochs)  # what it starts from, not what it inherited
        # A live bar on a terminal; one line per epoch in logs, where bars would be noise.
        done = resume.epoch * self.data.train_size if resume is not None else 0
        self.bar = tqdm(total=spec.epochs * self.data.train_size, initial=done, unit="img",
                        unit_scale=True, position=self.worker.position, leave=True, mininterval=1.0,
                        dynamic_ncols=True, desc=self.title,
                        disable=not (self.show_bar and progress_wanted(LOG)))
        return resume

    def on_step(self, images: int) -> None:
        self.bar.update(images)
        self.worker.stop.raise_if_requested()

    def on_epoch(self, stats: EpochStats) -> bool:
        """Report the epoch; whether the trial goes on (False: the pruner stops it)."""
        self.epochs.append(stats)
        self.trial.report(stats.val_acc, stats.epoch)
        record_history(self.trial, self.epochs)  # a trial that dies shows the epochs it reached
        progress = {"epoch": f"{stats.epoch}/{self.spec.epochs}",
                    "val_acc": f"{stats.val_acc:.4f}", "img_s": f"{stats.images_per_second:.0f}"}
        if self.pack_size > 1:
            progress["pack"] = str(self.pack_size)
        self.bar.set_postfix(progress)
        if self.bar.disable:  # the CLI logs through tqdm.write: above a pack's live bar
            LOG.info(" ".join([self.title, *(f"{k}={v}" for k, v in progress.items())]))
        # After the last epoch there is nothing left to save by stopping.
        return not (is_sampled(self.frozen) and stats.epoch < self.spec.epochs
                    and self.trial.should_prune())

    def save_checkpoint(self, state: TrainingState) -> None:
        self.checkpoints.save(state)

    def record(self, result: TrialResult) -> None:
        """Uploads first: an attempt stopped by a full disk here has recorded no results."""
        weights = upload_weights(self.trial, result, self.store)
        upload_trial_artifacts(self.trial, result, self.data.classes, self.title, self.store)
        self.trial.set_user_attr("weights_artifact", weights)
        record_result(self.trial, result)
        record_outcomes(self.trial, outcomes_attr(
            result.val_correct, self.data.val_labels, result.test_correct,
            self.data.test_labels))

    def complete(self, result: TrialResult) -> TrialState:
        """After `record`: the trial is COMPLETE with its validation accuracy. A sampled
        trial of a study with seeds then queues its point's other replicates.

        The checkpoint (saved after the last epoch too) goes only once COMPLETE is
        committed: a worker that cannot tell (the database away past --storage-timeout)
        leaves a trial whose retry resumes after the last epoch and is told, not retrained.
        """
        self.study.tell(self.trial, result.val_acc)
        self.drop_checkpoint_file()
        if is_sampled(self.frozen) and replicate_of(self.frozen) == 0 and self.point is not None:
            added = enqueue_replicates(self.study, self.point)
            if added:
                LOG.info(f"{self.title}: queued {added} more seed(s) of its point")
        return self._end(TrialState.COMPLETE)

    def prune(self) -> TrialState:
        self.trial.set_user_attr("val_acc", self.epochs[-1].val_acc)
        if self.epochs[-1].val_correct is not None:  # what it has: the epoch it reached
            record_outcomes(self.trial, outcomes_attr(self.epochs[-1].val_correct,
                                                      self.data.val_labels))
        record_history(self.trial, self.epochs)
        self.study.tell(self.trial, state=TrialState.PRUNED)
        self.drop_checkpoint_file()
        LOG.info(f"{self.title}: pruned after epoch {len(self.epochs)} of {self.spec.epochs}")
        return self._end(TrialState.PRUNED)

    def drop_checkpoint_file(self) -> None:
        """After the trial's end state is committed: its checkpoint file goes. The pointer
        stays (a finished trial's attributes cannot change); nothing follows it on a finished
        trial, and a retry of a trial never told inherits a pointer to a file still there."""
        if self.checkpoints.current is not None:
            self.store.remove_quietly(self.checkpoints.current)

    def put_back(self) -> TrialState:
        """Stopped by a signal: back to the queue, to resume after its last epoch."""
        record_history(self.trial, self.epochs)
        requeue_trial(study_storage(self.study), trial_id(self.frozen))
        after = f"after epoch {len(self.epochs)}" if self.epochs else "from the start"
        LOG.info(f"{self.title}: put back in the queue; it resumes {after}")
        return self._end(TrialState.WAITING)

    def environment_reason(self, error: BaseException) -> str | None:
        """Why `error` is a fault of this worker's environment, or None when it is not."""
        return environment_fault(error, self.store.folder, in_store=error is self.store.failed)

    def stop_for_environment(self, epochs: list[EpochStats] | None, reason: str
                             ) -> WorkerEnvironmentError:
        """Undo this attempt but its last good checkpoint, put the trial back in the queue
        (its history up to that checkpoint; `epochs` None: as it was) and return the error
        that stops the worker."""
        self.store.take_back(keep=self.checkpoints.current)
        if epochs is not None:
            record_history(self.trial, epochs[:self.checkpoints.epoch])
        requeue_trial(study_storage(self.study), trial_id(self.frozen))
        after = (f"after epoch {self.checkpoints.epoch}" if self.checkpoints.epoch
                 else "from the start")
        LOG.warning(f"{self.title}: put back in the queue ({reason}); it resumes {after}")
        self._end(TrialState.WAITING)
        return WorkerEnvironmentError(reason)

    def fail(self, error: Exception) -> TrialState:
        """The trial's own error: it fails, the worker goes on with the next one. A fault of
        the environment raises WorkerEnvironmentError instead (the trial back in the queue)."""
        reason = self.environment_reason(error)
        if reason is not None:
            raise self.stop_for_environment(self.epochs, reason) from error
        message = f"{type(error).__name__}: {first_line(error)}"
        self.trial.set_user_attr("error", message)
        self.study.tell(self.trial, state=TrialState.FAIL)
        self.drop_checkpoint_file()
        LOG.error(f"trial {self.frozen.number} failed: {message}")
        return self._end(TrialState.FAIL)

    def lost(self) -> TrialState:
        """Failed meanwhile by another worker: our heartbeats stopped reaching the database
        for the grace period (a network cut, a suspended process), and its retry runs."""
        LOG.warning(f"worker: trial {self.frozen.number} was failed by another worker meanwhile "
                    "(no heartbeat for the grace period); its retry runs instead")
        return self._end(TrialState.FAIL)

    def _end(self, state: TrialState) -> TrialState:
        self.state = state
        self.close()
        return state

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_claimed_trial(worker: WorkerContext, frozen: FrozenTrial) -> TrialState:
    """Train the RUNNING trial `frozen` alone and finish it; returns its final state, or
    WAITING when the worker was asked to stop (`StopRequested` from `worker.stop`, or Ctrl-C
    twice) and the trial went back to the queue."""
    attempt = TrialAttempt(worker, frozen)
    return train_alone(attempt, attempt.begin())


def train_alone(attempt: TrialAttempt, resume: TrainingState | None) -> TrialState:
    """Train a begun attempt by itself (a peft model) and end it."""
    def on_epoch(stats: EpochStats) -> None:
        if not attempt.on_epoch(stats):
            raise optuna.TrialPruned()

    try:
        result = run_trial(attempt.spec, attempt.point, attempt.data, on_epoch=on_epoch,
                           on_step=attempt.on_step, on_checkpoint=attempt.save_checkpoint,
                           resume=resume)
        attempt.record(result)
    except optuna.TrialPruned:
        return attempt.prune()
    except (StopRequested, KeyboardInterrupt):
        return attempt.put_back()
    except StorageOutage:
        # The database stayed away past --storage-timeout: nothing can be written, and
        # nothing here is the trial's fault. It stays RUNNING as the database last saw it;
        # its heartbeat goes stale and a worker retries it from its last checkpoint.
        raise
    except Exception as error:
        return attempt.fail(error)
    finally:
        attempt.close()
    return attempt.complete(result)
