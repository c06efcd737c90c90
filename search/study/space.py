"""The LoRA search space: the points of a grid over ranks, alphas and dropouts, and the space
and settings of a TPE search. Plain validated values; Optuna is not needed here.

Points are compared by `point_key`, which rounds the dropout so that 0.1 typed on a command
line and 0.1 read back from the database are the same point.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from objectives.spec import LoraParams
from objectives.user_error import UserError

BASELINE_KEY = ("baseline",)


class SpaceError(UserError):
    """A rank, alpha or dropout outside what LoRA accepts; one line for the user."""


def check_rank(value: Any) -> int:
    """A rank as LoRA takes one (typed, or read from a study); whether the model's layers can
    use it is `objectives.model.check_rank_fits_model`'s to say."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SpaceError(f"rank must be a positive integer, got {value!r}")
    return value


def check_alpha(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
            or not math.isfinite(value):
        raise SpaceError(f"alpha must be a number > 0, got {value!r}")
    return float(value)


def check_dropout(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise SpaceError(f"dropout must be a number in [0, 1), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class GridSpace:
    """A cartesian grid. Values are kept sorted and unique, so two grids that list the same
    values in another order are the same grid."""

    ranks: tuple[int, ...] = field(default=(2, 4, 8), metadata={
        "help": "LoRA ranks, positive integers"})
    alphas: tuple[float, ...] = field(default=(2.0, 4.0, 8.0), metadata={
        "help": "LoRA alphas, numbers > 0 (alpha / rank scales the adapter's update)"})
    dropouts: tuple[float, ...] = field(default=(0.1,), metadata={
        "help": "LoRA dropouts in [0, 1)"})

    @classmethod
    def from_values(cls, ranks: Any = (2, 4, 8), alphas: Any = (2, 4, 8),
                    dropouts: Any = (0.1,)) -> GridSpace:
        for name, values in (("ranks", ranks), ("alphas", alphas), ("dropouts", dropouts)):
            if not isinstance(values, (list, tuple)) or not values:
                raise SpaceError(f"{name} must be a non-empty list, got {values!r}")
        return cls(ranks=tuple(sorted({check_rank(r) for r in ranks})),
                   alphas=tuple(sorted({check_alpha(a) for a in alphas})),
                   dropouts=tuple(sorted({check_dropout(d) for d in dropouts})))

    def to_dict(self) -> dict[str, list]:
        return {"ranks": list(self.ranks), "alphas": list(self.alphas),
                "dropouts": list(self.dropouts)}

    def points(self) -> list[LoraParams]:
        return [LoraParams(rank=r, alpha=a, dropout=d)
                for r, a, d in itertools.product(self.ranks, self.alphas, self.dropouts)]

    def union(self, other: GridSpace) -> GridSpace:
        """The grid over the values of both: what a study that queued both has searched."""
        return GridSpace.from_values(ranks=(*self.ranks, *other.ranks),
                                     alphas=(*self.alphas, *other.alphas),
                                     dropouts=(*self.dropouts, *other.dropouts))


def point_key(point: LoraParams) -> tuple:
    return (point.rank, round(point.alpha, 6), round(point.dropout, 6))


def params_of(point: LoraParams) -> dict[str, float | int]:
    """The point as Optuna trial params."""
    return {"rank": point.rank, "alpha": point.alpha, "dropout": point.dropout}


def point_of(params: dict[str, Any]) -> LoraParams:
    return LoraParams(rank=int(params["rank"]), alpha=float(params["alpha"]),
                      dropout=float(params["dropout"]))


@dataclass(frozen=True)
class TpeSpace:
    """What TPE samples from: ranks and alphas from finite sets (as the model card), dropout
    from a closed interval."""

    ranks: tuple[int, ...] = field(default=(2, 4, 8), metadata={
        "help": "LoRA ranks TPE chooses from"})
    alphas: tuple[float, ...] = field(default=(2.0, 4.0, 8.0), metadata={
        "help": "LoRA alphas TPE chooses from"})
    dropout_range: tuple[float, float] = field(default=(0.05, 0.30), metadata={
        "help": "[low, high]: the interval TPE draws dropout from, 0 <= low < high < 1"})

    @classmethod
    def from_values(cls, ranks: Any = (2, 4, 8), alphas: Any = (2, 4, 8),
                    dropout_range: Any = (0.05, 0.30)) -> TpeSpace:
        grid = GridSpace.from_values(ranks=ranks, alphas=alphas)
        if not isinstance(dropout_range, (list, tuple)) or len(dropout_range) != 2:
            raise SpaceError(f"dropout range must be two numbers LO HI, got {dropout_range!r}")
        low, high = (check_dropout(value) for value in dropout_range)
        if not low < high:
            raise SpaceError(f"dropout range must have LO < HI, got {low:g} {high:g}")
        return cls(ranks=grid.ranks, alphas=grid.alphas, dropout_range=(low, high))

    def to_dict(self) -> dict[str, list]:
        return {"ranks": list(self.ranks), "alphas": list(self.alphas),
                "dropout_range": list(self.dropout_range)}


PRUNERS = ("median", "hyperband", "none")


@dataclass(frozen=True)
class TpeSearch:
    """A TPE search over the LoRA space: the model card's 10 trials, space and seed by default.

    `trials` counts the study's finished LoRA trials (complete or pruned), grid points
    included; `startup_trials` finished trials are needed before TPE stops sampling at random.
    """

    trials: int = field(default=10, metadata={
        "help": "finished LoRA trials (complete or pruned, grid points included) the study "
                "should hold, counted over all workers"})
    # Stored and written flat: its keys sit in [optuna] beside the others.
    space: TpeSpace = field(default_factory=TpeSpace, metadata={
        "help": "the space TPE samples from", "keys_inline": True})
    seed: int = field(default=0, metadata={
        "help": "sampler seed; the same seed repeats the same suggestions"})
    pruner: str = field(default="median", metadata={
        "help": "median (never before a third of the epochs), hyperband, or none (the model "
                "card)"})
    startup_trials: int = field(default=5, metadata={
        "help": "finished trials before TPE stops sampling at random"})

    def __post_init__(self) -> None:
        if isinstance(self.trials, bool) or not isinstance(self.trials, int) or self.trials < 1:
            raise SpaceError(f"trials must be an integer >= 1, got {self.trials!r}")
        if self.pruner not in PRUNERS:
            raise SpaceError(f"pruner must be one of {', '.join(PRUNERS)}, got {self.pruner!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise SpaceError(f"seed must be an integer >= 0, got {self.seed!r}")
        if isinstance(self.startup_trials, bool) or not isinstance(self.startup_trials, int) \
                or self.startup_trials < 0:
            raise SpaceError(f"startup_trials must be an integer >= 0, got "
                             f"{self.startup_trials!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"trials": self.trials, **self.space.to_dict(), "seed": self.seed,
                "pruner": self.pruner, "startup_trials": self.startup_trials}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TpeSearch:
        values = dict(values)
        unknown = set(values) - {"trials", "ranks", "alphas", "dropout_range", "seed", "pruner",
                                 "startup_trials"}
        if unknown:
            raise SpaceError(f"unknown key(s) {sorted(unknown)}")
        space = TpeSpace.from_values(**{key: values.pop(key) for key in
                                        ("ranks", "alphas", "dropout_range") if key in values})
        return cls(space=space, **values)


@dataclass(frozen=True)
class SearchedSpace:
    """Every value of each LoRA param a study has searched: its grid's and its TPE space's
    (the dropout range by its ends). A trial registers its params with the bounds of these
    (`bounds`), so grid points and sampled trials share one history; the study stores only
    the grid and the TPE search, and this is derived from them (`StudyRecord.searched_space`).
    """

    ranks: tuple[int, ...] = ()
    alphas: tuple[float, ...] = ()
    dropouts: tuple[float, ...] = ()

    @classmethod
    def of(cls, grid: GridSpace | None, tpe: TpeSpace | None) -> SearchedSpace:
        space = cls()
        if grid is not None:
            space = cls(grid.ranks, grid.alphas, grid.dropouts)
        if tpe is not None:
            space = cls((*space.ranks, *tpe.ranks), (*space.alphas, *tpe.alphas),
                        (*space.dropouts, *tpe.dropout_range))
        return space

    def bounds(self, queued: LoraParams | None) -> dict[str, tuple]:
        """(low, high) of each param over the searched values and `queued` (a fixed point
        the space need not hold: one queued by hand, or by another version)."""
        values = {"rank": [*self.ranks], "alpha": [*self.alphas], "dropout": [*self.dropouts]}
        if queued is not None:
            values["rank"].append(queued.rank)
            values["alpha"].append(queued.alpha)
            values["dropout"].append(queued.dropout)
        return {name: (min(v), max(v)) for name, v in values.items()}

    @property
    def largest_rank(self) -> int | None:
        return max(self.ranks, default=None)


def space_disagreements(grid: GridSpace | None, tpe: TpeSpace) -> list[str]:
    """Why a grid (as recorded in a study) and a TPE space cannot share one study: TPE learns
    from every finished trial, so it must know each rank and alpha the grid uses, and the
    grid's dropouts must lie in its range."""
    def listed(values) -> str:
        return " ".join(f"{v:g}" for v in values)

    if grid is None:
        return []
    problems = []
    for name, tpe_values in (("ranks", tpe.ranks), ("alphas", tpe.alphas)):
        extra = sorted(set(getattr(grid, name)) - set(tpe_values))
        if extra:
            problems.append(f"grid {name} {listed(extra)} not among the TPE {name} "
                            f"{listed(tpe_values)}")
    low, high = tpe.dropout_range
    outside = [d for d in grid.dropouts if not low <= d <= high]
    if outside:
        problems.append(f"grid dropouts {listed(outside)} outside the TPE range "
                        f"{low:g}..{high:g}")
    return problems
