"""Opening a study: the one place that creates, joins or loads one.

A study carries everything a worker needs in its user attributes, so a worker elsewhere joins
knowing only the storage URL and the study name:

    train_spec   the `TrainSpec` as a dict          (fixed when the study is created)
    space        ranks / alphas / dropouts enqueued so far (grows with wider grids)
    tpe          the TPE search's settings, when `search optuna` ran (`search.study.tpe_search`)
    artifacts    the artifact folder chosen at creation (a worker may override it)
    artifacts_token  the token of that folder's marker file: a worker trusts the folder only
                 with it (`search.study.artifacts`)
    baselines    the study's no-LoRA reference trials (`search.study.baselines`)
    heartbeat    how workers tell a dead worker's trial (`search.study.heartbeat_settings`)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import optuna

from objectives.spec import TrainSpec
from objectives.user_error import UserError
from search.study.artifacts import mark_artifacts_folder
from search.study.names import quoted
from search.study.study_spec import SpecError, describe_differences

OBJECTIVE = "val_acc"  # a trial's value: accuracy on the validation split


@dataclass(frozen=True)
class NewStudy:
    """What creating a study needs: its spec, its artifact folder, and whether the command gave
    a spec (file or fields) that an existing study of that name must match."""
    train: TrainSpec
    artifacts: str
    spec_given: bool


class StudyError(UserError):
    """A study that does not exist or does not match the command; one line for the user."""


def stored_train_spec(study: optuna.Study) -> TrainSpec:
    """The study's spec with its types checked. Its ranges, names and files were validated
    when the study was created; a worker validates them again on its own host
    (`validate_train_spec`), a read-only command need not (and so needs no timm)."""
    values = study.user_attrs.get("train_spec")
    if values is None:
        raise StudyError(f"study {quoted(study.study_name)} was not made by this tool (no "
                         "train_spec)")
    try:
        return TrainSpec.from_dict(values, f"study {quoted(study.study_name)}: train")
    except SpecError as error:
        raise StudyError(str(error)) from None


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
            differences = describe_differences(stored_train_spec(study), create.train)
            if create.spec_given and differences:
                raise StudyError(f"study {quoted(name)} exists with another spec "
                                 f"({'; '.join(differences)}); drop the spec flags to continue "
                                 "it, or pick a new --study name")
            if same_folder(study.user_attrs.get("artifacts"), create.artifacts):
                mark_artifacts_folder(study, create.artifacts)
        return study
    if create is None:
        known = f"; studies there: {', '.join(names)}" if names else "; the storage has no studies"
        raise StudyError(f"no study named {quoted(name)}{known}")
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                load_if_exists=True, sampler=sampler, pruner=pruner)
    study.set_metric_names([OBJECTIVE])  # the dashboard's name for the value
    study.set_user_attr("train_spec", create.train.to_dict())
    mark_artifacts_folder(study, create.artifacts)
    study.set_user_attr("artifacts", create.artifacts)
    return study


def same_folder(stored: object, chosen: str) -> bool:
    return isinstance(stored, str) and os.path.realpath(stored) == os.path.realpath(chosen)
