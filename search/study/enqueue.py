"""Enqueueing: the study's baselines and grid points it does not hold yet, idempotently.

The caller holds the study's enqueue lock (`search.study.enqueue_lock`), so two commands
queueing the same grid at once add each point once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna

from objectives.spec import LoraParams
from search.study.baselines import DEFAULT_BASELINES, Baseline, baselines_from_dicts
from search.study.space import GridSpace, params_of, point_key
from search.study.trials import keys_held_by


@dataclass
class EnqueueReport:
    baselines_added: int = 0
    added: list[LoraParams] = field(default_factory=list)
    already_there: int = 0


def held_keys(study: optuna.Study) -> set:
    """Keys of the points a study holds: waiting, running or finished without failing."""
    return keys_held_by(study.get_trials(deepcopy=False))


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
