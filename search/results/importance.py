"""What mattered: the share of the validation accuracy's variance each LoRA hyperparameter
explains, over the study's complete LoRA trials.

Each complete LoRA trial is one observation (with seeds, every replicate is one: their spread
is part of the variance to explain); baselines take no part. A trial's params are its point's
effective values, whatever Optuna stored: a point stores `lr`, `targets` and `scaling` only
where they are not the spec's (`search.study.space.params_of`), so a trial without them
trained with the spec's learning rate and layers and plain LoRA, and is observed as such.
The params assessed are those that take at least two values over the observations:

    rank     the adapters' rank (int)
    alpha    LoRA's alpha
    dropout  LoRA's dropout
    lr       the learning rate, on a log scale
    targets  the adapted layers (their `TrainSpec.targets` value, categorical)
    scaling  the LoRA variant: lora, rslora or dora (`search.study.space.VARIANTS`)

They go into a throwaway in-memory Optuna study, and Optuna's fANOVA evaluator
(`optuna.importance.FanovaImportanceEvaluator`) says what share of the variance of a random
forest fit to them each param's main effect explains. fANOVA rather than PED-ANOVA: the
question is how much of the accuracy's variance a param explains (fANOVA's functional ANOVA
decomposition answers exactly that, in shares that with the interactions sum to 1);
PED-ANOVA asks which params tell the top 10% of trials from the rest, and on a study whose
accuracy moved with lr and targets it saw only lr (measured, 200-5,000 trials). The shares
shown are the main effects as fANOVA gives them, not normalised: what they leave to 1 is the
params' interactions, and the line says how much.

Too few to mean anything (`enough` false, the line says why): fewer than MIN_TRIALS
observations, or fewer than MIN_PER_PARAM per param assessed (a forest fit to fewer splits on
noise); only one param varies (it explains all the forest can, trivially); none does; or every
observation has the same accuracy. No complete LoRA trial, or one: no line at all, the board
says so already.

Cost: fANOVA walks every leaf of every tree in Python. Trees of Optuna's default depth (64)
grow a leaf per trial where dropout and learning rate are drawn from intervals, as TPE draws
them: 32 such trees took 5.9 s for 1,000 trials and 103 s for 5,000 (a shared 2-core machine),
and a worker refreshes the study's note after every trial. So the forest has N_TREES trees of
at most MAX_DEPTH levels (2^8 leaves each, whatever the study's size) and is fit to at most
MAX_OBSERVATIONS trials: a larger study is subsampled by a fixed hash of the trial number (the
same trials every time; one more trial changes at most one of them), and the line says so.
About 1 s for a TPE study of 1,000 or 5,000 trials, 0.4 s for a grid's
(`benchmarks/importance_scale.py`, BENCHMARKS.md). Shallower trees fit less of the noise
between neighbouring trials, so the shares they give the main effects are, if anything, larger:
on the benchmark's TPE study the layers' 0.72 at depth 64 was 0.80 at depth 8, the learning
rate's 0.10 and 0.11.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial, TrialState

from search.results.point_columns import stored_spec_values
from search.study.space import variant_of
from search.study.study_record import StudyRecord
from search.study.trials import is_baseline, trial_point

if TYPE_CHECKING:
    import optuna

LOG = logging.getLogger(__name__)

PARAMS = ("rank", "alpha", "dropout", "lr", "targets", "scaling")  # in the order listed
SEED = 0  # the forest's: the same trials give the same shares on every host and refresh
# Optuna's defaults are 64 trees of depth 64; on the benchmark's studies 32 trees moved no
# share by more than 0.01 at half the cost, and depth 8 bounds the leaves fANOVA walks.
N_TREES = 32
MAX_DEPTH = 8
MAX_OBSERVATIONS = 1_000
MIN_TRIALS = 10
MIN_PER_PARAM = 5
HASH_MULTIPLIER = 2_654_435_761  # Knuth's multiplicative hash: spreads trial numbers mod 2**32


@dataclass(frozen=True)
class Observation:
    """One complete LoRA trial: its effective params and validation accuracy."""

    number: int
    params: dict[str, Any]
    value: float


@dataclass(frozen=True)
class Importances:
    """fANOVA's shares of the validation accuracy's variance, and over what."""

    values: dict[str, float]  # param -> its main effect's share, largest first; {} if not assessed
    trials: int  # complete LoRA trials observed (each seed's trial counts)
    varying: tuple[str, ...] = ()  # the params that take at least two values, in PARAMS' order
    used: int = 0  # observations the forest was fit to: `trials`, or MAX_OBSERVATIONS of them
    enough: bool = False
    reason: str = ""  # why not assessed; "" when `enough`
    interactions: float = field(default=0.0)  # 1 - the sum of `values`: the params' interactions


def observations(trials: Sequence[FrozenTrial], spec_lr: Any = None,
                 spec_targets: Any = None) -> list[Observation]:
    """The complete LoRA trials with a point and a finite value, by trial number, each with
    every param of PARAMS: `spec_lr` and `spec_targets` (the study's spec as stored; the
    spec's defaults where unusable) where the point has none."""
    lr, targets = stored_spec_values({"lr": spec_lr, "targets": spec_targets})
    found = []
    for trial in sorted(trials, key=lambda t: t.number):
        if trial.state != TrialState.COMPLETE or is_baseline(trial) or trial.value is None \
                or not math.isfinite(trial.value):
            continue
        point = trial_point(trial)
        if point is None:
            continue
        found.append(Observation(trial.number, {
            "rank": point.rank, "alpha": round(point.alpha, 6),
            "dropout": round(point.dropout, 6),
            "lr": round(point.lr if point.lr is not None else lr, 12),
            "targets": layers(point.targets if point.targets is not None else targets),
            "scaling": variant_of(point)}, float(trial.value)))
    return found


def layers(targets: str) -> str:
    """A targets value as one category: its names, stripped. The value itself rather than
    its `TARGET_SETS` name: a spec's own targets need not be a named set, and "qkv" (timm's
    fused layer) is not the set named "qkv" ("q,k,v")."""
    return ",".join(name.strip() for name in targets.split(","))


def importances(found: Sequence[Observation]) -> Importances:
    """The shares of `found`'s variance (`observations`), or why they are not assessed."""
    trials = len(found)
    varying = tuple(name for name in PARAMS
                    if len({o.params[name] for o in found}) >= 2)
    needed = max(MIN_TRIALS, MIN_PER_PARAM * len(varying))
    reason = ""
    if not varying:
        reason = f"no hyperparameter varies over the {trials} complete LoRA trials"
    elif len(varying) == 1:
        reason = f"only {varying[0]} varies: nothing to compare it with"
    elif trials < needed:
        reason = (f"too few trials to tell ({trials} complete LoRA trials; {needed} needed for "
                  f"the {len(varying)} hyperparameters that vary)")
    elif len({o.value for o in found}) == 1:
        reason = f"validation accuracy is the same in all {trials} trials: nothing to explain"
    if reason:
        return Importances({}, trials, varying, reason=reason)
    used = subsample(found)
    try:
        values = fanova(used, varying)
    except (RuntimeError, ValueError) as error:  # a forest without variance; Optuna refusing
        LOG.warning("importances not assessed: %s", error)
        return Importances({}, trials, varying, reason=f"not assessed ({error})")
    return Importances(values, trials, varying, len(used), True,
                       interactions=max(0.0, 1.0 - sum(values.values())))


def subsample(found: Sequence[Observation]) -> list[Observation]:
    """At most MAX_OBSERVATIONS of `found`, in their order: those whose trial numbers hash
    lowest (`HASH_MULTIPLIER`), so that the same trials are kept every time and a new trial
    displaces at most one."""
    if len(found) <= MAX_OBSERVATIONS:
        return list(found)
    kept = sorted(found, key=lambda o: ((o.number * HASH_MULTIPLIER) % 2**32, o.number))
    return sorted(kept[:MAX_OBSERVATIONS], key=lambda o: o.number)


def fanova(found: Sequence[Observation], varying: Sequence[str]) -> dict[str, float]:
    """Optuna's fANOVA importances of `varying` over `found`, largest first."""
    import optuna  # noqa: F401 (optuna.importance imports scikit-learn: ~0.7 s, only here)
    from optuna.importance import FanovaImportanceEvaluator

    study = throwaway_study(found, varying)
    evaluator = FanovaImportanceEvaluator(n_trees=N_TREES, max_depth=MAX_DEPTH, seed=SEED)
    shares = evaluator.evaluate(study, params=list(varying))
    return {name: float(value) for name, value in shares.items()}


def throwaway_study(found: Sequence[Observation], varying: Sequence[str]) -> optuna.Study:
    """An in-memory study of `found`'s `varying` params, every trial with the same
    distributions (fANOVA refuses a search space that changes between trials)."""
    import optuna
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    distributions = {}
    for name in varying:
        values = [o.params[name] for o in found]
        if name in ("targets", "scaling"):
            distributions[name] = CategoricalDistribution(sorted(set(values)))
        elif name == "rank":
            distributions[name] = IntDistribution(min(values), max(values))
        else:
            distributions[name] = FloatDistribution(min(values), max(values), log=name == "lr")
    study = optuna.create_study(direction="maximize")
    study.add_trials([optuna.trial.create_trial(
        params={name: o.params[name] for name in varying}, distributions=distributions,
        value=o.value) for o in found])
    return study


def study_importances(study: optuna.Study,
                      trials: Sequence[FrozenTrial] | None = None) -> Importances:
    """`importances` of the study's complete LoRA trials (`trials`: the study's, if the
    caller has read them), its spec read as stored: results show on any host."""
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    stored = StudyRecord(study).stored_spec
    return importances(observations(trials, stored.get("lr"), stored.get("targets")))


def importance_lines(result: Importances) -> list[str]:
    """The line to print after the verdict: the shares, largest first; or why there are
    none. No line for a study of fewer than two complete LoRA trials."""
    if result.trials < 2:
        return []
    if not result.enough:
        return [f"what mattered: {result.reason}"]
    over = (f"{result.trials:,} trials" if result.used == result.trials else
            f"{result.used:,} of {result.trials:,} trials, a fixed sample")
    shares = ", ".join(f"{name} {value:.2f}" for name, value in result.values.items())
    return [f"what mattered (share of validation accuracy's variance, fANOVA over {over}): "
            f"{shares}; interactions {result.interactions:.2f}"]
