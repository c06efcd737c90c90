"""The study's answer: which configurations are tied with the best, and the cheapest of them.

A configuration is what a user would deploy: a baseline or a LoRA point (rank, alpha,
dropout), trained by one trial per seed (`search.study.replicates`). Its validation outcomes
(`search.study.outcomes`) are [seeds, examples]; every comparison is paired by example.

- The best: the LoRA configuration of highest mean validation accuracy (ties: the earliest
  trial); a study without a complete LoRA trial compares its baselines instead.
- Tied: every LoRA configuration whose comparison with the best (`significance.ties_with_best`:
  exact McNemar with one seed each, else a bootstrap over seeds x examples) is not rejected at
  0.05 after Holm's correction over the comparisons with the best.
- Recommended: the tied LoRA configuration with the fewest trainable parameters (what serving
  and storage pay for), ties broken by validation accuracy. The question a user asks is which
  LoRA settings to use; whether LoRA pays at all is the baselines' line:
- Each baseline's gap to the best, with the p-value of the same paired test, on its own (not
  in Holm's family: it answers another question). A baseline the test cannot tell from the best
  says that LoRA's gain may be noise, and the leaderboard says so.
- The test set took no part in choosing: the best's and the recommended's test accuracies
  with intervals, and the paired test between them there, say whether the pick holds up.

Only complete trials take part: a pruned trial's outcomes are of an earlier epoch. A study
whose complete trials do not all carry outcomes (made before they were stored) gets no
verdict, and one line saying why (`assess` returns it).

Cost: a worker refreshes the verdict after every trial it finishes, on studies of thousands of
trials and evaluation sets of 10,000 images. A `VerdictCache` kept between refreshes holds
each trial's decoded outcomes and each split's bootstrap work (`search.results.bootstrap`), so
a refresh decodes and resamples only what is new; the McNemar tests and intervals are array
computations over all configurations at once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence, Set
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from search.results import significance
from search.results.bootstrap import ExampleResampling, canonical_rows, percentile_interval
from search.results.point_columns import PointColumns, study_columns
from search.study.outcomes import decode_bits, encoded_outcomes, stored_outcomes
from search.study.study_record import StudyRecord
from search.study.trials import configuration_key, is_baseline, trial_model, trial_point


@dataclass(frozen=True)
class Configuration:
    """One baseline or LoRA point and its complete replicates (by trial number)."""

    key: tuple
    trials: tuple[FrozenTrial, ...]
    model: str
    val: np.ndarray  # [seeds, validation examples] bool
    test: np.ndarray | None  # [seeds, test examples] bool; None when a replicate lacks them

    @property
    def baseline(self) -> bool:
        return is_baseline(self.trials[0])

    @property
    def point(self):
        return trial_point(self.trials[0])

    @property
    def numbers(self) -> list[int]:
        return [t.number for t in self.trials]

    @property
    def trainable_params(self) -> int:
        return int(self.trials[0].user_attrs.get("trainable_params") or 0)

    @cached_property
    def val_accs(self) -> np.ndarray:
        return self.val.mean(axis=1)

    @cached_property
    def test_accs(self) -> np.ndarray | None:
        return self.test.mean(axis=1) if self.test is not None else None

    def describe(self, columns: PointColumns | None = None) -> str:
        """"rank 8, alpha 8, dropout 0.1", then the study's extra columns (`columns`: lr,
        targets, variant, where the study's points set them, `search.results.point_columns`):
        "..., lr 0.001, targets all, rsLoRA"."""
        point = self.point
        if point is None:
            return f"baseline {self.model} (head only)"
        extra = columns.parts(point) if columns is not None else []
        return ", ".join([f"rank {point.rank}, alpha {point.alpha:g}, dropout {point.dropout:g}",
                          *extra])


@dataclass(frozen=True)
class Verdict:
    configurations: list[Configuration]  # highest mean validation accuracy first
    best: Configuration
    ties: dict[tuple, significance.TieTest]
    recommended: Configuration
    val_ci: dict[tuple, tuple[float, float]]
    test_ci: dict[tuple, tuple[float, float]]  # configurations with test outcomes
    test_pvalue: float | None  # best vs recommended on the test set; None: the same one
    left_out: str = ""  # why some complete trials take no part, if any
    # The extra columns the study's results show (`search.results.point_columns`).
    columns: PointColumns = PointColumns()

    @property
    def seeds(self) -> int:
        return max(len(c.trials) for c in self.configurations)

    def tied(self, configuration: Configuration) -> bool:
        return self.ties[configuration.key].tied

    def describe(self, configuration: Configuration) -> str:
        """`configuration` in words, with the study's extra columns."""
        return configuration.describe(self.columns)


class VerdictCache:
    """What one process keeps between verdicts: every trial's decoded outcomes (by their
    stored text, so a trial whose outcomes changed is decoded again) and each split's
    bootstrap work. Memory: ~N bytes a trial and split decoded, 2 x 4,000 bytes a trial
    and split resampled (a study with seeds): ~100 MB for 1,000 trials x 3 seeds at 10,000
    validation and test images. Not shared between threads."""

    def __init__(self, threads: int | None = None) -> None:
        """`threads`: BLAS threads for the bootstrap's products (None: the library's own). A
        worker asks for one: it shares its host with training (torch's threads, other
        workers), and OpenBLAS's spinning threads then ran the cold verdict of 1,000 trials
        x 3 seeds x 10,000 images in 9.5 s against 2.7 s on one thread (2-core machine, two
        other busy processes). A command someone waits for takes what the library gives."""
        self.threads = threads
        self._rows: dict[str, np.ndarray] = {}
        self._resamplings: dict[tuple[str, int], ExampleResampling] = {}

    def outcomes(self, trial: FrozenTrial, split: str) -> tuple[np.ndarray, str] | None:
        """`search.study.outcomes.trial_outcomes`, decoded once per stored text."""
        encoded = encoded_outcomes(stored_outcomes(trial), split)
        if encoded is None:
            return None
        row = self._rows.get(encoded.text)
        if row is None or row.size != encoded.count:
            try:
                row = decode_bits(encoded.text, encoded.count)
            except ValueError:
                return None
            row.flags.writeable = False  # shared by every verdict of this cache
            self._rows[encoded.text] = row
        return row, encoded.order

    def resampling(self, split: str, examples: int) -> ExampleResampling:
        key = (split, examples)
        if key not in self._resamplings:
            self._resamplings[key] = ExampleResampling(examples, threads=self.threads)
        return self._resamplings[key]


def complete_configurations(trials: Sequence[FrozenTrial], study_model: str,
                            cache: VerdictCache | None = None
                            ) -> tuple[list[Configuration], str]:
    """The complete trials grouped by configuration, each with its outcomes; and why some
    take no part (validation images in another order: another split). A study whose complete
    trials lack outcomes raises NoVerdict."""
    cache = cache or VerdictCache()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        raise NoVerdict("no trial has completed yet")
    scored = {t.number: cache.outcomes(t, "val") for t in complete}
    missing = [n for n, o in scored.items() if o is None]
    if missing:
        raise NoVerdict(f"no tie test: {len(missing)} of {len(complete)} complete trials "
                        "carry no per-example outcomes (made before they were stored); "
                        "trials run from now on do")
    orders = Counter(order for _, order in scored.values())
    order, _ = orders.most_common(1)[0]
    kept = [t for t in complete if scored[t.number][1] == order]
    left_out = ""
    if len(kept) < len(complete):
        others = sorted(t.number for t in complete if scored[t.number][1] != order)
        left_out = (f"{'trial' if len(others) == 1 else 'trials'} "
                    f"{', '.join(map(str, others))} {'was' if len(others) == 1 else 'were'} "
                    "scored on other validation images (another split) and "
                    f"{'takes' if len(others) == 1 else 'take'} no part")
    groups: dict[tuple, list[FrozenTrial]] = {}
    for trial in kept:
        groups.setdefault(configuration_key(trial), []).append(trial)
    configurations = []
    for key, members in groups.items():
        tests = [cache.outcomes(t, "test") for t in members]
        test = (np.stack([o for o, _ in tests])
                if all(o is not None for o in tests)
                and len({(len(o), fp) for o, fp in tests}) == 1 else None)
        configurations.append(Configuration(
            key=key, trials=tuple(members),
            model=trial_model(members[0], study_model),
            val=np.stack([scored[t.number][0] for t in members]), test=test))
    configurations.sort(key=lambda c: (-c.val_accs.mean(), c.numbers[0]))
    return configurations, left_out


class NoVerdict(Exception):
    """Why a study has no tie test: one line for the leaderboard."""


def assess(study: optuna.Study, trials: Sequence[FrozenTrial] | None = None,
           cache: VerdictCache | None = None, dropped: Set[Hashable] | None = None) -> Verdict:
    """The study's verdict; NoVerdict (its reason) when it cannot have one. `cache` keeps
    the work for the next call (a worker's refreshes); without one, nothing is kept.

    In a racing study (`search.results.race`) the LoRA configurations its race dropped
    (`dropped`; None: replayed here) take no part in choosing the best, the tied set and the
    recommendation: each was told apart from the best at the round it left, and compared
    now, with fewer seeds than the survivors, the test could call it tied and the verdict
    would contradict the race. Like a baseline, each keeps its own p-value against the best,
    never tied."""
    cache = cache or VerdictCache()
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    if dropped is None:
        from search.results.race import raced_out  # the race reads outcomes through this module

        dropped = raced_out(study, trials, cache)
    # The stored dict, not a validated spec: a verdict must show on any host.
    study_model = StudyRecord(study).spec_model or ""
    configurations, left_out = complete_configurations(trials, study_model, cache)
    family = [c for c in configurations if not c.baseline and c.key not in dropped] \
        or [c for c in configurations if not c.baseline] or configurations
    best = family[0]
    val = cache.resampling("val", best.val.shape[1])
    # Seeds in the order of their content (`canonical_rows`): as a race tests them.
    ties = significance.ties_with_best({c.key: canonical_rows(c.val) for c in family},
                                       best.key, resampling=val)
    for other in (c for c in configurations if c.key not in ties):  # baselines, raced out
        p = significance.paired_pvalue(canonical_rows(best.val), canonical_rows(other.val),
                                       resampling=val)
        tied = p >= significance.ALPHA and other.key not in dropped
        ties[other.key] = significance.TieTest(other.key, p, p, tied)
    tied = [c for c in family if ties[c.key].tied]
    by_key = {c.key: c for c in configurations}
    recommended = by_key[significance.recommend(
        [(c.key, c.trainable_params, float(c.val_accs.mean())) for c in tied])]
    test_pvalue = None
    if recommended is not best and best.test is not None and recommended.test is not None \
            and best.test.shape[1] == recommended.test.shape[1]:
        test_pvalue = significance.paired_pvalue(
            best.test, recommended.test,
            resampling=cache.resampling("test", best.test.shape[1]))
    return Verdict(
        configurations=configurations, best=best, ties=ties, recommended=recommended,
        val_ci=intervals({c.key: c.val for c in configurations}, cache, "val"),
        test_ci=intervals({c.key: c.test for c in configurations if c.test is not None},
                          cache, "test"),
        test_pvalue=test_pvalue, left_out=left_out, columns=study_columns(study, trials))


def intervals(outcomes: dict[tuple, np.ndarray], cache: VerdictCache, split: str
              ) -> dict[tuple, tuple[float, float]]:
    """`significance.outcome_interval` of every configuration, computed together: one
    Wilson call for the single replicates, one resampling per number of examples for the
    rest."""
    result: dict[tuple, tuple[float, float]] = {}
    single = [key for key, value in outcomes.items() if value.shape[0] == 1]
    if single:
        correct = np.array([int(outcomes[key].sum()) for key in single])
        total = np.array([outcomes[key].shape[1] for key in single])
        low, high = significance.wilson_intervals(correct, total)
        result.update(zip(single, zip(low.tolist(), high.tolist(), strict=True), strict=True))
    several = [key for key, value in outcomes.items() if value.shape[0] > 1]
    for examples in sorted({outcomes[key].shape[1] for key in several}):
        keys = [key for key in several if outcomes[key].shape[1] == examples]
        means = cache.resampling(split, examples).means([outcomes[key] for key in keys])
        result.update((key, percentile_interval(means[:, column], significance.LEVEL))
                      for column, key in enumerate(keys))
    return {key: result[key] for key in outcomes}


def describe_p(p: float) -> str:
    if p < 1e-6:
        return "p < 1e-6"
    return f"p = {p:.2g}" if p < 0.01 else f"p = {p:.2f}"


def closing_lines(verdict: Verdict) -> list[str]:
    """What the leaderboard ends with: the tied set, the recommendation and the baselines'
    gaps; then whether the pick holds on the test set."""
    best, recommended = verdict.best, verdict.recommended
    lora = [c for c in verdict.configurations if not c.baseline]
    tied_lora = [c for c in lora if verdict.tied(c)]
    examples = best.val.shape[1]
    test = (f"exact McNemar on {examples} validation images" if verdict.seeds == 1 else
            f"bootstrap over {verdict.seeds} seeds x {examples} validation images")
    parts = [f"{len(tied_lora)} of {len(lora)} LoRA configurations are tied with the best "
             f"({test}, Holm, p >= {significance.ALPHA:g})"]
    cost = ""
    if best.baseline:  # no LoRA trial has completed: baselines among themselves
        tied_base = sum(verdict.tied(c) for c in verdict.configurations)
        return [f"no LoRA trial has completed; {tied_base} of {len(verdict.configurations)} "
                f"baselines are tied with the best ({test}, Holm, p >= {significance.ALPHA:g})"]
    if recommended is not best and best.trainable_params:
        cost = (f", {recommended.trainable_params / best.trainable_params:.2f}x the best's")
    parts.append(f"recommended: {verdict.describe(recommended)} "
                 f"({recommended.trainable_params:,} trainable parameters{cost})"
                 if recommended is not best else
                 f"recommended: the best, {verdict.describe(best)} (no tied configuration is "
                 "smaller)")
    for baseline in (c for c in verdict.configurations if c.baseline):
        gap = 100 * (best.val_accs.mean() - baseline.val_accs.mean())
        name = "baseline" if baseline.model == best.model else f"baseline {baseline.model}"
        where = "below" if gap >= 0 else "above"
        noise = (": not told apart from the best, LoRA may not pay here" if verdict.tied(baseline)
                 else ": the head alone does better" if gap < 0 else "")
        parts.append(f"{name} {abs(gap):.1f} pp {where} the best "
                     f"({describe_p(verdict.ties[baseline.key].p_value)}{noise})")
    lines = ["; ".join(parts)]
    if verdict.test_pvalue is not None:
        lines.append(
            f"on the test set (not used to choose): best {test_summary(verdict, best)}, "
            f"recommended {test_summary(verdict, recommended)}; paired test "
            f"{describe_p(verdict.test_pvalue)}"
            + (" (the recommendation holds)" if verdict.test_pvalue >= significance.ALPHA
               else " (they differ on unseen data)"))
    if verdict.left_out:
        lines.append(verdict.left_out)
    return lines


def test_summary(verdict: Verdict, configuration: Configuration) -> str:
    low, high = verdict.test_ci[configuration.key]
    return f"{configuration.test_accs.mean():.4f} [{low:.4f}, {high:.4f}]"
