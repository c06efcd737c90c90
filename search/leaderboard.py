"""The leaderboard: every trial of a study, best first, as a pandas DataFrame."""

from __future__ import annotations

import optuna
import pandas as pd
from optuna.trial import TrialState

from search.studies import is_baseline, trial_point

COLUMNS = ["number", "state", "baseline", "rank", "alpha", "dropout", "val_acc", "test_acc",
           "f1", "auc_micro", "auc_macro", "trainable_params", "trainable_pct", "train_seconds"]
FORMATS = ("table", "json", "csv")


def leaderboard(study: optuna.Study) -> pd.DataFrame:
    """One row per trial; finished trials by validation accuracy, then the rest by number."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        point = trial_point(trial)
        attrs = trial.user_attrs
        rows.append({
            "number": trial.number,
            "state": trial.state.name,
            "baseline": is_baseline(trial),
            "rank": point.rank if point else None,
            "alpha": point.alpha if point else None,
            "dropout": point.dropout if point else None,
            "val_acc": trial.value if trial.state == TrialState.COMPLETE else attrs.get("val_acc"),
            **{key: attrs.get(key) for key in COLUMNS[7:]},
        })
    frame = pd.DataFrame(rows, columns=COLUMNS).astype({"rank": "Int64",
                                                         "trainable_params": "Int64"})
    frame = frame.sort_values(["val_acc", "number"], ascending=[False, True],
                              na_position="last", kind="stable")
    return frame.reset_index(drop=True)


def render(frame: pd.DataFrame, fmt: str) -> str:
    if fmt == "json":
        return frame.to_json(orient="records", indent=1)
    if fmt == "csv":
        return frame.to_csv(index=False)
    shown = frame.astype(object).where(frame.notna(), None)
    shown["baseline"] = frame["baseline"].map({True: "yes", False: ""})
    return shown.to_string(index=False, na_rep="-", float_format=lambda x: f"{x:.4g}")
