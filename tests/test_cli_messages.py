"""What `search` says about a queued study (no training): counts that match the study, study
names as typed, a dry run that changes nothing, lock files out of sight, pack caps said."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest
from run_cli import DEMO, search_in_process

from search.worker.pack_plan import AUTO, PackPlanner
from search.worker.trial_queue import claim_waiting

# A name as a Japanese input method types it: the full-width space is one repr() escapes.
CJK_NAME = "研究\u3000α"


def queue(folder: Path, capsys, monkeypatch, *args: str) -> tuple[int, str, str]:
    """`search grid` of the demo spec (baseline + rank 2 x alphas 2, 4) that only queues."""
    return search_in_process(["grid", "--spec", DEMO, "--ranks", "2", "--alphas", "2", "4",
                              "--workers", "0", *args], folder, capsys, monkeypatch)


def test_a_second_grid_counts_every_trial_already_there(tmp_path, capsys, monkeypatch):
    code, _, err = queue(tmp_path, capsys, monkeypatch)
    assert code == 0 and "queued 1 baseline and 2 grid point(s); 0 already there" in err
    code, _, err = queue(tmp_path, capsys, monkeypatch)
    assert code == 0 and "queued 0 baselines and 0 grid point(s); 3 already there" in err


def database_bytes(path: Path) -> bytes:
    """The SQLite file with every write made so far in it (its WAL checkpointed)."""
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path.read_bytes()


def test_optuna_dry_run_prints_the_plan_and_changes_nothing(tmp_path, capsys, monkeypatch):
    assert queue(tmp_path, capsys, monkeypatch)[0] == 0
    database = tmp_path / "search.db"
    before = database_bytes(database)
    dry = ["optuna", "--spec", DEMO, "--trials", "4", "--dry-run"]
    code, out, err = search_in_process(dry, tmp_path, capsys, monkeypatch)
    assert code == 0, err
    # The grid's two points count towards the budget, as they would when queueing.
    assert "TPE: would queue 2 trials to reach 4 finished LoRA trials (the study holds 0 " \
           "finished and 2 queued or running)" in out
    assert "ranks 2 4 8, alphas 2 4 8, dropout 0.05 to 0.3 (seed 0, pruner median)" in out
    code, out, _ = search_in_process([*dry, "--format", "json"], tmp_path, capsys, monkeypatch)
    plan = json.loads(out)
    assert code == 0 and plan["tpe"]["to_queue"] == 2 and len(plan["baselines"]) == 1
    assert [row["rank"] for row in plan["tpe"]["by_rank"]] == [2, 4, 8]
    assert plan["tpe"]["by_rank"][0]["trainable_params"] < plan["tpe"]["by_rank"][1][
        "trainable_params"]
    assert database_bytes(database) == before


def test_optuna_dry_run_creates_no_database(tmp_path, capsys, monkeypatch):
    code, out, err = search_in_process(["optuna", "--spec", DEMO, "--dry-run"], tmp_path,
                                       capsys, monkeypatch)
    assert code == 0, err
    assert "TPE: would queue 10 trials to reach 10" in out
    assert list(tmp_path.iterdir()) == []


def test_lock_files_are_hidden_and_say_what_they_are(tmp_path, capsys, monkeypatch):
    assert queue(tmp_path, capsys, monkeypatch)[0] == 0
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".lock"] == \
        [".search.db-enqueue.lock"]
    text = (tmp_path / ".search.db-enqueue.lock").read_text()
    assert text.startswith("search: the flock of this file lets one process at a time")
    assert text.count("search:") == 1  # written once, by its first holder
    assert queue(tmp_path, capsys, monkeypatch)[0] == 0
    assert (tmp_path / ".search.db-enqueue.lock").read_text() == text


def test_study_names_print_as_typed(tmp_path, capsys, monkeypatch):
    code, _, err = queue(tmp_path, capsys, monkeypatch, "--study", CJK_NAME)
    assert code == 0 and f"study '{CJK_NAME}' in sqlite:///search.db" in err
    assert "\\u3000" not in err
    code, _, err = search_in_process(["leaderboard", "--study", "研究\u3000β"], tmp_path,
                                     capsys, monkeypatch)
    assert code == 2
    assert f"no study named '研究\u3000β'; studies there: {CJK_NAME}" in err


def test_a_pack_capped_by_this_hosts_share_says_so(tmp_path, capsys, monkeypatch):
    from test_trial_faults import worker_study

    assert queue(tmp_path, capsys, monkeypatch, "--alphas", "2", "4", "8", "16")[0] == 0
    storage, study, spec = worker_study(f"sqlite:///{tmp_path / 'search.db'}")
    planner = PackPlanner(AUTO, spec, SimpleNamespace(num_classes=10), study, queue_share=2)
    planner._capacity[repr(spec)] = 16  # the probe's answer, without probing
    (first,) = claim_waiting(storage, study, 1)
    assert planner.limit_and_cap(first) == (
        3, "pack: auto's 16 capped at 3 by this host's share of the queue (5 trials waiting "
           "or running for 2 local workers)")
    alone = PackPlanner(AUTO, spec, SimpleNamespace(num_classes=10), study)
    alone._capacity[repr(spec)] = 4
    assert alone.limit_and_cap(first) == (4, None)  # nothing capped: nothing to say


@pytest.mark.parametrize(("numbers", "text"), [([4], "trial 4"), ([4, 9], "trials 4, 9")])
def test_the_report_names_one_trial_or_several(numbers, text):
    from search.results.report import numbered

    assert numbered("trial", numbers) == text
