"""Paths from the database never take a worker outside its artifact store (issue 25, items 5
and 6), on the real file system: real symbolic links, real files outside the folder that must
survive unread.

- The store (`ContainedArtifactStore`): ids through a symlinked folder, symlinked files, `../`
  and absolute ids are refused for reading, writing and removing; only ids this tool writes
  may be written or removed.
- The stored folder (`search.study.artifacts`): a study's `artifacts` attribute is trusted only
  for the default folder beside the storage or a folder marked for the study by `search grid`;
  else the worker refuses in one line (exit 2) and touches nothing.
- End to end, with the real CLI on the demo (one epoch, two trials).
"""

from __future__ import annotations

import io
import os
import sys
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import TrialState
from run_cli import DEMO, search_in_process

from search.results.dashboard import dashboard_artifacts
from search.study.artifacts import (
    MARKER_FILE,
    ArtifactsFolderError,
    artifact_store,
    artifacts_folder,
)
from search.study.open_study import NewStudy, open_study
from search.study.storage import default_artifacts_dir, open_storage
from search.study.study_record import ARTIFACTS_TOKEN
from search.study.study_spec import load_spec

SECRET = "outside the artifact folder; must survive, unread"


def checkpoint_id() -> str:
    return f"checkpoint-{uuid.uuid4().hex}"


# Every file this process opens while `opened` is active (Python's audit events: built-in
# open and os.open), to show that a refused path was not even read. A hook cannot be removed:
# it is installed once and records only while a test asks.
_OPENED: list[str] | None = None


def _record_open(event: str, args: tuple) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.path.realpath(os.fsdecode(args[0])))


sys.addaudithook(_record_open)


@pytest.fixture
def opened():
    global _OPENED
    _OPENED = []
    try:
        yield _OPENED
    finally:
        _OPENED = None


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder beside the artifact folder holding a file that must survive unread."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "x.txt").write_text(SECRET)
    return folder


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Everything under `folder`, links as their targets, to show nothing there changed."""
    return {str(p.relative_to(folder)): (f"-> {os.readlink(p)}" if p.is_symlink() else
                                         p.read_bytes() if p.is_file() else "dir")
            for p in sorted(folder.rglob("*"))}


# The store


def test_an_id_through_a_symlinked_folder_is_refused_and_its_target_survives_unread(
        tmp_path, outside, opened):
    """Issue item 5: with ART/dirlink -> /elsewhere, Optuna's store read and removed
    /elsewhere/x.txt for the id `dirlink/x.txt` (it checks abspath, not realpath)."""
    store = artifact_store(tmp_path / "art")
    (tmp_path / "art" / "dirlink").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="not a file name"):
        store.open_reader("dirlink/x.txt")
    with pytest.raises(ValueError, match="not a file name"):
        store.remove("dirlink/x.txt")
    with pytest.raises(ValueError, match="not a file name"):
        store.write("dirlink/x.txt", io.BytesIO(b"overwritten"))
    assert str(outside / "x.txt") not in opened  # before this test reads it
    assert (outside / "x.txt").read_text() == SECRET


def test_a_symlinked_file_in_the_folder_pointing_out_is_neither_read_nor_written(
        tmp_path, outside, opened):
    store = artifact_store(tmp_path / "art")
    link = checkpoint_id()  # a name of the form the store writes, and still refused
    (tmp_path / "art" / link).symlink_to(outside / "x.txt")
    for use in (lambda: store.open_reader(link), lambda: store.remove(link),
                lambda: store.write(link, io.BytesIO(b"overwritten"))):
        with pytest.raises(ValueError, match="symbolic link"):
            use()
    assert str(outside / "x.txt") not in opened  # before this test reads it
    assert (outside / "x.txt").read_text() == SECRET
    assert (tmp_path / "art" / link).is_symlink()  # not even the link is removed


def test_a_link_pointing_inside_the_folder_is_refused_too(tmp_path):
    """A link is never followed, wherever it leads: what it names is not the store's file."""
    store = artifact_store(tmp_path / "art")
    real, link = str(uuid.uuid4()), str(uuid.uuid4())
    store.write(real, io.BytesIO(b"weights"))
    (tmp_path / "art" / link).symlink_to(tmp_path / "art" / real)
    with pytest.raises(ValueError, match="symbolic link"):
        store.remove(link)
    assert (tmp_path / "art" / real).read_bytes() == b"weights"


@pytest.mark.parametrize("artifact_id", [
    "../victim", "../../victim", "a/../../victim", "..", ".", "", "./x", "x\0y",
    "/etc/passwd",  # absolute
    MARKER_FILE,  # the folder's marker is no artifact
])
def test_ids_that_are_no_plain_file_name_are_refused(tmp_path, artifact_id, opened):
    (tmp_path / "victim").write_text(SECRET)
    opened.clear()  # that write was this test's
    store = artifact_store(tmp_path / "a" / "art")
    for use in (lambda: store.open_reader(artifact_id), lambda: store.remove(artifact_id),
                lambda: store.write(artifact_id, io.BytesIO(b"overwritten"))):
        with pytest.raises(ValueError, match="Invalid artifact_id"):
            use()
    assert str(tmp_path / "victim") not in opened
    assert (tmp_path / "victim").read_text() == SECRET
    assert os.listdir(tmp_path / "a" / "art") == []


def test_only_ids_this_tool_writes_are_written_or_removed(tmp_path):
    """A plain file someone put in the folder may be read by name, never replaced or deleted
    through an id from the database."""
    store = artifact_store(tmp_path / "art")
    (tmp_path / "art" / "v.txt").write_text(SECRET)
    with store.open_reader("v.txt") as reader:
        assert reader.read() == SECRET.encode()
    with pytest.raises(ValueError, match="not an id this tool writes"):
        store.remove("v.txt")
    with pytest.raises(ValueError, match="not an id this tool writes"):
        store.write("v.txt", io.BytesIO(b"overwritten"))
    assert (tmp_path / "art" / "v.txt").read_text() == SECRET


@pytest.mark.parametrize("artifact_id", [str(uuid.uuid4()), checkpoint_id()])
def test_the_ids_this_tool_writes_round_trip(tmp_path, artifact_id):
    store = artifact_store(tmp_path / "art")
    store.write(artifact_id, io.BytesIO(b"content"))
    with store.open_reader(artifact_id) as reader:
        assert reader.read() == b"content"
    store.remove(artifact_id)
    with pytest.raises(ArtifactNotFound):
        store.open_reader(artifact_id)
    with pytest.raises(ArtifactNotFound):
        store.remove(artifact_id)


def test_optuna_upload_and_download_go_through_the_store(tmp_path):
    """Optuna's own helpers (trial pictures, weights, export) name artifacts as allowed."""
    store = artifact_store(tmp_path / "art")
    study = optuna.create_study()
    (tmp_path / "picture.png").write_bytes(b"png")
    made = optuna.artifacts.upload_artifact(artifact_store=store, study_or_trial=study,
                                            file_path=str(tmp_path / "picture.png"))
    optuna.artifacts.download_artifact(artifact_store=store, artifact_id=made,
                                       file_path=str(tmp_path / "back.png"))
    assert (tmp_path / "back.png").read_bytes() == b"png"


# The stored folder


def new_study(tmp_path: Path, folder: Path) -> tuple[optuna.Study, str]:
    """A study created as `search grid --artifacts folder` creates it; its storage URL."""
    tmp_path.mkdir(exist_ok=True)
    url = f"sqlite:///{tmp_path / 'search.db'}"
    study = open_study(open_storage(url), "demo",
                       create=NewStudy(load_spec(DEMO).train, str(folder), False))
    return study, url


def test_a_folder_marked_at_creation_is_trusted(tmp_path):
    study, url = new_study(tmp_path, tmp_path / "art")
    assert (tmp_path / "art" / MARKER_FILE).is_file()
    assert artifacts_folder(study, url, None) == str(tmp_path / "art")


def test_an_unmarked_stored_folder_is_refused_in_one_line_and_left_alone(tmp_path, outside):
    """Issue item 6: the database named /some/dir and the worker wrote and deleted there."""
    study, url = new_study(tmp_path, tmp_path / "art")
    study.set_user_attr("artifacts", str(outside))
    before = snapshot(outside)
    with pytest.raises(ArtifactsFolderError, match=r"pass --artifacts DIR") as refused:
        artifacts_folder(study, url, None)
    assert len(str(refused.value).splitlines()) == 1
    assert snapshot(outside) == before
    assert artifacts_folder(study, url, str(tmp_path / "mine")) == str(tmp_path / "mine")


def test_another_studys_marked_folder_is_refused(tmp_path):
    """A marker alone is not enough: its token must be this study's."""
    study, url = new_study(tmp_path, tmp_path / "art")
    other, _ = new_study(tmp_path / "other", tmp_path / "other-art")
    assert other.user_attrs[ARTIFACTS_TOKEN] != study.user_attrs[ARTIFACTS_TOKEN]
    study.set_user_attr("artifacts", str(tmp_path / "other-art"))
    with pytest.raises(ArtifactsFolderError, match="no .search-artifact-store with the study"):
        artifacts_folder(study, url, None)


def test_a_stored_folder_missing_here_is_refused_and_not_created(tmp_path):
    study, url = new_study(tmp_path, tmp_path / "art")
    study.set_user_attr("artifacts", str(tmp_path / "nowhere" / "art"))
    with pytest.raises(ArtifactsFolderError, match="no folder on this host"):
        artifacts_folder(study, url, None)
    assert not (tmp_path / "nowhere").exists()


def test_an_older_study_keeps_the_default_folder_and_is_marked_when_its_command_is_rerun(
        tmp_path):
    """Studies made before markers: the default folder beside the storage is derived from the
    URL, not the database, and needs none; another folder is refused until the study's own
    command (`--artifacts` naming it) runs again and marks it."""
    study, url = new_study(tmp_path, tmp_path / "art")
    (tmp_path / "art" / MARKER_FILE).unlink()
    study.set_user_attr(ARTIFACTS_TOKEN, None)  # as an older study has none
    with pytest.raises(ArtifactsFolderError):
        artifacts_folder(study, url, None)
    default = default_artifacts_dir(url)
    study.set_user_attr("artifacts", str(default))
    assert artifacts_folder(study, url, None) == str(default)
    assert not default.exists()  # trusted without a marker, and nothing was written

    study.set_user_attr("artifacts", str(tmp_path / "art"))
    again, _ = new_study(tmp_path, tmp_path / "art")  # joins: the same folder, so marked
    assert artifacts_folder(again, url, None) == str(tmp_path / "art")


def test_joining_with_another_folder_marks_nothing(tmp_path, outside):
    study, url = new_study(tmp_path, tmp_path / "art")
    study.set_user_attr("artifacts", str(outside))
    new_study(tmp_path, tmp_path / "art")  # the command's folder is not the one stored
    assert not (outside / MARKER_FILE).exists()
    with pytest.raises(ArtifactsFolderError):
        artifacts_folder(study, url, None)


def test_the_dashboard_refuses_an_unmarked_stored_folder(tmp_path, outside):
    study, url = new_study(tmp_path, tmp_path / "art")
    storage = study._storage
    assert dashboard_artifacts(storage, url, None) == str(tmp_path / "art")
    study.set_user_attr("artifacts", str(outside))
    with pytest.raises(ArtifactsFolderError, match="pass --artifacts DIR"):
        dashboard_artifacts(storage, url, None)


# End to end: `search grid` then `search worker`, in this process


def queue_demo(tmp_path: Path, folder: Path, capsys, monkeypatch) -> tuple[str, optuna.Study]:
    """The demo's baseline (trial 0) and r=2 alpha=8 (trial 1), WAITING, one epoch each, in a
    study whose artifact folder is `folder` (marked by `search grid`)."""
    url = f"sqlite:///{tmp_path / 'search.db'}"
    code, _, err = search_in_process(["grid", "--spec", DEMO, "--epochs", "1", "--ranks", "2",
                                      "--alphas", "8", "--workers", "0", "--storage", url,
                                      "--artifacts", str(folder)], tmp_path, capsys, monkeypatch)
    assert code == 0, err
    folder.mkdir(exist_ok=True)  # as a worker would make it (older versions of grid did not)
    return url, open_study(open_storage(url), "demo")


def point(study: optuna.Study, number: int, artifact: str) -> None:
    """Give the waiting trial `number` a checkpoint pointer, as a database writer may."""
    trial = study.get_trials(deepcopy=False)[number]
    study._storage.set_trial_user_attr(trial._trial_id, "checkpoint",
                                       {"artifact": artifact, "epoch": 1})


def test_a_worker_refuses_pointers_out_of_its_folder_and_starts_those_trials_over(
        tmp_path, outside, capsys, monkeypatch, opened):
    """Trial 1 points through a symlinked folder (the issue's case), trial 0 at a symlinked
    file; the worker, joining with only the storage URL and the study name (the folder marked
    by `search grid`), reads neither target, deletes nothing, and completes both trials."""
    folder = tmp_path / "art"
    url, study = queue_demo(tmp_path, folder, capsys, monkeypatch)
    (folder / "dirlink").symlink_to(outside, target_is_directory=True)
    link = checkpoint_id()
    (folder / link).symlink_to(outside / "x.txt")
    point(study, 1, "dirlink/x.txt")
    point(study, 0, link)

    code, _, err = search_in_process(["worker", "--study", "demo", "--storage", url],
                                     tmp_path, capsys, monkeypatch)
    assert code == 0, err
    assert ("trial 1: checkpoint dirlink/x.txt not usable (Invalid artifact_id: "
            "'dirlink/x.txt' is not a file name in the artifact folder); starting over\n") in err
    assert f"trial 0: checkpoint {link} not usable (Invalid artifact_id: '{link}' is a " \
           "symbolic link in the artifact folder); starting over\n" in err
    assert str(outside / "x.txt") not in opened  # before this test reads it
    assert (outside / "x.txt").read_text() == SECRET
    assert (folder / link).is_symlink()
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    pointers = [(t.user_attrs.get("checkpoint") or {}).get("artifact") for t in trials]
    assert link not in pointers and "dirlink/x.txt" not in pointers  # dropped
    assert all("resumed_from_epoch" not in t.user_attrs for t in trials)
    assert len(trials[1].user_attrs["artifacts"]) == 5  # the trial's pictures, in its folder


def test_a_worker_refuses_an_unmarked_stored_folder_and_works_with_artifacts_flag(
        tmp_path, outside, capsys, monkeypatch):
    """Issue item 6: the study's `artifacts` attribute names a folder nobody marked, and a
    trial points to a file there. Without --artifacts the worker says so in one line, exits
    2 and neither writes nor deletes there; with --artifacts it runs, and the pointer (no
    checkpoint's id) deletes nothing in that folder either."""
    folder = tmp_path / "art"
    url, study = queue_demo(tmp_path, folder, capsys, monkeypatch)
    (outside / "v.txt").write_text(SECRET)
    (folder / "v.txt").write_text(SECRET)
    study.set_user_attr("artifacts", str(outside))
    point(study, 1, "v.txt")
    before = snapshot(outside)

    code, out, err = search_in_process(["worker", "--study", "demo", "--storage", url],
                                       tmp_path, capsys, monkeypatch)
    assert code == 2
    assert err == (f"search worker: error: study 'demo' names {outside} as its artifact folder, "
                   f"but it holds no {MARKER_FILE} with the study's token; pass --artifacts DIR "
                   "to choose the folder here\n")
    assert snapshot(outside) == before
    assert [t.state for t in study.get_trials()] == [TrialState.WAITING] * 2

    code, _, err = search_in_process(["worker", "--study", "demo", "--storage", url,
                                      "--artifacts", str(folder)], tmp_path, capsys, monkeypatch)
    assert code == 0, err
    assert "trial 1: checkpoint v.txt not usable (" in err
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 2
    assert snapshot(outside) == before
    assert (folder / "v.txt").read_text() == SECRET  # damaged, but no checkpoint: kept
    uploaded = study.get_trials()[1].user_attrs["artifacts"].values()
    assert all((folder / artifact).is_file() for artifact in uploaded)
