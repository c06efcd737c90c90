"""Racing's round decisions on synthetic outcomes whose truth is known: a clear winner, an
equivalence, a near-tie the data cannot settle, baselines; determinism; the equivalence test
against statsmodels' paired TOST; and the settings' checks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import ndtri
from scipy.stats import t as student_t
from statsmodels.stats.weightstats import ttost_paired

from search.results.bootstrap import ExampleResampling
from search.results.race_rules import (
    RaceSettings,
    StopReason,
    decide_round,
    equivalence_intervals,
    fixed_seed_trials,
    replay,
)

BASE = ("baseline",)


def synthetic(accuracies: dict, seeds: int, examples: int, seed: int,
              pairing: float = 0.8) -> dict:
    """key -> [seeds, examples] outcomes with the given true accuracies. Each example has a
    difficulty shared by every configuration and seed (weight `pairing`), as real models err
    on the same hard images; the rest is noise of the configuration and seed. Correct when
    the standard normal score is below ndtri(accuracy): marginally right with that
    probability."""
    rng = np.random.default_rng(seed)
    difficulty = rng.standard_normal(examples)
    result = {}
    for key, accuracy in accuracies.items():
        noise = rng.standard_normal((seeds, examples))
        score = np.sqrt(pairing) * difficulty + np.sqrt(1 - pairing) * noise
        result[key] = score < ndtri(accuracy)
    return result


def costs_of(keys) -> dict:
    """Trainable parameters: the rank (first element) times 10,000; baselines 1,000."""
    return {key: 1000 if key == BASE else key[0] * 10_000 for key in keys}


def test_clear_winner_is_one_left():
    accuracies = {(8, 16.0, 0.0): 0.90, (4, 8.0, 0.0): 0.85, (2, 4.0, 0.0): 0.84,
                  (16, 32.0, 0.1): 0.83, (1, 2.0, 0.0): 0.80}
    outcomes = synthetic(accuracies, seeds=10, examples=2000, seed=1)
    state = replay(outcomes, costs_of(outcomes))
    assert state.finished
    last = state.rounds[-1]
    assert last.reason is StopReason.ONE_LEFT
    assert last.round <= 2
    assert last.survivors == ((8, 16.0, 0.0),)
    assert last.recommended == (8, 16.0, 0.0)
    assert set().union(*(r.dropped for r in state.rounds)) == set(accuracies) - {(8, 16.0, 0.0)}
    assert state.trials_used == 5 * last.round  # everyone trained up to the decisive round
    assert state.describe()[0].startswith("one configuration left after")


def test_identical_truth_on_many_examples_is_equivalent():
    accuracies = {(rank, 2.0 * rank, 0.0): 0.90 for rank in (1, 2, 4, 8)}
    outcomes = synthetic(accuracies, seeds=10, examples=20_000, seed=2)
    settings = RaceSettings(max_seeds=10, margin=0.005)
    state = replay(outcomes, costs_of(outcomes), settings=settings)
    last = state.rounds[-1]
    assert last.reason is StopReason.EQUIVALENT, last.describe()
    assert last.round <= 5
    assert not any(r.dropped for r in state.rounds)
    assert last.recommended == (1, 2.0, 0.0)  # the cheapest of the equivalent ones
    assert all(-0.005 < low and high < 0.005 for low, high in last.equivalence.values())
    assert last.describe().startswith(f"4 configurations equivalent within 0.5 pp after "
                                      f"{last.round} seed")
    assert state.trials_used == 4 * last.round == state.fixed_trials


def test_equivalence_needs_the_interval_inside_the_margin():
    """The same data, a margin narrower than the interval: no longer equivalent."""
    accuracies = {(rank, 2.0 * rank, 0.0): 0.90 for rank in (1, 2, 4, 8)}
    outcomes = synthetic(accuracies, seeds=3, examples=20_000, seed=2)
    costs = costs_of(outcomes)
    wide = decide_round(outcomes, costs, settings=RaceSettings(margin=0.005))
    narrow = decide_round(outcomes, costs, settings=RaceSettings(margin=0.0005))
    assert wide.reason is StopReason.EQUIVALENT
    assert narrow.reason is None and not narrow.finished and narrow.recommended is None


def test_near_tie_on_few_examples_runs_to_the_seed_cap():
    accuracies = {(1, 2.0, 0.0): 0.80, (2, 4.0, 0.0): 0.805, (4, 8.0, 0.0): 0.81}
    outcomes = synthetic(accuracies, seeds=6, examples=216, seed=3, pairing=0.5)
    settings = RaceSettings(max_seeds=4)
    state = replay(outcomes, costs_of(outcomes), settings=settings)
    assert [r.round for r in state.rounds] == [1, 2, 3, 4]  # seeds 5, 6 are beyond the cap
    last = state.rounds[-1]
    assert last.reason is StopReason.SEED_CAP
    assert set(last.survivors) == set(accuracies)
    assert last.recommended == (1, 2.0, 0.0)
    assert not any(r.finished for r in state.rounds[:-1])
    assert state.trials_used == 12 and state.fixed_trials == fixed_seed_trials(3, 4) == 12


def test_baseline_dropped_when_clearly_worse():
    accuracies = {(1, 2.0, 0.0): 0.90, (2, 4.0, 0.0): 0.90, BASE: 0.80}
    outcomes = synthetic(accuracies, seeds=1, examples=2000, seed=4)
    decision = decide_round(outcomes, costs_of(outcomes), baselines={BASE},
                            settings=RaceSettings(margin=0.0001))
    assert set(decision.dropped) == {BASE}
    assert decision.dropped[BASE].gap > 0.05
    assert set(decision.survivors) == {(1, 2.0, 0.0), (2, 4.0, 0.0)}
    assert not decision.finished  # the LoRA pair is tied, not equivalent within 0.01 pp


def test_baseline_tied_keeps_racing_and_does_not_count():
    accuracies = {(1, 2.0, 0.0): 0.90, (2, 4.0, 0.0): 0.90, BASE: 0.90}
    outcomes = synthetic(accuracies, seeds=1, examples=2000, seed=5)
    costs = costs_of(outcomes)
    settings = RaceSettings(margin=0.0001)
    decision = decide_round(outcomes, costs, baselines={BASE}, settings=settings)
    assert not decision.dropped and BASE in decision.survivors and not decision.finished
    assert decision.best != BASE  # the best is the best LoRA configuration
    # One LoRA configuration with a tied baseline: the race is over, the baseline not counted.
    alone = decide_round({k: v for k, v in outcomes.items() if k != (2, 4.0, 0.0)}, costs,
                         baselines={BASE}, settings=settings)
    assert alone.reason is StopReason.ONE_LEFT and alone.recommended == (1, 2.0, 0.0)
    assert BASE in alone.survivors


def test_baseline_never_recommended_even_if_cheapest():
    accuracies = {(1, 2.0, 0.0): 0.90, (2, 4.0, 0.0): 0.90, BASE: 0.90}
    outcomes = synthetic(accuracies, seeds=3, examples=20_000, seed=6)
    decision = decide_round(outcomes, costs_of(outcomes), baselines={BASE},
                            settings=RaceSettings(margin=0.01))
    assert decision.reason is StopReason.EQUIVALENT
    assert decision.recommended == (1, 2.0, 0.0)


def test_same_outcomes_same_decision_in_any_order():
    accuracies = {(1, 2.0, 0.0): 0.88, (2, 4.0, 0.0): 0.885, (4, 8.0, 0.0): 0.89,
                  (8, 16.0, 0.0): 0.86, BASE: 0.87}
    outcomes = synthetic(accuracies, seeds=3, examples=1000, seed=7, pairing=0.6)
    costs = costs_of(outcomes)
    first = decide_round(outcomes, costs, baselines={BASE})
    again = decide_round(outcomes, costs, baselines={BASE})
    reordered = {key: outcomes[key][::-1] for key in reversed(list(outcomes))}
    shuffled = decide_round(reordered, costs, baselines={BASE},
                            resampling=ExampleResampling(1000))
    for other in (again, shuffled):
        assert other.survivors == first.survivors
        assert other.dropped == first.dropped
        assert other.best == first.best and other.reason == first.reason
        assert {k: t.p_value for k, t in other.tests.items()} == \
            {k: t.p_value for k, t in first.tests.items()}
        assert other.equivalence == first.equivalence
    # The bootstrap actually ran: several seeds, p-values strictly between the extremes.
    assert any(0 < t.p_value < 1 for t in first.tests.values())


def test_exact_tie_in_accuracy_is_broken_by_cost_not_order():
    row = np.zeros(100, dtype=bool)
    row[:90] = True
    other = np.roll(row, 5)  # same accuracy, other examples
    for outcomes in ({(4, 8.0, 0.0): row, (2, 4.0, 0.0): other},
                     {(2, 4.0, 0.0): other, (4, 8.0, 0.0): row}):
        decision = decide_round(outcomes, costs_of(outcomes))
        assert decision.best == (2, 4.0, 0.0)


def test_replay_waits_for_unfinished_seeds():
    accuracies = {(1, 2.0, 0.0): 0.88, (2, 4.0, 0.0): 0.88, BASE: 0.88}
    outcomes = synthetic(accuracies, seeds=3, examples=300, seed=8, pairing=0.5)
    outcomes[(2, 4.0, 0.0)] = outcomes[(2, 4.0, 0.0)][:2]  # its seed 3 still training
    state = replay(outcomes, costs_of(outcomes), baselines={BASE})
    assert [r.round for r in state.rounds] == [1, 2]
    assert state.waiting == {(2, 4.0, 0.0): 3} and state.next_round == 3
    assert not state.finished and set(state.racing) == set(accuracies)
    assert state.trials_used == 6


@pytest.mark.parametrize("true_gap, equivalent", [(0.0, True), (0.008, False)])
def test_tost_agrees_with_statsmodels_paired(true_gap, equivalent):
    """One seed, 20,000 examples: the bootstrap's 90% interval of the paired difference is
    close to the paired t interval, and the TOST decision is the same as ttost_paired's."""
    margin = 0.005
    outcomes = synthetic({"best": 0.90, "other": 0.90 - true_gap}, seeds=1,
                         examples=20_000, seed=9)
    best, other = outcomes["best"][0], outcomes["other"][0]
    low, high = equivalence_intervals(outcomes, "best")["other"]
    difference = best.astype(float) - other.astype(float)
    half = student_t.ppf(0.95, difference.size - 1) * difference.std(ddof=1) / np.sqrt(
        difference.size)
    assert low == pytest.approx(difference.mean() - half, abs=0.15 * half)
    assert high == pytest.approx(difference.mean() + half, abs=0.15 * half)
    p_tost, _, _ = ttost_paired(best.astype(float), other.astype(float), -margin, margin)
    ours = bool(-margin < low and high < margin)
    assert ours is equivalent
    assert bool(p_tost < 0.05) is ours


@pytest.mark.parametrize("kwargs", [
    {"max_seeds": 0}, {"max_seeds": 21}, {"max_seeds": True}, {"max_seeds": 2.5},
    {"margin": 0}, {"margin": -0.01}, {"margin": 1}, {"margin": 0.5}, {"margin": 0.5j},
    {"margin": float("nan")},
    {"alpha": 0}, {"alpha": 0.5},
])
def test_bad_settings_raise(kwargs):
    with pytest.raises(ValueError):
        RaceSettings(**kwargs)


def test_default_and_edge_settings():
    settings = RaceSettings()
    assert (settings.max_seeds, settings.margin, settings.alpha) == (10, 0.005, 0.05)
    assert RaceSettings(max_seeds=np.int64(20), margin=0.1).max_seeds == 20
    assert RaceSettings(max_seeds=1, margin=np.float64(0.001)).margin_pp == pytest.approx(0.1)


def test_bad_rounds_raise():
    outcomes = synthetic({(1, 2.0, 0.0): 0.9, (2, 4.0, 0.0): 0.9}, seeds=2, examples=100,
                         seed=10)
    costs = costs_of(outcomes)
    with pytest.raises(ValueError, match="same number of seeds"):
        decide_round({(1, 2.0, 0.0): outcomes[(1, 2.0, 0.0)],
                      (2, 4.0, 0.0): outcomes[(2, 4.0, 0.0)][:1]}, costs)
    with pytest.raises(ValueError, match="at least one LoRA"):
        decide_round(outcomes, costs, baselines=set(outcomes))
    with pytest.raises(ValueError, match="no cost"):
        decide_round(outcomes, {})
    with pytest.raises(ValueError, match="beyond max_seeds"):
        decide_round(outcomes, costs, settings=RaceSettings(max_seeds=1))


def test_agreement_on_few_examples_is_not_equivalence():
    """Two configurations that agree on every one of 216 examples at 3 seeds: the bootstrap
    alone collapses to [0, 0]; 216 examples cannot bound the difference within 0.5 pp. The
    same agreement on 20,000 examples can."""
    for examples, equivalent in ((216, False), (20_000, True)):
        rows = synthetic({"x": 0.9}, seeds=3, examples=examples, seed=11)["x"]
        outcomes = {(1, 2.0, 0.0): rows, (2, 4.0, 0.0): rows.copy()}
        decision = decide_round(outcomes, costs_of(outcomes))
        low, high = decision.equivalence[(2, 4.0, 0.0)]
        assert (decision.reason is StopReason.EQUIVALENT) is equivalent
        assert low < 0 < high
        if not equivalent:
            assert high > 0.007  # Agresti-Min: 1.645 / 218


def test_floor_matches_agresti_min_on_one_seed():
    """With one seed the floor is Agresti-Min's adjusted Wald interval, computed here from
    its 2x2 table: a small set where the bootstrap is the narrower of the two."""
    a = np.array([True] * 200 + [True] * 3 + [False] * 1 + [False] * 12)
    b = np.array([True] * 200 + [False] * 3 + [True] * 1 + [False] * 12)
    n12, n21, n = 3, 1, a.size
    p12, p21 = (n12 + 0.5) / (n + 2), (n21 + 0.5) / (n + 2)
    se = np.sqrt((p12 + p21 - (p12 - p21) ** 2) / (n + 2))
    low, high = equivalence_intervals({"a": a, "b": b}, "a")["b"]
    observed = (n12 - n21) / n
    assert low <= observed - 1.6448536269514722 * se + 1e-12
    assert high >= observed + 1.6448536269514722 * se - 1e-12
    assert min(observed - low, high - observed) == pytest.approx(1.6448536269514722 * se)


def test_replay_before_any_seed_finished_and_names():
    accuracies = {(1, 2.0, 0.0): 0.9, (2, 4.0, 0.0): 0.8}
    outcomes = synthetic(accuracies, seeds=1, examples=2000, seed=12)
    waiting = replay({(1, 2.0, 0.0): outcomes[(1, 2.0, 0.0)], (2, 4.0, 0.0): None},
                     costs_of(outcomes))
    assert not waiting.rounds and waiting.waiting == {(2, 4.0, 0.0): 1}
    assert set(waiting.racing) == set(accuracies) and waiting.trials_used == 0
    done = replay(outcomes, costs_of(outcomes))
    assert done.finished and done.racing == ()
    lines = done.describe(name=lambda key: f"rank {key[0]}")
    assert lines == ["one configuration left after 1 seed: rank 1",
                     "the race used 2 trials; a fixed --seeds 1 would have used 2"]


def digest(state) -> str:
    """Everything the race decided, p-values and intervals to the last digit."""
    return repr([(r.round, r.best, r.survivors,
                  sorted((repr(k), d.p_value) for k, d in r.dropped.items()),
                  sorted((repr(k), v) for k, v in r.equivalence.items()),
                  sorted((repr(k), t.p_value) for k, t in r.tests.items()),
                  r.reason and r.reason.name, r.recommended) for r in state.rounds])


REPLAY = """
import sys
import numpy as np
from search.results.race_rules import RaceSettings, replay
data = np.load(sys.argv[1])
outcomes = {(int(name[1:]), 2.0 * int(name[1:]), 0.0): data[name] for name in data.files}
outcomes = dict(reversed(list(outcomes.items())))  # another host, another order
print(digest(replay(outcomes, {key: key[0] * 10_000 for key in outcomes},
                    settings=RaceSettings(max_seeds=4))))
"""


def test_another_process_replays_the_same_decisions(tmp_path):
    """A race continued on another host: a fresh process (other hash seed, one BLAS thread,
    the configurations in another order) decides every round the same, digit for digit."""
    import inspect
    import os
    import subprocess
    import sys

    accuracies = {(rank, 2.0 * rank, 0.0): 0.88 + 0.002 * i
                  for i, rank in enumerate((1, 2, 3, 4, 5))}
    outcomes = synthetic(accuracies, seeds=4, examples=800, seed=13, pairing=0.6)
    np.savez(tmp_path / "outcomes.npz", **{f"r{key[0]}": v for key, v in outcomes.items()})
    state = replay(outcomes, costs_of(outcomes), settings=RaceSettings(max_seeds=4))
    assert len(state.rounds) >= 2  # the bootstrap took part
    env = {**os.environ, "PYTHONHASHSEED": "12345", "OPENBLAS_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    script = inspect.getsource(digest) + REPLAY  # the same digest there as here
    there = subprocess.run([sys.executable, "-c", script, str(tmp_path / "outcomes.npz")],
                           capture_output=True, text=True, env=env, check=True).stdout.strip()
    assert there == digest(state)
