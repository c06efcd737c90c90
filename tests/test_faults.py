"""Dead workers, stopped workers and racing enqueuers, on the queue itself (no training).

A trial's worker is simulated: claiming a trial and then never beating again is what a worker
killed with SIGKILL leaves behind.
"""

from __future__ import annotations

import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from search.study import enqueue as study_enqueue
from search.study.enqueue_lock import enqueue_lock
from search.study.heartbeat_settings import HeartbeatError, HeartbeatSettings
from search.study.space import GridSpace
from search.study.storage import open_storage
from search.study.study_spec import SpecError, parse_spec
from search.worker.heartbeat import Heartbeat
from search.worker.trial_queue import claim_next_trial, next_trial, requeue_trial

FAST_BEATS = HeartbeatSettings(interval=1, grace_period=2, max_retries=1)
NEVER = lambda: False  # noqa: E731  (no stop requested)


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'faults.db'}"


def new_study(url: str, beats: HeartbeatSettings = FAST_BEATS):
    storage = open_storage(url, heartbeat=beats)
    study = optuna.create_study(study_name="faults", storage=storage, direction="maximize",
                                load_if_exists=True)
    return storage, study


@pytest.mark.parametrize("values, message", [
    ({"interval": 0}, "interval must be >= 1"),
    ({"interval": 60, "grace_period": 60}, "must be longer than the heartbeat interval"),
    ({"max_retries": -1}, "max_retries must be >= 0"),
    ({"interval": True}, "must be an integer"),
    ({"grace": 10}, "unknown heartbeat setting"),
])
def test_heartbeat_settings_that_cannot_work_are_refused(values, message):
    with pytest.raises(HeartbeatError, match=message):
        HeartbeatSettings.from_dict(values)


def test_the_spec_carries_heartbeat_settings_and_checks_them():
    spec = parse_spec({"heartbeat": {"interval": 5, "grace_period": 20}}, "t.toml", "t")
    assert spec.heartbeat == HeartbeatSettings(interval=5, grace_period=20, max_retries=2)
    assert parse_spec({}, "t.toml", "t").heartbeat == HeartbeatSettings(60, 180, 2)
    with pytest.raises(SpecError, match="t.toml: grace period"):
        parse_spec({"heartbeat": {"interval": 30, "grace_period": 10}}, "t.toml", "t")


def test_a_dead_workers_trial_is_failed_after_the_grace_period_and_queued_again(url):
    storage, study = new_study(url)
    study.enqueue_trial({"rank": 4}, user_attrs={"baseline": False})
    dead = claim_next_trial(storage, study)  # claimed, started, then its worker dies
    started_trial = optuna.Trial(study, dead._trial_id)
    assert started_trial.suggest_int("rank", 2, 8) == 4
    started_trial.set_user_attr("checkpoint", {"artifact": "checkpoint-x", "epoch": 2})

    started = time.monotonic()
    retry = next_trial(storage, study, poll_seconds=0.5, stop_requested=NEVER)
    waited = time.monotonic() - started
    assert waited >= 1.5  # not before the grace period (2 s, counted from the claim)
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {0: TrialState.FAIL, 1: TrialState.RUNNING}
    assert retry.number == 1 and retry.params == {"rank": 4}
    # The retry inherits the user attributes, so it finds the dead trial's checkpoint.
    assert retry.user_attrs["checkpoint"] == {"artifact": "checkpoint-x", "epoch": 2}
    assert retry.system_attrs["failed_trial"] == 0


def test_retries_stop_at_the_limit(url):
    storage, study = new_study(url)  # max_retries=1
    study.enqueue_trial({"rank": 2}, user_attrs={"baseline": False})
    claim_next_trial(storage, study)
    retry = next_trial(storage, study, poll_seconds=0.5, stop_requested=NEVER)  # dies again
    assert retry is not None
    assert next_trial(storage, study, poll_seconds=0.5, stop_requested=NEVER) is None
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.FAIL]


def test_a_live_workers_trial_is_waited_for_and_never_failed(url):
    storage, study = new_study(url)
    study.enqueue_trial({"rank": 8}, user_attrs={"baseline": False})
    live = claim_next_trial(storage, study)

    def finish_after_three_grace_periods() -> None:
        with Heartbeat(storage, [live._trial_id], FAST_BEATS.interval):
            time.sleep(3 * FAST_BEATS.grace_period)
        study.tell(live.number, 0.5)

    worker = threading.Thread(target=finish_after_three_grace_periods)
    worker.start()
    waits = []
    assert next_trial(storage, study, 0.5, NEVER, on_wait=waits.append) is None
    worker.join()
    assert waits == [1]  # announced once while the live trial ran
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE]


def test_a_stop_request_ends_the_wait(url):
    storage, study = new_study(url, HeartbeatSettings(interval=1, grace_period=60))
    study.enqueue_trial({"rank": 8}, user_attrs={"baseline": False})
    claim_next_trial(storage, study)
    deadline = time.monotonic() + 1
    assert next_trial(storage, study, 0.5, lambda: time.monotonic() > deadline) is None
    assert study.get_trials()[0].state == TrialState.RUNNING


def test_a_requeued_trial_keeps_its_params_and_is_claimed_again(url):
    storage, study = new_study(url)
    study.enqueue_trial({"rank": 8}, user_attrs={"baseline": False})
    first = claim_next_trial(storage, study)
    assert requeue_trial(storage, first._trial_id)
    again = claim_next_trial(storage, study)
    assert again.number == first.number and again.state == TrialState.RUNNING
    assert len(study.get_trials()) == 1


def slow_held_keys(monkeypatch):
    """Widen the gap between reading what a study holds and queueing what is missing, so that
    two unserialised enqueuers both find every point missing."""
    real = study_enqueue.held_keys

    def slow(study):
        keys = real(study)
        time.sleep(0.5)
        return keys

    monkeypatch.setattr(study_enqueue, "held_keys", slow)


def enqueue_concurrently(url: str, threads: int = 2) -> list:
    grid = GridSpace.from_values(ranks=[2, 4, 8], alphas=[2, 4, 8], dropouts=[0.1])
    errors = []

    def enqueue() -> None:
        try:
            storage = open_storage(url)
            with enqueue_lock(storage, url, "race"):
                study = optuna.create_study(study_name="race", storage=storage,
                                            direction="maximize", load_if_exists=True)
                study_enqueue.enqueue_grid(study, grid)
        except Exception as error:  # reported by the test rather than lost in a thread
            errors.append(error)

    runners = [threading.Thread(target=enqueue) for _ in range(threads)]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join()
    assert not errors
    return optuna.load_study(study_name="race", storage=open_storage(url)).get_trials()


def test_concurrent_grid_enqueues_queue_each_point_once(url, monkeypatch):
    slow_held_keys(monkeypatch)
    trials = enqueue_concurrently(url)
    assert len(trials) == 10  # the baseline and 9 grid points, from two enqueuers


def test_a_trial_left_running_without_any_heartbeat_is_still_retried(url):
    """A study from before heartbeats (or plain Optuna) with a trial its dead worker left
    RUNNING: a waiting worker gives it a heartbeat clock instead of waiting forever."""
    old_storage = open_storage(url)  # no heartbeats
    old = optuna.create_study(study_name="faults", storage=old_storage, direction="maximize")
    old.enqueue_trial({"rank": 2}, user_attrs={"baseline": False})
    claim_next_trial(old_storage, old)

    storage, study = new_study(url)
    retry = next_trial(storage, study, poll_seconds=0.5, stop_requested=NEVER)
    assert retry is not None and retry.system_attrs["failed_trial"] == 0
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.RUNNING]


def test_a_trial_whose_params_were_registered_in_part_has_no_point_yet():
    """Optuna writes a trial's params one at a time; a worker stopped in between (a full
    database disk in the chaos run) left rank and alpha without dropout, and every
    leaderboard of the study failed with KeyError."""
    from optuna.distributions import FloatDistribution, IntDistribution

    from search.study.trials import trial_point

    partial = optuna.trial.create_trial(
        state=optuna.trial.TrialState.FAIL,
        params={"rank": 4, "alpha": 8.0},
        distributions={"rank": IntDistribution(2, 8), "alpha": FloatDistribution(2, 8)})
    assert trial_point(partial) is None
    fixed = optuna.trial.create_trial(
        state=optuna.trial.TrialState.FAIL, params={"rank": 4, "alpha": 8.0},
        distributions={"rank": IntDistribution(2, 8), "alpha": FloatDistribution(2, 8)},
        system_attrs={"fixed_params": {"rank": 4, "alpha": 8.0, "dropout": 0.1}})
    assert trial_point(fixed).dropout == 0.1
