"""Dashboard notes written in optuna-dashboard's stored format by `search.results.note_store`:
read back by optuna-dashboard's own `get_note`, on SQLite and PostgreSQL, at a cost that does
not grow with the study. These tests are the tripwire for a release of optuna-dashboard that
moves the format (pyproject.toml bounds its version)."""

from __future__ import annotations

import optuna
import pytest
import sqlalchemy
from optuna_dashboard import get_note, save_note
from postgres_cluster import running_cluster

from search.results import note_store
from search.results.note_store import StoredNote, read_all_notes, read_notes, write_notes


@pytest.fixture(scope="module")
def postgres():
    with running_cluster() as cluster:
        yield cluster.url


@pytest.fixture(params=["sqlite", "postgresql"])
def study(request, tmp_path) -> optuna.Study:
    url = (f"sqlite:///{tmp_path / 'notes.db'}" if request.param == "sqlite"
           else request.getfixturevalue("postgres"))
    name = f"notes-{request.node.name}"
    optuna.create_study(storage=url, study_name=name, direction="maximize")
    study = optuna.load_study(study_name=name, storage=url)  # a _CachedStorage, as workers use
    for value in range(3):
        study.add_trial(optuna.trial.create_trial(value=float(value)))
    return study


def trial(study: optuna.Study, number: int) -> optuna.Trial:
    return optuna.Trial(study, study.trials[number]._trial_id)


def version(study: optuna.Study, trial_id: int | None) -> int:
    from optuna_dashboard._note import get_note_from_system_attrs

    attrs = study._storage.get_study_system_attrs(study._study_id)
    return get_note_from_system_attrs(attrs, trial_id)["version"]


def test_the_stored_format_is_the_one_written_here():
    """What note_store relies on: if a release of optuna-dashboard changes any of it, this
    fails, and note_store must follow before the version bound moves."""
    from optuna_dashboard._note import (
        SYSTEM_ATTR_MAX_LENGTH,
        note_str_key_prefix,
        note_ver_key,
        split_body,
    )

    assert SYSTEM_ATTR_MAX_LENGTH == note_store.CHUNK == 2045
    assert note_ver_key(None) == "dashboard:note_ver"
    assert note_ver_key(17) == "dashboard:17:note_ver"
    assert note_str_key_prefix(None) == "dashboard:note_str:"
    assert note_str_key_prefix(17) == "dashboard:17:note_str:"
    body = "x" * 5000
    assert list(split_body(body, 17).values()) == note_store.split(body)
    assert list(split_body(body, 17)) == [note_store.chunk_key(17, i) for i in range(3)]


def test_notes_written_here_read_back_with_get_note(study):
    long = "".join(f"row {i}: {'x' * 40}\n" for i in range(200))  # 9,690 characters: 5 chunks
    written = write_notes(study._storage, study._study_id,
                          {None: long, study.trials[1]._trial_id: "**trial 1**"})
    assert get_note(study) == long and get_note(trial(study, 1)) == "**trial 1**"
    assert written[None] == StoredNote(1, 5, long)
    assert version(study, None) == 1

    write_notes(study._storage, study._study_id, {None: "short now"})  # stale chunks blanked
    assert get_note(study) == "short now" and version(study, None) == 2
    assert read_notes(study._storage, study._study_id, [None])[None] == StoredNote(
        2, 5, "short now")
    write_notes(study._storage, study._study_id, {None: ""})
    assert get_note(study) == "" and version(study, None) == 3
    write_notes(study._storage, study._study_id, {None: long + long})  # grows past the stale
    assert get_note(study) == long + long and version(study, None) == 4
    assert get_note(trial(study, 0)) == "" and get_note(trial(study, 1)) == "**trial 1**"


def test_notes_of_optuna_dashboard_read_here_and_versions_follow_on(study):
    save_note(study, "a" * 3000)
    save_note(trial(study, 2), "by the dashboard")
    ids = [t._trial_id for t in study.trials]
    assert read_notes(study._storage, study._study_id, [None, ids[2], ids[0]]) == {
        None: StoredNote(1, 2, "a" * 3000), ids[2]: StoredNote(1, 1, "by the dashboard"),
        ids[0]: StoredNote()}
    assert read_all_notes(study._storage, study._study_id) == {
        None: StoredNote(1, 2, "a" * 3000), ids[2]: StoredNote(1, 1, "by the dashboard")}
    write_notes(study._storage, study._study_id, {ids[2]: "by us", None: "b"})
    save_note(trial(study, 2), "by the dashboard again")  # its version: ours + 1
    assert version(study, ids[2]) == 3 and get_note(trial(study, 2)) == "by the dashboard again"
    assert get_note(study) == "b" and version(study, None) == 2


def test_reading_all_notes_keeps_to_the_notes_keys(study):
    """Other study system attributes under `dashboard:` (old artifact records) and keys that
    only look like note keys are not notes; a key with LIKE's wildcards in it is matched
    literally."""
    storage = study._storage
    for key in ("dashboard:artifacts:7:abc", "dashboard:7:note_strX", "dashboardXnote_ver",
                "dashboard%:note_ver", "dashboard:7:note_str:"):
        storage.set_study_system_attr(study._study_id, key, "not a note")
    save_note(study, "the study's")
    assert read_all_notes(storage, study._study_id) == {None: StoredNote(1, 1, "the study's")}
    assert note_store.read_attrs(storage, study._study_id, ["dashboard%:note_ver", "nothing"]) \
        == {"dashboard%:note_ver": "not a note", "nothing": None}


def test_writing_a_note_costs_the_same_in_a_small_and_a_large_study(study, monkeypatch):
    """No read of every system attribute (what `save_note` does), and the same statements
    (an IN list renders one placeholder a key) whatever else the study holds."""
    storage = study._storage

    def refuse(*args, **kwargs):
        raise AssertionError("read every system attribute of the study")

    def statements(note: int) -> list[str]:
        engine, seen = note_store.engine_of(storage), []

        def listen(connection, cursor, statement, *args) -> None:
            seen.append(statement)

        sqlalchemy.event.listen(engine, "before_cursor_execute", listen)
        with monkeypatch.context() as patch:
            patch.setattr(type(storage), "get_study_system_attrs", refuse)
            patch.setattr(type(note_store.rdb_storage(storage)), "get_study_system_attrs",
                          refuse)
            write_notes(storage, study._study_id, {note: "x" * 3000})
            write_notes(storage, study._study_id, {note: "y"})
            assert read_notes(storage, study._study_id, [note])[note].body == "y"
        sqlalchemy.event.remove(engine, "before_cursor_execute", listen)
        return [s for s in seen if not s.startswith(("BEGIN", "PRAGMA", "SAVEPOINT"))]

    small = statements(study.trials[1]._trial_id)
    for number in range(400):  # a large study: many notes and other attributes
        storage.set_study_system_attr(study._study_id, f"dashboard:{10_000 + number}:note_ver", 1)
        storage.set_study_system_attr(study._study_id,
                                      f"dashboard:{10_000 + number}:note_str:0", "z" * 100)
    assert statements(study.trials[2]._trial_id) == small
