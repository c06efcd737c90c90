"""End to end: `search optuna` on the offline demo spec with real workers and training."""

from __future__ import annotations

import os
import re
import signal
import subprocess

import pytest
from run_cli import DEMO, FAST, ROOT, SEARCH, board, search, search_in_process

TPE = ["--spec", DEMO, "--epochs", "2"]


def lora_rows(rows: list[dict]) -> list[dict]:
    return [row for row in rows if not row["baseline"]]


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A TPE study of 4 LoRA trials (2 epochs each) run by two local workers."""
    folder = tmp_path_factory.mktemp("tpe")
    result = search("optuna", *TPE, "--trials", "4", "--workers", "2", cwd=folder)
    (folder / "optuna.stderr").write_text(result.stderr)
    return folder


def test_two_workers_finish_exactly_the_budget_inside_the_space(searched):
    rows = board(searched)
    assert [row["baseline"] for row in rows].count(True) == 1
    assert len(lora_rows(rows)) == 4
    assert {row["state"] for row in rows} <= {"COMPLETE", "PRUNED"}
    for row in lora_rows(rows):
        assert row["rank"] in (2, 4, 8) and row["alpha"] in (2, 4, 8)
        assert 0.05 <= row["dropout"] <= 0.30
        assert row["epochs"] == 2 if row["state"] == "COMPLETE" else 1 <= row["epochs"] < 2
    assert "queued 4 TPE trial(s) to reach 4 (pruner: median, seed 0)" in \
        (searched / "optuna.stderr").read_text()


def test_rerunning_tops_up_and_never_runs_the_budget_again(searched):
    again = search("optuna", "--study", "demo", "--trials", "4", "--workers", "0", cwd=searched)
    assert "queued 0 TPE trial(s) to reach 4" in again.stderr
    more = search("optuna", "--study", "demo", "--trials", "5", "--workers", "1", cwd=searched)
    assert "queued 1 TPE trial(s) to reach 5" in more.stderr
    rows = board(searched)
    assert len(lora_rows(rows)) == 5 and len(rows) == 6
    assert {row["state"] for row in rows} <= {"COMPLETE", "PRUNED"}


def test_a_grid_study_is_continued_by_tpe_when_the_spaces_agree(tmp_path, capsys, monkeypatch):
    search("grid", *FAST, "--ranks", "2", "--alphas", "2", "--workers", "1", cwd=tmp_path)
    code, _, err = search_in_process(["optuna", "--study", "demo", "--ranks", "4", "8"],
                                     tmp_path, capsys, monkeypatch)
    assert code == 2 and "grid ranks 2 not among the TPE ranks 4 8" in err
    assert len(err.strip().splitlines()) == 1
    result = search("optuna", "--study", "demo", "--trials", "2", "--pruner", "none",
                    "--workers", "1", cwd=tmp_path)
    assert "1 finished and 0 queued or running LoRA trial(s); queued 1 TPE" in result.stderr
    rows = board(tmp_path)
    assert len(rows) == 3 and {row["state"] for row in rows} == {"COMPLETE"}
    # ... and the TPE study is continued by a grid inside its space, not by one outside it.
    code, _, err = search_in_process(["grid", "--study", "demo", "--ranks", "16"], tmp_path,
                                     capsys, monkeypatch)
    assert code == 2 and "grid ranks 16 not among the TPE ranks 2 4 8" in err
    assert board(tmp_path) == rows


@pytest.mark.parametrize("args, message", [
    (["--trials", "0"], "--trials: must be a positive integer"),
    (["--dropout-range", "0.3", "0.1"], "dropout range must have LO < HI"),
    (["--dropout-range", "0.2", "0.2"], "dropout range must have LO < HI"),
    (["--dropout-range", "0.2"], "expected 2 arguments"),
    (["--ranks", "0"], "rank must be a positive integer"),
    (["--alphas", "0"], "alpha must be a number > 0"),
    (["--pruner", "asha"], "invalid choice: 'asha'"),
    (["--seed", "1"], "seed: 0 (stored) vs 1"),
])
def test_bad_input_exits_2_with_one_line_and_changes_nothing(searched, args, message, capsys,
                                                             monkeypatch):
    show = ["leaderboard", "--format", "json"]
    before = search_in_process(show, searched, capsys, monkeypatch)
    code, _, err = search_in_process(["optuna", "--study", "demo", "--workers", "0", *args],
                                     searched, capsys, monkeypatch)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert search_in_process(show, searched, capsys, monkeypatch) == before


def test_ctrl_c_puts_the_trial_back_and_a_rerun_resumes_it(tmp_path):
    """Ctrl-C mid-trial: the trial goes back to the queue with its last epoch's checkpoint
    (not left running, not failed), and the same command again finishes it from there, so the
    study ends with exactly N finished LoRA trials."""
    # --pack 1: trial 0 finishes before trial 1 starts (a stopped pack: test_pack_worker).
    command = [*SEARCH, "optuna", *TPE, "--epochs", "3", "--trials", "2", "--pruner", "none",
               "--workers", "1", "--pack", "1"]
    process = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    for line in process.stderr:  # one line per epoch when stderr is not a terminal
        if line.startswith("trial 1 ") and "epoch=1/" in line:
            break
    process.send_signal(signal.SIGINT)
    rest = process.stderr.read()
    process.wait(timeout=120)
    assert process.returncode == 130, rest
    assert "put back in the queue; it resumes after epoch 1" in rest
    rows = {row["number"]: row for row in board(tmp_path)}
    assert rows[0]["state"] == "COMPLETE" and rows[1]["state"] == "WAITING"
    assert rows[1]["note"] == "checkpoint after epoch 1"

    again = search("optuna", "--study", "demo", "--trials", "2", "--workers", "1", cwd=tmp_path)
    assert "0 finished and 2 queued or running LoRA trial(s); queued 0 TPE" in again.stderr
    assert "trial 1 " in again.stderr and "resuming after epoch 1 of 3" in again.stderr
    rows = board(tmp_path)
    assert [r["state"] for r in rows] == ["COMPLETE"] * 3
    resumed = [r for r in rows if r["number"] == 1][0]
    assert resumed["epochs"] == 3 and resumed["note"] == "resumed after epoch 1"


def test_sigterm_to_a_run_with_two_workers_puts_both_trials_back(tmp_path):
    """`docker stop` or a pre-empted host: SIGTERM reaches the parent `search grid`, which
    passes it to each worker once; both running trials go back to the queue and a later
    worker finishes the study, resuming them."""
    command = [*SEARCH, "grid", "--spec", DEMO, "--epochs", "3", "--ranks", "2", "4",
               "--alphas", "8", "--workers", "2"]
    process = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    at_epoch_1 = set()
    for line in process.stderr:
        started = re.match(r"trial (\d) r=\d .* epoch=1/3", line)
        if started:
            at_epoch_1.add(started.group(1))
        if len(at_epoch_1) == 2:
            break
    process.send_signal(signal.SIGTERM)
    rest = process.stderr.read()
    process.wait(timeout=120)
    assert process.returncode == 143, rest
    assert rest.count("worker: stopped by SIGTERM") == 2
    states = {str(row["number"]): row["state"] for row in board(tmp_path)}
    assert "RUNNING" not in states.values() and "WAITING" in states.values()
    # A trial already past its last epoch when the signal came may have completed instead.
    assert all(states[number] in ("WAITING", "COMPLETE") for number in at_epoch_1)

    finish = search("worker", "--study", "demo", cwd=tmp_path)
    assert "resuming after epoch" in finish.stderr
    assert {row["state"] for row in board(tmp_path)} == {"COMPLETE"}
