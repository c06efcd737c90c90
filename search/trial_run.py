"""Running one claimed Optuna trial: params in, curves/metrics/weights out to the study.

The trial's lifecycle is explicit: a worker has already moved it WAITING -> RUNNING; this
module trains it and moves it RUNNING -> COMPLETE (value = validation accuracy) or -> FAIL
with the error's first line in the `error` user attribute.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState
from safetensors.torch import save_file
from tqdm import tqdm

from objectives.data import ImageSplits
from objectives.spec import LoraParams, TrainSpec
from objectives.train import EpochStats, TrialResult, run_trial
from search.studies import is_baseline, trial_point

WEIGHTS_FILE = "trained_weights.safetensors"


def describe_point(point: LoraParams | None) -> str:
    if point is None:
        return "baseline (head only)"
    return f"r={point.rank} alpha={point.alpha:g} dropout={point.dropout:g}"


def suggest_point(trial: optuna.Trial, queued: LoraParams, space: dict) -> LoraParams:
    """Register the queued point as the trial's params (Optuna returns the fixed values).

    Integer/float distributions are used rather than categorical ones because Optuna forbids a
    categorical parameter's choices to change within a study, and a wider grid changes them.
    """
    def bounds(key: str, value: float) -> tuple[float, float]:
        values = [*space.get(key, []), value]
        return min(values), max(values)

    rank = trial.suggest_int("rank", *map(int, bounds("ranks", queued.rank)))
    alpha = trial.suggest_float("alpha", *bounds("alphas", queued.alpha))
    dropout = trial.suggest_float("dropout", *bounds("dropouts", queued.dropout))
    return LoraParams(rank=rank, alpha=alpha, dropout=dropout)


def record_result(trial: optuna.Trial, result: TrialResult) -> None:
    for key, value in result.summary().items():
        trial.set_user_attr(key, value)
    trial.set_user_attr("history", [
        {"epoch": e.epoch, "train_loss": round(e.train_loss, 5), "train_acc": round(e.train_acc, 5),
         "val_loss": round(e.val_loss, 5), "val_acc": round(e.val_acc, 5)}
        for e in result.epochs])


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


def run_claimed_trial(study: optuna.Study, frozen: FrozenTrial, spec: TrainSpec,
                      data: ImageSplits, store: optuna.artifacts.FileSystemArtifactStore,
                      position: int = 0) -> TrialState:
    """Train the RUNNING trial `frozen` and finish it; returns its final state."""
    trial = optuna.Trial(study, frozen._trial_id)
    point = None if is_baseline(frozen) else trial_point(frozen)
    if point is not None:
        point = suggest_point(trial, point, study.user_attrs.get("space", {}))
    trial.set_user_attr("baseline", point is None)

    title = f"trial {frozen.number} {describe_point(point)}"
    # A live bar on a terminal; one line per epoch in logs, where bars would be noise.
    bar = tqdm(total=spec.epochs * data.train_size, unit="img", unit_scale=True,
               position=position, leave=True, mininterval=1.0, dynamic_ncols=True,
               desc=title, disable=not sys.stderr.isatty())

    def on_epoch(stats: EpochStats) -> None:
        trial.report(stats.val_acc, stats.epoch)
        progress = {"epoch": f"{stats.epoch}/{spec.epochs}", "val_acc": f"{stats.val_acc:.4f}",
                    "img_s": f"{stats.images_per_second:.0f}"}
        bar.set_postfix(progress)
        if bar.disable:
            print(title, *(f"{k}={v}" for k, v in progress.items()), file=sys.stderr, flush=True)

    try:
        result = run_trial(spec, point, data, on_epoch=on_epoch, on_step=bar.update)
        record_result(trial, result)
        upload_weights(trial, result, store)
    except KeyboardInterrupt:
        study.tell(trial, state=TrialState.FAIL)
        raise
    except Exception as error:  # the trial fails, the worker goes on with the next one
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        message = f"{type(error).__name__}: {first_line}"
        trial.set_user_attr("error", message)
        study.tell(trial, state=TrialState.FAIL)
        tqdm.write(f"trial {frozen.number} failed: {message}", file=sys.stderr)
        return TrialState.FAIL
    finally:
        bar.close()
    study.tell(trial, result.val_acc)
    return TrialState.COMPLETE
