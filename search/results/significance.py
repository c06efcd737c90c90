"""Which trials of a study are tied with the best, from per-example validation outcomes.

A study ranks trials by validation accuracy, but on a few hundred or thousand examples the
top trials often differ by less than chance does. This module says which trials the data
cannot tell apart from the best, so that among those we may pick the cheapest.

An outcome is a bool array: entry i is True when example i was classified correctly. A trial
has one row per replicate (seed): shape [S, N], or [N] for a single replicate. Every trial
of a study is scored on the same N validation examples in the same order, so comparisons
are paired by example, which is far more sensitive than comparing two accuracies as if
they came from independent samples.

- One replicate each: the exact McNemar test, a binomial test on the examples where the two
  trials disagree (the examples both get right or both get wrong say nothing about which
  is better).
- Several replicates: a two-way bootstrap, which resamples examples (the test set is a
  sample) and seeds (training is random) together, so the spread across seeds widens the
  interval and weakens the evidence as it should.

The comparisons with the best are many, so their p-values are adjusted by Holm's method,
which controls the chance of calling any truly tied trial worse (family-wise error) at
ALPHA without assuming the comparisons are independent.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# statsmodels (and the scipy.stats it loads) is imported where it is used: ~0.9 s that a
# leaderboard without a verdict (an old study, no completed trial) should not pay.

LEVEL = 0.95
"""Coverage of the confidence intervals."""
ALPHA = 0.05
"""Family-wise level of the tests for ties: a trial is worse than the best when its Holm-
adjusted p-value is below ALPHA."""
RESAMPLES = 4000
"""Bootstrap resamples. With 4000 the Monte-Carlo standard error of a p-value near ALPHA is
sqrt(0.05 * 0.95 / 4000) ~ 0.0035, and each tail of a 95% percentile interval rests on 100
resamples; more buys little and costs time linearly."""

_CHUNK = 256
"""Resamples drawn at once: a chunk holds a few [_CHUNK, N] arrays of 8-byte numbers (20 MB
each for N = 10,000; under 100 MB at the peak), so memory does not grow with RESAMPLES."""


def wilson_interval(correct: int, total: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval for the accuracy `correct / total`.

    Wilson rather than the normal (Wald) interval because it stays inside [0, 1] and keeps
    its coverage near accuracies of 0 or 1, where good models live."""
    if total <= 0:
        raise ValueError(f"total must be positive, got {total}")
    if not 0 <= correct <= total:
        raise ValueError(f"correct must be in [0, {total}], got {correct}")
    from statsmodels.stats.proportion import proportion_confint

    low, high = proportion_confint(correct, total, alpha=1 - level, method="wilson")
    return float(low), float(high)


def mcnemar_pvalue(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value that `a` and `b`, [N] outcomes on the same examples,
    are equally accurate.

    Exact (binomial on the discordant pairs) rather than the chi-square approximation,
    because two good trials often disagree on only a handful of examples."""
    a, b = _as_outcomes(a), _as_outcomes(b)
    if a.ndim != 1 or b.ndim != 1:
        raise ValueError(f"expected 1-D outcomes, got shapes {a.shape} and {b.shape}")
    if a.shape != b.shape:
        raise ValueError(f"outcomes differ in length: {a.size} and {b.size}")
    only_a = int(np.count_nonzero(a & ~b))
    only_b = int(np.count_nonzero(~a & b))
    if only_a + only_b == 0:
        return 1.0
    table = [[int(np.count_nonzero(a & b)), only_a], [only_b, int(np.count_nonzero(~a & ~b))]]
    from statsmodels.stats.contingency_tables import mcnemar

    return float(mcnemar(table, exact=True).pvalue)


def holm_adjusted(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the order given."""
    if len(pvalues) == 0:
        return []
    from statsmodels.stats.multitest import multipletests

    return [float(p) for p in multipletests(list(pvalues), method="holm")[1]]


def outcome_interval(correct: np.ndarray, level: float = LEVEL, resamples: int = RESAMPLES,
                     seed: int = 0) -> tuple[float, float]:
    """Confidence interval of the mean accuracy of `correct`, [S, N] (or [N]) outcomes.

    One replicate: the Wilson interval of its count. Several: the percentile interval of
    the mean accuracy under the two-way bootstrap (examples and seeds resampled with
    replacement), deterministic for a given `seed`."""
    replicates = _as_replicates(correct)
    if replicates.shape[0] == 1:
        return wilson_interval(int(replicates.sum()), replicates.shape[1], level)
    means = _bootstrap_means([replicates], resamples, seed)[:, 0]
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def paired_pvalue(a: np.ndarray, b: np.ndarray, resamples: int = RESAMPLES,
                  seed: int = 0) -> float:
    """Two-sided p-value that `a`, [S_a, N], and `b`, [S_b, N], are equally accurate on
    average, both scored on the same N examples in the same order ([N] = one replicate).

    Identical replicate sets: 1.0. One replicate each: exact McNemar. Otherwise the two-way
    paired bootstrap of the difference in mean accuracy (see `_bootstrap_means`), with
    p = min(1, 2 * min(share of differences <= 0, share of differences >= 0))."""
    a, b = _as_replicates(a), _as_replicates(b)
    _check_same_examples({"a": a, "b": b})
    direct = _direct_pvalue(a, b)
    if direct is not None:
        return direct
    means = _bootstrap_means([a, b], resamples, seed)
    return _bootstrap_pvalue(means[:, 0] - means[:, 1])


@dataclass(frozen=True)
class TieTest:
    """The comparison of one trial with the best."""

    key: Hashable
    """Whatever the caller names the trial by."""
    p_value: float
    """Raw p-value versus the best (1.0 for the best itself)."""
    p_holm: float
    """Holm-adjusted over all comparisons with the best (1.0 for the best itself)."""
    tied: bool
    """Not shown worse than the best: p_holm >= alpha (the best is tied with itself)."""


def ties_with_best(outcomes: Mapping[Hashable, np.ndarray], best: Hashable,
                   alpha: float = ALPHA, resamples: int = RESAMPLES,
                   seed: int = 0) -> dict[Hashable, TieTest]:
    """Compare every trial in `outcomes` (key -> [S, N] or [N] validation outcomes) with
    `best`, one of the keys, and say which are tied with it.

    Each comparison is that of `paired_pvalue`; Holm adjusts over the len(outcomes) - 1 of
    them. The bootstrap comparisons share one set of resamples (the same resampled examples
    for every trial, each trial's seeds resampled independently), which makes them
    consistent with one another and costs one resampling for the whole study. So a p-value
    here equals `paired_pvalue`'s in distribution, not digit for digit."""
    if best not in outcomes:
        raise KeyError(f"best {best!r} is not among the outcomes")
    replicates = {key: _as_replicates(value) for key, value in outcomes.items()}
    _check_same_examples(replicates)
    others = [key for key in replicates if key != best]

    raw = {key: _direct_pvalue(replicates[best], replicates[key]) for key in others}
    resampled = [key for key in others if raw[key] is None]
    if resampled:
        sets = [replicates[best]] + [replicates[key] for key in resampled]
        means = _bootstrap_means(sets, resamples, seed)
        for column, key in enumerate(resampled, start=1):
            raw[key] = _bootstrap_pvalue(means[:, 0] - means[:, column])

    adjusted = dict(zip(others, holm_adjusted([raw[key] for key in others]), strict=True))
    result = {}
    for key in replicates:
        if key == best:
            result[key] = TieTest(key, 1.0, 1.0, True)
        else:
            result[key] = TieTest(key, raw[key], adjusted[key], adjusted[key] >= alpha)
    return result


def recommend(candidates: Sequence[tuple[Hashable, int, float]]) -> Hashable:
    """The key to recommend among tied trials, given as (key, trainable_params, val_acc).

    The data cannot tell tied trials apart, so the cheapest is the one to use: the fewest
    trainable parameters, then the higher validation accuracy, then the first given."""
    if not candidates:
        raise ValueError("no candidates to recommend from")
    order = min(range(len(candidates)),
                key=lambda i: (candidates[i][1], -candidates[i][2], i))
    return candidates[order][0]


def _as_outcomes(values: np.ndarray) -> np.ndarray:
    """`values` as a bool array; 0/1 integers are accepted, anything else is refused rather
    than silently cast (a probability of 0.3 is not an outcome)."""
    array = np.asarray(values)
    if array.dtype != bool:
        if not np.isin(array, (0, 1)).all():
            raise ValueError("outcomes must be bool (or 0/1)")
        array = array.astype(bool)
    return array


def _as_replicates(values: np.ndarray) -> np.ndarray:
    """Outcomes as [S, N], a 1-D array being a single replicate."""
    array = _as_outcomes(values)
    if array.ndim == 1:
        array = array[np.newaxis, :]
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"expected [S, N] outcomes with S, N >= 1, got shape {array.shape}")
    return array


def _check_same_examples(replicates: Mapping[Hashable, np.ndarray]) -> None:
    sizes = {key: array.shape[1] for key, array in replicates.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"outcomes differ in number of examples: {sizes}")


def _direct_pvalue(a: np.ndarray, b: np.ndarray) -> float | None:
    """The p-value of comparing [S, N] replicate sets `a` and `b` where no bootstrap is
    needed: 1.0 when they hold the same replicates (in any order: there is no evidence of
    a difference, and the bootstrap would only add noise around 1), exact McNemar when each
    is a single replicate; None otherwise."""
    if a.shape == b.shape and np.array_equal(_sorted_rows(a), _sorted_rows(b)):
        return 1.0
    if a.shape[0] == 1 and b.shape[0] == 1:
        return mcnemar_pvalue(a[0], b[0])
    return None


def _sorted_rows(array: np.ndarray) -> np.ndarray:
    return array[np.lexsort(array.T[::-1])]


def _bootstrap_pvalue(differences: np.ndarray) -> float:
    """Two-sided bootstrap p-value that the mean difference is 0."""
    below = np.mean(differences <= 0)
    above = np.mean(differences >= 0)
    return float(min(1.0, 2 * min(below, above)))


def _bootstrap_means(sets: Sequence[np.ndarray], resamples: int, seed: int) -> np.ndarray:
    """Mean accuracies of each [S_j, N] replicate set under the two-way bootstrap:
    [resamples, len(sets)].

    Each resample draws one multiset of N examples, shared by all the sets (the comparison
    is paired by example), and, independently for each set, S_j of its replicates, both with
    replacement. The resampled mean accuracy of a set is the mean over its drawn replicates
    of their accuracy on the drawn examples.

    Written by hand: the libraries we know (scipy.stats.bootstrap, arch) resample one axis,
    not examples and seeds jointly. Vectorised through counts: W [B, N] counts how often
    each example is drawn, so W @ correct.T [B, S] is each replicate's number of correct
    answers on the drawn examples; C [B, S] counts how often each replicate is drawn, and
    the mean accuracy is (C / S * (W @ correct.T)).sum(1) / N. The draws come in a fixed
    order (per chunk: the examples, then each set's replicates) for determinism."""
    if resamples < 1:
        raise ValueError(f"resamples must be positive, got {resamples}")
    rng = np.random.default_rng(seed)
    n = sets[0].shape[1]
    sizes = [array.shape[0] for array in sets]
    # All replicates of all sets as the columns of one matrix: one product per chunk.
    columns = np.concatenate([array.T for array in sets], axis=1).astype(np.float64)
    bounds = np.cumsum([0, *sizes])
    means = np.empty((resamples, len(sets)))
    for start in range(0, resamples, _CHUNK):
        chunk = min(_CHUNK, resamples - start)
        # The counts of N uniform draws, i.e. Multinomial(N, 1/N): bincount of the drawn
        # indices gives the same distribution as rng.multinomial, about 5x faster.
        drawn = rng.integers(0, n, size=(chunk, n)) + n * np.arange(chunk)[:, np.newaxis]
        weights = np.bincount(drawn.ravel(), minlength=chunk * n).reshape(chunk, n)
        counts = weights.astype(np.float64) @ columns  # [B, sum of S_j]
        for j, size in enumerate(sizes):
            drawn_replicates = rng.multinomial(size, np.full(size, 1.0 / size), size=chunk)
            set_counts = counts[:, bounds[j]:bounds[j + 1]]
            means[start:start + chunk, j] = (drawn_replicates * set_counts).sum(1) / (size * n)
    return means
