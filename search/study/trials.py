"""What a trial of a study is: the baseline or a LoRA point, the spec it trains, its key.

Each trial carries `baseline` (bool) in its user attributes; baseline trials have no params,
and those of another model than the study's carry `train_overrides`.
"""

from __future__ import annotations

from optuna.trial import FrozenTrial

from objectives.spec import LoraParams, TrainSpec
from search.study.baselines import Baseline, baseline_train_spec
from search.study.space import BASELINE_KEY, point_key, point_of


def is_baseline(trial: FrozenTrial) -> bool:
    return bool(trial.user_attrs.get("baseline", False))



def trial_point(trial: FrozenTrial) -> LoraParams | None:
    """The LoRA point of a trial, queued or finished; None for the baseline."""
    if is_baseline(trial):
        return None
    params = trial.params or trial.system_attrs.get("fixed_params") or {}
    return point_of(params) if params else None



def trial_train_spec(spec: TrainSpec, trial: FrozenTrial) -> TrainSpec:
    """What `trial` trains: the study's spec, or a baseline's with its model's fields."""
    return baseline_train_spec(spec, trial.user_attrs.get("train_overrides"))



def trial_model(trial: FrozenTrial, study_model: str) -> str:
    """The timm model a trial trains: a baseline's own, else the study's."""
    return (trial.user_attrs.get("train_overrides") or {}).get("model") or study_model



def trial_method(trial: FrozenTrial) -> str:
    return "head" if is_baseline(trial) else "lora"



def trial_key(trial: FrozenTrial) -> tuple | None:
    if is_baseline(trial):
        overrides = trial.user_attrs.get("train_overrides")
        return Baseline(**overrides).key() if overrides else BASELINE_KEY
    point = trial_point(trial)
    return point_key(point) if point is not None else None
