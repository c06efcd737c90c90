"""PostgreSQL storage: a throwaway cluster, several workers on one study, a killed worker,
racing enqueuers, unreachable servers."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
from postgres_cluster import free_port, running_cluster
from run_cli import DEMO, FAST, ROOT, SEARCH, search, search_in_process
from sqlalchemy.engine import make_url
from test_faults import enqueue_concurrently, slow_held_keys


@pytest.fixture(scope="module")
def postgres_url():
    with running_cluster() as cluster:
        yield cluster.url


def test_three_workers_share_one_study_and_run_every_trial_once(postgres_url, tmp_path):
    result = search("grid", *FAST, "--study", "three", "--storage", postgres_url,
                    "--artifacts", str(tmp_path / "artifacts"), "--ranks", "2", "4", "8",
                    "--alphas", "2", "--workers", "3", cwd=tmp_path)
    workers = re.findall(r"worker: no queued trial left in 'three' \(([^)]*)\)", result.stderr)
    assert len(workers) == 3
    done = [int(n) for report in workers for n in re.findall(r"(\d+) complete", report)]
    assert sum(done) == 4  # baseline + 3 grid points, none run twice (a slow starter may run 0)
    rows = json_board(postgres_url, tmp_path, "three")
    assert len(rows) == 4 and {row["state"] for row in rows} == {"COMPLETE"}
    assert sorted((row["rank"] or 0) for row in rows) == [0, 2, 4, 8]


def json_board(url: str, cwd, study: str) -> list[dict]:
    return json.loads(search("leaderboard", "--study", study, "--storage", url, "--format",
                             "json", cwd=cwd).stdout)


def test_the_storage_url_can_come_from_the_environment(postgres_url, tmp_path, capsys,
                                                       monkeypatch):
    monkeypatch.setenv("SEARCH_STORAGE", postgres_url)
    code, _, err = search_in_process(["grid", *FAST, "--study", "from-env", "--workers", "0"],
                                     tmp_path, capsys, monkeypatch)
    assert code == 0, err
    assert not (tmp_path / "search.db").exists()
    code, out, _ = search_in_process(["leaderboard", "--study", "from-env", "--format", "csv"],
                                     tmp_path, capsys, monkeypatch)
    assert code == 0 and out.count("WAITING") == 10


def test_an_unreachable_database_exits_2_with_one_line(tmp_path, capsys, monkeypatch):
    url = f"postgresql://search@127.0.0.1:{free_port()}/search"
    code, _, err = search_in_process(["leaderboard", "--storage", url], tmp_path, capsys,
                                     monkeypatch)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "cannot open storage" in err and "Connection refused" in err


def test_a_killed_workers_trial_is_failed_then_rerun_from_its_checkpoint(postgres_url, tmp_path):
    """SIGKILL a worker mid-trial, then start another: the study completes; the killed trial
    is FAIL and its retry resumes after the killed trial's last finished epoch."""
    search("grid", "--spec", DEMO, "--epochs", "3", "--study", "killed", "--storage",
           postgres_url, "--artifacts", str(tmp_path / "artifacts"), "--ranks", "2", "4",
           "--alphas", "8", "--workers", "0", "--heartbeat-interval", "1", "--grace-period", "4",
           cwd=tmp_path)
    # --pack 1: one trial in hand (a killed pack's members: test_pack_worker).
    worker = [*SEARCH, "worker", "--study", "killed", "--storage", postgres_url, "--pack", "1"]
    victim = subprocess.Popen(worker, cwd=tmp_path, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    for line in victim.stderr:  # one line per epoch: stderr is not a terminal
        mid_trial = re.match(r"trial (\d+) r=\d+ .* epoch=1/3", line)
        if mid_trial:
            break
    victim.kill()
    victim.wait(timeout=60)
    killed = int(mid_trial.group(1))
    assert state_of(postgres_url, tmp_path, killed) == "RUNNING"  # nobody can tell yet

    rescue = search(*worker[len(SEARCH):], cwd=tmp_path)
    assert "resuming after epoch 1 of 3" in rescue.stderr
    rows = {row["number"]: row for row in json_board(postgres_url, tmp_path, "killed")}
    retry = max(rows)
    assert rows[killed]["state"] == "FAIL"
    assert rows[killed]["note"] == f"worker lost (no heartbeat); retried as trial {retry}"
    assert rows[retry]["state"] == "COMPLETE" and rows[retry]["epochs"] == 3
    assert rows[retry]["note"] == f"retry of trial {killed}; resumed after epoch 1"
    complete = [row for row in rows.values() if row["state"] == "COMPLETE"]
    assert sorted(row["rank"] or 0 for row in complete) == [0, 2, 4]  # each point once
    assert {row["state"] for row in rows.values()} == {"COMPLETE", "FAIL"}


def state_of(url: str, cwd, number: int) -> str:
    rows = json_board(url, cwd, "killed")
    return next(row["state"] for row in rows if row["number"] == number)


def test_concurrent_grid_enqueues_queue_each_point_once(postgres_url, monkeypatch):
    slow_held_keys(monkeypatch)
    assert len(enqueue_concurrently(postgres_url, threads=3)) == 10


def test_two_grid_commands_started_together_queue_each_point_once(postgres_url, tmp_path):
    command = [*SEARCH, "grid", *FAST, "--study", "together", "--storage", postgres_url,
               "--workers", "0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    both = [subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    reports = [process.communicate(timeout=300)[1] for process in both]
    assert [process.returncode for process in both] == [0, 0], reports
    rows = json_board(postgres_url, tmp_path, "together")
    assert len(rows) == 10 and {row["state"] for row in rows} == {"WAITING"}
    queued = sorted(int(re.search(r"(\d+) grid point\(s\)", r).group(1)) for r in reports)
    assert queued == [0, 9]


def test_the_password_can_come_from_a_pgpass_file_and_is_never_printed(postgres_url, tmp_path,
                                                                       capsys, monkeypatch):
    url = make_url(postgres_url)
    bare = f"postgresql://{url.username}@{url.host}:{url.port}/{url.database}"
    grid = ["grid", *FAST, "--study", "pgpass", "--workers", "0", "--storage"]
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "absent"))
    code, _, err = search_in_process([*grid, bare], tmp_path, capsys, monkeypatch)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "password" in err

    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"{url.host}:{url.port}:{url.database}:{url.username}:{url.password}\n")
    pgpass.chmod(0o600)  # libpq ignores a password file others can read
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    code, out, err = search_in_process([*grid, bare], tmp_path, capsys, monkeypatch)
    assert code == 0, err

    code, out, err = search_in_process([*grid, postgres_url], tmp_path, capsys, monkeypatch)
    assert code == 0 and url.password not in out + err and "***" in err
    wrong = url.set(password="wrong-secret").render_as_string(hide_password=False)
    code, out, err = search_in_process(["leaderboard", "--storage", wrong], tmp_path, capsys,
                                       monkeypatch)
    assert code == 2 and "wrong-secret" not in out + err and "authentication failed" in err


def test_workers_refreshing_the_dashboard_at_once_never_drop_a_row(postgres_url, tmp_path,
                                                                   monkeypatch):
    """The notes lock is a PostgreSQL advisory lock here: sessions of their own."""
    import optuna
    from test_verdict import check_concurrent_refreshes

    from search.study.artifacts import artifact_store

    study = optuna.create_study(storage=postgres_url, study_name="notes-race",
                                direction="maximize")
    study.set_user_attr("train_spec", {"model": "vit_tiny_patch16_224"})
    check_concurrent_refreshes(study, artifact_store(tmp_path / "a"), postgres_url,
                               monkeypatch)
