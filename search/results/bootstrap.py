"""The two-way bootstrap of mean accuracies, computed once per outcome row and kept.

A resample draws N examples with replacement, shared by every trial of the study (comparisons
are paired by example), and, for each configuration, S of its replicates (seeds) with
replacement, independently per configuration. A configuration's resampled mean accuracy is
the mean over its drawn replicates of their accuracy on the drawn examples.

Written by hand: the libraries we know (scipy.stats.bootstrap, arch) resample one axis, not
examples and seeds jointly, and none keeps work between calls. The cost is in the examples:
with W [B, N] counting how often each example is drawn, a replicate's number of correct
answers under every resample is W @ correct, B x N multiply-adds. That product depends only
on the row and on W, which depends only on (N, B, seed); so `ExampleResampling` keeps it per
row (keyed by the row's content) and a refresh after one new trial computes one product, not
one per trial of the study. W is drawn chunk by chunk, each chunk from its own seed, and kept
as bytes (B x N: 40 MB at 10,000 images; beyond MAX_KEPT_DRAWS it is drawn again when needed).
Examples that every new row gets right add the same to each row's count, and examples every
row gets wrong add nothing, so the product runs only over the examples the rows disagree on
(most images of a good model are right for every trial).

Each configuration's replicate draws come from a generator seeded by its rows' content, so a
configuration's resampled means do not change when other configurations join the study; they
are kept too.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
from threadpoolctl import threadpool_limits

RESAMPLES = 4000
"""Bootstrap resamples. With 4000 the Monte-Carlo standard error of a p-value near 0.05 is
sqrt(0.05 * 0.95 / 4000) ~ 0.0035, and each tail of a 95% percentile interval rests on 100
resamples; more buys little and costs time linearly."""

CHUNK = 256
"""Resamples drawn at once: a chunk's counts are [CHUNK, N] float32 (10 MB at N = 10,000)
while they are multiplied."""

MAX_KEPT_DRAWS = 64_000_000
"""Largest B x N whose example counts are kept (one byte each) rather than drawn again for
each batch of new rows: 4,000 resamples of 16,000 images."""


def row_key(row: np.ndarray) -> bytes:
    """What identifies an outcome row: its bits, packed (N / 8 bytes)."""
    return np.packbits(row).tobytes()


def canonical_rows(replicates: np.ndarray) -> np.ndarray:
    """[S, N] outcomes with the rows in the order of their content. A configuration's
    resampled seeds are drawn by row index from a generator its rows seed, so the same seeds
    in another order would draw other rows: the verdict and a race (which sees the seeds
    round by round, from any host) put them in this one order, and so agree."""
    if replicates.ndim == 1 or replicates.shape[0] == 1:
        return replicates
    keys = [row_key(row) for row in replicates]
    return replicates[sorted(range(len(keys)), key=keys.__getitem__)]


class ExampleResampling:
    """B resamples of the N examples of one split, and, cached by content, every row's number
    of correct answers under each of them and every replicate set's resampled mean.

    Deterministic for (examples, resamples, seed): the same rows give the same numbers in any
    process, whatever else was asked before."""

    def __init__(self, examples: int, resamples: int = RESAMPLES, seed: int = 0,
                 threads: int | None = None):
        if examples < 1:
            raise ValueError(f"examples must be positive, got {examples}")
        if resamples < 1:
            raise ValueError(f"resamples must be positive, got {resamples}")
        self.examples, self.resamples, self.seed = examples, resamples, seed
        self.threads = threads  # BLAS threads for the products; None: the library's own
        # Counts never exceed N: 2 bytes a resample while N fits.
        self._dtype = np.uint16 if examples <= np.iinfo(np.uint16).max else np.uint32
        self._counts: dict[bytes, np.ndarray] = {}  # row key -> [B] correct answers
        self._draws: dict[int, np.ndarray] = {}  # chunk start -> [chunk, N] uint8 counts
        self._means: dict[tuple[bytes, ...], np.ndarray] = {}  # row keys -> [B] mean accuracy

    def means(self, sets: Sequence[np.ndarray]) -> np.ndarray:
        """[B, len(sets)]: each [S_j, N] bool replicate set's mean accuracy under each
        resample."""
        keyed = [[row_key(row) for row in replicates] for replicates in sets]
        missing = {}
        for replicates, keys in zip(sets, keyed, strict=True):
            if replicates.shape[1] != self.examples:
                raise ValueError(f"outcomes of {replicates.shape[1]} examples, resampling "
                                 f"has {self.examples}")
            if len(keys) > 1 and tuple(keys) in self._means:
                continue
            missing.update((key, row) for key, row in zip(keys, replicates, strict=True)
                           if key not in self._counts)
        self._count_correct(missing)
        out = np.empty((self.resamples, len(sets)))
        for column, keys in enumerate(keyed):
            out[:, column] = self._set_means(tuple(keys))
        return out

    def _set_means(self, keys: tuple[bytes, ...]) -> np.ndarray:
        size = len(keys)
        if size == 1:  # nothing to draw: not worth keeping
            return self._counts[keys[0]] / self.examples
        cached = self._means.get(keys)
        if cached is not None:
            return cached
        counts = np.stack([self._counts[key] for key in keys], axis=1).astype(np.float64)
        rng = np.random.default_rng([self.seed, zlib.crc32(b"".join(keys))])
        drawn = rng.multinomial(size, np.full(size, 1.0 / size), size=self.resamples)
        means = (drawn * counts).sum(1) / (size * self.examples)
        self._means[keys] = means
        return means

    def _count_correct(self, rows: dict[bytes, np.ndarray]) -> None:
        """Every row's correct answers under each resample: W @ row, chunk by chunk, over
        the examples the rows disagree on."""
        if not rows:
            return
        keys = list(rows)
        matrix = np.stack([rows[key] for key in keys])  # [M, N] bool
        all_right = matrix.all(axis=0)
        contested = matrix.any(axis=0) & ~all_right
        columns = matrix[:, contested].T.astype(np.float32)  # [contested, M]
        counts = np.empty((self.resamples, len(keys)), dtype=self._dtype)
        with threadpool_limits(self.threads, user_api="blas"):
            for start in range(0, self.resamples, CHUNK):
                draws = self._example_counts(start)
                # float32 is exact here: every product and sum is an integer below 2**24.
                shared = draws[:, all_right].sum(axis=1, dtype=np.int64)
                part = draws[:, contested].astype(np.float32) @ columns
                counts[start:start + len(draws)] = part + shared[:, np.newaxis]
        for index, key in enumerate(keys):
            self._counts[key] = counts[:, index].copy()

    def _example_counts(self, start: int) -> np.ndarray:
        """[chunk, N] uint8: how often each example is drawn in resamples start, start+1,
        ...: Multinomial(N, 1/N) each, as the bincount of N uniform draws (the same
        distribution as rng.multinomial, about 5x faster). Each chunk has a seed of its own,
        so any chunk can be made again alone."""
        kept = self._draws.get(start)
        if kept is not None:
            return kept
        chunk = min(CHUNK, self.resamples - start)
        n = self.examples
        rng = np.random.default_rng([self.seed, n, start])
        # 32-bit draws: half the work of 64-bit ones, and chunk x N stays far below 2**31.
        drawn = (rng.integers(0, n, size=(chunk, n), dtype=np.int32)
                 + (n * np.arange(chunk, dtype=np.int32))[:, np.newaxis])
        counts = np.bincount(drawn.ravel(), minlength=chunk * n).reshape(chunk, n)
        # One example drawn 256 times out of N is beyond any real chance (p < 1e-400 for
        # N >= 256); checked rather than assumed, since a wrap-around would be silent.
        if counts.max() > np.iinfo(np.uint8).max:
            raise OverflowError("an example drawn more than 255 times in one resample")
        counts = counts.astype(np.uint8)
        if self.resamples * n <= MAX_KEPT_DRAWS:
            self._draws[start] = counts
        return counts


def bootstrap_pvalue(differences: np.ndarray) -> np.ndarray | float:
    """Two-sided bootstrap p-value that the mean difference is 0, per column of
    `differences` ([B] or [B, K])."""
    below = np.mean(differences <= 0, axis=0)
    above = np.mean(differences >= 0, axis=0)
    p = np.minimum(1.0, 2 * np.minimum(below, above))
    return float(p) if np.ndim(p) == 0 else p


def percentile_interval(means: np.ndarray, level: float) -> tuple[float, float]:
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)
