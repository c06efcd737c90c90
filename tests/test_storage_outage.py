"""A storage that rides out a database outage, against a real PostgreSQL server that the
tests stop and start (no mocks)."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import threading
import time

import optuna
import pytest
from postgres_cluster import running_cluster
from run_cli import DEMO, ROOT, SEARCH, search
from sqlalchemy.engine import make_url

from search.study.patient_storage import PatientRDBStorage, StorageOutage, is_outage
from search.study.storage import shown, with_driver


@pytest.fixture()
def cluster():
    with running_cluster() as cluster:
        yield cluster


def patient(url: str, timeout: float, **kwargs) -> PatientRDBStorage:
    return PatientRDBStorage(with_driver(url), outage_timeout=timeout, shown_url=shown(url),
                             engine_kwargs={"pool_pre_ping": True}, **kwargs)


def test_a_write_waits_out_a_stopped_database_and_says_so_once(cluster, capsys, shown_log):
    storage = patient(cluster.url, timeout=60)
    study = optuna.create_study(storage=storage, study_name="outage")
    trial_id = storage.create_new_trial(study._study_id)
    cluster.stop_server()
    restart = threading.Timer(3.0, cluster.start_server)
    restart.start()
    started = time.monotonic()
    storage.set_trial_user_attr(trial_id, "epoch", 1)  # blocks until the server is back
    waited = time.monotonic() - started
    restart.join()
    assert waited >= 2.5
    assert storage.get_trial_user_attrs(trial_id) == {"epoch": 1}
    err = capsys.readouterr().err
    assert err.count("unreachable") == 1 and err.count("reachable again") == 1
    assert make_url(cluster.url).password not in err


def test_past_the_timeout_it_raises_a_storage_outage_naming_the_storage(cluster):
    storage = patient(cluster.url, timeout=2)
    study = optuna.create_study(storage=storage, study_name="gone")
    trial_id = storage.create_new_trial(study._study_id)
    cluster.stop_server()
    try:
        with pytest.raises(StorageOutage, match="unreachable for more than 2 s") as caught:
            storage.set_trial_user_attr(trial_id, "epoch", 1)
        assert make_url(cluster.url).password not in str(caught.value)
        assert "127.0.0.1" in str(caught.value)
    finally:
        cluster.start_server()
    # The trial is as the database last saw it: nothing was written in a wrong state.
    assert storage.get_trial(trial_id).state == optuna.trial.TrialState.RUNNING


def test_errors_that_are_not_outages_are_raised_at_once(cluster):
    storage = patient(cluster.url, timeout=60)
    started = time.monotonic()
    with pytest.raises(KeyError):
        storage.get_trial(123456)
    assert time.monotonic() - started < 5
    assert not is_outage(KeyError("no trial"))


def test_a_restart_right_before_judging_heartbeats_fails_no_live_trial(cluster):
    """After the server restarts, a trial whose heartbeat is older than the grace period is
    not judged until the heartbeats had time to be written again."""
    storage = patient(cluster.url, timeout=60, heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(storage=storage, study_name="beats")
    trial_id = storage.create_new_trial(study._study_id)
    storage.record_heartbeat(trial_id)
    time.sleep(3)  # the heartbeat is now stale by the database's clock
    cluster.restart_server()
    assert storage._get_stale_trial_ids(study._study_id) == []  # too soon after the restart
    time.sleep(1 + 2 + 1.5)  # interval + backoff + margin, with no heartbeat written
    assert storage._get_stale_trial_ids(study._study_id) == [trial_id]


# The whole worker: 2 workers on a demo grid, the database stopped or restarted under them.

def queue_grid(cluster, folder, study: str, epochs: int = 3) -> None:
    search("grid", "--spec", DEMO, "--epochs", str(epochs), "--study", study, "--storage",
           cluster.url, "--artifacts", str(folder / "artifacts"), "--ranks", "2", "4", "8",
           "--alphas", "8", "--workers", "0", "--heartbeat-interval", "1",
           "--grace-period", "4", cwd=folder)


class Workers:
    """`search worker` processes whose stderr is read as they run."""

    def __init__(self, cluster, folder, study: str, count: int, *extra: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        command = [*SEARCH, "worker", "--study", study, "--storage", cluster.url, *extra]
        self.processes = [subprocess.Popen(command, cwd=folder, env=env, text=True,
                                           stderr=subprocess.PIPE) for _ in range(count)]
        self.lines: list[str] = []
        self.readers = [threading.Thread(target=self._read, args=(p,), daemon=True)
                        for p in self.processes]
        for reader in self.readers:
            reader.start()

    def _read(self, process) -> None:
        for line in process.stderr:
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not any(re.search(pattern, line) for line in self.lines):
            assert time.monotonic() < deadline, "".join(self.lines)
            time.sleep(0.1)

    def finish(self, timeout: float = 300) -> list[int]:
        try:
            codes = [process.wait(timeout=timeout) for process in self.processes]
        except subprocess.TimeoutExpired:  # no worker outlives its test
            for process in self.processes:
                process.kill()
            raise AssertionError(f"workers still running after {timeout} s:\n"
                                 + "".join(self.lines)) from None
        for reader in self.readers:
            reader.join(timeout=10)
        return codes


def results(cluster, folder, study: str) -> dict:
    rows = json.loads(search("leaderboard", "--study", study, "--storage", cluster.url,
                             "--format", "json", cwd=folder).stdout)
    return {(row["rank"], row["alpha"]): (row["state"], row["val_acc"], row["test_acc"])
            for row in rows}


@pytest.fixture()
def undisturbed(cluster, tmp_path):
    queue_grid(cluster, tmp_path, "calm")
    assert Workers(cluster, tmp_path, "calm", 2).finish() == [0, 0]
    return results(cluster, tmp_path, "calm")


def test_two_workers_ride_out_a_20_s_outage(cluster, tmp_path, undisturbed):
    queue_grid(cluster, tmp_path, "outage")
    workers = Workers(cluster, tmp_path, "outage", 2)
    workers.wait_for(r"epoch=1/3")
    cluster.stop_server()
    time.sleep(20)
    cluster.start_server()
    codes = workers.finish()
    log = "".join(workers.lines)
    assert codes == [0, 0], log
    assert log.count("unreachable") >= 1 and "reachable again" in log
    assert results(cluster, tmp_path, "outage") == undisturbed  # each point once, no FAIL


def test_three_restarts_at_random_moments(cluster, tmp_path, undisturbed):
    queue_grid(cluster, tmp_path, "restarts")
    workers = Workers(cluster, tmp_path, "restarts", 2)
    workers.wait_for(r"epoch=1/3")
    chance = random.Random(15)
    for _ in range(3):
        time.sleep(chance.uniform(0.5, 4))
        cluster.restart_server()
    codes = workers.finish()
    assert codes == [0, 0], "".join(workers.lines)
    assert results(cluster, tmp_path, "restarts") == undisturbed


def test_a_worker_gives_up_after_the_storage_timeout_and_fails_no_trial(cluster, tmp_path):
    queue_grid(cluster, tmp_path, "timeout")
    workers = Workers(cluster, tmp_path, "timeout", 1, "--storage-timeout", "5")
    workers.wait_for(r"epoch=1/3")
    cluster.stop_server()
    try:
        (code,) = workers.finish(timeout=120)
    finally:
        cluster.start_server()
    log = "".join(workers.lines)
    assert code != 0 and "unreachable for more than 5 s" in log, log
    assert make_url(cluster.url).password not in log
    states = {state for state, _, _ in results(cluster, tmp_path, "timeout").values()}
    assert "FAIL" not in states and states <= {"WAITING", "RUNNING", "COMPLETE"}


def test_the_storage_pickles_without_its_lock_or_outage_and_keeps_its_sqlite_settings(tmp_path):
    """Optuna hands a storage to another process by pickling it (its own storage tests do);
    the copy starts with a lock of its own, no outage, and our SQLite connection settings."""
    import pickle

    from search.study.storage import open_storage

    url = f"sqlite:///{tmp_path / 'p.db'}"
    storage = open_storage(url, outage_timeout=5)
    study = optuna.create_study(storage=storage, study_name="p")
    storage._away_since = time.monotonic()  # as if in an outage when pickled
    copy = pickle.loads(pickle.dumps(storage))
    assert copy._away_since is None and copy._outage_lock is not storage._outage_lock
    assert copy._outage_lock.acquire(blocking=False)
    copy._outage_lock.release()
    again = optuna.load_study(study_name="p", storage=copy)
    again.add_trial(optuna.trial.create_trial(value=1.0))
    assert [t.value for t in study.get_trials()] == [1.0]
    with copy.engine.connect() as connection:  # `harden_sqlite`'s hook ran on it
        assert connection.connection.dbapi_connection.isolation_level is None
