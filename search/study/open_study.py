"""Opening a study: the one place that creates, joins or loads one.

A study carries everything a worker needs in its user attributes, so a worker elsewhere joins
knowing only the storage URL and the study name (`search.study.study_record`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import optuna

from objectives.spec import TrainSpec
from search.study.artifacts import mark_artifacts_folder
from search.study.names import quoted
from search.study.study_error import StudyError
from search.study.study_record import StudyRecord
from search.study.study_spec import describe_differences

OBJECTIVE = "val_acc"  # a trial's value: accuracy on the validation split


@dataclass(frozen=True)
class NewStudy:
    """What creating a study needs: its spec, its artifact folder, and whether the command gave
    a spec (file or fields) that an existing study of that name must match."""
    train: TrainSpec
    artifacts: str
    spec_given: bool


def open_study(storage: optuna.storages.BaseStorage, name: str | None, *,
               create: NewStudy | None = None,
               sampler: optuna.samplers.BaseSampler | None = None,
               pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    """The study `name` in `storage`; with `name=None`, the storage's only study.

    Without `create`, a missing study is a StudyError naming the studies there. With it, a
    missing study is created from `create`, and an existing one is joined: it keeps its own
    spec, and a spec the command gave that differs from it is an error naming the differences
    rather than a silent choice. `sampler` and `pruner` go to Optuna (a worker's TPE search).
    Creating marks `create.artifacts` as the study's artifact folder; joining marks it again
    when it is the folder the study names (an older study's, made before folders were marked).
    """
    # Names only: a summary carries each study's best trial, and finding it read every
    # trial of the study (7.8 s of a 5,000-trial leaderboard's 10.5).
    names = sorted(optuna.get_all_study_names(storage))
    if name is None:
        if len(names) != 1:
            raise StudyError(f"--study is needed: the storage holds {len(names)} studies"
                             f"{': ' + ', '.join(names) if names else ''}")
        name = names[0]
    if name in names:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler,
                                  pruner=pruner)
        if create is not None:
            differences = describe_differences(StudyRecord(study).train_spec, create.train)
            if create.spec_given and differences:
                raise StudyError(f"study {quoted(name)} exists with another spec "
                                 f"({'; '.join(differences)}); drop the spec flags to continue "
                                 "it, or pick a new --study name")
            if same_folder(StudyRecord(study).artifacts_folder, create.artifacts):
                mark_artifacts_folder(study, create.artifacts)
        return study
    if create is None:
        known = f"; studies there: {', '.join(names)}" if names else "; the storage has no studies"
        raise StudyError(f"no study named {quoted(name)}{known}")
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                load_if_exists=True, sampler=sampler, pruner=pruner)
    study.set_metric_names([OBJECTIVE])  # the dashboard's name for the value
    record = StudyRecord(study)
    record.store_train_spec(create.train)
    mark_artifacts_folder(study, create.artifacts)
    record.store_artifacts_folder(create.artifacts)
    return study


def same_folder(stored: object, chosen: str) -> bool:
    return isinstance(stored, str) and os.path.realpath(stored) == os.path.realpath(chosen)
