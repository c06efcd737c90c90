"""The leaderboard: every trial of a study, best first, as a pandas DataFrame."""

from __future__ import annotations

import optuna
import pandas as pd
from optuna.trial import TrialState

from search.study.trials import (
    gave_up_points,
    is_baseline,
    retried_as,
    study_max_retries,
    trial_method,
    trial_model,
    trial_point,
    tries,
)

METRICS = ["test_acc", "f1", "auc_micro", "auc_macro", "trainable_params", "trainable_pct",
           "train_seconds"]
COLUMNS = ["number", "state", "model", "method", "baseline", "rank", "alpha", "dropout",
           "epochs", "val_acc", *METRICS, "note"]
# Finished trials first: a trial pruned early is not better than a complete one that beat it.
STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "WAITING": 3, "FAIL": 4}
FORMATS = ("table", "json", "csv")


def leaderboard(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: complete, then pruned trials by validation accuracy (a pruned
    trial's at the epoch it reached, `epochs`), then the rest by number.

    Only a complete trial shows test metrics. Any other shows what it reached itself: its
    epochs and the validation accuracy of its last one (a retry inherits its dead trial's
    user attributes, and those are not its results)."""
    rows = []
    trials = study.get_trials(deepcopy=False)
    retries = retried_as(trials)
    gave_up = {t.number for t in gave_up_points(study, study_max_retries(study), trials)}
    # The stored dict, not a validated spec: a leaderboard must show on any host.
    study_model = study.user_attrs.get("train_spec", {}).get("model")
    for trial in trials:
        point = trial_point(trial)
        attrs = trial.user_attrs
        complete = trial.state == TrialState.COMPLETE
        rows.append({
            "number": trial.number,
            "state": trial.state.name,
            "model": trial_model(trial, study_model),
            "method": trial_method(trial),
            "baseline": is_baseline(trial),
            "rank": point.rank if point else None,
            "alpha": point.alpha if point else None,
            "dropout": point.dropout if point else None,
            "epochs": attrs.get("epochs_done"),
            "val_acc": trial.value if complete else reached_val_acc(trial),
            **{key: attrs.get(key) if complete else None for key in METRICS},
            "note": trial_note(trial, retries, trial.number in gave_up),
        })
    frame = pd.DataFrame(rows, columns=COLUMNS).astype(
        {"rank": "Int64", "epochs": "Int64", "trainable_params": "Int64"})
    order = frame["state"].map(STATE_ORDER)
    frame = frame.assign(_order=order).sort_values(
        ["_order", "val_acc", "number"], ascending=[True, False, True], na_position="last",
        kind="stable")
    return frame.drop(columns="_order").reset_index(drop=True)


def reached_val_acc(trial: optuna.trial.FrozenTrial) -> float | None:
    """The validation accuracy at the last epoch the trial reached: a pruned trial records
    it; any other's comes from its own per-epoch history."""
    if trial.state == TrialState.PRUNED:
        return trial.user_attrs.get("val_acc")
    history = trial.user_attrs.get("history") or []
    last = history[-1] if isinstance(history, list) and history else None
    return last.get("val_acc") if isinstance(last, dict) else None


def trial_note(trial: optuna.trial.FrozenTrial, retried_as: dict[int, int],
               gave_up: bool = False) -> str:
    """What happened to a trial beyond its state: errors, retries, resumptions, and for the
    last failed try of a point the study gave up on, after how many tries."""
    notes = []
    if "failed_trial" in trial.system_attrs:
        notes.append(f"retry of trial {trial.system_attrs['retry_history'][-1]}")
    if trial.user_attrs.get("resumed_from_epoch"):
        notes.append(f"resumed after epoch {trial.user_attrs['resumed_from_epoch']}")
    if trial.state == TrialState.FAIL:
        if trial.user_attrs.get("error"):
            notes.append(trial.user_attrs["error"])
        elif trial.number in retried_as:
            notes.append(f"worker lost (no heartbeat); retried as trial {retried_as[trial.number]}")
        else:
            notes.append("worker lost (no heartbeat)")
        if gave_up:
            count = tries(trial)
            notes.append(f"gave up after {count} {'try' if count == 1 else 'tries'}")
    checkpoint = trial.user_attrs.get("checkpoint")
    if (trial.state in (TrialState.WAITING, TrialState.RUNNING) and isinstance(checkpoint, dict)
            and checkpoint.get("epoch") is not None):
        notes.append(f"checkpoint after epoch {checkpoint['epoch']}")
    return "; ".join(notes)


def best_versus_baseline(frame: pd.DataFrame) -> str:
    """One line: the best LoRA trial against the baselines, as the model card reports them."""
    done = frame[frame["state"] == "COMPLETE"]
    lora, baseline = done[~done["baseline"]], done[done["baseline"]]
    if lora.empty:
        return "no LoRA trial has completed yet"
    best = lora.iloc[0]
    line = (f"best LoRA: trial {best['number']} (rank {best['rank']}, alpha {best['alpha']:g}, "
            f"dropout {best['dropout']:.3g}) val_acc {best['val_acc']:.4f}, "
            f"test_acc {best['test_acc']:.4f}")
    several = baseline["model"].nunique() > 1
    for _, base in baseline.iterrows():
        name = f"baseline {base['model']}" if several else "baseline"
        line += f"; {name} val_acc {base['val_acc']:.4f}, test_acc {base['test_acc']:.4f}"
    return line


TABLE_FORMATS = {"alpha": "{:g}", "dropout": "{:.3g}", "val_acc": "{:.4f}", "test_acc": "{:.4f}",
                 "f1": "{:.4f}", "auc_micro": "{:.4f}", "auc_macro": "{:.4f}",
                 "trainable_pct": "{:.3f}", "train_seconds": "{:.1f}"}


def render(frame: pd.DataFrame, fmt: str) -> str:
    if fmt == "json":
        return frame.to_json(orient="records", indent=1)
    if fmt == "csv":
        return frame.to_csv(index=False)
    shown = frame.astype(object)
    for column, pattern in TABLE_FORMATS.items():
        shown[column] = frame[column].map(lambda x, p=pattern: "-" if pd.isna(x) else p.format(x))
    for column in ("rank", "epochs", "trainable_params"):
        shown[column] = frame[column].map(lambda x: "-" if pd.isna(x) else str(x))
    shown["baseline"] = frame["baseline"].map({True: "yes", False: ""})
    return shown.to_string(index=False)
