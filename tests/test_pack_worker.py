"""Packed trials in a worker: every member stays a trial of its own (search.worker.pack_run).

The demo study (baseline, r=2 alpha=2, r=2 alpha=8, 2 epochs) run three ways must give one
leaderboard: one trial at a time, packed, and packed after a stop or a kill mid-pack. Workers
are simulated in this process as in test_trial_faults (a kill is an exception nothing
catches: the members stay RUNNING with their checkpoints and no heartbeat).
"""

from __future__ import annotations

import math

import pytest
import torch
from optuna.trial import TrialState
from run_cli import DEMO, search_in_process
from test_trial_faults import BEATS, Killed, StopWhen, claim, worker_study

from objectives.data import load_splits
from objectives.train import epoch_stats
from search.results.leaderboard import leaderboard
from search.study.artifacts import artifact_store
from search.study.outcomes import stored_outcomes, trial_outcomes
from search.study.study_spec import load_spec
from search.worker import pack_run
from search.worker.claim_loop import run_worker
from search.worker.context import WorkerContext
from search.worker.options import WorkerOptions
from search.worker.pack_plan import AUTO, PackPlanner, tpe_pack_limit
from search.worker.pack_run import run_claimed_pack
from search.worker.signals import StopRequested
from search.worker.trial_queue import claim_waiting
from search.worker.trial_run import TrialAttempt

GRID = ["--ranks", "2", "--alphas", "2", "8", "--epochs", "2"]
COMPARED = ["val_acc", "test_acc", "f1", "auc_micro", "auc_macro", "trainable_params"]


@pytest.fixture(scope="module")
def data():
    return load_splits(load_spec(DEMO).train)


def grid(folder, capsys, monkeypatch, *args: str) -> tuple[int, str, str]:
    url = f"sqlite:///{folder / 'search.db'}"
    return search_in_process(["grid", "--spec", DEMO, *GRID, "--storage", url,
                              "--artifacts", str(folder / "artifacts"), *args],
                             folder, capsys, monkeypatch)


def points(url: str) -> dict:
    """Each point's compared columns and per-example outcomes, by (rank, alpha); the
    baseline as (None, None)."""
    _, study, _ = worker_study(url)
    frame = leaderboard(study)
    trials = study.get_trials(deepcopy=False)
    return {(None if row.baseline else row["rank"], None if row.baseline else row.alpha):
            {**row.to_dict(), "outcomes": stored_outcomes(trials[row.number])}
            for _, row in frame.iterrows() if row.state == "COMPLETE"}


def assert_same_board(one: dict, other: dict) -> None:
    assert one.keys() == other.keys()
    for key, row in one.items():
        for column in COMPARED:
            assert other[key][column] == pytest.approx(row[column], abs=1e-4), (key, column)
        # Every validation and test image right or wrong alike, not just the same counts.
        assert other[key]["outcomes"] == row["outcomes"], key


@pytest.fixture(scope="module")
def solo_board(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("solo")
    with pytest.MonkeyPatch.context() as monkeypatch:
        from search.cli.main import main
        monkeypatch.chdir(folder)
        assert main(["grid", "--spec", DEMO, *GRID, "--storage",
                     f"sqlite:///{folder / 'search.db'}", "--pack", "1"]) == 0
    return points(f"sqlite:///{folder / 'search.db'}")


def queued(folder, capsys, monkeypatch) -> str:
    code, _, err = grid(folder, capsys, monkeypatch, "--workers", "0")
    assert code == 0, err
    return f"sqlite:///{folder / 'search.db'}"


def raise_in_epoch_2(error: type[BaseException], data, spec):
    """A stop check that raises `error` at the second step of epoch 2 (every member has its
    epoch-1 checkpoint by then)."""
    steps = math.ceil(data.train_size / spec.batch_size)
    calls = []

    def check() -> None:
        calls.append(1)
        if len(calls) == steps + 2:
            raise error

    return check


def test_a_packed_grid_gives_the_solo_leaderboard(tmp_path, capsys, monkeypatch, solo_board):
    code, _, err = grid(tmp_path, capsys, monkeypatch, "--pack", "auto")
    assert code == 0, err
    assert "pack of 3: trials 0, 1, 2" in err
    assert err.count("pack: auto chose ") == 1  # what the probe measured, said once
    assert_same_board(solo_board, points(f"sqlite:///{tmp_path / 'search.db'}"))
    _, study, _ = worker_study(f"sqlite:///{tmp_path / 'search.db'}")
    assert {trial.user_attrs["pack"] for trial in study.trials} == {3}


def test_a_stop_mid_pack_puts_every_member_back_and_they_resume(
        tmp_path, capsys, shown_log, monkeypatch, data, solo_board):
    url = queued(tmp_path, capsys, monkeypatch)
    storage, study, spec = worker_study(url)
    claimed = claim_waiting(storage, study, 3)
    states = run_claimed_pack(WorkerContext(
        storage, study, spec, data, artifact_store(tmp_path / "artifacts"),
        stop=StopWhen(raise_in_epoch_2(StopRequested, data, spec))), claimed)
    assert set(states.values()) == {TrialState.WAITING}
    for trial in claimed:
        after = storage.get_trial(trial._trial_id)
        assert after.state == TrialState.WAITING
        assert after.user_attrs["checkpoint"]["epoch"] == 1
    capsys.readouterr()
    report = run_worker(WorkerOptions("demo", url, artifacts=str(tmp_path / "artifacts")))
    assert report.states["COMPLETE"] == 3 and report.exit_code == 0
    assert capsys.readouterr().err.count("resuming after epoch 1 of 2") == 3
    assert_same_board(solo_board, points(url))


def test_a_killed_packs_members_are_each_retried_once_and_resume(
        tmp_path, capsys, shown_log, monkeypatch, data, solo_board):
    url = queued(tmp_path, capsys, monkeypatch)
    storage, study, spec = worker_study(url, BEATS)
    claimed = claim_waiting(storage, study, 3)
    with pytest.raises(Killed):
        run_claimed_pack(WorkerContext(storage, study, spec, data,
                                       artifact_store(tmp_path / "artifacts"),
                                       stop=StopWhen(raise_in_epoch_2(Killed, data, spec))),
                         claimed)
    assert {storage.get_trial(t._trial_id).state for t in claimed} == {TrialState.RUNNING}
    capsys.readouterr()
    report = run_worker(WorkerOptions("demo", url, artifacts=str(tmp_path / "artifacts"),
                                      heartbeat_interval=1, grace_period=2, max_retries=1))
    assert report.states["COMPLETE"] == 3, report
    assert capsys.readouterr().err.count("resuming after epoch 1 of 2") == 3
    _, study, _ = worker_study(url)
    states = [trial.state for trial in study.trials]
    assert states.count(TrialState.FAIL) == 3 and states.count(TrialState.COMPLETE) == 3
    assert_same_board(solo_board, points(url))


def test_a_packs_own_error_is_not_blamed_on_its_members(
        tmp_path, capsys, shown_log, monkeypatch, data, solo_board):
    """An error of the pack itself (not of the environment) could belong to any one member:
    each then runs alone, where an error is its own; here all three complete."""
    url = queued(tmp_path, capsys, monkeypatch)
    storage, study, spec = worker_study(url)
    claimed = claim_waiting(storage, study, 3)

    def broken(*args, **kwargs):
        raise ValueError("a packed matmul went wrong")

    monkeypatch.setattr(pack_run, "run_pack", broken)
    capsys.readouterr()
    states = run_claimed_pack(WorkerContext(storage, study, spec, data,
                                            artifact_store(tmp_path / "a")), claimed)
    assert set(states.values()) == {TrialState.COMPLETE}
    assert "its unfinished trials run alone" in capsys.readouterr().err
    assert_same_board(solo_board, points(url))


def test_a_batchnorm_model_runs_one_trial_at_a_time_and_says_why(tmp_path, capsys,
                                                                   monkeypatch):
    spec = tmp_path / "cnn.toml"
    spec.write_text('[study]\nname = "cnn"\n[grid]\nranks = [2]\nalphas = [2]\n'
                    'dropouts = [0.1]\n[train]\nmodel = "resnet18"\npretrained = false\n'
                    'targets = "conv2"\ndataset = "digits"\nimage_size = 16\nepochs = 1\n'
                    'batch_size = 256\n')
    code, _, err = search_in_process(
        ["grid", "--spec", str(spec), "--storage", f"sqlite:///{tmp_path / 'search.db'}"],
        tmp_path, capsys, monkeypatch)
    assert code == 0, err
    assert ("pack: trials of resnet18 run one at a time: 'resnet18' normalises with batch "
            "statistics") in err
    assert "pack of" not in err


def test_auto_packs_tpe_trials_by_the_start_up_trials_left_or_a_quarter_of_the_budget(
        tmp_path, capsys, monkeypatch, data):
    """A 10-trial TPE study with 5 start-up trials: the baseline brings at most 5 sampled
    companions; with every start-up trial finished, a quarter of the budget (3)."""
    url = f"sqlite:///{tmp_path / 'search.db'}"
    code, _, err = search_in_process(["optuna", "--spec", DEMO, "--trials", "10", "--workers",
                                      "0", "--storage", url], tmp_path, capsys, monkeypatch)
    assert code == 0, err
    storage, study, spec = worker_study(url)
    assert tpe_pack_limit(study) == 5
    planner = PackPlanner(AUTO, spec, data, study)
    planner._capacity[repr(spec)] = 16  # the probe's answer, without probing
    (first,) = claim_waiting(storage, study, 1)
    assert first.user_attrs["baseline"] and planner.limit(first) == 16
    companions = claim_waiting(storage, study, planner.limit(first) - 1,
                               planner.companions(first))
    assert len(companions) == 5 and all(t.user_attrs["sampled"] for t in companions)
    for trial in companions:  # the start-up phase over: a quarter of the budget from now on
        study.tell(trial.number, 0.5)
    assert tpe_pack_limit(study) == 3
    assert planner.limit(claim_waiting(storage, study, 1)[0]) == 3


def test_a_pruned_trial_keeps_the_validation_outcomes_of_the_epoch_it_reached(
        tmp_path, capsys, monkeypatch, data):
    url = queued(tmp_path, capsys, monkeypatch)
    storage, study, spec = worker_study(url)
    attempt = TrialAttempt(WorkerContext(storage, study, spec, data,
                                         artifact_store(tmp_path / "artifacts")),
                           claim(storage, study, 1))
    attempt.begin()
    logits = torch.randn(len(data.val_labels), data.num_classes)
    stats = epoch_stats(1, 1.0, 10, data.train_size, logits, data.val_labels, 1.0)
    attempt.on_epoch(stats)
    assert attempt.prune() == TrialState.PRUNED
    trial = storage.get_trial(attempt.frozen._trial_id)
    values, _ = trial_outcomes(trial, "val")
    assert (values == (logits.argmax(1) == data.val_labels).numpy()).all()
    assert values.mean() == pytest.approx(trial.user_attrs["val_acc"])
    assert trial_outcomes(trial, "test") is None
