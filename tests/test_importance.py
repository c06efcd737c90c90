"""What mattered (`search.results.importance`): Optuna's fANOVA over the complete LoRA trials'
effective params, the rules for too few trials, and the leaderboard, report and study note
that end with its line. Also the recommendation among tied configurations that differ only
by what costs nothing (the learning rate)."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
import torch
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.importance import FanovaImportanceEvaluator
from run_cli import search_in_process

from objectives.spec import TARGET_SETS, LoraParams
from search.results import importance
from search.results.dashboard_notes import leaderboard_note
from search.results.importance import (
    MAX_DEPTH,
    N_TREES,
    SEED,
    importance_lines,
    importances,
    observations,
    study_importances,
)
from search.results.leaderboard import render_board, study_board
from search.results.verdict import assess
from search.study.outcomes import outcomes_attr
from search.study.space import VARIANTS, params_of

SPEC = {"model": "vit_tiny_patch16_224", "lr": 3e-4, "targets": "q,k,v"}
# The distributions a worker registers a point's params with (`SearchedSpace.bounds`).
DISTRIBUTIONS = {"rank": IntDistribution(1, 64), "alpha": FloatDistribution(1, 64),
                 "dropout": FloatDistribution(0, 0.9),
                 "lr": FloatDistribution(1e-5, 1e-1, log=True),
                 "targets": CategoricalDistribution(tuple(TARGET_SETS)),
                 "scaling": CategoricalDistribution(tuple(VARIANTS))}
N_VAL = 200
LABELS = torch.arange(N_VAL) % 10


def lora_trial(point: LoraParams, value: float, replicate: int = 0,
               state=optuna.trial.TrialState.COMPLETE, params: int = 1000,
               val: torch.Tensor | None = None) -> optuna.trial.FrozenTrial:
    """A LoRA trial as a worker stores it: only the params `params_of` gives the point (no
    lr, targets or scaling where they are the spec's or plain LoRA's)."""
    stored = params_of(point)
    attrs = {"baseline": False, "trainable_params": params, "seed": replicate,
             "test_acc": value}
    if replicate:
        attrs["replicate"] = replicate
    system = {"outcomes": outcomes_attr(val, LABELS)} if val is not None else {}
    return optuna.trial.create_trial(
        params=stored, distributions={k: DISTRIBUTIONS[k] for k in stored}, state=state,
        value=value if state == optuna.trial.TrialState.COMPLETE else None,
        user_attrs=attrs, system_attrs=system)


def baseline_trial(value: float, val: torch.Tensor | None = None) -> optuna.trial.FrozenTrial:
    system = {"outcomes": outcomes_attr(val, LABELS)} if val is not None else {}
    return optuna.trial.create_trial(value=value, system_attrs=system, user_attrs={
        "baseline": True, "trainable_params": 500, "test_acc": value})


def new_study(trials=(), storage=None) -> optuna.Study:
    study = optuna.create_study(storage=storage, study_name="imp", direction="maximize")
    study.set_user_attr("train_spec", SPEC)
    study.add_trials(list(trials))
    return study


def lr_study_trials(noise: float = 0.002, seeds: int = 1) -> list[optuna.trial.FrozenTrial]:
    """3 ranks x 2 alphas x 3 learning rates (the spec's, 3e-4, among them: those trials
    store no lr), accuracy a function of the learning rate alone plus a little noise."""
    rng = np.random.default_rng(0)
    trials = []
    for replicate in range(seeds):
        for rank in (2, 4, 8):
            for alpha in (4.0, 8.0):
                for lr in (1e-4, None, 1e-3):
                    effective = lr or SPEC["lr"]
                    value = 0.9 + 0.05 * math.log10(effective / 1e-3) + rng.normal(0, noise)
                    trials.append(lora_trial(LoraParams(rank, alpha, 0.1, lr=lr), value,
                                             replicate))
    return trials


def test_shares_are_optunas_fanova_of_the_effective_params():
    """Known inputs: the shares equal Optuna's evaluator called directly on a study where
    every trial carries every param (the spec's lr and layers, plain LoRA, filled in)."""
    rng = np.random.default_rng(1)
    trials, direct = [], []
    for number in range(24):
        lr = (None, 1e-3, 3e-3)[number % 3]
        targets = (None, TARGET_SETS["all"])[number % 2]
        variant = ("lora", "rslora")[(number // 2) % 2]
        scaling, dora = VARIANTS[variant]
        point = LoraParams(rank=(2, 8)[(number // 4) % 2], alpha=4.0, dropout=0.1,
                           scaling=scaling, dora=dora, lr=lr, targets=targets)
        value = float(0.8 + 0.01 * (number % 3) + 0.03 * (targets is not None)
                      + rng.normal(0, 0.005))
        trials.append(lora_trial(point, value))
        params = {"rank": point.rank, "lr": lr or SPEC["lr"],
                  "targets": "q,k,v" if targets is None else targets, "scaling": variant}
        direct.append(optuna.trial.create_trial(params=params, value=value, distributions={
            "rank": IntDistribution(2, 8), "lr": FloatDistribution(3e-4, 3e-3, log=True),
            "targets": CategoricalDistribution(sorted({"q,k,v", TARGET_SETS["all"]})),
            "scaling": CategoricalDistribution(["lora", "rslora"])}))
    study = new_study([baseline_trial(0.5), *trials])
    reference = optuna.create_study(direction="maximize")
    reference.add_trials(direct)
    evaluator = FanovaImportanceEvaluator(n_trees=N_TREES, max_depth=MAX_DEPTH, seed=SEED)
    expected = evaluator.evaluate(reference, params=["rank", "lr", "targets", "scaling"])

    result = study_importances(study)
    assert result.enough and result.trials == 24 and result.used == 24  # the baseline: no
    assert result.varying == ("rank", "lr", "targets", "scaling")  # alpha, dropout: fixed
    assert list(result.values) == list(expected)  # largest first, as Optuna sorts them
    assert result.values == pytest.approx(dict(expected), abs=1e-12)
    assert result.interactions == pytest.approx(1 - sum(expected.values()), abs=1e-12)
    assert study_importances(study) == result  # seeded: the same every time


def test_accuracy_that_moves_with_lr_alone_puts_lr_first_and_lists_only_what_varies():
    result = importances(observations(lr_study_trials(), SPEC["lr"], SPEC["targets"]))
    assert result.enough and result.trials == 18
    assert set(result.values) == {"rank", "alpha", "lr"}  # dropout, targets, scaling fixed
    assert next(iter(result.values)) == "lr" and result.values["lr"] > 0.8
    assert max(result.values["rank"], result.values["alpha"]) < 0.05
    line, = importance_lines(result)
    assert line.startswith("what mattered (share of validation accuracy's variance, fANOVA "
                           f"over 18 trials): lr {result.values['lr']:.2f}, ")
    assert "dropout" not in line and "targets" not in line and "scaling" not in line
    assert line.endswith(f"; interactions {result.interactions:.2f}")


def test_every_seed_is_an_observation_and_only_complete_lora_trials_count():
    trials = lr_study_trials(seeds=3)
    others = [baseline_trial(0.99),
              lora_trial(LoraParams(16, 64.0, 0.5), 0.1, state=optuna.trial.TrialState.PRUNED),
              optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING,
                                        user_attrs={"baseline": False})]  # no params yet
    result = study_importances(new_study([*others, *trials]))
    assert result.trials == 54 and result.enough and next(iter(result.values)) == "lr"
    assert "fANOVA over 54 trials" in importance_lines(result)[0]
    assert set(result.values) == {"rank", "alpha", "lr"}  # the pruned trial's 16, 64: not


@pytest.mark.parametrize("count, expected", [
    (0, None), (1, None),
    (4, "what mattered: too few trials to tell (4 complete LoRA trials; 10 needed for the 2 "
        "hyperparameters that vary)"),
])
def test_too_few_trials_say_so_or_nothing(count, expected):
    trials = [lora_trial(LoraParams((2, 4)[n % 2], 4.0, 0.1, lr=(1e-3, 1e-4)[n // 2 % 2]),
                         0.8 + 0.01 * n) for n in range(count)]
    lines = importance_lines(study_importances(new_study(trials)))
    assert lines == ([expected] if expected else [])


def test_too_few_grows_with_the_params_that_vary():
    """Five per param: 12 trials are enough for two params, not for three."""
    rng = np.random.default_rng(2)
    two = [lora_trial(LoraParams((2, 4)[n % 2], (4.0, 8.0)[n // 2 % 2], 0.1),
                      0.8 + 0.01 * rng.random()) for n in range(12)]
    assert study_importances(new_study(two)).enough
    three = [lora_trial(LoraParams((2, 4)[n % 2], (4.0, 8.0)[n // 2 % 2], (0.1, 0.2)[n // 4 % 2]),
                        0.8 + 0.01 * rng.random()) for n in range(12)]
    result = study_importances(new_study(three))
    assert not result.enough and result.values == {}
    assert "12 complete LoRA trials; 15 needed for the 3 hyperparameters" in result.reason


def test_one_varying_param_no_varying_param_and_one_accuracy_say_why():
    only_lr = [lora_trial(LoraParams(4, 8.0, 0.1, lr=(1e-3, 1e-4)[n % 2]), 0.8 + 0.01 * n)
               for n in range(20)]
    assert importance_lines(study_importances(new_study(only_lr))) == [
        "what mattered: only lr varies: nothing to compare it with"]
    seeds = [lora_trial(LoraParams(4, 8.0, 0.1), 0.8 + 0.01 * n, replicate=n) for n in range(3)]
    assert importance_lines(study_importances(new_study(seeds))) == [
        "what mattered: no hyperparameter varies over the 3 complete LoRA trials"]
    flat = [lora_trial(LoraParams((2, 4)[n % 2], (4.0, 8.0)[n // 2 % 2], 0.1), 0.8)
            for n in range(12)]
    assert importance_lines(study_importances(new_study(flat))) == [
        "what mattered: validation accuracy is the same in all 12 trials: nothing to explain"]


def test_a_large_study_is_a_fixed_sample_that_a_new_trial_moves_by_one(monkeypatch):
    monkeypatch.setattr(importance, "MAX_OBSERVATIONS", 30)
    found = observations(new_study(lr_study_trials(seeds=2)).trials, SPEC["lr"],
                         SPEC["targets"])  # 36, numbered 0-35
    kept = {o.number for o in importance.subsample(found)}
    assert len(kept) == 30 and kept == {o.number for o in importance.subsample(found[::-1])}
    more = [*found, importance.Observation(36, found[0].params, 0.9)]
    assert len(kept - {o.number for o in importance.subsample(more)}) <= 1
    result = importances(found)
    assert result.used == 30 and result.trials == 36 and result.enough
    assert "fANOVA over 30 of 36 trials, a fixed sample)" in importance_lines(result)[0]


def test_spec_values_as_stored_fill_in_and_unusable_ones_read_as_the_defaults():
    trials = [lora_trial(LoraParams(4, 8.0, 0.1), 0.8),
              lora_trial(LoraParams(4, 8.0, 0.1, lr=1e-3, targets=TARGET_SETS["qv"]), 0.8)]
    plain, own = observations(trials, 5e-4, "qkv")  # timm's fused layer, not the set "qkv"
    assert plain.params["lr"] == 5e-4 and plain.params["targets"] == "qkv"
    assert own.params["lr"] == 1e-3 and own.params["targets"] == "q,v"
    default, _ = observations(trials, "fast", None)
    assert default.params["lr"] == 3e-4 and default.params["targets"] == "q,k,v"


# The leaderboard, report and study note, on a study stored as workers store it.

def wrong(count: int) -> torch.Tensor:
    correct = torch.ones(N_VAL, dtype=torch.bool)
    correct[:count] = False
    return correct


def stored_study(tmp_path, with_outcomes: bool = True) -> optuna.Study:
    """18 LoRA trials, 2 ranks x 3 alphas x 3 learning rates, whose validation accuracy
    falls with the learning rate; and a baseline."""
    trials = [baseline_trial(wrong(60).float().mean().item(),
                             wrong(60) if with_outcomes else None)]
    for number, (rank, alpha, lr) in enumerate(
            (r, a, lr) for r in (2, 4) for a in (2.0, 4.0, 8.0) for lr in (None, 1e-3, 3e-3)):
        val = wrong({None: 10, 1e-3: 30, 3e-3: 50}[lr] + number % 2)
        trials.append(lora_trial(LoraParams(rank, alpha, 0.1, lr=lr), val.float().mean().item(),
                                 params=1000 * rank, val=val if with_outcomes else None))
    return new_study(trials, storage=f"sqlite:///{tmp_path / 'v.db'}")


def test_the_leaderboard_note_and_report_end_with_what_mattered(tmp_path, capsys, monkeypatch):
    study = stored_study(tmp_path)
    board = study_board(study)
    assert board.verdict is not None and board.importances.enough
    line, = importance_lines(board.importances)
    assert line.startswith("what mattered (share of validation accuracy's variance, fANOVA "
                           "over 18 trials): lr ")
    text = render_board(board, "table")
    assert text.index("LoRA configurations are tied with the best") < text.index(line)
    assert f"- {line}" in leaderboard_note(study, board, None, None)

    code, _, err = search_in_process(["report", "--storage", f"sqlite:///{tmp_path / 'v.db'}",
                                      "--out", "r"], tmp_path, capsys, monkeypatch)
    assert code == 0, err
    markdown = (tmp_path / "r" / "report.md").read_text()
    assert f"- {line}" in markdown
    assert markdown.index("LoRA configurations are tied with the best") < markdown.index(line)


def test_studies_made_before_show_the_line_or_none(tmp_path):
    old = stored_study(tmp_path, with_outcomes=False)  # no outcomes: no verdict, still values
    board = study_board(old)
    assert board.verdict is None and board.lines[-1].startswith("what mattered (share")
    assert board.lines[1].startswith("no tie test")
    empty = new_study(storage=f"sqlite:///{tmp_path / 'e.db'}")
    empty.set_user_attr("train_spec", {})  # nor a stored lr or targets
    assert study_board(empty).lines == ["no LoRA trial has completed yet"]
    bases = new_study([baseline_trial(0.7, wrong(60)), baseline_trial(0.75, wrong(50))])
    assert study_board(bases).importances.trials == 0
    assert not any("what mattered" in line for line in study_board(bases).lines)


def test_tied_configurations_differing_only_by_lr_recommend_the_higher_mean():
    """The learning rate costs nothing: two tied configurations of the same size, one lr
    apart, and the one of the higher mean validation accuracy is recommended."""
    study = new_study([
        lora_trial(LoraParams(4, 8.0, 0.1), 0.955, params=4000, val=wrong(9)),  # best
        lora_trial(LoraParams(4, 8.0, 0.1, lr=1e-3), 0.94, params=4000, val=wrong(12)),
        lora_trial(LoraParams(4, 8.0, 0.1, lr=3e-3), 0.945, params=4000, val=wrong(11)),
        lora_trial(LoraParams(8, 8.0, 0.1), 0.96, params=8000, val=wrong(8))])
    verdict = assess(study)
    assert all(verdict.tied(c) for c in verdict.configurations)
    assert verdict.best.numbers == [3] and verdict.recommended.numbers == [0]
    # The same two without the spec's lr among them: the higher of the lr-only pair wins.
    study = new_study([
        lora_trial(LoraParams(4, 8.0, 0.1, lr=1e-3), 0.94, params=4000, val=wrong(12)),
        lora_trial(LoraParams(4, 8.0, 0.1, lr=3e-3), 0.945, params=4000, val=wrong(11))])
    assert assess(study).recommended.numbers == [1]
