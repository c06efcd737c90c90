"""TPE search without training: settings, budget top-up, sampler seeding and learning, pruners.

Trials go through the worker's own claim and suggest code with a made-up accuracy in place of
training, so these run in well under a second each.
"""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from search.study.enqueue import enqueue_grid
from search.study.open_study import StudyError
from search.study.space import GridSpace, SpaceError, TpeSearch, TpeSpace, space_disagreements
from search.study.tpe_search import check_grid_fits, enqueue_tpe_budget, settle_search
from search.study.trials import is_baseline, trial_point
from search.worker.sampler import LoraSpaceSampler, build_pruner, searching_study
from search.worker.trial_queue import claim_next_trial
from search.worker.trial_run import param_bounds, suggest_point

optuna.logging.set_verbosity(optuna.logging.WARNING)


def new_study(name: str = "s") -> tuple[optuna.storages.BaseStorage, optuna.Study]:
    storage = optuna.storages.InMemoryStorage()
    return storage, optuna.create_study(study_name=name, storage=storage, direction="maximize")


def fake_accuracy(rank: int, alpha: float, dropout: float) -> float:
    """Higher rank and alpha are better: something for TPE to learn."""
    return 0.5 + 0.04 * rank + 0.01 * alpha - 0.1 * dropout


def run_queue(storage, study: optuna.Study, epochs: int = 1) -> list[optuna.trial.FrozenTrial]:
    """Claim and finish every queued trial the way a worker does, without training."""
    searching = searching_study(storage, study, epochs)
    while (frozen := claim_next_trial(storage, searching)) is not None:
        trial = optuna.Trial(searching, frozen._trial_id)
        if is_baseline(frozen):
            searching.tell(trial, 0.6)
            continue
        point = suggest_point(trial, param_bounds(searching, trial_point(frozen)))
        searching.tell(trial, fake_accuracy(point.rank, point.alpha, point.dropout))
    return study.get_trials()


def lora_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials() if not is_baseline(t)]


def test_settings_validate_and_round_trip():
    search = TpeSearch(trials=7, space=TpeSpace.from_values([8, 2], [4], [0.0, 0.5]), seed=3,
                       pruner="hyperband")
    assert TpeSearch.from_dict(search.to_dict()) == search
    assert search.to_dict()["ranks"] == [2, 8]


@pytest.mark.parametrize("values, message", [
    ({"trials": 0}, "trials must be an integer >= 1"),
    ({"pruner": "asha"}, "pruner must be one of median, hyperband, none"),
    ({"dropout_range": [0.3, 0.1]}, "LO < HI"),
    ({"dropout_range": [0.1, 0.1]}, "LO < HI"),
    ({"dropout_range": [0.1, 1.0]}, "dropout must be a number in [0, 1)"),
    ({"ranks": []}, "ranks must be a non-empty list"),
    ({"alphas": [0]}, "alpha must be a number > 0"),
    ({"seed": -1}, "seed must be an integer >= 0"),
    ({"colour": 1}, "unknown key"),
])
def test_bad_settings_are_refused(values, message):
    with pytest.raises(SpaceError, match=message.replace("[", r"\[").replace(")", r"\)")):
        TpeSearch.from_dict(values)


def test_budget_counts_finished_lora_trials_and_tops_up():
    storage, study = new_study()
    report = enqueue_tpe_budget(study, TpeSearch(trials=4))
    assert (report.baselines_added, report.added) == (1, 4)
    assert enqueue_tpe_budget(study, TpeSearch(trials=4)).added == 0  # queued ones count
    run_queue(storage, study)
    again = enqueue_tpe_budget(study, TpeSearch(trials=4))
    assert (again.baselines_added, again.finished, again.added) == (0, 4, 0)
    assert enqueue_tpe_budget(study, TpeSearch(trials=6)).added == 2
    trials = run_queue(storage, study)
    assert [is_baseline(t) for t in trials].count(True) == 1
    assert len(lora_trials(study)) == 6
    assert {t.state for t in trials} == {TrialState.COMPLETE}


def test_failed_trials_do_not_count_towards_the_budget():
    storage, study = new_study()
    enqueue_tpe_budget(study, TpeSearch(trials=2))
    searching = searching_study(storage, study, 1)
    claim_next_trial(storage, searching)  # the baseline
    frozen = claim_next_trial(storage, searching)
    searching.tell(frozen.number, state=TrialState.FAIL)
    assert enqueue_tpe_budget(study, TpeSearch(trials=2)).added == 1


def test_sampled_params_stay_inside_the_space():
    storage, study = new_study()
    space = TpeSpace.from_values([2, 4, 8], [2, 4, 8], [0.05, 0.30])
    enqueue_tpe_budget(study, TpeSearch(trials=12, space=space, startup_trials=4))
    run_queue(storage, study)
    for trial in lora_trials(study):
        assert trial.params["rank"] in (2, 4, 8) and trial.params["alpha"] in (2.0, 4.0, 8.0)
        assert 0.05 <= trial.params["dropout"] <= 0.30


def first_suggestions(seed: int, count: int = 6) -> list[dict]:
    storage, study = new_study()
    enqueue_tpe_budget(study, TpeSearch(trials=count, seed=seed, startup_trials=3))
    run_queue(storage, study)
    return [t.params for t in lora_trials(study)]


def test_the_same_seed_gives_the_same_suggestions_and_another_seed_others():
    assert first_suggestions(0) == first_suggestions(0)
    assert first_suggestions(0) != first_suggestions(1)


def test_two_workers_starting_together_do_not_draw_the_same_point():
    storage, study = new_study()
    enqueue_tpe_budget(study, TpeSearch(trials=2))
    claim_next_trial(storage, study)  # the baseline, left running
    first, second = (searching_study(storage, study, 1) for _ in range(2))
    points = []
    for searching in (first, second):  # two processes, each with its own sampler
        frozen = claim_next_trial(storage, searching)
        points.append(suggest_point(optuna.Trial(searching, frozen._trial_id),
                                    param_bounds(searching, None)))
    assert points[0] != points[1]


def test_tpe_learns_from_a_finished_grid():
    storage, study = new_study()
    enqueue_grid(study, GridSpace.from_values([2, 4, 8], [2, 4, 8], [0.1]))
    run_queue(storage, study)
    search = settle_search(study, TpeSearch(trials=9 + 12, startup_trials=5), set())
    enqueue_tpe_budget(study, search)
    run_queue(storage, study)
    sampled = [t.params for t in lora_trials(study) if t.user_attrs.get("sampled")]
    assert len(sampled) == 12
    # The grid says rank 8 is best; random choice would give rank 8 a third of the time.
    assert sum(p["rank"] == 8 for p in sampled) >= 8


def test_a_grid_and_a_tpe_space_must_agree():
    _, study = new_study()
    enqueue_grid(study, GridSpace.from_values([2, 16], [2], [0.1]))
    with pytest.raises(StudyError, match="grid ranks 16 not among the TPE ranks 2 4 8"):
        settle_search(study, TpeSearch(), set())
    _, study = new_study()
    enqueue_tpe_budget(study, TpeSearch())
    with pytest.raises(StudyError, match="grid dropouts 0.5 outside the TPE range 0.05..0.3"):
        check_grid_fits(study, GridSpace.from_values([2], [2.0], [0.5]))
    check_grid_fits(study, GridSpace.from_values([2, 8], [4.0], [0.1]))
    assert space_disagreements(None, TpeSpace()) == []


def test_a_stored_search_keeps_its_settings_unless_contradicted():
    _, study = new_study()
    enqueue_tpe_budget(study, TpeSearch(trials=3, seed=5, pruner="none"))
    topped = settle_search(study, TpeSearch(trials=8), set())  # defaults do not override
    assert (topped.trials, topped.seed, topped.pruner) == (8, 5, "none")
    with pytest.raises(StudyError, match="seed: 5 \\(stored\\) vs 6"):
        settle_search(study, TpeSearch(seed=6), {"seed"})


def epochs_stopped_at(pruner: str, epochs: int) -> tuple[list, list]:
    """Eight trials at 0.9 every epoch, then eight at 0.1, each asking the pruner after every
    epoch as training does: the epoch each good and each poor trial was stopped at (None:
    it ran to the end)."""
    study = optuna.create_study(direction="maximize", pruner=build_pruner(pruner, epochs),
                                storage=optuna.storages.InMemoryStorage(), study_name="p")
    stopped: dict[float, list] = {0.9: [], 0.1: []}
    for value in [0.9] * 8 + [0.1] * 8:
        trial, at = study.ask(), None
        for epoch in range(1, epochs + 1):
            trial.report(value, epoch)
            if trial.should_prune():
                at = epoch
                break
        study.tell(trial, value if at is None else None,
                   state=TrialState.COMPLETE if at is None else TrialState.PRUNED)
        stopped[value].append(at)
    return stopped[0.9], stopped[0.1]


@pytest.mark.parametrize("epochs, third", [(10, 4), (9, 3), (4, 2), (2, 1)])
def test_pruners_never_stop_a_trial_before_a_third_of_its_epochs(epochs, third):
    good, poor = epochs_stopped_at("median", epochs)
    assert good == [None] * 8
    assert poor == [third] * 8  # the median pruner stops each poor one as soon as it may
    good, poor = epochs_stopped_at("hyperband", epochs)
    assert good == [None] * 8
    assert any(at is not None for at in poor)
    assert all(at is None or at >= third for at in poor)
    assert epochs_stopped_at("none", epochs) == ([None] * 8, [None] * 8)


def test_the_median_pruner_stops_a_trial_below_the_median_after_warm_up():
    storage, study = new_study()
    enqueue_tpe_budget(study, TpeSearch(trials=5, pruner="median"))
    searching = searching_study(storage, study, epochs=6)
    for value in (0.9, 0.8, 0.85):  # finished trials with curves at 0.9 / 0.8 / 0.85
        study.add_trial(optuna.create_trial(
            value=value, intermediate_values={step: value for step in range(1, 7)},
            user_attrs={"baseline": False}))
    frozen = claim_next_trial(storage, searching)
    trial = optuna.Trial(searching, frozen._trial_id)
    trial.report(0.1, 1)
    assert not trial.should_prune()  # epoch 1 of 6: inside the warm-up
    trial.report(0.1, 2)
    assert trial.should_prune()


def test_the_sampler_is_the_one_stored_with_the_study():
    storage, study = new_study()
    assert searching_study(storage, study, 3) is study  # grid-only: nothing to sample
    enqueue_tpe_budget(study, TpeSearch(pruner="hyperband"))
    searching = searching_study(storage, study, 3)
    assert isinstance(searching.sampler, LoraSpaceSampler)
    assert isinstance(searching.pruner, optuna.pruners.HyperbandPruner)
