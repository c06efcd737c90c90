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

from search.results.bootstrap import (
    RESAMPLES,
    ExampleResampling,
    bootstrap_pvalue,
    percentile_interval,
    row_key,
)

# Written here rather than called from statsmodels: Wilson's interval and Holm's adjustment,
# the same arithmetic in the same order as statsmodels' `proportion_confint(method="wilson")`
# and `multipletests(method="holm")` (tests compare them digit for digit), because importing
# statsmodels costs ~0.4 s, a fifth of a small study's `search leaderboard`, which should
# answer within twice Optuna's own reader (McNemar's binomial tail: see `binomial_cdf`).

LEVEL = 0.95
"""Coverage of the confidence intervals."""
ALPHA = 0.05
"""Family-wise level of the tests for ties: a trial is worse than the best when its Holm-
adjusted p-value is below ALPHA."""
__all__ = ["ALPHA", "LEVEL", "RESAMPLES", "TieTest", "holm_adjusted", "mcnemar_pvalue",
           "mcnemar_pvalues", "outcome_interval", "paired_pvalue", "recommend",
           "ties_with_best", "wilson_interval", "wilson_intervals"]


def wilson_interval(correct: int, total: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval for the accuracy `correct / total`.

    Wilson rather than the normal (Wald) interval because it stays inside [0, 1] and keeps
    its coverage near accuracies of 0 or 1, where good models live."""
    if total <= 0:
        raise ValueError(f"total must be positive, got {total}")
    if not 0 <= correct <= total:
        raise ValueError(f"correct must be in [0, {total}], got {correct}")
    low, high = wilson_intervals(np.array([correct]), np.array([total]), level)
    return float(low[0]), float(high[0])


def wilson_intervals(correct: np.ndarray, total: np.ndarray,
                     level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """`wilson_interval` of many counts at once, as arrays (a leaderboard of 5,000 trials
    computes them in one go)."""
    from scipy.special import ndtri  # norm.isf(q) is -ndtri(q), to the last digit

    correct, total = np.atleast_1d(correct), np.atleast_1d(total)
    share = correct / total
    crit = -ndtri((1 - level) / 2.0)
    crit2 = crit**2
    denom = 1 + crit2 / total
    center = (share + crit2 / (2 * total)) / denom
    dist = crit * np.sqrt(share * (1.0 - share) / total + crit2 / (4.0 * total**2))
    dist /= denom
    return np.clip(center - dist, 0, 1), np.clip(center + dist, 0, 1)


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
    return float(mcnemar_pvalues(a, b[np.newaxis, :])[0])


def mcnemar_pvalues(a: np.ndarray, others: np.ndarray) -> np.ndarray:
    """`mcnemar_pvalue(a, row)` for every row of `others`, [M, N] bool, at once.

    statsmodels' `mcnemar(table, exact=True)` computes, for n1 and n2 discordant pairs,
    min(1, 2 * binom.cdf(min(n1, n2), n1 + n2, 0.5)) one table at a time; the same formula
    here takes every row in one array call (the same numbers, tested)."""
    only_a = np.count_nonzero(a[np.newaxis, :] & ~others, axis=1)
    only_b = np.count_nonzero(~a[np.newaxis, :] & others, axis=1)
    discordant = only_a + only_b
    smaller = np.minimum(only_a, only_b).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):  # n = 0: answered below
        p = np.minimum(1.0, 2 * binomial_cdf(smaller, discordant.astype(float), 0.5))
    return np.where(discordant == 0, 1.0, p)


def binomial_cdf(k: np.ndarray, n: np.ndarray, p: float) -> np.ndarray:
    """P(X <= k) for X ~ Binomial(n, p), 0 <= k < n integers: the ufunc that scipy.stats'
    `binom.cdf` evaluates there (bit for bit, tested), taken from scipy.special because
    importing scipy.stats costs ~0.45 s, a third of a small study's leaderboard; scipy.stats
    itself where that private name is gone."""
    try:
        from scipy.special._ufuncs import _binom_cdf
    except ImportError:
        from scipy.stats import binom

        return binom.cdf(k, n, p)
    return _binom_cdf(k, n, p)


def holm_adjusted(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the order given: the i-th smallest of m multiplied by
    m - i (from i = 0), made non-decreasing in that order, at most 1."""
    if len(pvalues) == 0:
        return []
    raw = np.asarray(pvalues, dtype=float)
    order = np.argsort(raw)
    adjusted = np.maximum.accumulate(raw[order] * np.arange(len(raw), 0, -1))
    adjusted[adjusted > 1] = 1
    result = np.empty_like(adjusted)
    result[order] = adjusted
    return result.tolist()


def outcome_interval(correct: np.ndarray, level: float = LEVEL, resamples: int = RESAMPLES,
                     seed: int = 0, resampling: ExampleResampling | None = None
                     ) -> tuple[float, float]:
    """Confidence interval of the mean accuracy of `correct`, [S, N] (or [N]) outcomes.

    One replicate: the Wilson interval of its count. Several: the percentile interval of
    the mean accuracy under the two-way bootstrap (examples and seeds resampled with
    replacement, `search.results.bootstrap`), deterministic for a given `seed`, or drawn by
    `resampling` (which keeps its work for the next call)."""
    replicates = _as_replicates(correct)
    if replicates.shape[0] == 1:
        return wilson_interval(int(replicates.sum()), replicates.shape[1], level)
    resampling = resampling or ExampleResampling(replicates.shape[1], resamples, seed)
    return percentile_interval(resampling.means([replicates])[:, 0], level)


def paired_pvalue(a: np.ndarray, b: np.ndarray, resamples: int = RESAMPLES,
                  seed: int = 0, resampling: ExampleResampling | None = None) -> float:
    """Two-sided p-value that `a`, [S_a, N], and `b`, [S_b, N], are equally accurate on
    average, both scored on the same N examples in the same order ([N] = one replicate).

    Identical replicate sets: 1.0. One replicate each: exact McNemar. Otherwise the two-way
    paired bootstrap of the difference in mean accuracy (`search.results.bootstrap`), with
    p = min(1, 2 * min(share of differences <= 0, share of differences >= 0))."""
    a, b = _as_replicates(a), _as_replicates(b)
    _check_same_examples({"a": a, "b": b})
    direct = _direct_pvalue(a, b)
    if direct is not None:
        return direct
    resampling = resampling or ExampleResampling(a.shape[1], resamples, seed)
    means = resampling.means([a, b])
    return bootstrap_pvalue(means[:, 0] - means[:, 1])


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
                   alpha: float = ALPHA, resamples: int = RESAMPLES, seed: int = 0,
                   resampling: ExampleResampling | None = None) -> dict[Hashable, TieTest]:
    """Compare every trial in `outcomes` (key -> [S, N] or [N] validation outcomes) with
    `best`, one of the keys, and say which are tied with it.

    Each comparison is that of `paired_pvalue`; Holm adjusts over the len(outcomes) - 1 of
    them. The McNemar comparisons are one array computation; the bootstrap comparisons share
    one set of resampled examples (each trial's seeds resampled independently), which makes
    them consistent with one another and costs one product per outcome row, kept by
    `resampling` for the next call. So a p-value here equals `paired_pvalue`'s in
    distribution, not digit for digit."""
    if best not in outcomes:
        raise KeyError(f"best {best!r} is not among the outcomes")
    replicates = {key: _as_replicates(value) for key, value in outcomes.items()}
    _check_same_examples(replicates)
    top = replicates[best]
    others = [key for key in replicates if key != best]

    raw: dict[Hashable, float | None] = {key: _identical_pvalue(top, replicates[key])
                                         for key in others}
    single = [key for key in others
              if raw[key] is None and top.shape[0] == 1 and replicates[key].shape[0] == 1]
    if single:
        rows = np.stack([replicates[key][0] for key in single])
        raw.update(zip(single, mcnemar_pvalues(top[0], rows).tolist(), strict=True))
    resampled = [key for key in others if raw[key] is None]
    if resampled:
        resampling = resampling or ExampleResampling(top.shape[1], resamples, seed)
        means = resampling.means([top] + [replicates[key] for key in resampled])
        p = bootstrap_pvalue(means[:, :1] - means[:, 1:])
        raw.update(zip(resampled, np.atleast_1d(p).tolist(), strict=True))

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


def _identical_pvalue(a: np.ndarray, b: np.ndarray) -> float | None:
    """1.0 when [S, N] replicate sets `a` and `b` hold the same replicates (in any order:
    there is no evidence of a difference, and the bootstrap would only add noise around 1);
    None otherwise."""
    if a.shape == b.shape and sorted(map(row_key, a)) == sorted(map(row_key, b)):
        return 1.0
    return None


def _direct_pvalue(a: np.ndarray, b: np.ndarray) -> float | None:
    """The p-value of comparing [S, N] replicate sets `a` and `b` where no bootstrap is
    needed: identical sets 1.0, exact McNemar when each is a single replicate; None
    otherwise."""
    identical = _identical_pvalue(a, b)
    if identical is not None:
        return identical
    if a.shape[0] == 1 and b.shape[0] == 1:
        return mcnemar_pvalue(a[0], b[0])
    return None

