"""The sampler and pruner a worker asks for a sampled trial's params and for pruning: built
from the TPE search stored in the study (`search.study.tpe_search`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.samplers import BaseSampler, TPESampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from search.study.open_study import open_study
from search.study.space import TpeSearch
from search.study.study_record import StudyRecord


class LoraSpaceSampler(BaseSampler):
    """Optuna's TPE (constant liar on) over the LoRA space, reseeded for every trial.

    Trials register rank as an int and alpha and dropout as floats, so grid points and sampled
    trials share one history (a categorical parameter's choices may not change within a study,
    and a wider grid changes them); this sampler has TPE draw rank and alpha from their sets,
    the learning rate from its log range, and targets and scaling from the sets the search
    chose (trials register them with every choice there is).
    Each trial's TPE is seeded from (seed, trial number): a suggestion depends only on the
    seed and the history, whichever worker asks, so parallel workers never draw the same
    random start and the same seed repeats the first suggestions.
    """

    def __init__(self, search: TpeSearch) -> None:
        self._search = search
        low, high = search.space.dropout_range
        space = search.space
        self._distributions: dict[str, BaseDistribution] = {
            "rank": CategoricalDistribution(space.ranks),
            "alpha": CategoricalDistribution(space.alphas),
            "dropout": FloatDistribution(low, high),
            # Registered with the study's whole range and every choice; drawn from TPE's own.
            "targets": CategoricalDistribution(space.target_sets or ("qkv",)),
            "scaling": CategoricalDistribution(space.scalings),
        }
        if space.lr_range is not None:
            self._distributions["lr"] = FloatDistribution(*space.lr_range, log=True)
        self._current: tuple[int, TPESampler] | None = None

    def _tpe(self, trial: FrozenTrial) -> TPESampler:
        if self._current is None or self._current[0] != trial.number:
            seed = int(np.random.SeedSequence([self._search.seed, trial.number])
                       .generate_state(1)[0])
            sampler = TPESampler(seed=seed, constant_liar=True,
                                 n_startup_trials=self._search.startup_trials)
            self._current = (trial.number, sampler)
        return self._current[1]

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial
                                    ) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        inner = self._distributions.get(param_name, param_distribution)
        return self._tpe(trial).sample_independent(study, trial, param_name, inner)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._tpe(trial).after_trial(study, trial, state, values)


def build_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    """`median` and `hyperband` never stop a trial before a third of its epochs."""
    warmup = max(1, math.ceil(epochs / 3))
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=warmup)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=warmup, max_resource=epochs)
    return optuna.pruners.NopPruner()


def searching_study(storage: optuna.storages.BaseStorage, study: optuna.Study,
                    epochs: int) -> optuna.Study:
    """`study` again, with the sampler and pruner its stored TPE search asks for (a grid-only
    study has every param fixed and prunes nothing)."""
    search = StudyRecord(study).tpe_search
    if search is None:
        return study
    return open_study(storage, study.study_name, sampler=LoraSpaceSampler(search),
                      pruner=build_pruner(search.pruner, epochs))
