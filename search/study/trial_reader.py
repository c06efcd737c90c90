"""Every trial of a study in six queries, for the commands that read a whole study once.

Optuna's `RDBStorage.get_all_trials` loads each trial with its params, values, attributes and
intermediate values as SQLAlchemy ORM objects (about 60 a trial here: 300,000 at 5,000
trials), then expires every one of them when its session commits. That was 3.5 s of a
5,000-trial `search leaderboard`, whatever the leaderboard itself does. The same rows read as
plain tuples through SQLAlchemy Core make the same FrozenTrials in a fraction of it.

Private API: Optuna's table definitions (`optuna.storages._rdb.models`) and how its reader
turns rows into a FrozenTrial (`RDBStorage._build_frozen_trial_from_trial_model`). Used here
only; tests/test_trial_reader.py holds the result equal, field for field, to Optuna's own
reader on SQLite and PostgreSQL, so a change of schema fails there first. A worker does not
use it: Optuna's cached storage already reads only what changed since its last read.
"""

from __future__ import annotations

import datetime
import json
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import optuna
import sqlalchemy
from optuna.distributions import json_to_distribution
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial

from search.study.optuna_private import rdb_backend, rdb_models, study_id, study_storage


def all_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's trials in number order, read at once from its database; from Optuna's
    reader when the study is not in one."""
    storage = rdb_backend(study_storage(study))
    if not isinstance(storage, RDBStorage):
        return study.get_trials(deepcopy=False)
    return read_trials(storage.engine, study_id(study))


def read_trials(engine: sqlalchemy.Engine, study_id: int) -> list[FrozenTrial]:
    trials = rdb_models.TrialModel.__table__
    in_study = sqlalchemy.select(trials.c.trial_id).where(trials.c.study_id == study_id)
    with engine.connect() as connection:
        rows = connection.execute(
            sqlalchemy.select(trials.c.trial_id, trials.c.number, trials.c.state,
                              trials.c.datetime_start, trials.c.datetime_complete)
            .where(trials.c.study_id == study_id).order_by(trials.c.trial_id)).all()

        def children(model: type, *columns: str, order: str) -> dict[int, list]:
            table = model.__table__
            found: dict[int, list] = defaultdict(list)
            for row in connection.execute(
                    sqlalchemy.select(table.c.trial_id, *(table.c[name] for name in columns))
                    .where(table.c.trial_id.in_(in_study)).order_by(table.c[order])):
                found[row[0]].append(row[1:])
            return found

        params = children(rdb_models.TrialParamModel, "param_name", "param_value",
                          "distribution_json", order="param_id")
        values = children(rdb_models.TrialValueModel, "objective", "value", "value_type",
                          order="trial_value_id")
        user = children(rdb_models.TrialUserAttributeModel, "key", "value_json",
                        order="trial_user_attribute_id")
        system = children(rdb_models.TrialSystemAttributeModel, "key", "value_json",
                          order="trial_system_attribute_id")
        intermediate = children(rdb_models.TrialIntermediateValueModel, "step",
                                "intermediate_value", "intermediate_value_type",
                                order="trial_intermediate_value_id")
    distributions: dict[str, Any] = {}  # the same few JSON texts, parsed once each
    return [FrozenTrial(
        number=number, state=state, value=None,
        values=objective_values(values.get(trial_id)),
        datetime_start=local_time(start), datetime_complete=local_time(complete),
        params={name: parsed(distributions, text).to_external_repr(value)
                for name, value, text in params.get(trial_id, ())},
        distributions={name: parsed(distributions, text)
                       for name, _, text in params.get(trial_id, ())},
        user_attrs={key: json.loads(text) for key, text in user.get(trial_id, ())},
        system_attrs={key: json.loads(text) for key, text in system.get(trial_id, ())},
        intermediate_values={
            step: rdb_models.TrialIntermediateValueModel.stored_repr_to_intermediate_value(
                value, kind) for step, value, kind in intermediate.get(trial_id, ())},
        trial_id=trial_id,
    ) for trial_id, number, state, start, complete in rows]


def parsed(cache: dict[str, Any], text: str):
    if text not in cache:
        cache[text] = json_to_distribution(text)
    return cache[text]


def objective_values(rows: Iterable | None) -> list[float] | None:
    if not rows:
        return None
    rows = list(rows)
    values: list[float] = [0.0] * len(rows)
    for objective, value, kind in rows:
        values[objective] = rdb_models.TrialValueModel.stored_repr_to_value(value, kind)
    return values


def local_time(utc: datetime.datetime | None) -> datetime.datetime | None:
    """Stored naive UTC as the naive local time Optuna's FrozenTrials carry."""
    if utc is None:
        return None
    return utc.replace(tzinfo=datetime.UTC).astimezone().replace(tzinfo=None)
