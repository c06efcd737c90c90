"""Faults around one trial, with real training on the demo: checkpoints that cannot be used,
an artifact disk that fills up, a device out of memory (alone and in a pack), and points the
study gives up on.

A worker is simulated in this process: `run_claimed_trial` on a trial claimed from a SQLite
study that `search grid --workers 0` queued; a worker killed mid-trial is a stop check
(`StopWhen`) that raises something no handler catches, which leaves the trial as SIGKILL
would (RUNNING, with its last checkpoint, no heartbeat any more).
"""

from __future__ import annotations

import errno
import io
import math
import os
import subprocess
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from optuna.trial import TrialState
from run_cli import DEMO, search_in_process

from objectives.checkpoint import read_training_state
from objectives.data import load_splits
from search.results.leaderboard import leaderboard
from search.study import trials
from search.study.artifacts import artifact_store
from search.study.heartbeat_settings import HeartbeatSettings
from search.study.open_study import open_study
from search.study.storage import open_storage
from search.study.study_record import StudyRecord
from search.study.study_spec import load_spec
from search.worker.context import WorkerContext
from search.worker.faults import WorkerEnvironmentError, environment_fault
from search.worker.pack_run import run_claimed_pack
from search.worker.trial_queue import claim_waiting, next_trial
from search.worker.trial_run import run_claimed_trial

BEATS = HeartbeatSettings(interval=1, grace_period=2, max_retries=1)  # 2 tries per point
NEVER = lambda: False  # noqa: E731  (no stop requested)
CHECKPOINT_BYTES = 108_000  # about one demo checkpoint at rank 2 (adapters, head, optimizer)


class Killed(BaseException):
    """The worker process dies: nothing in the trial's code catches this."""


class StopWhen:
    """A worker's stop flag (`search.worker.signals.StopSignals`) whose check at every
    training step is `check`: a test's watch, kill or fault."""

    requested = False

    def __init__(self, check) -> None:
        self.raise_if_requested = check


@pytest.fixture(scope="module")
def data():
    return load_splits(load_spec(DEMO).train)


def queue_grid(tmp_path: Path, capsys, monkeypatch, *args: str) -> str:
    """A demo study holding the baseline (trial 0) and r=2 alpha=8 (trial 1), all WAITING."""
    url = f"sqlite:///{tmp_path / 'search.db'}"
    code, _, err = search_in_process(["grid", "--spec", DEMO, "--ranks", "2", "--alphas", "8",
                                      "--workers", "0", "--storage", url, *args],
                                     tmp_path, capsys, monkeypatch)
    assert code == 0, err
    return url


def worker_study(url: str, beats: HeartbeatSettings | None = None):
    storage = open_storage(url, heartbeat=beats)
    study = open_study(storage, "demo")
    return storage, study, StudyRecord(study).train_spec


def claim(storage, study, number: int):
    trial = study.get_trials(deepcopy=False)[number]
    if beats_on(storage):
        storage.record_heartbeat(trial._trial_id)
    assert storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING)
    return storage.get_trial(trial._trial_id)


def beats_on(storage) -> bool:
    return storage.get_heartbeat_interval() is not None


def kill_after_epochs(epochs: int, data, spec, error: BaseException | type = Killed):
    """A stop check that kills the worker (raises `error`) at the first step after `epochs`
    epochs of this attempt or pack (each saved its checkpoint first)."""
    steps = math.ceil(data.train_size / spec.batch_size)
    calls = []

    def check() -> None:
        calls.append(1)
        if len(calls) > epochs * steps:
            raise error

    return check


def checkpoint_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("checkpoint-"))


def test_a_checkpoint_missing_from_this_hosts_store_starts_the_trial_over(
        tmp_path, capsys, shown_log, monkeypatch, data):
    """The worker that stopped wrote its checkpoint to an artifact folder this one lacks: the
    trial says so, drops the dangling pointer and completes from epoch 1 (it used to fail
    with ArtifactNotFound at its first save, which tried to delete the missing file)."""
    url = queue_grid(tmp_path, capsys, monkeypatch, "--epochs", "2")
    storage, study, spec = worker_study(url)
    folder = tmp_path / "artifacts"
    store = artifact_store(folder)
    trial = claim(storage, study, 1)
    storage.set_trial_user_attr(trial._trial_id, "checkpoint",
                                {"artifact": "checkpoint-elsewhere", "epoch": 1})
    trial = storage.get_trial(trial._trial_id)
    pointers = []

    def watch() -> None:  # the pointer while this attempt trains
        pointers.append(storage.get_trial(trial._trial_id).user_attrs.get("checkpoint"))

    capsys.readouterr()
    assert run_claimed_trial(WorkerContext(storage, study, spec, data, store,
                                           stop=StopWhen(watch)), trial) == \
        TrialState.COMPLETE
    err = capsys.readouterr().err
    assert "checkpoint checkpoint-elsewhere not usable (not found); starting over" in err
    assert "resuming" not in err
    assert pointers[0] is None  # dropped before the first step
    done = storage.get_trial(trial._trial_id)
    # The pointer names the checkpoint after the last epoch, kept until COMPLETE was written;
    # its file is gone now (a finished trial's attributes cannot change).
    assert done.user_attrs["epochs_done"] == 2 and done.user_attrs["checkpoint"]["epoch"] == 2
    assert "resumed_from_epoch" not in done.user_attrs
    assert checkpoint_files(folder) == []


def test_a_corrupt_checkpoint_pointer_starts_the_trial_over_and_the_worker_goes_on(
        tmp_path, capsys, monkeypatch):
    """`../../victim` in the database is refused by Optuna's artifact store (ValueError): it
    used to escape and crash the worker, leaving the trial RUNNING."""
    folder = tmp_path / "a" / "artifacts"
    url = queue_grid(tmp_path, capsys, monkeypatch, "--epochs", "1", "--artifacts", str(folder))
    victim = tmp_path / "victim"  # where ../../victim leads from the artifact folder
    victim.write_text("not a checkpoint; must survive")
    storage, study, _ = worker_study(url)
    point = study.get_trials()[1]
    storage.set_trial_user_attr(point._trial_id, "checkpoint",
                                {"artifact": "../../victim", "epoch": 1})

    code, _, err = search_in_process(["worker", "--study", "demo", "--storage", url],
                                     tmp_path, capsys, monkeypatch)
    assert code == 0, err
    assert "checkpoint ../../victim not usable (Invalid artifact_id" in err
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 2
    assert study.get_trials()[1].user_attrs["checkpoint"]["epoch"] == 1  # a new one, whose
    assert not any(folder.glob("checkpoint-*"))  # file went once the trial was COMPLETE
    assert victim.read_text() == "not a checkpoint; must survive"


class FullDisk(optuna.artifacts.FileSystemArtifactStore):
    """An artifact folder on a disk of `capacity` bytes: a write stops where the disk is full,
    leaving what it wrote, and raises ENOSPC, as a real file system does."""

    def __init__(self, folder: Path, capacity: int) -> None:
        super().__init__(str(folder))
        self.folder, self.capacity = folder, capacity

    def write(self, artifact_id, content_body) -> None:
        used = sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())
        content = content_body.read()
        room = max(self.capacity - used, 0)
        with open(self._get_filepath(artifact_id), "wb") as file:
            file.write(content[:room])
            if len(content) > room:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def small_disk(tmp_path):
    """(folder, store) with room for one checkpoint but not two: a real tmpfs where this
    process may mount one (root), else a store that runs out of room the same way."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    size = CHECKPOINT_BYTES * 3 // 2
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                              str(folder)], capture_output=True).returncode == 0 \
        if os.geteuid() == 0 else False
    try:
        yield folder, (artifact_store(folder) if mounted else FullDisk(folder, size))
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True)


def test_a_full_artifact_disk_puts_the_trial_back_and_stops_the_worker(
        tmp_path, capsys, shown_log, monkeypatch, data, small_disk):
    """The second checkpoint does not fit: the trial goes back to the queue with the first
    one, the partial file is gone, and the worker is told to stop (it used to FAIL the
    trial, leave the truncated file and go on to fail the rest of the queue)."""
    folder, store = small_disk
    url = queue_grid(tmp_path, capsys, monkeypatch, "--epochs", "3")
    storage, study, spec = worker_study(url)
    trial = claim(storage, study, 1)

    with pytest.raises(WorkerEnvironmentError, match="disk full") as stopped:
        run_claimed_trial(WorkerContext(storage, study, spec, data, store), trial)
    assert len(str(stopped.value).splitlines()) == 1
    after = storage.get_trial(trial._trial_id)
    assert after.state == TrialState.WAITING
    pointer = after.user_attrs["checkpoint"]
    assert pointer["epoch"] == 1
    assert checkpoint_files(folder) == [pointer["artifact"]]  # whole, and nothing partial
    with store.open_reader(pointer["artifact"]) as reader:
        assert read_training_state(io.BytesIO(reader.read())).epoch == 1
    assert after.user_attrs["epochs_done"] == 1  # what the checkpoint holds
    assert "it resumes after epoch 1" in capsys.readouterr().err


@pytest.mark.parametrize("packed", [False, True], ids=["alone", "packed"])
def test_a_device_out_of_memory_puts_the_trials_back_and_stops_the_worker(
        packed, tmp_path, capsys, shown_log, monkeypatch, data):
    """The device runs out of memory in epoch 2, inside the training loop, of a trial trained
    alone or of a pack (baseline and r=2 alpha=8 together): every trial in hand goes back to
    the queue with its epoch-1 checkpoint, and the worker is told to stop rather than fail
    them or go on to the rest of the queue."""
    url = queue_grid(tmp_path, capsys, monkeypatch, "--epochs", "2")
    storage, study, spec = worker_study(url)
    folder = tmp_path / "artifacts"
    store = artifact_store(folder)
    claimed = claim_waiting(storage, study, 2) if packed else [claim(storage, study, 1)]
    out_of_memory = kill_after_epochs(1, data, spec, torch.cuda.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.00 GiB"))
    capsys.readouterr()

    with pytest.raises(WorkerEnvironmentError, match="out of memory") as stopped:
        worker = WorkerContext(storage, study, spec, data, store, stop=StopWhen(out_of_memory))
        if packed:
            run_claimed_pack(worker, claimed)
        else:
            run_claimed_trial(worker, claimed[0])
    assert len(str(stopped.value).splitlines()) == 1
    pointers = []
    for trial in claimed:
        after = storage.get_trial(trial._trial_id)
        assert after.state == TrialState.WAITING
        assert after.user_attrs["pack"] == len(claimed)  # trained as asked, not rerun alone
        assert after.user_attrs["checkpoint"]["epoch"] == after.user_attrs["epochs_done"] == 1
        pointers.append(after.user_attrs["checkpoint"]["artifact"])
    assert checkpoint_files(folder) == sorted(pointers)  # whole, and nothing of epoch 2
    assert capsys.readouterr().err.count("(out of memory (OutOfMemoryError: CUDA out of "
                                         "memory. Tried to allocate 2.00 GiB)); it resumes "
                                         "after epoch 1") == len(claimed)


@pytest.mark.parametrize("error, reason", [
    (OSError(errno.ENOSPC, "No space left on device"), "disk full"),
    (OSError(errno.EDQUOT, "Disk quota exceeded", "/tmp/x"), "/tmp/x: disk quota exceeded"),
    (OSError(errno.EROFS, "Read-only file system", "/store/a"),
     "artifact store /store: read-only file system"),
    (PermissionError(errno.EACCES, "Permission denied", "/store/a"),
     "artifact store /store: permission denied"),
    (PermissionError(errno.EACCES, "Permission denied", "/data/images"), None),
    (FileNotFoundError(errno.ENOENT, "No such file", "/store/a"), None),
    (RuntimeError("DefaultCPUAllocator: out of memory"), "out of memory"),
    (ValueError("rank must be positive"), None),
])
def test_environment_faults_are_told_from_the_trials_own(error, reason):
    found = environment_fault(error, "/store")
    assert found is None if reason is None else reason in found


def test_a_point_whose_retries_are_used_up_is_given_up_and_leaves_no_checkpoint(
        tmp_path, capsys, monkeypatch, data):
    """max_retries=1: a point's worker dies twice. The leaderboard says the study gave up
    after 2 tries; each FAIL row shows the epochs it reached itself and no metrics copied
    from the trial it retried; no checkpoint is left in the store."""
    url = queue_grid(tmp_path, capsys, monkeypatch, "--epochs", "3", "--heartbeat-interval",
                     "1", "--grace-period", "2", "--max-retries", "1")
    storage, study, spec = worker_study(url, BEATS)
    folder = tmp_path / "artifacts"
    store = artifact_store(folder)
    claim(storage, study, 0)
    study.tell(0, 0.5)  # the baseline, out of the way

    first = claim(storage, study, 1)
    with pytest.raises(Killed):
        run_claimed_trial(WorkerContext(storage, study, spec, data, store,
                                        stop=StopWhen(kill_after_epochs(1, data, spec))), first)
    # It had recorded results before dying (say, while uploading them): its retry inherits.
    storage.set_trial_user_attr(first._trial_id, "test_acc", 0.99)
    storage.set_trial_user_attr(first._trial_id, "val_acc", 0.99)

    retry = next_trial(storage, study, 0.5, NEVER, store=store)  # after the grace period
    assert retry.number == 2 and retry.user_attrs["test_acc"] == 0.99
    with pytest.raises(Killed):
        run_claimed_trial(WorkerContext(storage, study, spec, data, store,
                                        stop=StopWhen(kill_after_epochs(1, data, spec))), retry)
    assert len(checkpoint_files(folder)) == 1  # the retry's, after epoch 2

    assert next_trial(storage, study, 0.5, NEVER, store=store) is None  # no retry left
    assert checkpoint_files(folder) == []
    assert [t.number for t in trials.gave_up_points(study)] == [2]
    rows = {row["number"]: row for row in leaderboard(study).to_dict("records")}
    assert rows[1]["state"] == rows[2]["state"] == "FAIL"
    assert rows[1]["note"] == "worker lost (no heartbeat); retried as trial 2"
    assert rows[2]["note"] == ("retry of trial 1; resumed after epoch 1; worker lost (no "
                               "heartbeat); gave up after 2 tries")
    assert rows[1]["epochs"] == 1 and rows[2]["epochs"] == 2
    own = trials.trial_history(study.get_trials()[2])[-1]["val_acc"]
    assert rows[2]["val_acc"] == own != 0.99
    for number in (1, 2):
        assert all(pd.isna(rows[number][key]) for key in ("test_acc", "f1", "auc_micro"))


def test_a_trial_failing_with_its_own_error_is_given_up_and_leaves_no_checkpoint(
        tmp_path, capsys, monkeypatch, data):
    url = queue_grid(tmp_path, capsys, monkeypatch, "--epochs", "2")
    storage, study, spec = worker_study(url)
    folder = tmp_path / "artifacts"
    store = artifact_store(folder)
    trial = claim(storage, study, 1)
    steps = math.ceil(data.train_size / spec.batch_size)
    calls = []

    def boom() -> None:
        calls.append(1)
        if len(calls) > steps:  # after epoch 1 and its checkpoint
            raise RuntimeError("boom")

    assert run_claimed_trial(WorkerContext(storage, study, spec, data, store,
                                           stop=StopWhen(boom)), trial) == \
        TrialState.FAIL
    assert checkpoint_files(folder) == []
    row = leaderboard(study).set_index("number").loc[1]
    assert row["note"] == "RuntimeError: boom; gave up after 1 try"
    assert row["epochs"] == 1 and pd.isna(row["test_acc"])
    assert [t.number for t in trials.gave_up_points(study)] == [1]
