"""Replicates: one configuration (a baseline or a LoRA point) trained with several seeds.

A study trained with `seeds = N` holds every configuration N times: replicate 0 trains with the
study's seed (the trial a study without replicates holds), replicate i with seed + i. Seeds
change what training draws (the head's and adapters' initialisation, dropout masks, batch
order and augmentation), never the held-out splits: every replicate is scored on the same
validation and test images, so outcomes stay paired across trials and seeds.

Each replicate is an ordinary trial, its index in the `replicate` user attribute (absent:
0, as in studies made before replicates), part of the trial's key, so that queueing is
idempotent per (configuration, replicate) like a grid point. The study keeps its N
(`StudyRecord.seeds`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the command line reads MAX_SEEDS before it imports optuna
    from optuna.trial import FrozenTrial

    from objectives.spec import TrainSpec

ATTR = "replicate"
MAX_SEEDS = 20
# A race's equivalence margin, in percentage points (`search.results.race_rules.MAX_MARGIN`
# as a fraction): no one calls configurations 10 points apart equivalent.
MAX_MARGIN_PP = 10.0
AUTO = "auto"  # seeds = "auto": race (`search.results.race`)


def replicate_of(trial: FrozenTrial) -> int:
    return int(trial.user_attrs.get(ATTR) or 0)


def replicate_attrs(replicate: int) -> dict[str, int]:
    """User attributes that mark a queued trial as `replicate` (none for replicate 0)."""
    return {ATTR: replicate} if replicate else {}


def with_replicate(key: tuple, replicate: int) -> tuple:
    """A configuration's key extended by its replicate (replicate 0: the key itself, as a
    study without replicates keys its trials)."""
    return key if not replicate else (*key, ("replicate", replicate))


def replicate_train_spec(spec: TrainSpec, replicate: int) -> TrainSpec:
    """What replicate `replicate` of a configuration trains: `spec` with seed + replicate,
    on the splits of `spec`'s own seed."""
    if not replicate:
        return spec
    return dataclasses.replace(spec, seed=spec.seed + replicate, split_seed=spec.splits_seed)

