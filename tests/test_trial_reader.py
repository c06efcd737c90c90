"""The whole-study reader gives what Optuna's own reader gives, field for field, on every kind
of trial a study holds, on SQLite and on a throwaway PostgreSQL: it reads Optuna's tables
directly, so this is where a change of Optuna's schema shows first."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from postgres_cluster import running_cluster

from search.study.trial_reader import all_trials


def fill(study: optuna.Study) -> None:
    """Trials in every state, with every kind of stored value."""
    study.enqueue_trial({"rank": 4, "alpha": 8.0}, user_attrs={"baseline": False})
    running = study.ask({"rank": IntDistribution(1, 64), "alpha": FloatDistribution(1, 64)})
    running.set_user_attr("checkpoint", {"artifact": "a", "epoch": 2})
    running.report(0.5, 1)
    study.enqueue_trial({"rank": 2, "alpha": 2.0}, user_attrs={"baseline": False})  # WAITING
    study.add_trial(optuna.trial.create_trial(
        params={"rank": 8, "alpha": 16.0, "lr": 3e-4, "targets": "qkv"},
        distributions={"rank": IntDistribution(1, 64), "alpha": FloatDistribution(1, 64),
                       "lr": FloatDistribution(1e-5, 1e-2, log=True),
                       "targets": CategoricalDistribution(["qkv", "all"])},
        value=0.91, intermediate_values={1: 0.5, 2: float("inf"), 3: float("-inf")},
        user_attrs={"history": [{"epoch": 1, "val_acc": 0.5}], "baseline": False, "x": None,
                    "text": "ünïcode ✓"},
        system_attrs={"outcomes": {"val": "AAE=", "n_val": 9, "val_order": "00ff00ff"},
                      "fixed_params": {"rank": 8}}))
    study.add_trial(optuna.trial.create_trial(value=float("inf"), user_attrs={"baseline": True}))
    study.add_trial(optuna.trial.create_trial(state=TrialState.PRUNED,
                                              intermediate_values={1: 0.2}))
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL,
                                              user_attrs={"error": "CUDA out of memory"}))
    study.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, value=-0.0,
                                              intermediate_values={4: float("nan")}))


def same(a: optuna.trial.FrozenTrial, b: optuna.trial.FrozenTrial) -> bool:
    """Equal, NaN intermediate values counting as equal."""
    nan = {step for step, v in a.intermediate_values.items() if math.isnan(v)}
    if nan != {step for step, v in b.intermediate_values.items() if math.isnan(v)}:
        return False
    keep = {k: v for k, v in a.intermediate_values.items() if k not in nan}
    return (keep == {k: v for k, v in b.intermediate_values.items() if k not in nan}
            and {**a.__dict__, "intermediate_values": None}
            == {**b.__dict__, "intermediate_values": None})


def check_equal_to_optunas_reader(url: str) -> None:
    study = optuna.create_study(storage=url, study_name="r", direction="maximize")
    other = optuna.create_study(storage=url, study_name="other")  # its trials stay out
    other.add_trial(optuna.trial.create_trial(value=1.0))
    fill(study)
    expected = study._storage.get_all_trials(study._study_id, deepcopy=False)
    found = all_trials(study)
    assert len(found) == len(expected) == 7
    assert [t.number for t in found] == list(range(7))
    for ours, theirs in zip(found, expected, strict=True):
        assert same(ours, theirs), (ours, theirs)
    assert {t.state for t in found} == set(TrialState)


def test_equal_to_optunas_reader_on_sqlite(tmp_path):
    check_equal_to_optunas_reader(f"sqlite:///{tmp_path / 'r.db'}")


def test_equal_to_optunas_reader_on_postgresql():
    with running_cluster() as cluster:
        check_equal_to_optunas_reader(cluster.url)


def test_a_study_outside_a_database_is_read_by_optuna():
    study = optuna.create_study()
    fill(study)
    assert all_trials(study) == study.get_trials(deepcopy=False)[:5] + \
        study.get_trials(deepcopy=False)[5:]


@pytest.mark.parametrize("trials", [0, 1])
def test_an_empty_or_tiny_study(tmp_path, trials):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'e.db'}")
    for _ in range(trials):
        study.add_trial(optuna.trial.create_trial(value=0.1))
    assert all_trials(study) == study.get_trials()
