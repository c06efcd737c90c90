"""Enqueueing: the study's baselines and grid points it does not hold yet, idempotently, each
once per replicate (`search.study.replicates`), replicate by replicate: the configurations of
one seed are queued together, so that a worker packs them together.

The caller holds the study's enqueue lock (`search.study.enqueue_lock`), so two commands
queueing the same grid at once add each point once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import optuna

from objectives.spec import LoraParams
from search.study.replicates import replicate_attrs, with_replicate
from search.study.space import GridSpace, params_of, point_key
from search.study.study_record import StudyRecord
from search.study.trials import keys_held_by


@dataclass
class EnqueueReport:
    baselines_added: int = 0
    added: list[LoraParams] = field(default_factory=list)
    already_there: int = 0  # the baselines and grid points asked for that the study held


def held_keys(study: optuna.Study) -> set:
    """Keys of the points a study holds: waiting, running or finished without failing."""
    return keys_held_by(study.get_trials(deepcopy=False))


def enqueue_baselines(study: optuna.Study, replicates: range | None = None) -> int:
    """Queue each of the study's baselines it does not hold yet, for each of `replicates`
    (default: all the study's seeds); how many were queued."""
    held, added, record = held_keys(study), 0, StudyRecord(study)
    for replicate in replicates if replicates is not None else range(record.seeds):
        for baseline in record.baselines:
            if with_replicate(baseline.key(), replicate) in held:
                continue
            attrs = {"baseline": True, "method": baseline.method, **replicate_attrs(replicate)}
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
    report, record = EnqueueReport(), StudyRecord(study)
    baselines = len(record.baselines)
    # A grid over learning rates or layers leaves the spec's own unset (`GridSpace.points`).
    points = grid.points(record.train_spec if grid.lrs or grid.target_sets else None)
    for replicate in range(record.seeds):
        added = enqueue_baselines(study, range(replicate, replicate + 1))
        report.baselines_added += added
        report.already_there += baselines - added
        held = held_keys(study)
        for point in points:
            if with_replicate(point_key(point), replicate) in held:
                report.already_there += 1
                continue
            study.enqueue_trial(params_of(point), user_attrs={"baseline": False,
                                                              **replicate_attrs(replicate)})
            report.added.append(point)
    record.add_grid(grid)
    return report


def enqueue_replicates(study: optuna.Study, point: LoraParams) -> int:
    """Queue the missing replicates 1.. of a point a sampled (TPE) trial, its replicate 0,
    has completed: fixed-param trials that TPE then sees as repeated observations of the
    point. How many were queued.

    Without the enqueue lock (a worker does not hold it): only the worker that completed the
    sampled trial queues its replicates, once. A `search grid` queueing the same point and
    seed at the same instant could add one twice; the verdict then counts that seed twice."""
    held, added = held_keys(study), 0
    for replicate in range(1, StudyRecord(study).seeds):
        if with_replicate(point_key(point), replicate) not in held:
            study.enqueue_trial(params_of(point), user_attrs={"baseline": False,
                                                              **replicate_attrs(replicate)})
            added += 1
    return added

