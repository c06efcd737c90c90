"""Each private name of Optuna and optuna-dashboard we use (search.study.optuna_private),
checked against the installed versions: a release that changes one fails here, by name,
before it fails a worker in the middle of a study."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import optuna
import optuna_dashboard
import pytest
from optuna.artifacts import FileSystemArtifactStore, upload_artifact

from search.study import optuna_private as private

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def study(tmp_path):
    return optuna.create_study(storage=f"sqlite:///{tmp_path / 'p.db'}", study_name="p")


def test_a_studys_storage_and_id_are_the_ones_optuna_uses(study):
    storage = private.study_storage(study)
    assert isinstance(storage, optuna.storages.BaseStorage), "Study._storage changed"
    assert storage.get_study_id_from_name("p") == private.study_id(study), \
        "Study._study_id no longer the storage's id of the study"


def test_a_trials_id_is_its_row_in_the_storage(study):
    trial = study.ask()
    assert private.study_storage(study).get_trial(private.trial_id(trial)).number == \
        trial.number, "Trial._trial_id no longer names the trial's row"
    frozen = study.trials[0]
    assert private.trial_id(frozen) == private.trial_id(trial), "FrozenTrial._trial_id changed"


def test_the_rdb_backend_is_under_optunas_cache(study):
    backend = private.rdb_backend(private.study_storage(study))
    assert isinstance(backend, optuna.storages.RDBStorage), \
        "_CachedStorage._backend no longer holds the RDBStorage"


def test_the_artifact_store_protocol_has_the_three_calls_we_make(tmp_path):
    for name in ("open_reader", "write", "remove"):
        assert hasattr(private.ArtifactStore, name), f"ArtifactStore lost {name}"
    store = FileSystemArtifactStore(str(tmp_path))
    assert all(callable(getattr(store, name)) for name in ("open_reader", "write", "remove"))


def test_uploaded_artifacts_are_recorded_under_the_prefix_we_write(study, tmp_path):
    trial = study.ask()
    picture = tmp_path / "x.txt"
    picture.write_text("x")
    upload_artifact(artifact_store=FileSystemArtifactStore(str(tmp_path)),
                    file_path=str(picture), study_or_trial=trial)
    keys = private.study_storage(study).get_trial_system_attrs(private.trial_id(trial))
    assert any(key.startswith(private.ARTIFACTS_ATTR_PREFIX) for key in keys), \
        f"upload_artifact no longer records {private.ARTIFACTS_ATTR_PREFIX}*: {keys}"


def test_the_rdb_models_have_the_tables_and_columns_the_trial_reader_reads():
    models = private.rdb_models
    for name, columns in {
        "TrialModel": ("trial_id", "number", "study_id", "state", "datetime_start",
                       "datetime_complete"),
        "TrialParamModel": ("trial_id", "param_name", "param_value", "distribution_json"),
        "TrialValueModel": ("trial_id", "objective", "value", "value_type"),
        "TrialUserAttributeModel": ("trial_id", "key", "value_json"),
        "TrialSystemAttributeModel": ("trial_id", "key", "value_json"),
        "TrialIntermediateValueModel": ("trial_id", "step", "intermediate_value",
                                        "intermediate_value_type"),
        "StudySystemAttributeModel": ("study_id", "key", "value_json"),
    }.items():
        table = getattr(models, name).__table__
        missing = set(columns) - set(table.columns.keys())
        assert not missing, f"optuna's {name} lost columns {missing}"


def test_optunas_stale_trial_check_calls_the_hook_we_override():
    from optuna.storages import _heartbeat

    source = inspect.getsource(_heartbeat.fail_stale_trials)
    assert f".{private.STALE_TRIALS_HOOK}(" in source, \
        "fail_stale_trials no longer asks the storage's _get_stale_trial_ids"
    hook = getattr(optuna.storages.RDBStorage, private.STALE_TRIALS_HOOK)
    assert list(inspect.signature(hook).parameters) == ["self", "study_id"]


def test_the_dashboard_note_layout_is_the_one_note_store_writes(study):
    from optuna_dashboard import get_note, save_note

    save_note(study, "hello")
    attrs = private.study_storage(study).get_study_system_attrs(private.study_id(study))
    version_key = private.note_ver_key(None)
    assert attrs.get(version_key) == 1, f"dashboard note version key changed: {attrs}"
    assert attrs.get(private.note_str_key_prefix(None) + "0") == "hello", attrs
    assert private.SYSTEM_ATTR_MAX_LENGTH == 2045
    assert get_note(study) == "hello"


def test_read_only_commands_do_not_import_the_dashboard():
    """optuna_dashboard's names load on first use: importing it costs ~1 s."""
    code = ("import sys, search.study.optuna_private, search.study.trial_reader; "
            "print('optuna_dashboard' in sys.modules)")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, cwd=ROOT).stdout.strip()
    assert shown == "False"


def test_pyproject_bounds_optuna_and_the_dashboard_below_their_next_majors():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "dependencies"]
    bounds = {re.split(r"[<>=!~ ]", d, maxsplit=1)[0]: d for d in dependencies}
    assert re.search(r"<\s*6\b", bounds["optuna"]), bounds["optuna"]
    assert re.search(r"<\s*0\.\d+", bounds["optuna-dashboard"]), bounds["optuna-dashboard"]
    major = int(optuna.__version__.split(".")[0])
    assert major < 6 and optuna_dashboard.__version__ < "0.22"


def test_the_cache_wrapper_calls_the_backend_methods_we_retry():
    from optuna.storages import _cached_storage

    source = inspect.getsource(_cached_storage._CachedStorage)
    for name in private.CACHED_BACKEND_CALLS:
        assert f"self._backend.{name}(" in source, f"_CachedStorage no longer calls {name}"
        assert callable(getattr(optuna.storages.RDBStorage, name)), f"RDBStorage lost {name}"
    called = set(re.findall(r"self\._backend\.(_[a-z_]+)\(", source))
    assert called <= {*private.CACHED_BACKEND_CALLS, private.STALE_TRIALS_HOOK}, \
        f"_CachedStorage calls private backend methods we do not retry: {called}"
