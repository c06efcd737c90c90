"""benchmarks/synthetic_study.py: its studies read back through the project's own readers, and
its fast writer stores what `add_trials` stores."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import optuna
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import synthetic_study  # noqa: E402
from search.results.leaderboard import leaderboard  # noqa: E402
from search.study.outcomes import trial_outcomes  # noqa: E402
from search.study.replicates import replicate_of  # noqa: E402
from search.study.trials import trial_history  # noqa: E402


@pytest.mark.parametrize(("layout", "trials", "seeds"), [("system", 9, 1), ("user", 11, 3)])
def test_study_reads_back(tmp_path, layout, trials, seeds):
    study = synthetic_study.make_study(f"sqlite:///{tmp_path / 's.db'}", "syn", trials, 40,
                                       test_images=24, seeds=seeds, layout=layout,
                                       artifacts_dir=tmp_path / "artifacts")
    frozen = study.get_trials()
    assert len(frozen) == trials
    assert {t.state for t in frozen} == {optuna.trial.TrialState.COMPLETE}
    board = leaderboard(study)
    assert len(board) == trials and set(board["state"]) == {"COMPLETE"}
    assert board["baseline"].sum() == seeds  # the study's baseline, once per seed
    assert study.user_attrs["seeds"] == seeds
    # Every configuration but the last (which the count may cut short) has every seed.
    lora = [t for t in frozen if not t.user_attrs["baseline"]]
    by_params: dict[tuple, list[int]] = {}
    for trial in lora:
        by_params.setdefault(tuple(sorted(trial.params.items())), []).append(replicate_of(trial))
    assert sorted(by_params[tuple(sorted(lora[0].params.items()))]) == list(range(seeds))
    assert study.user_attrs["tpe"]["trials"] == len(by_params)
    for trial in frozen:
        assert trial.user_attrs["seed"] == replicate_of(trial)  # the demo's seed 0 + replicate
        assert (synthetic_study.OUTCOMES in trial.system_attrs) == (layout == "system")
        assert (synthetic_study.OUTCOMES in trial.user_attrs) == (layout == "user")
        val, val_order = trial_outcomes(trial, "val")
        test, test_order = trial_outcomes(trial, "test")
        assert (val.shape, test.shape) == ((40,), (24,))
        assert trial.value == pytest.approx(val.mean(), abs=1e-6)
        assert trial.user_attrs["test_acc"] == pytest.approx(test.mean(), abs=1e-6)
        assert len(trial.intermediate_values) == len(trial_history(trial)) == 4
        assert ("history" in trial.system_attrs) == (layout == "system")
        records = [k for k in trial.system_attrs if k.startswith("artifacts:")]
        assert len(records) == 6
        assert all((tmp_path / "artifacts" / k.removeprefix("artifacts:")).is_file()
                   for k in records)
    assert len({t.system_attrs.get("outcomes", t.user_attrs.get("outcomes"))["val_order"]
                for t in frozen}) == 1


def test_deterministic_and_correlated(tmp_path):
    first, second = (synthetic_study.make_study(f"sqlite:///{tmp_path / name}", "syn", 16, 2000)
                     for name in ("a.db", "b.db"))
    assert [t.value for t in first.trials] == [t.value for t in second.trials]
    assert [t.params for t in first.trials] == [t.params for t in second.trials]
    rows = np.array([trial_outcomes(t, "val")[0] for t in first.trials])
    # Trials agree on easy images: more often right together than independence would make.
    a, b = rows[1:].astype(float), rows[1:].mean(axis=1, keepdims=True)
    both = (a[:, None, :] * a[None, :, :]).mean(axis=2)
    assert (both - b @ b.T)[np.triu_indices(len(a), 1)].mean() > 0.01
    assert 0.78 < rows[1:].mean() < 0.93


def test_insert_trials_stores_what_add_trials_stores(tmp_path):
    source = synthetic_study.make_study(f"sqlite:///{tmp_path / 's.db'}", "syn", 6, 16)
    templates = source.get_trials()[2:]
    check_add_finished_trial(source)
    from search.study.storage import open_storage

    stored = {}
    for way in ("add_trials", "insert_trials"):
        storage = open_storage(f"sqlite:///{tmp_path / way}.db")
        study = optuna.create_study(study_name=way, storage=storage, direction="maximize")
        if way == "add_trials":
            study.add_trials(templates)
        else:
            numbered = [optuna.trial.FrozenTrial(
                number=i, state=t.state, value=t.value, datetime_start=t.datetime_start,
                datetime_complete=t.datetime_complete, params=t.params,
                distributions=t.distributions, user_attrs=t.user_attrs,
                system_attrs=t.system_attrs, intermediate_values=t.intermediate_values,
                trial_id=0) for i, t in enumerate(templates)]
            synthetic_study.insert_trials(storage, study._study_id, numbered)
        stored[way] = optuna.load_study(study_name=way, storage=storage).get_trials()
    assert stored["add_trials"] == stored["insert_trials"]
    assert [t.value for t in stored["add_trials"]] == [t.value for t in templates]


def check_add_finished_trial(study):
    """One more trial, as a worker finishes a queued grid point."""
    number = synthetic_study.add_finished_trial(study, 16, configuration=7)
    trial = study.trials[-1]
    assert trial.number == number == 6
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.system_attrs["fixed_params"] == trial.params
    assert trial_outcomes(trial, "val")[0].shape == (16,)
    assert trial.distributions == study.trials[1].distributions


def test_plan_counts_every_trial():
    slots = synthetic_study.plan_slots(10, 3)
    assert len(slots) == 10
    assert [(s.configuration, s.replicate) for s in slots[:6]] == [
        (-1, 0), (-1, 1), (-1, 2), (0, 0), (0, 1), (0, 2)]
    with pytest.raises(ValueError):
        synthetic_study.plan_slots(5, 3)

