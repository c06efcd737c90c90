"""Racing (`search grid --seeds auto`): after each round, which configurations get another seed,
and whether the race is over.

A race spends seeds where they can still change the answer. Its state machine:

    round 1: every configuration (LoRA points and baselines) trains seed 1.
    round k, once every racing configuration has k complete seeds -> `decide_round`:
        1. drop the LoRA configurations told apart from the best LoRA configuration,
        2. drop the baselines told apart from the best LoRA configuration,
        3. end if one LoRA configuration is left            (StopReason.ONE_LEFT),
           else if every surviving LoRA configuration is equivalent to the best within
           the margin                                       (StopReason.EQUIVALENT),
           else if k == max_seeds                           (StopReason.SEED_CAP),
           else the survivors train seed k + 1 (round k + 1).
    A dropped configuration never comes back: it keeps the seeds it has. The best is picked
    anew each round among the racing LoRA configurations (a survivor may overtake it); the
    dropped ones are not compared again, since their seeds stopped at their round.

`decide_round` is one step, a pure function of the round's outcomes. `replay` runs the steps
from round 1 over everything a study has stored, so the state of a race is never kept
anywhere: any host, any time, derives the same decisions from the same outcomes (which is
what lets a race started on one host be continued on another).

Why each rule is what it is:

- Told apart = the leaderboard's test (`significance.ties_with_best`: exact McNemar with one
  seed, the two-way bootstrap over seeds x examples with several; Holm over the LoRA
  configurations' comparisons with the best). The race must not drop what the leaderboard
  would call tied at the same depth, or the closing verdict would contradict the race.
- Baselines: tested like the leaderboard does, each on its own against the best LoRA
  configuration and outside Holm's family (a baseline answers "does LoRA pay at all", not
  "which LoRA point"). They never end the race: ONE_LEFT counts LoRA configurations only,
  since the question the race answers is which LoRA settings to use.
- Comparing against the best, not all pairs: the recommendation is the cheapest survivor and
  the loss a user risks is its gap to the best; pairwise tests among the survivors would add
  comparisons (and Holm's penalty) that no decision depends on.
- Equivalence (TOST): the survivors are equivalent when, for each, the 90% interval of the
  paired difference (best - it) in mean accuracy lies strictly inside +/- margin. A 90%
  interval inside the margin is the two one-sided tests at 5% each (Schuirmann). The claim
  "all are equivalent" is an intersection-union test (it holds only if every single TOST
  rejects), which keeps level alpha without any multiplicity adjustment. The interval is the
  percentile interval of the same two-way bootstrap as the tie tests (same resampled
  examples, same seed draws), so it widens with the spread across seeds as the tie tests do
  and is deterministic in the same way; with one seed it is a paired bootstrap over examples,
  which agrees with the paired t interval (statsmodels' `ttost_paired`) at the sizes a study
  has (tested). It is never narrower than Agresti and Min's interval for matched proportions
  (half a pseudo-disagreement added each way; on the seed-averaged per-example differences
  when there are several seeds): a bootstrap of two configurations that disagree on no
  example collapses to [0, 0], which says the data show no spread, not that the difference
  is known to be small. At 216 examples that floor alone is +/- 0.75 pp, so a small
  validation set cannot end a race as equivalent within 0.5 pp however alike the
  configurations look; at 10,000 examples it is +/- 0.02 pp and the bootstrap decides.
- The seed cap bounds the cost when the data cannot decide (true near-ties on a small
  validation set): the survivors then are the configurations the data could not tell from
  the best, the cheapest of which is recommended, as on the leaderboard.

Known limits, stated rather than hidden:
- Each round tests anew at alpha; over k rounds the chance of dropping a truly tied
  configuration grows beyond alpha (repeated looks). Racing accepts that (F-Race does the
  same) because the cost is bounded: the best is never dropped, so a wrongly dropped
  configuration can only make the recommendation dearer than needed, not less accurate.
- The best is picked as the highest of many accuracies and then tested against the rest,
  which the tests do not account for: on truly tied configurations, one seed, the
  leaderboard's test (and so round 1) drops at least one in 5% of studies of 9
  configurations on 216 images but 13-14% on 2,000 images, 20% at 27 and 25-40% at 81
  configurations (100 synthetic studies each). A selection-aware test (comparisons with
  the best, Hsu's MCB, or a bootstrap of the maximum) would fix both; it belongs to
  `significance`, shared with the leaderboard, not to the race alone.
- The floor covers the examples, not the seeds: configurations that agree on every example
  of every seed on a large validation set are called equivalent, which is what the data
  say.

Determinism: the bootstrap (`search.results.bootstrap`) draws examples from (seed 0, N, chunk)
and each configuration's seeds from a generator seeded by its rows' content; here rows are
put in a canonical order (by content) and configurations are visited in a canonical order
(by accuracy, cost, then repr of the key), so neither the mapping's order nor the order in
which a host read the replicates changes a decision. Ties in accuracy are broken by cost,
then by repr(key), never by dict order. (NumPy does not promise the same random streams
across its versions: hosts racing one study should share a NumPy version.)
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable, Mapping, Set
from dataclasses import dataclass, field
from numbers import Integral, Real

import numpy as np

from search.results import significance
from search.results.bootstrap import ExampleResampling, canonical_rows
from search.study.replicates import MAX_MARGIN_PP, MAX_SEEDS

__all__ = ["MAX_MARGIN", "Drop", "RaceSettings", "RaceState", "RoundDecision", "StopReason",
           "decide_round", "equivalence_intervals", "fixed_seed_trials", "replay"]


MAX_MARGIN = MAX_MARGIN_PP / 100
"""Largest margin accepted, 10 pp: no one calls configurations 10 points apart equivalent,
and a bound below 0.5 catches the margin given in percentage points where a fraction is
meant (0.5 for 0.5 pp would end every race in round 1)."""


class StopReason(enum.Enum):
    ONE_LEFT = "one LoRA configuration left"
    EQUIVALENT = "the survivors are equivalent within the margin"
    SEED_CAP = "the seed cap was reached"


@dataclass(frozen=True)
class RaceSettings:
    """--max-seeds and --margin, and the level of the tests."""

    max_seeds: int = 10
    """Most seeds any configuration trains (the last round), 1 to MAX_SEEDS."""
    margin: float = 0.005
    """Equivalence margin as a fraction of accuracy (0.005 = 0.5 percentage points), at most
    MAX_MARGIN."""
    alpha: float = significance.ALPHA
    """Level of the tie tests (after Holm) and of each one-sided test of the TOST."""

    def __post_init__(self) -> None:
        if isinstance(self.max_seeds, bool) or not isinstance(self.max_seeds, Integral) \
                or not 1 <= self.max_seeds <= MAX_SEEDS:
            raise ValueError(f"max_seeds must be an integer from 1 to {MAX_SEEDS}, "
                             f"got {self.max_seeds!r}")
        if not (isinstance(self.margin, Real) and 0 < self.margin <= MAX_MARGIN):
            raise ValueError(f"margin must be a fraction of accuracy above 0 and at most "
                             f"{MAX_MARGIN:g} (0.005 = 0.5 pp), got {self.margin!r}")
        if not (isinstance(self.alpha, Real) and 0 < self.alpha < 0.5):
            raise ValueError(f"alpha must be in (0, 0.5), got {self.alpha!r}")

    @property
    def margin_pp(self) -> float:
        return 100 * self.margin


@dataclass(frozen=True)
class Drop:
    """Why a configuration left the race."""

    key: Hashable
    round: int
    """Seeds it had when it was dropped (it trains no more)."""
    p_value: float
    """The p-value that told it apart: Holm-adjusted for LoRA configurations, raw for
    baselines (as on the leaderboard)."""
    gap: float
    """Best LoRA configuration's mean accuracy minus its own (negative: it did better, which
    only a baseline can)."""

    def describe(self, name: Callable[[Hashable], str] = repr) -> str:
        where = "below" if self.gap >= 0 else "above"
        return (f"{name(self.key)}: {100 * abs(self.gap):.1f} pp {where} the best after "
                f"{self.round} {_seeds(self.round)} ({significance_text(self.p_value)})")


@dataclass(frozen=True)
class RoundDecision:
    """The outcome of one round."""

    round: int
    """Seeds every compared configuration had."""
    best: Hashable
    """The LoRA configuration of highest mean accuracy this round."""
    survivors: tuple[Hashable, ...]
    """Configurations still racing (LoRA and baselines), highest accuracy first: they get
    seed round + 1 unless the race is finished."""
    dropped: Mapping[Hashable, Drop]
    """Configurations dropped in this round."""
    finished: bool
    reason: StopReason | None
    recommended: Hashable | None
    """When finished: the cheapest surviving LoRA configuration (`significance.recommend`)."""
    tests: Mapping[Hashable, significance.TieTest]
    """Every compared configuration's test against the best."""
    equivalence: Mapping[Hashable, tuple[float, float]]
    """(1 - 2 alpha) intervals of best - it for the surviving LoRA configurations other than
    the best, when two or more survive."""
    baselines: frozenset = field(default_factory=frozenset)
    margin: float = 0.005

    @property
    def lora_survivors(self) -> tuple[Hashable, ...]:
        return tuple(key for key in self.survivors if key not in self.baselines)

    def describe(self, name: Callable[[Hashable], str] = repr) -> str:
        """One line in the leaderboard's style; `name` says a key in words (the leaderboard's
        `Configuration.describe`)."""
        lora = self.lora_survivors
        n, seeds = len(lora), f"{self.round} {_seeds(self.round)}"
        if self.reason is StopReason.ONE_LEFT:
            return f"one configuration left after {seeds}: {name(self.recommended)}"
        if self.reason is StopReason.EQUIVALENT:
            return (f"{n} configurations equivalent within {100 * self.margin:g} pp after "
                    f"{seeds}; recommended: the cheapest of them, {name(self.recommended)}")
        if self.reason is StopReason.SEED_CAP:
            return (f"seed cap reached after {seeds} with {n} configurations not told apart "
                    f"from the best; recommended: the cheapest of them, {name(self.recommended)}")
        racing_baselines = len(self.survivors) - n
        extra = (f" and {racing_baselines} {'baseline' if racing_baselines == 1 else 'baselines'}"
                 if racing_baselines else "")
        return (f"after {seeds}: {len(self.dropped)} dropped, {n} LoRA configurations{extra} "
                f"race on to seed {self.round + 1}")


def decide_round(outcomes: Mapping[Hashable, np.ndarray], costs: Mapping[Hashable, int],
                 baselines: Set[Hashable] = frozenset(),
                 settings: RaceSettings | None = None,
                 resampling: ExampleResampling | None = None) -> RoundDecision:
    """One round's decision for the configurations still racing.

    `outcomes`: key -> [S, N] bool validation outcomes (or [N] for S = 1), every configuration
    with the same S (the round) and the same N examples in the same order. Configurations with
    fewer seeds are not finished with the round, more seeds are not the round: both are
    refused, since comparing at unequal depths would make the decision depend on timing.
    `costs`: key -> trainable parameters (what "cheapest" means). `baselines`: the keys that
    are baselines. `resampling`: bootstrap work kept between calls (decisions do not depend
    on it)."""
    settings = settings or RaceSettings()
    replicates = {key: _canonical(value) for key, value in outcomes.items()}
    depths = {array.shape[0] for array in replicates.values()}
    if len(depths) != 1:
        raise ValueError("a round compares configurations with the same number of seeds; got "
                         + ", ".join(f"{key!r}: {a.shape[0]}" for key, a in replicates.items()))
    if len({array.shape[1] for array in replicates.values()}) != 1:
        raise ValueError("outcomes differ in number of examples")
    missing = [key for key in replicates if key not in costs]
    if missing:
        raise ValueError(f"no cost (trainable parameters) for {missing!r}")
    lora_keys = [key for key in replicates if key not in baselines]
    if not lora_keys:
        raise ValueError("a race needs at least one LoRA configuration")
    (depth,) = depths
    if depth > settings.max_seeds:
        raise ValueError(f"round {depth} is beyond max_seeds {settings.max_seeds}")
    examples = next(iter(replicates.values())).shape[1]
    # Integer counts: exact ties in accuracy are found exactly, then broken canonically.
    correct = {key: int(array.sum()) for key, array in replicates.items()}
    order = sorted(replicates, key=lambda k: (-correct[k], costs[k], repr(k)))
    lora = [key for key in order if key not in baselines]
    best = lora[0]
    resampling = resampling or ExampleResampling(examples)

    tests = dict(significance.ties_with_best({key: replicates[key] for key in lora}, best,
                                             alpha=settings.alpha, resampling=resampling))
    for key in order:
        if key in baselines:
            p = significance.paired_pvalue(replicates[best], replicates[key],
                                           resampling=resampling)
            tests[key] = significance.TieTest(key, p, p, p >= settings.alpha)
    total = depth * examples
    dropped = {key: Drop(key, depth, tests[key].p_holm, (correct[best] - correct[key]) / total)
               for key in order if not tests[key].tied}
    survivors = tuple(key for key in order if key not in dropped)
    lora_left = [key for key in survivors if key not in baselines]

    equivalence: dict[Hashable, tuple[float, float]] = {}
    if len(lora_left) > 1:
        equivalence = equivalence_intervals({key: replicates[key] for key in lora_left}, best,
                                            settings.alpha, resampling)
    reason = None
    if len(lora_left) == 1:
        reason = StopReason.ONE_LEFT
    elif all(-settings.margin < low and high < settings.margin
             for low, high in equivalence.values()):
        reason = StopReason.EQUIVALENT
    elif depth >= settings.max_seeds:
        reason = StopReason.SEED_CAP
    recommended = None
    if reason is not None:
        recommended = significance.recommend(
            [(key, costs[key], correct[key] / total) for key in lora_left])
    return RoundDecision(round=depth, best=best, survivors=survivors, dropped=dropped,
                         finished=reason is not None, reason=reason, recommended=recommended,
                         tests=tests, equivalence=equivalence,
                         baselines=frozenset(k for k in replicates if k in baselines),
                         margin=settings.margin)


def equivalence_intervals(outcomes: Mapping[Hashable, np.ndarray], best: Hashable,
                          alpha: float = significance.ALPHA,
                          resampling: ExampleResampling | None = None
                          ) -> dict[Hashable, tuple[float, float]]:
    """For every key but `best`: the (1 - 2 alpha) interval of mean accuracy of `best` minus
    its, the TOST's interval at level alpha (equivalence within m when it lies inside
    (-m, m)). The percentile interval of the two-way bootstrap shared with the tie tests,
    widened where needed to Agresti-Min's interval around the observed difference (see the
    module's docstring)."""
    from scipy.special import ndtri

    replicates = {key: _canonical(value) for key, value in outcomes.items()}
    others = [key for key in replicates if key != best]
    if not others:
        return {}
    top = replicates[best]
    resampling = resampling or ExampleResampling(top.shape[1])
    means = resampling.means([top] + [replicates[key] for key in others])
    differences = means[:, :1] - means[:, 1:]
    low, high = np.quantile(differences, [alpha, 1 - alpha], axis=0)
    crit = -ndtri(alpha)
    result = {}
    for index, key in enumerate(others):
        observed, floor = _matched_difference(top, replicates[key])
        result[key] = (float(min(low[index], observed - crit * floor)),
                       float(max(high[index], observed + crit * floor)))
    return result


def _matched_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """The observed mean difference of [S_a, N] and [S_b, N] outcomes, and Agresti-Min's
    standard error of it: per example the seed-averaged difference d_i, then half a
    disagreement added each way, var = (m2 - m1^2) / (N + 2) with m2 = (sum d_i^2 + 1) /
    (N + 2), m1 = sum d_i / (N + 2). With one seed each, d_i is -1, 0 or 1 and this is their
    adjusted Wald interval for matched proportions (Agresti & Min, Biometrics 2005)."""
    d = a.mean(axis=0) - b.mean(axis=0)
    n = d.size
    m1 = d.sum() / (n + 2)
    m2 = (np.dot(d, d) + 1) / (n + 2)
    return float(d.mean()), float(np.sqrt(max(m2 - m1 * m1, 0.0) / (n + 2)))


@dataclass(frozen=True)
class RaceState:
    """A race replayed from what a study has stored."""

    rounds: tuple[RoundDecision, ...]
    """Every decided round, in order."""
    waiting: Mapping[Hashable, int]
    """Racing configurations whose seed of the current round is not complete yet: key ->
    the seeds it needs (the round's depth). Empty when finished or all are ready."""
    next_round: int
    """The round now being trained (len(rounds) + 1), or the last round when finished."""
    trials_used: int
    """Trials the decided rounds consumed: each configuration's seeds up to the round it was
    dropped in or the last decided round (seeds of the round under way not counted)."""
    configurations: int
    """Configurations that entered the race (round 1), baselines included."""
    racing: tuple[Hashable, ...]
    """Configurations that train seed `next_round` (none when finished)."""

    @property
    def finished(self) -> bool:
        return bool(self.rounds) and self.rounds[-1].finished

    @property
    def dropped_after(self) -> dict[Hashable, int]:
        """Every dropped configuration -> the seeds it had when it left the race."""
        return {key: drop.round for decision in self.rounds
                for key, drop in decision.dropped.items()}

    @property
    def fixed_trials(self) -> int:
        """What `--seeds D` at the race's depth D would have trained."""
        depth = self.rounds[-1].round if self.rounds else 0
        return fixed_seed_trials(self.configurations, depth)

    def describe(self, name: Callable[[Hashable], str] = repr) -> list[str]:
        """The leaderboard's closing lines for a race."""
        if not self.rounds:
            return [f"race: round 1 of {self.configurations} configurations under way"]
        last = self.rounds[-1]
        lines = [last.describe(name)]
        if self.finished:
            lines.append(f"the race used {self.trials_used} trials; a fixed --seeds "
                         f"{last.round} would have used {self.fixed_trials}")
        else:
            lines.append(f"{self.trials_used} trials so far; round {self.next_round} is "
                         f"waiting for {len(self.waiting)} of {len(last.survivors)} "
                         "configurations")
        return lines


def replay(outcomes: Mapping[Hashable, np.ndarray], costs: Mapping[Hashable, int],
           baselines: Set[Hashable] = frozenset(), settings: RaceSettings | None = None,
           resampling: ExampleResampling | None = None) -> RaceState:
    """Every round of a race, decided again from stored outcomes.

    `outcomes`: key -> [S_i, N] outcomes of every configuration in the race (dropped ones
    included), row s being seed s (replicate s): the rows must be in seed order, because
    round k compares the first k rows; a configuration none of whose seeds has finished is
    None or [0, N]. Rows beyond what a round compares (a seed trained
    ahead) are ignored. Stops at the first round some racing configuration has not finished
    (`waiting`) or at the end of the race."""
    settings = settings or RaceSettings()
    arrays = {key: _stored_rows(value) for key, value in outcomes.items()}
    if not arrays:
        raise ValueError("a race needs at least one configuration")
    racing = sorted(arrays, key=repr)  # canonical: the order given must not matter
    rounds: list[RoundDecision] = []
    used: dict[Hashable, int] = {}
    for depth in range(1, settings.max_seeds + 1):
        short = {key: depth for key in racing if arrays[key].shape[0] < depth}
        if short:
            return RaceState(tuple(rounds), short, depth, sum(used.values()), len(arrays),
                             tuple(racing))
        decision = decide_round({key: arrays[key][:depth] for key in racing}, costs,
                                baselines, settings, resampling)
        rounds.append(decision)
        used.update((key, depth) for key in racing)
        if decision.finished:
            break
        racing = list(decision.survivors)
    last = rounds[-1]
    return RaceState(tuple(rounds), {}, last.round, sum(used.values()), len(arrays),
                     () if last.finished else last.survivors)


def _stored_rows(value: np.ndarray | None) -> np.ndarray:
    """A configuration's stored rows as [S, N], S = 0 allowed (nothing finished yet)."""
    if value is None or (np.ndim(value) == 2 and np.shape(value)[0] == 0):
        return np.zeros((0, 0), dtype=bool)
    return significance._as_replicates(value)


def fixed_seed_trials(configurations: int, depth: int) -> int:
    """Trials a fixed `--seeds depth` trains: every configuration, every seed."""
    return configurations * depth


def significance_text(p: float) -> str:
    return "p < 1e-6" if p < 1e-6 else f"p = {p:.2g}"


def _seeds(count: int) -> str:
    return "seed" if count == 1 else "seeds"


def _canonical(values: np.ndarray) -> np.ndarray:
    """[S, N] outcomes with the rows in the order of their content (`canonical_rows`): which
    seed a host read first must not change a decision (the seeds of one round are
    exchangeable)."""
    return canonical_rows(significance._as_replicates(values))
