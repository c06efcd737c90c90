"""The study record: every key a study stores about itself written and read back typed, the
defaults of a study made before a key existed, values this version cannot read, and a study
whose attributes were written by the code before the record (fixtures/
study_user_attrs_fe6f124.json: what commit fe6f124's commands stored for a study with two
grids, a TPE search, two baselines, two seeds, heartbeat settings, classes and a note chart)."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from objectives.spec import LoraParams, TrainSpec
from search.study.baselines import DEFAULT_BASELINES, Baseline
from search.study.enqueue import enqueue_grid
from search.study.heartbeat_settings import HeartbeatError, HeartbeatSettings
from search.study.space import GridSpace, SearchedSpace, TpeSearch, TpeSpace
from search.study.study_error import StudyError
from search.study.study_record import (
    GRID,
    HEARTBEAT,
    LEADERBOARD_CHART,
    LEADERBOARD_CSV,
    SEEDS,
    TPE,
    TRAIN_SPEC,
    StudyRecord,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)
OLD_ATTRS = json.loads((Path(__file__).parent / "fixtures" / "study_user_attrs_fe6f124.json")
                       .read_text())


def new_study(name: str = "s", attrs: dict | None = None) -> optuna.Study:
    study = optuna.create_study(study_name=name, storage=optuna.storages.InMemoryStorage(),
                                direction="maximize")
    for key, value in (attrs or {}).items():  # through Optuna, as any earlier version wrote
        study.set_user_attr(key, value)
    return study


def test_each_key_round_trips():
    study = new_study()
    record = StudyRecord(study)
    spec = TrainSpec(model="vit_tiny_patch16_224", epochs=2)
    search = TpeSearch(trials=7, space=TpeSpace.from_values([2, 16], [4], [0.1, 0.4]), seed=3)
    baselines = (Baseline(), Baseline(model="resnet50"))
    heartbeat = HeartbeatSettings(interval=5, grace_period=20, max_retries=0)
    record.store_train_spec(spec)
    record.add_grid(GridSpace.from_values([4], [8], [0.1]))
    record.store_tpe_search(search)
    record.store_artifacts_folder("/data/art")
    record.store_artifacts_token("t0k3n")
    record.store_baselines(baselines, replace=True)
    record.store_heartbeat(heartbeat, replace=True)
    record.store_seeds(3, replace=True)
    record.store_classes(["a", "b"])
    record.store_note_artifact(LEADERBOARD_CSV, "csv-id")

    again = StudyRecord(optuna.load_study(study_name="s", storage=study._storage))
    assert again.name == "s"
    assert again.train_spec == spec
    assert (again.spec_model, again.spec_epochs) == ("vit_tiny_patch16_224", 2)
    assert again.grid == GridSpace.from_values([4], [8], [0.1])
    assert again.tpe_search == search and again.tpe_pruner == "median"
    assert (again.artifacts_folder, again.artifacts_token) == ("/data/art", "t0k3n")
    assert again.baselines == baselines
    assert again.heartbeat == heartbeat
    assert again.seeds == 3
    assert again.classes == ["a", "b"]
    assert (again.note_artifact(LEADERBOARD_CSV), again.note_artifact(LEADERBOARD_CHART)) == \
        ("csv-id", None)


def test_a_study_without_keys_reads_as_the_defaults():
    record = StudyRecord(new_study())
    with pytest.raises(StudyError, match="study 's' was not made by this tool"):
        _ = record.train_spec
    assert (record.spec_model, record.spec_epochs, record.tpe_pruner) == (None, None, None)
    assert record.grid is None and record.tpe_search is None
    assert record.searched_space == SearchedSpace()
    assert record.searched_space.largest_rank is None
    assert (record.artifacts_folder, record.artifacts_token) == (None, None)
    assert record.baselines == DEFAULT_BASELINES
    assert record.heartbeat == HeartbeatSettings()
    assert record.seeds == 1
    assert record.classes == []
    assert record.note_artifact(LEADERBOARD_CHART) is None


def test_settings_replace_only_when_the_command_chose_them():
    study = new_study()
    record = StudyRecord(study)
    record.store_seeds(2, replace=False)  # a study without any takes them
    record.store_seeds(5, replace=False)
    assert record.seeds == 2
    record.store_seeds(5, replace=True)
    assert record.seeds == 5
    record.store_heartbeat(HeartbeatSettings(max_retries=4), replace=False)
    record.store_heartbeat(HeartbeatSettings(), replace=False)
    assert record.heartbeat.max_retries == 4
    record.store_baselines((Baseline(model="resnet50"),), replace=False)
    record.store_baselines(DEFAULT_BASELINES, replace=False)
    assert record.baselines == (Baseline(model="resnet50"),)
    record.store_classes(["first"])
    record.store_classes(["second"])  # every worker loads the same data: the first's stay
    assert record.classes == ["first"]


def test_the_grid_grows_and_is_written_only_when_it_does(monkeypatch):
    study = new_study()
    record = StudyRecord(study)
    record.add_grid(GridSpace.from_values([4, 2], [8], [0.1]))
    record.add_grid(GridSpace.from_values([8], [2], [0.1]))
    assert study.user_attrs[GRID] == {"ranks": [2, 4, 8], "alphas": [2.0, 8.0],
                                      "dropouts": [0.1]}
    writes = []
    monkeypatch.setattr(study, "set_user_attr", lambda *args: writes.append(args))
    record.add_grid(GridSpace.from_values([2], [8], [0.1]))
    assert writes == []


def test_a_study_written_before_the_record_reads_as_it_was_written():
    record = StudyRecord(new_study("old", OLD_ATTRS))
    assert record.train_spec == TrainSpec(epochs=3)
    assert record.grid == GridSpace.from_values([2, 4, 8], [2, 4, 8], [0.1, 0.2])
    assert record.tpe_search == TpeSearch(
        trials=3, space=TpeSpace.from_values([2, 4, 8, 16], [2, 4, 8], [0.05, 0.3]), seed=1,
        pruner="hyperband")
    assert (record.artifacts_folder, record.artifacts_token) == \
        ("/srv/lora/artifacts", "0123456789abcdef0123456789abcdef")
    assert record.baselines == (Baseline(), Baseline(model="resnet50"))
    assert record.heartbeat == HeartbeatSettings(interval=30, grace_period=90, max_retries=1)
    assert record.seeds == 2
    assert record.classes == ["cat", "dog"]
    assert record.note_artifact(LEADERBOARD_CHART) == "0f6d2c8e-5b7a-4d7e-9a51-3c1c2f7e9b10"
    # The bounds fe6f124's worker registered a trial's params with, on this study.
    space = record.searched_space
    assert space.bounds(None) == {"rank": (2, 16), "alpha": (2.0, 8.0), "dropout": (0.05, 0.3)}
    assert space.bounds(LoraParams(32, 0.5, 0.0)) == \
        {"rank": (2, 32), "alpha": (0.5, 8.0), "dropout": (0.0, 0.3)}
    assert space.largest_rank == 16


def test_queueing_more_into_an_older_study_keeps_its_format():
    study = new_study("old", OLD_ATTRS)
    enqueue_grid(study, GridSpace.from_values([2, 32], [8], [0.1]))
    assert study.user_attrs[GRID] == {**OLD_ATTRS[GRID], "ranks": [2, 4, 8, 32]}
    assert {key: value for key, value in study.user_attrs.items() if key != GRID} == \
        {key: value for key, value in OLD_ATTRS.items() if key != GRID}


@pytest.mark.parametrize("key, value, error, message", [
    (TRAIN_SPEC, {"epochs": "three"}, StudyError, "study 'x': train.epochs"),
    (GRID, {"ranks": [0], "alphas": [2.0], "dropouts": [0.1]}, StudyError,
     "study 'x' holds an unreadable grid: rank must be a positive integer"),
    (GRID, ["ranks"], StudyError, "study 'x' holds an unreadable grid"),
    (TPE, {"pruner": "asha"}, StudyError, "study 'x' holds an unreadable TPE search: pruner"),
    (HEARTBEAT, {"interval": 0}, HeartbeatError,
     "study 'x' holds unusable heartbeat settings: heartbeat interval must be >= 1 s"),
])
def test_a_value_this_version_cannot_read_is_one_line_naming_the_study(key, value, error,
                                                                        message):
    record = StudyRecord(new_study("x", {key: value}))
    readers = {TRAIN_SPEC: "train_spec", GRID: "grid", TPE: "tpe_search", HEARTBEAT: "heartbeat"}
    with pytest.raises(error, match=message):
        getattr(record, readers[key])


def test_as_stored_readers_and_lenient_ones_take_what_they_find():
    record = StudyRecord(new_study("x", {TRAIN_SPEC: {"model": "m", "epochs": "three"},
                                         SEEDS: 99, "artifacts_token": 5}))
    assert (record.spec_model, record.spec_epochs) == ("m", "three")  # results show anyway
    assert record.seeds == 1  # out of range: as a study without replicates
    assert record.artifacts_token is None  # not a token this tool wrote


def test_a_study_summary_reads_like_its_study():
    study = new_study("old", OLD_ATTRS)
    [summary] = optuna.get_all_study_summaries(study._storage)
    assert StudyRecord(summary).name == "old"
    assert StudyRecord(summary).artifacts_folder == StudyRecord(study).artifacts_folder
    assert StudyRecord(summary).grid == StudyRecord(study).grid


def test_the_searched_space_joins_the_grid_and_the_tpe_space():
    grid = GridSpace.from_values([4], [2, 16], [0.0])
    tpe = TpeSpace.from_values([2, 8], [4], [0.1, 0.3])
    assert SearchedSpace.of(grid, None).bounds(None) == \
        {"rank": (4, 4), "alpha": (2.0, 16.0), "dropout": (0.0, 0.0)}
    assert SearchedSpace.of(None, tpe).bounds(None) == \
        {"rank": (2, 8), "alpha": (4.0, 4.0), "dropout": (0.1, 0.3)}
    joined = SearchedSpace.of(grid, tpe)
    assert joined.bounds(None) == {"rank": (2, 8), "alpha": (2.0, 16.0), "dropout": (0.0, 0.3)}
    assert joined.largest_rank == 8
    assert SearchedSpace().bounds(LoraParams(4, 8.0, 0.1)) == \
        {"rank": (4, 4), "alpha": (8.0, 8.0), "dropout": (0.1, 0.1)}


def test_only_the_notes_artifacts_have_ids():
    with pytest.raises(ValueError, match="'train_spec' is not one of"):
        StudyRecord(new_study()).note_artifact(TRAIN_SPEC)
