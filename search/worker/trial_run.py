"""Running one claimed Optuna trial: params in, curves/metrics/weights out to the study.

The trial's lifecycle is explicit: a worker has already moved it WAITING -> RUNNING; this
module trains it and moves it RUNNING -> COMPLETE (value = validation accuracy), -> PRUNED,
-> FAIL with the error's first line in the `error` user attribute, or, when the worker is
asked to stop, back to WAITING (see `search.worker.trial_queue`).

After every epoch but the last, the training state goes to the artifact store and the trial's
`checkpoint` user attribute points to it; a trial that starts with such a pointer (put back
in the queue, or the retry of a dead worker's trial, which inherits its user attributes)
continues after that epoch. Each checkpoint is a new artifact, written before the pointer
moves to it, so a worker killed while writing leaves the previous one whole.
"""

from __future__ import annotations

import io
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

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
from search.study.tpe_search import is_sampled
from search.study.trials import is_baseline, trial_point, trial_train_spec
from search.worker.signals import StopRequested
from search.worker.trial_queue import requeue_trial

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


def upload_weights(trial: optuna.Trial, result: TrialResult,
                   store: optuna.artifacts.FileSystemArtifactStore) -> None:
    """Adapters + head as safetensors in the artifact store, so export needs no retraining."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / WEIGHTS_FILE
        save_file(result.weights, str(path))
        artifact_id = optuna.artifacts.upload_artifact(
            artifact_store=store, file_path=str(path), study_or_trial=trial,
            mimetype="application/octet-stream")
    trial.set_user_attr("weights_artifact", artifact_id)


class Checkpoints:
    """The trial's checkpoint in the artifact store: the one it starts from, and each new one."""

    def __init__(self, trial: optuna.Trial, frozen: FrozenTrial,
                 store: optuna.artifacts.FileSystemArtifactStore) -> None:
        self._trial, self._store = trial, store
        self.current: str | None = (frozen.user_attrs.get("checkpoint") or {}).get("artifact")

    def load(self, point: LoraParams | None, epochs: int) -> TrainingState | None:
        """The state to resume from; None (and a warning) when there is none or it is unusable,
        e.g. written to another host's artifact folder: the trial then starts over."""
        if self.current is None:
            return None
        try:
            with self._store.open_reader(self.current) as reader:
                state = read_training_state(io.BytesIO(reader.read()))
            state.check_matches(point, epochs)
        except (ArtifactNotFound, CheckpointError, OSError) as error:
            tqdm.write(f"trial {self._trial.number}: checkpoint {self.current} not usable "
                       f"({error}); starting over", file=sys.stderr)
            return None
        self._trial.set_user_attr("resumed_from_epoch", state.epoch)
        return state

    def save(self, state: TrainingState) -> None:
        artifact_id = f"checkpoint-{uuid.uuid4().hex}"
        self._store.write(artifact_id, io.BytesIO(training_state_bytes(state)))
        self._trial.set_user_attr("checkpoint", {"artifact": artifact_id, "epoch": state.epoch})
        previous, self.current = self.current, artifact_id
        if previous is not None:
            self._store.remove(previous)

    def discard(self) -> None:
        """A finished trial needs no checkpoint."""
        if self.current is not None:
            self._store.remove(self.current)
            self._trial.set_user_attr("checkpoint", None)
            self.current = None


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
    checkpoints = Checkpoints(trial, frozen, store)
    resume = checkpoints.load(point, spec.epochs)

    extra_model = spec.model if "train_overrides" in frozen.user_attrs else None
    title = f"trial {frozen.number} {describe_point(point, extra_model)}"
    if resume is not None:
        tqdm.write(f"{title}: resuming after epoch {resume.epoch} of {spec.epochs}",
                   file=sys.stderr)
    # A live bar on a terminal; one line per epoch in logs, where bars would be noise.
    done = resume.epoch * data.train_size if resume is not None else 0
    bar = tqdm(total=spec.epochs * data.train_size, initial=done, unit="img", unit_scale=True,
               position=position, leave=True, mininterval=1.0, dynamic_ncols=True,
               desc=title, disable=not sys.stderr.isatty())
    epochs: list[EpochStats] = list(resume.history) if resume is not None else []

    def on_step(images: int) -> None:
        bar.update(images)
        check_stop()

    def on_epoch(stats: EpochStats) -> None:
        epochs.append(stats)
        trial.report(stats.val_acc, stats.epoch)
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
        record_result(trial, result)
        upload_weights(trial, result, store)
        upload_trial_artifacts(trial, result, data.classes, title, store)
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
    except Exception as error:  # the trial fails, the worker goes on with the next one
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
