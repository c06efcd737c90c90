"""PostgreSQL storage: a throwaway cluster, several workers on one study, unreachable servers."""

from __future__ import annotations

import json
import re

import pytest
from postgres_cluster import PostgresCluster, free_port, server_binaries
from run_cli import FAST, search, search_in_process


@pytest.fixture(scope="module")
def postgres_url():
    binaries = server_binaries()
    if binaries is None:
        pytest.skip("no PostgreSQL server binaries (Debian package postgresql; .ci/run "
                    "installs it)")
    cluster = PostgresCluster(binaries)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def test_three_workers_share_one_study_and_run_every_trial_once(postgres_url, tmp_path):
    result = search("grid", *FAST, "--study", "three", "--storage", postgres_url,
                    "--artifacts", str(tmp_path / "artifacts"), "--ranks", "2", "4", "8",
                    "--alphas", "2", "--workers", "3", cwd=tmp_path)
    workers = re.findall(r"worker: no queued trial left in 'three' \((.*)\)", result.stderr)
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
