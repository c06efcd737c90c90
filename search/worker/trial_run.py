"""Running one claimed Optuna trial: params in, curves/metrics/weights out to the study.

The trial's lifecycle is explicit: a worker has already moved it WAITING -> RUNNING; this
module trains it and moves it RUNNING -> COMPLETE (value = validation accuracy), -> PRUNED,
-> FAIL with the error's first line in the `error` user attribute, or, when the worker is
asked to stop, back to WAITING (see `search.worker.trial_queue`).

After every epoch but the last, the training state goes to the artifact store and the trial's
`checkpoint` user attribute points to it; a trial that starts with such a pointer (put back
in the queue, or the retry of a dead worker's trial, which inherits its user attributes)
continues after that epoch. Each checkpoint is a new artifact, written before the pointer
moves to it, so a worker killed while writing leaves the previous one whole; a write that fails
leaves no partial file. A pointer that cannot be used (its artifact is missing from this
host's store, damaged, or not an artifact id at all) is dropped and the trial starts over.

A fault of the worker's environment rather than of the trial (a full disk, an artifact store
it may not write, a device out of memory; `search.worker.faults`) puts the trial back in the
queue with its last good checkpoint, takes back what this attempt wrote, and raises
`WorkerEnvironmentError`: the worker must stop rather than fail the rest of the queue.
"""

from __future__ import annotations

import io
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import optuna
import optuna_dashboard
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial, TrialState
from safetensors.torch import save_file
from tqdm import tqdm

from objectives.checkpoint import (
    CheckpointError,
    EpochStats,
    TrainingState,
    read_training_state,
    training_state_bytes,
)
from objectives.data import ImageSplits
from objectives.spec import LoraParams, TrainSpec
from objectives.train import TrialResult, run_trial
from objectives.user_error import first_line
from search.results.trial_artifacts import upload_trial_artifacts
from search.study.patient_storage import StorageOutage
from search.study.tpe_search import is_sampled
from search.study.trials import is_baseline, trial_point, trial_train_spec
from search.worker.faults import WorkerEnvironmentError, environment_fault
from search.worker.signals import StopRequested
from search.worker.trial_queue import requeue_trial

if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore

WEIGHTS_FILE = "trained_weights.safetensors"


def baseline_note(model: str) -> str:
    return (f"**Baseline** ({model}, head only): no LoRA; the pretrained backbone is frozen "
            "and only the classification head is trained.")


def describe_point(point: LoraParams | None, model: str | None = None) -> str:
    if point is None:
        return f"baseline {model + ' ' if model else ''}(head only)"
    return f"r={point.rank} alpha={point.alpha:g} dropout={point.dropout:g}"


def param_bounds(study: optuna.Study, queued: LoraParams | None) -> dict[str, tuple]:
    """(low, high) of each param over every space the study has searched, and `queued`."""
    grid, tpe = study.user_attrs.get("space", {}), study.user_attrs.get("tpe", {})
    values = {"rank": [*grid.get("ranks", []), *tpe.get("ranks", [])],
              "alpha": [*grid.get("alphas", []), *tpe.get("alphas", [])],
              "dropout": [*grid.get("dropouts", []), *tpe.get("dropout_range", [])]}
    if queued is not None:
        values["rank"].append(queued.rank)
        values["alpha"].append(queued.alpha)
        values["dropout"].append(queued.dropout)
    return {name: (min(v), max(v)) for name, v in values.items()}


def suggest_point(trial: optuna.Trial, bounds: dict[str, tuple]) -> LoraParams:
    """Register the trial's LoRA params: a queued grid point's fixed values, or, for a trial
    queued without params, the study sampler's choice.

    Integer/float distributions are used rather than categorical ones because Optuna forbids a
    categorical parameter's choices to change within a study, and a wider grid changes them
    (`search.worker.sampler.LoraSpaceSampler` samples rank and alpha from their sets all the same).
    """
    rank = trial.suggest_int("rank", *map(int, bounds["rank"]))
    alpha = trial.suggest_float("alpha", *bounds["alpha"])
    dropout = trial.suggest_float("dropout", *bounds["dropout"])
    return LoraParams(rank=rank, alpha=alpha, dropout=dropout)


def record_history(trial: optuna.Trial, epochs: list[EpochStats]) -> None:
    trial.set_user_attr("epochs_done", len(epochs))
    trial.set_user_attr("history", [
        {"epoch": e.epoch, "train_loss": round(e.train_loss, 5), "train_acc": round(e.train_acc, 5),
         "val_loss": round(e.val_loss, 5), "val_acc": round(e.val_acc, 5)}
        for e in epochs])


def record_result(trial: optuna.Trial, result: TrialResult) -> None:
    for key, value in result.summary().items():
        trial.set_user_attr(key, value)
    record_history(trial, result.epochs)


# What a finished attempt records (`TrialResult.summary`); a retry inherits its dead trial's
# user attributes, so they are cleared when an attempt starts: a trial shows only its own.
RESULT_ATTRS = ("val_acc", "test_acc", "f1", "auc_micro", "auc_macro", "trainable_params",
                "total_params", "trainable_pct", "train_seconds", "images_per_second", "device",
                "resumed_from_epoch")


def clear_inherited_results(trial: optuna.Trial, frozen: FrozenTrial) -> None:
    for key in RESULT_ATTRS:
        if frozen.user_attrs.get(key) is not None:
            trial.set_user_attr(key, None)


def upload_weights(trial: optuna.Trial, result: TrialResult, store: ArtifactStore) -> str:
    """Adapters + head as safetensors in the artifact store, so export needs no retraining;
    returns the artifact id (the caller records it once every upload has succeeded)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / WEIGHTS_FILE
        save_file(result.weights, str(path))
        return optuna.artifacts.upload_artifact(
            artifact_store=store, file_path=str(path), study_or_trial=trial,
            mimetype="application/octet-stream")


class AttemptStore:
    """The artifact store as one attempt at a trial writes to it: a write that fails takes its
    partial file away, and every artifact written is remembered, so that an attempt stopped by
    its environment can take back all it wrote but its last good checkpoint."""

    def __init__(self, store: ArtifactStore) -> None:
        self._store = store
        base = getattr(store, "_base_path", None)  # a FileSystemArtifactStore's folder
        self.folder: str | None = str(base) if base is not None else None
        self.written: list[str] = []
        self.failed: BaseException | None = None  # the error of the last write that failed

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self._store.open_reader(artifact_id)

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self.written.append(artifact_id)
        try:
            self._store.write(artifact_id, content_body)
        except BaseException as error:
            self.failed = error
            self.remove_quietly(artifact_id)
            raise

    def remove(self, artifact_id: str) -> None:
        self._store.remove(artifact_id)

    def remove_quietly(self, artifact_id: str) -> None:
        try:
            self._store.remove(artifact_id)
        except (ArtifactNotFound, OSError, ValueError):
            pass

    def take_back(self, keep: str | None) -> None:
        """Remove what this attempt wrote (weights, pictures, checkpoints), except `keep`."""
        for artifact_id in self.written:
            if artifact_id != keep:
                self.remove_quietly(artifact_id)


class Checkpoints:
    """The trial's checkpoint in the artifact store: the one it starts from, and each new one.

    The `checkpoint` user attribute points to the last good one. A new one is written under a
    new artifact id and the pointer moves to it only after the write succeeded, so a failed
    write (a full disk) leaves the previous checkpoint and pointer as they were.
    """

    def __init__(self, trial: optuna.Trial, frozen: FrozenTrial, store: AttemptStore) -> None:
        self._trial, self._store = trial, store
        self._pointer = frozen.user_attrs.get("checkpoint")
        self.current: str | None = None  # the artifact the pointer names, once it proved good
        self.epoch = 0  # the finished epochs it holds

    def load(self, point: LoraParams | None, epochs: int) -> TrainingState | None:
        """The state to resume from; None when there is none, or (with a message, and the
        pointer dropped) when it is unusable: missing from this host's artifact folder,
        damaged, of other params, or a pointer that names no artifact. The trial then starts
        over. An environment fault reading the store (permission denied) is raised."""
        if not self._pointer:
            return None
        pointer = self._pointer
        artifact = pointer.get("artifact") if isinstance(pointer, dict) else None
        try:
            if not isinstance(artifact, str):
                raise CheckpointError(f"not a checkpoint pointer: {pointer!r}")
            with self._store.open_reader(artifact) as reader:
                content = reader.read()
        except OSError as error:
            if environment_fault(error, self._store.folder) is not None:
                raise
            return self._start_over(artifact, error)
        except (ArtifactNotFound, CheckpointError, ValueError) as error:  # ValueError: the
            return self._start_over(artifact, error)  # store refuses the id (`../x`)
        try:
            state = read_training_state(io.BytesIO(content))
        except CheckpointError as error:
            self._store.remove_quietly(artifact)  # damaged: no use to any worker
            return self._start_over(artifact, error)
        try:
            state.check_matches(point, epochs)
        except CheckpointError as error:
            return self._start_over(artifact, error)
        self.current, self.epoch = artifact, state.epoch
        self._trial.set_user_attr("resumed_from_epoch", state.epoch)
        return state

    def _start_over(self, artifact: str | None, error: Exception) -> None:
        named = artifact if artifact is not None else repr(self._pointer)
        tqdm.write(f"trial {self._trial.number}: checkpoint {named} not "
                   f"usable ({first_line(error)}); "
                   "starting over", file=sys.stderr)
        self._trial.set_user_attr("checkpoint", None)
        return None

    def save(self, state: TrainingState) -> None:
        artifact_id = f"checkpoint-{uuid.uuid4().hex}"
        # A failed write leaves no partial file (AttemptStore) and the pointer unmoved.
        self._store.write(artifact_id, io.BytesIO(training_state_bytes(state)))
        try:
            self._trial.set_user_attr("checkpoint", {"artifact": artifact_id,
                                                     "epoch": state.epoch})
        except BaseException:
            self._store.remove_quietly(artifact_id)
            raise
        previous, self.current, self.epoch = self.current, artifact_id, state.epoch
        if previous is not None:
            try:
                self._store.remove(previous)
            except ArtifactNotFound:
                pass  # already gone; nothing points to it any more

    def discard(self) -> None:
        """A finished trial needs no checkpoint: the pointer goes first, then the file."""
        if self.current is None:
            return
        artifact, self.current = self.current, None
        self._trial.set_user_attr("checkpoint", None)
        try:
            self._store.remove(artifact)
        except ArtifactNotFound:
            pass
        except (OSError, ValueError) as error:  # the trial's outcome stands
            tqdm.write(f"trial {self._trial.number}: could not remove checkpoint {artifact} "
                       f"({first_line(error)})", file=sys.stderr)


def put_back_for_environment(study: optuna.Study, trial: optuna.Trial, frozen: FrozenTrial,
                             title: str, checkpoints: Checkpoints, store: AttemptStore,
                             epochs: list[EpochStats] | None,
                             reason: str) -> WorkerEnvironmentError:
    """Undo this attempt but its last good checkpoint, put the trial back in the queue (its
    history up to that checkpoint; `epochs` None: as it was) and return the error that stops
    the worker."""
    store.take_back(keep=checkpoints.current)
    if epochs is not None:
        record_history(trial, epochs[:checkpoints.epoch])
    requeue_trial(study._storage, frozen._trial_id)
    after = f"after epoch {checkpoints.epoch}" if checkpoints.epoch else "from the start"
    tqdm.write(f"{title}: put back in the queue ({reason}); it resumes {after}",
               file=sys.stderr)
    return WorkerEnvironmentError(reason)


def run_claimed_trial(study: optuna.Study, frozen: FrozenTrial, spec: TrainSpec,
                      data: ImageSplits, store: optuna.artifacts.FileSystemArtifactStore,
                      position: int = 0,
                      check_stop: Callable[[], None] = lambda: None) -> TrialState:
    """Train the RUNNING trial `frozen` and finish it; returns its final state, or WAITING
    when `check_stop` raised `StopRequested` (or Ctrl-C came twice) and the trial went back
    to the queue.

    Only sampled (TPE) trials may be pruned: the baseline and grid points are reference
    points and always run every epoch.
    """
    trial = optuna.Trial(study, frozen._trial_id)
    spec = trial_train_spec(spec, frozen)
    point = None
    if not is_baseline(frozen):
        point = suggest_point(trial, param_bounds(study, trial_point(frozen)))
    trial.set_user_attr("baseline", point is None)
    trial.set_user_attr("model", spec.model)
    trial.set_user_attr("method", "lora" if point is not None else "head")
    if point is None:  # the dashboard shows a trial's note on top of its page
        optuna_dashboard.save_note(trial, baseline_note(spec.model))
    prunable = is_sampled(frozen)
    extra_model = spec.model if "train_overrides" in frozen.user_attrs else None
    title = f"trial {frozen.number} {describe_point(point, extra_model)}"
    clear_inherited_results(trial, frozen)
    attempt = AttemptStore(store)
    checkpoints = Checkpoints(trial, frozen, attempt)
    try:
        resume = checkpoints.load(point, spec.epochs)
    except OSError as error:  # only environment faults get here
        reason = environment_fault(error, attempt.folder)
        raise put_back_for_environment(study, trial, frozen, title, checkpoints, attempt,
                                       None, reason) from error
    if resume is not None:
        tqdm.write(f"{title}: resuming after epoch {resume.epoch} of {spec.epochs}",
                   file=sys.stderr)
    # A live bar on a terminal; one line per epoch in logs, where bars would be noise.
    done = resume.epoch * data.train_size if resume is not None else 0
    bar = tqdm(total=spec.epochs * data.train_size, initial=done, unit="img", unit_scale=True,
               position=position, leave=True, mininterval=1.0, dynamic_ncols=True,
               desc=title, disable=not sys.stderr.isatty())
    epochs: list[EpochStats] = list(resume.history) if resume is not None else []
    if resume is not None or frozen.user_attrs.get("epochs_done") is not None:
        record_history(trial, epochs)  # what this attempt starts from, not what it inherited

    def on_step(images: int) -> None:
        bar.update(images)
        check_stop()

    def on_epoch(stats: EpochStats) -> None:
        epochs.append(stats)
        trial.report(stats.val_acc, stats.epoch)
        record_history(trial, epochs)  # a trial that dies shows the epochs it reached
        progress = {"epoch": f"{stats.epoch}/{spec.epochs}", "val_acc": f"{stats.val_acc:.4f}",
                    "img_s": f"{stats.images_per_second:.0f}"}
        bar.set_postfix(progress)
        if bar.disable:
            print(title, *(f"{k}={v}" for k, v in progress.items()), file=sys.stderr, flush=True)
        # After the last epoch there is nothing left to save by stopping.
        if prunable and stats.epoch < spec.epochs and trial.should_prune():
            raise optuna.TrialPruned()

    try:
        result = run_trial(spec, point, data, on_epoch=on_epoch, on_step=on_step,
                           on_checkpoint=checkpoints.save, resume=resume)
        # Uploads first: an attempt stopped by a full disk here has recorded no results.
        weights = upload_weights(trial, result, attempt)
        upload_trial_artifacts(trial, result, data.classes, title, attempt)
        trial.set_user_attr("weights_artifact", weights)
        record_result(trial, result)
    except optuna.TrialPruned:
        trial.set_user_attr("val_acc", epochs[-1].val_acc)
        record_history(trial, epochs)
        checkpoints.discard()
        study.tell(trial, state=TrialState.PRUNED)
        tqdm.write(f"{title}: pruned after epoch {len(epochs)} of {spec.epochs}",
                   file=sys.stderr)
        return TrialState.PRUNED
    except (StopRequested, KeyboardInterrupt):
        record_history(trial, epochs)
        requeue_trial(study._storage, frozen._trial_id)
        after = f"after epoch {len(epochs)}" if epochs else "from the start"
        tqdm.write(f"{title}: put back in the queue; it resumes {after}", file=sys.stderr)
        return TrialState.WAITING
    except StorageOutage:
        # The database stayed away past --storage-timeout: nothing can be written, and
        # nothing here is the trial's fault. It stays RUNNING as the database last saw it;
        # its heartbeat goes stale and a worker retries it from its last checkpoint.
        raise
    except Exception as error:
        reason = environment_fault(error, attempt.folder, in_store=error is attempt.failed)
        if reason is not None:  # not the trial's fault: back to the queue, the worker stops
            raise put_back_for_environment(study, trial, frozen, title, checkpoints, attempt,
                                           epochs, reason) from error
        # The trial's own error: it fails, the worker goes on with the next one.
        message = f"{type(error).__name__}: {first_line(error)}"
        trial.set_user_attr("error", message)
        checkpoints.discard()
        study.tell(trial, state=TrialState.FAIL)
        tqdm.write(f"trial {frozen.number} failed: {message}", file=sys.stderr)
        return TrialState.FAIL
    finally:
        bar.close()
    checkpoints.discard()
    study.tell(trial, result.val_acc)
    return TrialState.COMPLETE
