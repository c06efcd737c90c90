"""Studies: creating or joining one, what it stores about itself, and enqueueing a grid.

A study carries everything a worker needs in its user attributes, so a worker elsewhere joins
knowing only the storage URL and the study name:

    train_spec   the `TrainSpec` as a dict          (fixed when the study is created)
    space        ranks / alphas / dropouts enqueued so far (grows with wider grids)
    tpe          the TPE search's settings, when `search optuna` ran (see `search.tpe`)
    artifacts    the artifact folder chosen at creation (a worker may override it)
    baselines    the study's no-LoRA reference trials (see `search.baselines`)

Each trial carries `baseline` (bool) in its user attributes; baseline trials have no params,
and those of another model than the study's carry `train_overrides`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from objectives.spec import LoraParams, TrainSpec
from search.baselines import (
    DEFAULT_BASELINES,
    Baseline,
    baseline_train_spec,
    baselines_from_dicts,
)
from search.space import BASELINE_KEY, GridSpace, params_of, point_key, point_of
from search.spec import SpecError, describe_differences, train_spec_from_dict

OBJECTIVE = "val_acc"  # a trial's value: accuracy on the validation split


class StudyError(ValueError):
    """A study that does not exist or does not match the command; one line for the user."""


def find_study(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
        known = f"; studies there: {', '.join(names)}" if names else "; the storage has no studies"
        raise StudyError(f"no study named {name!r}{known}") from None


def stored_train_spec(study: optuna.Study) -> TrainSpec:
    values = study.user_attrs.get("train_spec")
    if values is None:
        raise StudyError(f"study {study.study_name!r} was not made by this tool (no train_spec)")
    try:
        return train_spec_from_dict(values, f"study {study.study_name!r}")
    except SpecError as error:
        raise StudyError(str(error)) from None


def open_study_for_spec(storage: optuna.storages.BaseStorage, name: str, train: TrainSpec,
                        artifacts: str, spec_given: bool) -> tuple[optuna.Study, TrainSpec]:
    """Create the study, or join the existing one of that name.

    An existing study keeps its own spec: when the command also gave a spec or overrides that
    differ from it, that is an error naming the differences rather than a silent choice.
    """
    existing = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    if name in existing:
        study = optuna.load_study(study_name=name, storage=storage)
        stored = stored_train_spec(study)
        differences = describe_differences(stored, train)
        if spec_given and differences:
            raise StudyError(f"study {name!r} exists with another spec ({'; '.join(differences)});"
                             " drop the spec flags to continue it, or pick a new --study name")
        return study, stored
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                load_if_exists=True)
    study.set_metric_names([OBJECTIVE])  # the dashboard's name for the value
    study.set_user_attr("train_spec", train.to_dict())
    study.set_user_attr("artifacts", artifacts)
    return study, train


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


@dataclass
class EnqueueReport:
    baselines_added: int = 0
    added: list[LoraParams] = field(default_factory=list)
    already_there: int = 0


def held_keys(study: optuna.Study) -> set:
    """Keys of the points a study holds: waiting, running or finished without failing."""
    return {trial_key(t) for t in study.get_trials(deepcopy=False) if t.state != TrialState.FAIL}


def store_baselines(study: optuna.Study, baselines: tuple[Baseline, ...], given: bool) -> None:
    """Keep the study's baselines unless this command named some (a spec file)."""
    if given or "baselines" not in study.user_attrs:
        study.set_user_attr("baselines", [b.to_dict() for b in baselines])


def stored_baselines(study: optuna.Study) -> tuple[Baseline, ...]:
    return baselines_from_dicts(study.user_attrs.get("baselines")
                                or [b.to_dict() for b in DEFAULT_BASELINES])


def enqueue_baselines(study: optuna.Study) -> int:
    """Queue each of the study's baselines it does not hold yet; how many were queued."""
    held, added = held_keys(study), 0
    for baseline in stored_baselines(study):
        if baseline.key() in held:
            continue
        attrs = {"baseline": True, "method": baseline.method}
        if baseline.model is not None:  # the study model's is filled in when it runs
            attrs["model"] = baseline.model
        if baseline.train_overrides():
            attrs["train_overrides"] = baseline.train_overrides()
        study.enqueue_trial({}, user_attrs=attrs)
        added += 1
    return added


def enqueue_grid(study: optuna.Study, grid: GridSpace) -> EnqueueReport:
    """Queue the baseline and every grid point the study does not hold yet.

    A point counts as held while a trial for it is waiting, running or finished without
    failing, so re-running a command adds nothing, a wider grid adds only its new points, and
    a failed point is queued again.
    """
    report = EnqueueReport(baselines_added=enqueue_baselines(study))
    held = held_keys(study)
    for point in grid.points():
        if point_key(point) in held:
            report.already_there += 1
            continue
        study.enqueue_trial(params_of(point), user_attrs={"baseline": False})
        report.added.append(point)
    record_space(study, grid)
    return report


def record_space(study: optuna.Study, grid: GridSpace) -> None:
    space = study.user_attrs.get("space", {"ranks": [], "alphas": [], "dropouts": []})
    merged: dict[str, Any] = {key: sorted(set(space[key]) | set(values))
                              for key, values in grid.to_dict().items()}
    if merged != space:
        study.set_user_attr("space", merged)
