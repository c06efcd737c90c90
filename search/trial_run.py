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
from search.tpe import is_sampled

WEIGHTS_FILE = "trained_weights.safetensors"


def describe_point(point: LoraParams | None) -> str:
    if point is None:
        return "baseline (head only)"
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
    (`search.tpe.LoraSpaceSampler` samples rank and alpha from their sets all the same).
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


def run_claimed_trial(study: optuna.Study, frozen: FrozenTrial, spec: TrainSpec,
                      data: ImageSplits, store: optuna.artifacts.FileSystemArtifactStore,
                      position: int = 0) -> TrialState:
    """Train the RUNNING trial `frozen` and finish it; returns its final state.

    Only sampled (TPE) trials may be pruned: the baseline and grid points are reference
    points and always run every epoch.
    """
    trial = optuna.Trial(study, frozen._trial_id)
    point = None
    if not is_baseline(frozen):
        point = suggest_point(trial, param_bounds(study, trial_point(frozen)))
    trial.set_user_attr("baseline", point is None)
    prunable = is_sampled(frozen)

    title = f"trial {frozen.number} {describe_point(point)}"
    # A live bar on a terminal; one line per epoch in logs, where bars would be noise.
    bar = tqdm(total=spec.epochs * data.train_size, unit="img", unit_scale=True,
               position=position, leave=True, mininterval=1.0, dynamic_ncols=True,
               desc=title, disable=not sys.stderr.isatty())
    epochs: list[EpochStats] = []

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
        result = run_trial(spec, point, data, on_epoch=on_epoch, on_step=bar.update)
        record_result(trial, result)
        upload_weights(trial, result, store)
    except optuna.TrialPruned:
        trial.set_user_attr("val_acc", epochs[-1].val_acc)
        record_history(trial, epochs)
        study.tell(trial, state=TrialState.PRUNED)
        tqdm.write(f"{title}: pruned after epoch {len(epochs)} of {spec.epochs}",
                   file=sys.stderr)
        return TrialState.PRUNED
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
