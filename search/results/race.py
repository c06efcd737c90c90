"""A study's race (`search grid --seeds auto`), replayed from what the study stores.

The race's rules are `search.results.race_rules`; this module reads their inputs from a
study: each configuration's validation outcomes seed by seed, its cost and whether it is a
baseline. Nothing about a race is stored but its settings (`StudyRecord.race`) and its
trials: any host replays the same decisions from the same trials.

Inputs, per configuration (`search.study.trials.configuration_key`) that holds a trial:

- its rows: the validation outcomes of its complete replicates 0, 1, ... up to the first
  replicate that is not complete (a seed is a row only with every seed before it: round k
  compares the first k seeds);
- its cost: the trainable parameters of its replicate 0 (0 until it completes);
- a configuration the study gave up on (a replicate failed on its last try,
  `gave_up_points`) leaves the race, and the closing lines say so: the race cannot wait for
  a seed that will never come, and its seeds so far are not a fair comparison at the
  survivors' depth.

Trials scored on other validation images (another split) take no part, as in the verdict.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from search.results.race_rules import RaceSettings, RaceState, replay
from search.results.verdict import VerdictCache
from search.study.names import quoted
from search.study.replicates import replicate_of
from search.study.study_error import StudyError
from search.study.study_record import StudyRecord
from search.study.trials import configuration_key, gave_up_points, is_baseline


@dataclass
class RaceInputs:
    """What `replay` takes, read from a study; `first` is each configuration's replicate-0
    trial (what its next seeds copy), `left` the configurations given up on."""

    outcomes: dict[Hashable, np.ndarray | None] = field(default_factory=dict)
    costs: dict[Hashable, int] = field(default_factory=dict)
    baselines: set[Hashable] = field(default_factory=set)
    first: dict[Hashable, FrozenTrial] = field(default_factory=dict)
    left: list[Hashable] = field(default_factory=list)


def race_settings(study: optuna.Study) -> RaceSettings | None:
    """The study's race settings; None for a study that does not race."""
    stored = StudyRecord(study).race
    if stored is None:
        return None
    try:
        return RaceSettings(**stored)
    except (TypeError, ValueError) as error:
        raise StudyError(f"study {quoted(study.study_name)} holds unusable race settings: "
                         f"{error}") from None


def race_inputs(study: optuna.Study, trials: Sequence[FrozenTrial],
                cache: VerdictCache) -> RaceInputs:
    inputs = RaceInputs()
    gave_up = {configuration_key(t) for t in gave_up_points(study, trials=trials)}
    by_key: dict[Hashable, dict[int, FrozenTrial]] = {}
    for trial in trials:
        key = configuration_key(trial)
        if key is None:
            continue
        seeds = by_key.setdefault(key, {})
        replicate = replicate_of(trial)
        # The complete one, where a replicate was tried more than once.
        if replicate not in seeds or trial.state == TrialState.COMPLETE:
            seeds[replicate] = trial
    orders: dict[Hashable, list[tuple[np.ndarray, str]]] = {}
    for key, seeds in by_key.items():
        if key in gave_up:
            inputs.left.append(key)
            continue
        rows = []
        for replicate in range(len(seeds)):
            trial = seeds.get(replicate)
            scored = cache.outcomes(trial, "val") if trial is not None \
                and trial.state == TrialState.COMPLETE else None
            if scored is None:
                break
            rows.append(scored)
        orders[key] = rows
        if 0 in seeds:
            inputs.first[key] = seeds[0]
            inputs.costs[key] = int(seeds[0].user_attrs.get("trainable_params") or 0)
        if is_baseline(next(iter(seeds.values()))):
            inputs.baselines.add(key)
    order = common_order(orders)
    for key, rows in orders.items():
        kept = []
        for row, row_order in rows:
            if row_order != order:
                break
            kept.append(row)
        inputs.outcomes[key] = np.stack(kept) if kept else None
    return inputs


def common_order(orders: dict[Hashable, list[tuple[np.ndarray, str]]]) -> str | None:
    """The validation images' order most rows were scored in (the verdict's rule)."""
    counts: dict[str, int] = {}
    for rows in orders.values():
        for _, order in rows:
            counts[order] = counts.get(order, 0) + 1
    return max(counts, key=lambda o: (counts[o], o)) if counts else None


def study_race(study: optuna.Study, trials: Sequence[FrozenTrial] | None = None,
               cache: VerdictCache | None = None) -> tuple[RaceState, RaceInputs] | None:
    """The study's race as its trials stand, and what it was replayed from; None for a
    study that does not race or holds no configuration yet."""
    settings = race_settings(study)
    if settings is None:
        return None
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    cache = cache or VerdictCache()
    inputs = race_inputs(study, trials, cache)
    if not inputs.outcomes:
        return None
    examples = next((rows.shape[1] for rows in inputs.outcomes.values() if rows is not None), 0)
    resampling = cache.resampling("val", examples) if examples else None
    state = replay(inputs.outcomes, inputs.costs, inputs.baselines, settings, resampling)
    return state, inputs


def raced_out(study: optuna.Study, trials: Sequence[FrozenTrial],
              cache: VerdictCache | None = None) -> set[Hashable]:
    """The LoRA configurations the study's race dropped (none without a race): the verdict
    keeps them out of its tied set (`search.results.verdict.assess`)."""
    return dropped_lora(study_race(study, trials, cache))


def dropped_lora(race: tuple[RaceState, RaceInputs] | None) -> set[Hashable]:
    """The LoRA configurations `race` (`study_race`'s) dropped; none without a race."""
    if race is None:
        return set()
    state, inputs = race
    return set(state.dropped_after) - inputs.baselines
