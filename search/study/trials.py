"""What a trial of a study is: the baseline or a LoRA point, the spec it trains, its key.

Each trial carries `baseline` (bool) in its user attributes; baseline trials have no params,
and those of another model than the study's carry `train_overrides`.
"""

from __future__ import annotations

from collections.abc import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from objectives.spec import LoraParams, TrainSpec
from search.study.baselines import Baseline, baseline_train_spec
from search.study.heartbeat_settings import HeartbeatError, HeartbeatSettings
from search.study.replicates import replicate_of, replicate_train_spec, with_replicate
from search.study.space import BASELINE_KEY, point_key, point_of
from search.study.study_record import StudyRecord

HISTORY_ATTR = "history"


def trial_history(trial: FrozenTrial) -> list[dict]:
    """The per-epoch record of a trial (epoch, losses, accuracies): a system attribute, or in
    studies made before it moved there, a user attribute."""
    history = trial.system_attrs.get(HISTORY_ATTR)
    if history is None:
        history = trial.user_attrs.get(HISTORY_ATTR)
    return history if isinstance(history, list) else []


def is_baseline(trial: FrozenTrial) -> bool:
    return bool(trial.user_attrs.get("baseline", False))


POINT_PARAMS = {"rank", "alpha", "dropout"}  # search.study.space.params_of


def trial_point(trial: FrozenTrial) -> LoraParams | None:
    """The LoRA point of a trial, queued or finished; None for the baseline."""
    if is_baseline(trial):
        return None
    params = {**(trial.system_attrs.get("fixed_params") or {}), **trial.params}
    # Optuna registers a trial's params one by one: a worker stopped in between (a full
    # database disk) leaves some; the point is then what the queue fixed, or not known yet.
    return point_of(params) if POINT_PARAMS <= params.keys() else None


def trial_train_spec(spec: TrainSpec, trial: FrozenTrial) -> TrainSpec:
    """What `trial` trains: the study's spec, or a baseline's with its model's fields, with
    its replicate's seed (`search.study.replicates`)."""
    return replicate_train_spec(baseline_train_spec(spec, trial.user_attrs.get("train_overrides")),
                                replicate_of(trial))


def trial_model(trial: FrozenTrial, study_model: str) -> str:
    """The timm model a trial trains: a baseline's own, else the study's."""
    return (trial.user_attrs.get("train_overrides") or {}).get("model") or study_model


def trial_method(trial: FrozenTrial) -> str:
    return "head" if is_baseline(trial) else "lora"


def configuration_key(trial: FrozenTrial) -> tuple | None:
    """What a trial trains, whatever its seed: its baseline's key or its LoRA point's; None
    for a TPE trial whose params are not sampled yet."""
    if is_baseline(trial):
        overrides = trial.user_attrs.get("train_overrides")
        return Baseline(**overrides).key() if overrides else BASELINE_KEY
    point = trial_point(trial)
    return point_key(point) if point is not None else None


def trial_key(trial: FrozenTrial) -> tuple | None:
    """The point of the study a trial holds: its configuration and its replicate."""
    key = configuration_key(trial)
    return with_replicate(key, replicate_of(trial)) if key is not None else None


# States in which a trial holds its point: it will run, runs, or finished without failing.
HOLDING_STATES = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)


def keys_held_by(trials: Sequence[FrozenTrial]) -> set:
    """Keys of the points `trials` hold (`HOLDING_STATES`)."""
    return {trial_key(t) for t in trials if t.state in HOLDING_STATES}


def tries(trial: FrozenTrial) -> int:
    """How many times the trial's point has run in its chain of heartbeat retries, this trial
    included (Optuna's retry callback lists the trials a retry retries in `retry_history`)."""
    return len(trial.system_attrs.get("retry_history", [])) + 1


def retried_as(trials: Sequence[FrozenTrial]) -> dict[int, int]:
    """Trial number -> the number of its retry (a retry's history ends with its origin)."""
    return {t.system_attrs["retry_history"][-1]: t.number for t in trials
            if t.system_attrs.get("retry_history")}


def study_max_retries(study: optuna.Study) -> int:
    """The study's heartbeat `max_retries`; the default for unusable stored settings."""
    try:
        return StudyRecord(study).heartbeat.max_retries
    except HeartbeatError:
        return HeartbeatSettings().max_retries


def is_last_try(trial: FrozenTrial, retried: dict[int, int], max_retries: int) -> bool:
    """A FAIL trial that no retry follows and none will: it failed with its own error (those
    are never retried) or its worker died on the last try the heartbeat settings allow."""
    return (trial.state == TrialState.FAIL and trial.number not in retried
            and (bool(trial.user_attrs.get("error")) or tries(trial) >= max_retries + 1))


def gave_up_points(study: optuna.Study, max_retries: int | None = None,
                   trials: Sequence[FrozenTrial] | None = None) -> list[FrozenTrial]:
    """The last FAIL trial of each point (baseline or LoRA point) the study gave up on: its
    last try failed (`is_last_try`) and no other trial holds the point (waiting, running,
    complete or pruned; a grid run again queues a failed point anew). By trial number.

    `max_retries` defaults to the study's stored heartbeat settings; `trials` to the study's.
    """
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    max_retries = study_max_retries(study) if max_retries is None else max_retries
    retried = retried_as(trials)
    held = keys_held_by(trials) - {None}
    return sorted((t for t in trials if is_last_try(t, retried, max_retries)
                   and (trial_key(t) is None or trial_key(t) not in held)),
                  key=lambda t: t.number)

