"""Ties with the best trial: each test checks against the libraries or a hand-computed value on
known inputs, or against a property the statistics must have (identical -> 1.0, clearly
different -> small p, wider spread -> wider interval), never against the module itself."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest
from statsmodels.stats.proportion import proportion_confint

from search.results.bootstrap import ExampleResampling
from search.results.significance import (
    TieTest,
    holm_adjusted,
    mcnemar_pvalue,
    mcnemar_pvalues,
    outcome_interval,
    paired_pvalue,
    recommend,
    ties_with_best,
    wilson_interval,
    wilson_intervals,
)

Z95 = 1.959963984540054


def pair(both: int, only_a: int, only_b: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """Outcomes of two trials with the given 2x2 table, the examples in a shuffled order."""
    a = np.array([True] * both + [True] * only_a + [False] * only_b + [False] * neither)
    b = np.array([True] * both + [False] * only_a + [True] * only_b + [False] * neither)
    order = np.random.default_rng(both + 7 * only_a).permutation(a.size)
    return a[order], b[order]


def replicates(accuracies: list[float], n: int, seed: int) -> np.ndarray:
    """[S, n] outcomes, replicate s right on exactly round(accuracies[s] * n) random
    examples."""
    rng = np.random.default_rng(seed)
    rows = np.zeros((len(accuracies), n), dtype=bool)
    for s, accuracy in enumerate(accuracies):
        rows[s, rng.permutation(n)[:round(accuracy * n)]] = True
    return rows


# Wilson interval

def test_wilson_matches_statsmodels_and_the_formula():
    low, high = wilson_interval(90, 100)
    assert (low, high) == pytest.approx(proportion_confint(90, 100, method="wilson"), abs=1e-12)
    # The score interval by hand: centre (p + z²/2n) / (1 + z²/n), half-width
    # z / (1 + z²/n) * sqrt(p(1-p)/n + z²/4n²).
    n, p = 100, 0.9
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 / (1 + Z95**2 / n) * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n**2))
    assert low == pytest.approx(centre - half, abs=1e-9)
    assert high == pytest.approx(centre + half, abs=1e-9)
    assert low == pytest.approx(0.8256343385, abs=1e-9)
    assert high == pytest.approx(0.9447708629, abs=1e-9)


def test_wilson_half_width_of_the_model_card():
    low, high = wilson_interval(9044, 10_000)
    assert (high - low) / 2 == pytest.approx(0.0058, abs=5e-5)
    assert low < 0.9044 < high


def test_wilson_other_level_and_edges():
    assert wilson_interval(90, 100, level=0.9) == pytest.approx(
        proportion_confint(90, 100, alpha=0.1, method="wilson"), abs=1e-12)
    low, high = wilson_interval(0, 20)
    assert low == pytest.approx(0.0, abs=1e-12) and 0 < high < 0.2
    low, high = wilson_interval(20, 20)
    assert high == pytest.approx(1.0, abs=1e-12) and 0.8 < low < 1
    with pytest.raises(ValueError):
        wilson_interval(0, 0)
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


# McNemar

@pytest.mark.parametrize("table", [(50, 3, 9, 38), (10, 0, 6, 4), (100, 12, 12, 5),
                                   (0, 1, 0, 0), (70, 25, 5, 0), (3, 40, 41, 16)])
def test_mcnemar_matches_the_binomial_test(table):
    both, only_a, only_b, neither = table
    a, b = pair(*table)
    expected = binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue
    assert mcnemar_pvalue(a, b) == pytest.approx(expected, rel=1e-12)
    assert mcnemar_pvalue(b, a) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_identical_and_bad_input():
    a, _ = pair(30, 5, 5, 10)
    assert mcnemar_pvalue(a, a.copy()) == 1.0
    with pytest.raises(ValueError):
        mcnemar_pvalue(a, a[:-1])
    with pytest.raises(ValueError):
        mcnemar_pvalue(a[np.newaxis], a[np.newaxis])
    with pytest.raises(ValueError):
        mcnemar_pvalue(a * 0.5, a)
    # 0/1 integers are outcomes too.
    assert mcnemar_pvalue(a.astype(int), a) == 1.0


# Holm

def test_holm_hand_computed():
    # Sorted 0.01, 0.03, 0.04 -> 3 * 0.01, 2 * 0.03, max(1 * 0.04, 0.06); back in given order.
    assert holm_adjusted([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06], abs=1e-12)
    assert holm_adjusted([0.5, 0.8]) == pytest.approx([1.0, 1.0])
    assert holm_adjusted([0.2]) == pytest.approx([0.2])
    assert holm_adjusted([]) == []


# A synthetic study with one replicate per trial

def test_one_example_apart_is_tied_forty_apart_is_not():
    n = 200
    best = np.zeros(n, dtype=bool)
    best[:190] = True
    near = best.copy()
    near[0] = False
    far = best.copy()
    far[:40] = False  # the best is right on all 40 where they differ
    result = ties_with_best({"best": best, "near": near, "far": far}, best="best")
    assert result["near"].p_value == pytest.approx(1.0)
    assert result["far"].p_value == pytest.approx(binomtest(0, 40, 0.5).pvalue, rel=1e-12)
    assert result["near"].tied and not result["far"].tied
    assert result["best"] == TieTest("best", 1.0, 1.0, True)


def test_holm_turns_a_borderline_difference_into_a_tie():
    n = 100
    best = np.ones(n, dtype=bool)
    borderline = best.copy()
    borderline[:6] = False  # 6 discordant pairs, all for the best: p = 2 / 2**6 = 0.03125
    alone = ties_with_best({"best": best, "x": borderline}, best="best")
    assert alone["x"].p_value == pytest.approx(0.03125, rel=1e-12)
    assert alone["x"].p_holm == pytest.approx(0.03125, rel=1e-12)
    assert not alone["x"].tied
    # A second comparison (identical to the best: p = 1) doubles the smallest p under Holm.
    with_another = ties_with_best({"best": best, "x": borderline, "y": best.copy()},
                                  best="best")
    assert with_another["x"].p_value == pytest.approx(0.03125, rel=1e-12)
    assert with_another["x"].p_holm == pytest.approx(0.0625, rel=1e-12)
    assert with_another["x"].tied and with_another["y"].tied
    # The same adjusted p against a looser level is not a tie.
    assert not ties_with_best({"best": best, "x": borderline, "y": best}, best="best",
                              alpha=0.1)["x"].tied


def test_ties_with_best_input_checks():
    a = np.ones(10, dtype=bool)
    with pytest.raises(KeyError):
        ties_with_best({"a": a}, best="b")
    with pytest.raises(ValueError):
        ties_with_best({"a": a, "b": a[:-1]}, best="a")
    assert ties_with_best({"a": a}, best="a") == {"a": TieTest("a", 1.0, 1.0, True)}


# Recommendation

def test_recommend_the_smallest_tied_trial():
    assert recommend([("big", 300_000, 0.91), ("small", 20_000, 0.89),
                      ("medium", 80_000, 0.90)]) == "small"
    assert recommend([(1, 20_000, 0.88), (2, 20_000, 0.90), (3, 50_000, 0.95)]) == 2
    assert recommend([("first", 10, 0.5), ("second", 10, 0.5)]) == "first"
    with pytest.raises(ValueError):
        recommend([])


# The two-way bootstrap

def test_identical_replicate_sets_give_one():
    a = replicates([0.9, 0.85, 0.88], 300, seed=1)
    assert paired_pvalue(a, a.copy()) == 1.0
    assert paired_pvalue(a, a[::-1]) == 1.0  # the same seeds in another order


def test_clearly_different_replicates_are_significant():
    a = replicates([0.95, 0.95, 0.95], 500, seed=2)
    b = replicates([0.80, 0.80, 0.80], 500, seed=3)
    assert paired_pvalue(a, b) < 0.01
    assert paired_pvalue(b, a) < 0.01
    result = ties_with_best({"a": a, "b": b, "a2": replicates([0.95, 0.94, 0.95], 500, 4)},
                            best="a", resamples=1000)
    assert not result["b"].tied and result["a2"].tied
    assert result["a"] == TieTest("a", 1.0, 1.0, True)


def test_bootstrap_is_deterministic():
    a = replicates([0.90, 0.88, 0.91], 400, seed=5)
    b = replicates([0.89, 0.90, 0.87], 400, seed=6)
    p = paired_pvalue(a, b, resamples=1000, seed=3)
    assert p == paired_pvalue(a, b, resamples=1000, seed=3)
    assert 0.0 < p < 1.0
    assert outcome_interval(a, seed=3) == outcome_interval(a, seed=3)
    study = {"a": a, "b": b, "c": replicates([0.8, 0.82], 400, seed=7)}
    assert ties_with_best(study, "a", seed=9) == ties_with_best(study, "a", seed=9)


def test_single_replicates_use_mcnemar():
    a, b = pair(150, 12, 4, 34)
    assert paired_pvalue(a, b) == mcnemar_pvalue(a, b)
    assert paired_pvalue(a[np.newaxis], b[np.newaxis]) == mcnemar_pvalue(a, b)
    assert ties_with_best({"a": a, "b": b}, best="a")["b"].p_value == mcnemar_pvalue(a, b)


def test_one_against_several_replicates_bootstraps():
    a, _ = pair(150, 12, 4, 34)
    b = replicates([0.6, 0.62, 0.58], a.size, seed=8)
    assert paired_pvalue(a, b, resamples=1000) < 0.01
    with pytest.raises(ValueError):
        paired_pvalue(a, b[:, :-1])


def test_outcome_interval_single_replicate_is_wilson():
    a, _ = pair(150, 12, 4, 34)
    assert outcome_interval(a) == wilson_interval(int(a.sum()), a.size)
    assert outcome_interval(a[np.newaxis], level=0.9) == wilson_interval(
        int(a.sum()), a.size, level=0.9)


def test_outcome_interval_widens_when_seeds_disagree():
    n = 500
    agree = np.repeat(replicates([0.8], n, seed=10), 3, axis=0)  # the seeds agree everywhere
    disagree = replicates([0.7, 0.8, 0.9], n, seed=11)
    assert agree.mean() == pytest.approx(0.8) and disagree.mean() == pytest.approx(0.8)
    low_agree, high_agree = outcome_interval(agree)
    low_disagree, high_disagree = outcome_interval(disagree)
    assert low_agree < 0.8 < high_agree
    assert low_disagree < 0.8 < high_disagree
    assert high_disagree - low_disagree > 1.5 * (high_agree - low_agree)
    # Seeds that agree everywhere leave only the examples' spread: about a Wilson interval's.
    low, high = wilson_interval(400, n)
    assert high_agree - low_agree == pytest.approx(high - low, rel=0.1)


# At the size of real studies: array calls and kept work

def test_many_mcnemar_tests_at_once_equal_statsmodels_one_table_at_a_time():
    from statsmodels.stats.contingency_tables import mcnemar

    rng = np.random.default_rng(12)
    best = rng.random(2000) < 0.9
    others = np.stack([best ^ (rng.random(2000) < flip) for flip in
                       (0.0, 0.001, 0.01, 0.05, 0.2, 0.5)] + [best.copy(), ~best])
    expected = []
    for row in others:
        table = [[np.sum(best & row), np.sum(best & ~row)], [np.sum(~best & row),
                                                             np.sum(~best & ~row)]]
        discordant = table[0][1] + table[1][0]
        expected.append(1.0 if discordant == 0 else mcnemar(table, exact=True).pvalue)
    assert mcnemar_pvalues(best, others).tolist() == expected  # exactly


def test_the_binomial_tail_is_scipy_stats_binom_cdf_bit_for_bit():
    from scipy.stats import binom

    from search.results.significance import binomial_cdf

    for n in [*range(1, 400), 999, 2_500, 10_000]:
        k = np.arange(0, n // 2 + 1, dtype=float)  # McNemar's min(n1, n2) <= n / 2 < n
        assert binomial_cdf(k, np.full_like(k, n), 0.5).tolist() == \
            binom.cdf(k, n, 0.5).tolist()


def test_wilson_intervals_equal_statsmodels_to_the_last_digit():
    rng = np.random.default_rng(19)
    total = np.concatenate([np.full(6, 200), rng.integers(1, 20_000, 300)])
    correct = np.concatenate([[0, 1, 57, 199, 200, 100], rng.integers(0, total[6:] + 1)])
    for level in (0.95, 0.9):
        low, high = wilson_intervals(correct, total, level)
        for c, n, lo, hi in zip(correct, total, low, high, strict=True):
            # alpha as the code has always passed it: 1 - level (for 0.95 not quite 0.05)
            expected = proportion_confint(int(c), int(n), alpha=1 - level, method="wilson")
            assert (lo, hi) == expected
            assert wilson_interval(int(c), int(n), level) == expected


def test_holm_equals_statsmodels_to_the_last_digit():
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(20)
    for size in (1, 2, 9, 500):
        for pvalues in (rng.random(size), rng.random(size) ** 8,
                        np.round(rng.random(size), 1)):  # many ties
            assert holm_adjusted(pvalues.tolist()) == \
                multipletests(pvalues, method="holm")[1].tolist()


def plain_resampled_means(resampling: ExampleResampling, rows: np.ndarray) -> np.ndarray:
    """Each row's accuracy under each of `resampling`'s resamples, one resample at a time
    over every example: the definition, with none of the shortcuts."""
    weights = np.concatenate([resampling._example_counts(start)
                              for start in range(0, resampling.resamples, 256)])
    return np.array([[float(w[row].sum()) for row in rows] for w in weights]) / rows.shape[1]


def test_resampled_counts_equal_the_plain_definition_over_every_example():
    # Rows that agree on most examples, as trials of a study do: the shortcut over the
    # examples they disagree on must not change a count.
    rng = np.random.default_rng(13)
    easy = rng.random(300) < 0.7
    rows = np.stack([easy | (rng.random(300) < 0.5) for _ in range(4)])
    rows[:, :5] = False  # examples every row gets wrong
    resampling = ExampleResampling(300, resamples=600, seed=4)
    means = resampling.means([row[np.newaxis] for row in rows])
    assert np.array_equal(means, plain_resampled_means(resampling, rows))


def test_a_configurations_resampled_means_do_not_depend_on_the_others_or_the_order():
    a = replicates([0.90, 0.88, 0.91], 400, seed=14)
    b = replicates([0.80, 0.82, 0.85], 400, seed=15)
    alone = ExampleResampling(400, resamples=500).means([a])[:, 0]
    resampling = ExampleResampling(400, resamples=500)
    together = resampling.means([b, a])
    assert np.array_equal(together[:, 1], alone)
    assert np.array_equal(resampling.means([a])[:, 0], alone)  # kept: the same again
    assert np.array_equal(ExampleResampling(400, resamples=500).means([a[::-1]])[:, 0].shape,
                          alone.shape)


def test_a_kept_resampling_gives_what_a_fresh_one_gives():
    study = {"a": replicates([0.9, 0.91, 0.89], 300, 16),
             "b": replicates([0.85, 0.86, 0.84], 300, 17)}
    kept = ExampleResampling(300)
    first = ties_with_best(study, "a", resampling=kept)
    study["c"] = replicates([0.9, 0.88, 0.9], 300, 18)  # a trial joins
    again = ties_with_best(study, "a", resampling=kept)
    fresh = ties_with_best(study, "a")
    assert again == fresh
    assert again["b"].p_value == first["b"].p_value  # its comparison is unchanged
