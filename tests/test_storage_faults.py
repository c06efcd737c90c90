"""Database faults that raise no error or the wrong one (issue 25, items 1-3): a frozen
server, a full disk, errors that are not outages. Against the real thing: a throwaway
PostgreSQL that is SIGSTOPped, a data folder on a small tmpfs that fills up, real SQLite
files; no mocks."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sqlite3
import subprocess
import threading
import time
import uuid

import optuna
import psycopg
import pytest
import sqlalchemy
from postgres_cluster import (
    SmallDiskUnavailable,
    cluster_on_small_disk,
    fill_disk,
    free_disk,
    running_cluster,
)
from run_cli import search
from test_storage_outage import Workers, queue_grid, results

from search.study.patient_storage import PatientRDBStorage, StorageDiskFull, StorageOutage
from search.study.storage import open_storage, shown, with_driver
from search.study.storage_errors import StorageFault, storage_fault


@pytest.fixture()
def cluster():
    with running_cluster() as cluster:
        yield cluster


# ------------------------------------------------------------------ classification


def sqlite_error(tmp_path, action) -> sqlite3.Error:
    path = tmp_path / f"{uuid.uuid4().hex}.db"
    setup = sqlite3.connect(path)
    setup.execute("CREATE TABLE t (x BLOB)")
    setup.commit()
    setup.close()
    try:
        action(path)
    except sqlite3.Error as error:
        return error
    raise AssertionError("no error")


def test_sqlite_errors_are_classified_by_their_result_code(tmp_path):
    def no_table(path):
        sqlite3.connect(path).execute("SELECT * FROM missing")

    def read_only(path):
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        connection.execute("INSERT INTO t VALUES (1)")

    def full(path):
        connection = sqlite3.connect(path)
        connection.execute("PRAGMA max_page_count = 3")  # a disk that holds 3 pages
        for _ in range(100):
            connection.execute("INSERT INTO t VALUES (?)", (b"x" * 4000,))
        connection.commit()

    def locked(path):
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        sqlite3.connect(path, timeout=0, isolation_level=None).execute("BEGIN IMMEDIATE")

    assert storage_fault(sqlite_error(tmp_path, no_table)) is None
    assert storage_fault(sqlite_error(tmp_path, read_only)) is None
    assert storage_fault(sqlite_error(tmp_path, full)) is StorageFault.DISK_FULL
    assert storage_fault(sqlite_error(tmp_path, locked)) is StorageFault.OUTAGE


@pytest.mark.parametrize(("error", "fault"), [
    (psycopg.errors.DiskFull("could not extend file: No space left on device"),
     StorageFault.DISK_FULL),
    (psycopg.errors.AdminShutdown("terminating connection"), StorageFault.OUTAGE),
    (psycopg.errors.CannotConnectNow("the database system is starting up"),
     StorageFault.OUTAGE),
    (psycopg.errors.TooManyConnections("too many clients"), StorageFault.OUTAGE),
    (psycopg.errors.ConnectionFailure("connection failure"), StorageFault.OUTAGE),
    (psycopg.OperationalError("server closed the connection unexpectedly"),
     StorageFault.OUTAGE),
    (psycopg.errors.UndefinedTable('relation "trials" does not exist'), None),
    (psycopg.errors.UniqueViolation("duplicate key"), None),
    (psycopg.errors.StringDataRightTruncation("value too long"), None),
    (ValueError("not a database error"), None),
])
def test_postgresql_errors_are_classified_by_sqlstate(error, fault):
    # As they reach us: wrapped by SQLAlchemy, then by Optuna.
    wrapped = sqlalchemy.exc.OperationalError("INSERT ...", {}, error)
    try:
        try:
            raise wrapped
        except sqlalchemy.exc.SQLAlchemyError as inner:
            raise optuna.exceptions.StorageInternalError("invalid data in the commit") \
                from inner
    except optuna.exceptions.StorageInternalError as outer:
        assert storage_fault(outer) is fault
    assert storage_fault(error) is fault


def test_an_exhausted_pool_is_an_outage():
    assert storage_fault(sqlalchemy.exc.TimeoutError("QueuePool limit of size 1 overflow 1 "
                                                     "reached")) is StorageFault.OUTAGE


def test_sqlite_errors_that_are_no_outage_are_raised_at_once(tmp_path):
    """Plain RDBStorage raises at once on a read-only database; ours waited for the whole
    timeout. (Opened read-only by SQLite's own flag: file modes do not stop root.)"""
    url = f"sqlite:///{tmp_path / 'ro.db'}"
    study = optuna.create_study(storage=open_storage(url), study_name="ro")
    reopened = PatientRDBStorage(f"sqlite:///file:{tmp_path / 'ro.db'}?mode=ro&uri=true",
                                 outage_timeout=60, shown_url="ro.db")
    started = time.monotonic()
    with pytest.raises(optuna.exceptions.StorageInternalError) as caught:
        reopened.set_study_user_attr(study._study_id, "x", 1)
    assert time.monotonic() - started < 10
    assert "readonly" in str(caught.value.__cause__)


# ------------------------------------------------------------------ a frozen server


def watched(url: str, **kwargs) -> PatientRDBStorage:
    """A worker's storage with short limits: connections give up after 2 s, not 10."""
    return PatientRDBStorage(with_driver(url), shown_url=shown(url),
                             engine_kwargs={"pool_pre_ping": True, "pool_size": 1,
                                            "max_overflow": 2,
                                            "connect_args": {"connect_timeout": 2}}, **kwargs)


def test_a_frozen_server_is_an_outage_waited_out_and_said_once(cluster, capsys, shown_log):
    storage = watched(cluster.url, outage_timeout=120, stall_s=3)
    study = optuna.create_study(storage=storage, study_name="frozen")
    trial_id = storage.create_new_trial(study._study_id)
    cluster.freeze()
    thaw = threading.Timer(12.0, cluster.thaw)
    thaw.start()
    started = time.monotonic()
    try:
        storage.set_trial_user_attr(trial_id, "epoch", 1)  # hangs without the stall watch
    finally:
        thaw.join()
    assert time.monotonic() - started >= 11
    assert storage._stall_watch.cuts >= 1
    assert storage.get_trial_user_attrs(trial_id) == {"epoch": 1}
    err = capsys.readouterr().err
    assert err.count("unreachable") == 1 and err.count("reachable again") == 1, err


def test_a_frozen_server_past_the_timeout_raises_an_outage(cluster):
    storage = watched(cluster.url, outage_timeout=4)
    study = optuna.create_study(storage=storage, study_name="frozen-long")
    trial_id = storage.create_new_trial(study._study_id)
    cluster.freeze()
    started = time.monotonic()
    try:
        with pytest.raises(StorageOutage, match="unreachable for more than 4 s"):
            storage.set_trial_user_attr(trial_id, "epoch", 1)
        waited = time.monotonic() - started
    finally:
        cluster.thaw()
    assert waited < 30  # the stall limit (4 s) plus a failed reconnect or two, not forever
    assert storage.get_trial(trial_id).state == optuna.trial.TrialState.RUNNING


def test_a_worker_exits_75_when_the_server_stays_frozen_past_its_timeout(cluster, tmp_path):
    """The issue's case: `--storage-timeout 15`, the server SIGSTOPped at epoch 1; before,
    the worker was alive and silent after 60 s."""
    queue_grid(cluster, tmp_path, "frozen-worker")
    workers = Workers(cluster, tmp_path, "frozen-worker", 1, "--storage-timeout", "15",
                      "--pack", "1")
    workers.wait_for(r"epoch=1/3")
    cluster.freeze()
    try:
        (code,) = workers.finish(timeout=90)
    finally:
        cluster.thaw()
    log = "".join(workers.lines)
    assert code == 75, log
    assert "unreachable for more than 15 s" in log, log
    states = {state for state, _, _ in results(cluster, tmp_path, "frozen-worker").values()}
    assert "FAIL" not in states, states


def test_a_pack_of_4_rides_out_a_40_s_freeze_with_no_member_breaking_off(cluster, tmp_path):
    """Before, the pack's 4 heartbeat threads and its training thread ran the pool (1 + 1)
    dry and the pack broke up; now they share one heartbeat connection and a stall is an
    outage like any other."""
    queue_grid(cluster, tmp_path, "calm-pack")
    assert Workers(cluster, tmp_path, "calm-pack", 1, "--pack", "4").finish() == [0]
    undisturbed = results(cluster, tmp_path, "calm-pack")
    queue_grid(cluster, tmp_path, "frozen-pack")
    workers = Workers(cluster, tmp_path, "frozen-pack", 1, "--pack", "4")
    workers.wait_for(r"epoch=1/3")
    cluster.freeze()
    time.sleep(40)
    cluster.thaw()
    (code,) = workers.finish(timeout=300)
    log = "".join(workers.lines)
    assert code == 0, log
    assert "pack of 4" in log and "run alone" not in log and "stopped" not in log, log
    assert log.count("unreachable (") == 1 and log.count("reachable again") == 1, log
    assert results(cluster, tmp_path, "frozen-pack") == undisturbed


def test_a_partition_that_drops_packets_is_an_outage_waited_out(cluster, capsys, shown_log):
    """iptables DROP on the server's port: nothing is refused, nothing answers."""
    rule = ["INPUT", "-p", "tcp", "-i", "lo", "--dport", str(cluster.port), "-j", "DROP"]

    def iptables(action: str) -> subprocess.CompletedProcess:
        return subprocess.run(["iptables", action, *rule], capture_output=True, text=True)

    if shutil.which("iptables") is None:
        pytest.skip("no iptables here")
    storage = watched(cluster.url, outage_timeout=120, stall_s=3)
    study = optuna.create_study(storage=storage, study_name="cut")
    trial_id = storage.create_new_trial(study._study_id)
    added = iptables("-A")
    if added.returncode != 0:
        pytest.skip(f"iptables refused ({added.stderr.strip()})")
    timer = threading.Timer(10.0, iptables, args=("-D",))
    timer.start()
    try:
        storage.set_trial_user_attr(trial_id, "epoch", 1)  # hangs without the stall watch
    finally:
        timer.join()
    assert storage.get_trial_user_attrs(trial_id) == {"epoch": 1}
    err = capsys.readouterr().err
    assert err.count("unreachable") == 1 and err.count("reachable again") == 1, err


# ------------------------------------------------------------------ a full database disk


@contextlib.contextmanager
def small_disk(megabytes: int):
    try:
        with cluster_on_small_disk(megabytes) as made:
            yield made
    except SmallDiskUnavailable as why:
        pytest.skip(f"cannot put a database on a small tmpfs here ({why})")


def test_a_full_database_disk_is_named_and_stops_at_once(tmp_path):
    with small_disk(64) as (cluster, mount):
        storage = open_storage(cluster.url, outage_timeout=60)
        study = optuna.create_study(storage=storage, study_name="full")
        trial_id = storage.create_new_trial(study._study_id)
        fill_disk(mount)
        started = time.monotonic()
        with pytest.raises(StorageDiskFull, match="^database disk full: ") as caught:
            for number in range(2000):  # new rows until a table or index must grow
                storage.set_trial_user_attr(trial_id, f"k{number}", "v" * 2000)
        assert time.monotonic() - started < 30  # not the 60 s timeout
        assert "No space left on device" in str(caught.value) or "53100" in str(caught.value)
        # What a worker's study writes through Optuna's cache wrapper (`_set_trial_param`,
        # which escaped the retry and crashed a worker of the chaos run with a traceback).
        study = optuna.load_study(storage=storage, study_name="full")
        trial = optuna.Trial(study, trial_id)
        with pytest.raises(StorageDiskFull):
            for number in range(2000):
                trial.suggest_float(f"p{number}", 0.0, 1.0)
        free_disk(mount)
        assert storage.get_trial(trial_id).state == optuna.trial.TrialState.RUNNING


# ------------------------------------------------------------------ told, not retrained


def test_a_trial_whose_end_could_not_be_told_is_told_on_retry_not_retrained(cluster, tmp_path):
    """Issue 25, item 4: the checkpoint was removed before COMPLETE was written, so when the
    database failed at that moment the retry trained every epoch again. Now the checkpoint
    after the last epoch stays until COMPLETE is committed, and the retry only tells."""
    queue_grid(cluster, tmp_path, "untold")
    first = Workers(cluster, tmp_path, "untold", 1, "--pack", "1", "--storage-timeout", "5")
    first.wait_for(r"trial 0 .*epoch=3/3")  # its last epoch's checkpoint is saved before this
    cluster.freeze()  # the trial's results and COMPLETE are written after it
    try:
        (code,) = first.finish(timeout=120)
    finally:
        cluster.thaw()
    assert code == 75, "".join(first.lines)
    second = Workers(cluster, tmp_path, "untold", 1, "--pack", "1")
    assert second.finish(timeout=300) == [0], "".join(second.lines)
    log = "".join(second.lines)
    assert "resuming after epoch 3 of 3" in log, log
    retry = re.search(r"trial (\d+) .*resuming after epoch 3 of 3", log).group(1)
    assert not re.search(rf"trial {retry} .*epoch=\d/3", log), log  # told, not trained
    rows = json.loads(search("leaderboard", "--study", "untold", "--storage", cluster.url,
                             "--format", "json", cwd=tmp_path).stdout)
    assert sorted(row["state"] for row in rows) == ["COMPLETE"] * 4 + ["FAIL"]
