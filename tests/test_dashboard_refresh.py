"""Workers refreshing the dashboard as trials finish: none waits for another's refresh, the
board still ends showing every finished trial (the dirty mark), on SQLite and on PostgreSQL;
and the study's note stays small at 1,000+ trials."""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest
from optuna_dashboard import get_note
from postgres_cluster import running_cluster
from test_verdict import add_trial

from search.results import dashboard_notes
from search.results.dashboard_notes import (
    MAX_NOTE_BYTES,
    DashboardMemory,
    after_finishing,
    is_clean,
    mark_dirty,
    refresh_dashboard,
    refresh_if_dirty,
)
from search.study.artifacts import artifact_store

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


@pytest.fixture(scope="module")
def postgres():
    with running_cluster() as cluster:
        yield cluster.url


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'refresh.db'}"
    return request.getfixturevalue("postgres")


def worker_study(url: str, name: str) -> optuna.Study:
    """The study as one worker holds it (each worker its own storage and connections)."""
    return optuna.load_study(study_name=name, storage=url)


@pytest.fixture
def two_workers(storage_url, request) -> tuple[optuna.Study, optuna.Study, str]:
    name = f"refresh-{request.node.name}"
    created = optuna.create_study(storage=storage_url, study_name=name, direction="maximize")
    created.set_user_attr("train_spec", {"model": "vit_tiny_patch16_224"})
    return worker_study(storage_url, name), worker_study(storage_url, name), storage_url


def board_rows(study: optuna.Study) -> list[str]:
    """The trial numbers in the study's note's table, as the dashboard reads the note."""
    return [line.split(" | ")[0][2:] for line in get_note(study).splitlines()
            if line.startswith("| ") and " | COMPLETE | " in line]


def test_two_workers_finishing_at_once_both_show_and_neither_waits(two_workers, tmp_path,
                                                                   monkeypatch):
    """Worker A's refresh is slowed until worker B has finished its trial and come back from
    its own dashboard step: B finds the notes lock taken and goes on (were B to wait for the
    lock, A would still be waiting for B when its patience ends). A then sees B's mark and
    refreshes again: the board shows both trials."""
    first, second, url = two_workers
    store = artifact_store(tmp_path / "a")
    in_refresh, b_back = threading.Event(), threading.Event()
    seen = {}
    real = dashboard_notes.write_study_note

    def slow_study_note(*args, **kwargs):
        if threading.current_thread().name == "A" and not in_refresh.is_set():
            in_refresh.set()
            seen["b came back while A refreshed"] = b_back.wait(120)
        return real(*args, **kwargs)

    monkeypatch.setattr(dashboard_notes, "write_study_note", slow_study_note)
    add_trial(first, range(10), rank=8, params=8000)  # A's trial finished
    results = {}
    worker_a = threading.Thread(name="A", target=lambda: results.update(
        a=after_finishing(first, store, url, DashboardMemory())))
    worker_a.start()
    assert in_refresh.wait(120)
    add_trial(second, range(11), rank=2, params=2000)  # B's trial finished meanwhile
    results["b"] = after_finishing(second, store, url, DashboardMemory())
    b_back.set()
    worker_a.join(120)
    assert seen == {"b came back while A refreshed": True}
    assert results == {"b": 0, "a": 4}  # B wrote nothing; A: 2 trial notes, the study's twice
    assert sorted(board_rows(first)) == ["0", "1"]
    assert is_clean(first)


def test_a_mark_set_while_the_refresher_lets_go_is_not_lost(two_workers, tmp_path,
                                                            monkeypatch):
    """B finishes after A's last look at the mark inside the lock and before A lets go of
    it: B's try finds the lock taken, so only A's look after letting go can show B's
    trial."""
    first, second, url = two_workers
    store = artifact_store(tmp_path / "a")
    real = dashboard_notes.try_study_lock
    raced = {}

    @contextmanager
    def lock_with_a_race(*args):
        with real(*args) as held:
            yield held
            if held and not raced:  # A's refresh is done; A still holds the lock
                add_trial(second, range(11), rank=2, params=2000)
                raced["b wrote"] = after_finishing(second, store, url, DashboardMemory())

    monkeypatch.setattr(dashboard_notes, "try_study_lock", lock_with_a_race)
    add_trial(first, range(10), rank=8, params=8000)
    assert after_finishing(first, store, url, DashboardMemory()) == 4
    assert raced == {"b wrote": 0}
    assert sorted(board_rows(first)) == ["0", "1"]
    assert is_clean(first) and is_clean(second)


def test_an_emptied_queue_refreshes_a_dirty_board_waiting_for_the_lock(two_workers, tmp_path):
    first, _, url = two_workers
    store = artifact_store(tmp_path / "a")
    memory = DashboardMemory()
    add_trial(first, range(10), rank=8, params=8000)
    assert refresh_if_dirty(first, store, url, memory) == 0  # never marked: nothing to do
    mark_dirty(first)  # as a worker whose try found the lock taken leaves it
    assert not is_clean(first)
    assert refresh_if_dirty(first, store, url, memory) == 2
    assert is_clean(first) and board_rows(first) == ["0"]
    assert refresh_if_dirty(first, store, url, memory) == 0


def test_a_failed_refresh_is_one_line_and_the_next_finished_trial_shows_both(
        two_workers, tmp_path, capsys, shown_log, monkeypatch):
    """A full disk while writing the leaderboard's artifacts: one line, the worker goes on,
    the lock is let go and the board stays dirty until a refresh succeeds."""
    from search.worker.claim_loop import refresh_leaderboard

    first, _, url = two_workers
    store, memory = artifact_store(tmp_path / "a"), DashboardMemory()

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    add_trial(first, range(10), rank=8, params=8000)
    with monkeypatch.context() as patch:
        patch.setattr(store, "write", full)
        refresh_leaderboard(after_finishing, first, store, url, memory)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err
    assert not is_clean(first)
    add_trial(first, range(11), rank=2, params=2000)
    refresh_leaderboard(after_finishing, first, store, url, memory)
    assert capsys.readouterr().err == ""
    assert is_clean(first) and sorted(board_rows(first)) == ["0", "1"]


def test_one_chart_and_one_csv_per_study_overwritten_with_a_new_version_in_the_link(
        two_workers, tmp_path):
    """No artifact per refresh: the same two ids, their links' `?v=` moving with their
    content; an artifact a person deleted in the dashboard (its record set to null) is made
    again rather than written where the dashboard no longer serves it."""
    import json
    import re

    first, _, url = two_workers
    store = artifact_store(tmp_path / "a")
    links = re.compile(r"\(/artifacts/\d+/([0-9a-f-]+)\?v=([0-9a-f]+)\)")
    add_trial(first, range(10), rank=8, params=8000)
    refresh_dashboard(first, store, url)
    before = links.findall(get_note(first))
    add_trial(first, range(11), rank=2, params=2000)
    refresh_dashboard(first, store, url)
    after = links.findall(get_note(first))
    assert [i for i, _ in after] == [i for i, _ in before] and len(after) == 2  # CSV, chart
    assert all(old != new for (_, old), (_, new) in zip(before, after, strict=True))
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(i for i, _ in after)

    chart = first.user_attrs["leaderboard_chart"]  # deleted as the dashboard deletes it
    store.remove(chart)
    first._storage.set_study_system_attr(first._study_id, f"artifacts:{chart}",
                                         json.dumps(None))
    add_trial(first, range(12), rank=4, params=4000)
    refresh_dashboard(first, store, url)
    assert first.user_attrs["leaderboard_chart"] != chart
    assert (tmp_path / "a" / first.user_attrs["leaderboard_chart"]).is_file()


def test_a_failed_trials_note_is_read_again_a_complete_ones_is_not(two_workers, tmp_path):
    """A complete trial's note changes only with the trial: a worker does not read it again
    (a person's edit stays until the trial changes). A failed trial's note changes with
    other trials and can change back, so another process may have written it: read again."""
    from search.results.note_store import write_notes

    first, _, url = two_workers
    store, memory = artifact_store(tmp_path / "a"), DashboardMemory()
    add_trial(first, range(10), rank=8, params=8000)
    first.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.FAIL, user_attrs={"baseline": False, "error": "boom"}))
    complete, failed = (optuna.Trial(first, t._trial_id) for t in first.trials)
    after_finishing(first, store, url, memory)
    written = {trial: get_note(trial) for trial in (complete, failed)}
    assert "failed: boom" in written[failed]
    write_notes(first._storage, first._study_id, {complete._trial_id: "edited",
                                                  failed._trial_id: "another process's"})
    add_trial(first, range(11), rank=2, params=2000)
    assert after_finishing(first, store, url, memory) == 3  # the new one, the failed, study
    assert get_note(complete) == "edited" and get_note(failed) == written[failed]


def test_the_concurrent_blocking_refreshes_never_leave_an_older_board(two_workers, tmp_path,
                                                                      monkeypatch):
    from test_verdict import check_concurrent_refreshes

    first, _, url = two_workers
    check_concurrent_refreshes(first, artifact_store(tmp_path / "a"), url, monkeypatch)


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    """A study of 1,200 trials stored as workers store them, plus failed trials with long
    error messages; its notes written once, cold (`search leaderboard --note`)."""
    from benchmarks.synthetic_study import make_study

    folder = tmp_path_factory.mktemp("large")
    url = f"sqlite:///{folder / 'large.db'}"
    study = make_study(url, "large", trials=1200, val_images=216,
                       artifacts_dir=folder / "artifacts")
    for number in range(3):
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.FAIL,
            user_attrs={"baseline": False, "error": f"RuntimeError {number}: " + "x" * 5000}))
    store = artifact_store(folder / "artifacts")
    written = refresh_dashboard(study, store, url)
    return study, store, url, written


def test_the_study_note_of_1200_trials_stays_under_64_kib(large):
    study, _, _, written = large
    assert written == 1203 + 1  # every finished trial's note and the study's
    note = get_note(study)
    assert len(note.encode()) <= MAX_NOTE_BYTES
    assert "1,203 trials: 1,200 complete, 3 failed." in note
    rows = [line for line in note.splitlines() if line.startswith("| ")][1:]
    assert 50 <= len(rows) <= 55 and rows[0].startswith("| ")
    assert "**baseline** (head)" in note and "| **yes** |" in note  # baseline, recommended
    assert "more trials: [full leaderboard as CSV](/artifacts/" in note


def test_a_process_with_no_memory_reads_every_note_in_one_query_and_writes_none(large,
                                                                              monkeypatch):
    from search.results import note_store

    study, store, url, _ = large
    reads = []
    real = note_store.read_all_notes
    monkeypatch.setattr(note_store, "read_all_notes",
                        lambda *args: reads.append(args) or real(*args))
    assert refresh_dashboard(study, store, url) == 0  # nothing changed
    assert len(reads) == 1
