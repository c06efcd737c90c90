"""The LoRA search space: the points of a grid over ranks, alphas and dropouts (and, when
asked, learning rates, sets of adapted layers and LoRA variants), and the space and settings
of a TPE search. Plain validated values; Optuna is not needed here.

Points are compared by `point_key`, which rounds the floats so that 0.1 typed on a command
line and 0.1 read back from the database are the same point.

A point's learning rate, adapted layers and variant are trial params only when they are not
the spec's (`params_of`): a study made before they could be searched, and a grid that does
not search them, hold exactly the params and keys they always held, and a grid point whose
learning rate or layers equal the spec's is the point such a study already holds
(`GridSpace.points` drops them).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from objectives.spec import TARGET_SETS, LoraParams, TrainSpec
from objectives.user_error import UserError

BASELINE_KEY = ("baseline",)

# LoRA variants a search chooses from, each as (LoraParams.scaling, LoraParams.dora): LoRA's
# alpha / r (the model card), rsLoRA's alpha / sqrt(r), and DoRA (alpha / r, magnitudes
# trained apart; it trains alone, `objectives.packed_model.point_pack_refusal`).
VARIANTS = {"lora": ("lora", False), "rslora": ("rslora", False), "dora": ("lora", True)}
# A target set's name by its targets: how a point's layers are stored as a trial param.
TARGET_SET_NAMES = {targets: name for name, targets in TARGET_SETS.items()}
EXTRA_PARAMS = ("lr", "targets", "scaling")  # a point's params beside rank, alpha, dropout


class SpaceError(UserError):
    """A rank, alpha or dropout outside what LoRA accepts; one line for the user."""


def check_rank(value: Any) -> int:
    """A rank as LoRA takes one (typed, or read from a study); whether the model's layers can
    use it is `objectives.model.check_rank_fits_model`'s to say."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SpaceError(f"rank must be a positive integer, got {value!r}")
    return value


def positive_number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
            or not math.isfinite(value):
        raise SpaceError(f"{what} must be a number > 0, got {value!r}")
    return float(value)


def check_alpha(value: Any) -> float:
    return positive_number(value, "alpha")


def check_dropout(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise SpaceError(f"dropout must be a number in [0, 1), got {value!r}")
    return float(value)


def check_lr(value: Any) -> float:
    return positive_number(value, "learning rate")


def check_target_set(value: Any) -> str:
    if value not in TARGET_SETS:
        known = ", ".join(f"{name} ({targets})" for name, targets in TARGET_SETS.items())
        raise SpaceError(f"unknown set of adapted layers {value!r}; known: {known}")
    return value


def check_variant(value: Any) -> str:
    if value not in VARIANTS:
        raise SpaceError(f"unknown LoRA variant {value!r}; known: {', '.join(VARIANTS)}")
    return value


def variant_of(point: LoraParams) -> str:
    """The point's name in `VARIANTS`."""
    for name, (scaling, dora) in VARIANTS.items():
        if (point.scaling, point.dora) == (scaling, dora):
            return name
    raise SpaceError(f"no search variant is {point.scaling} scaling with DoRA")


def same_targets(targets: str, other: str) -> bool:
    return [t.strip() for t in targets.split(",")] == [t.strip() for t in other.split(",")]


def sorted_names(values: Any, check, order) -> tuple[str, ...]:
    """Unique names, checked, in the order of `order` (the order the help lists them)."""
    chosen = {check(value) for value in values}
    return tuple(name for name in order if name in chosen)


def listed(name: str, values: Any, empty_ok: bool = False) -> Any:
    if not isinstance(values, (list, tuple)) or (not values and not empty_ok):
        raise SpaceError(f"{name} must be a{'' if empty_ok else ' non-empty'} list, "
                         f"got {values!r}")
    return values


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
    lrs: tuple[float, ...] = field(default=(), metadata={
        "help": "learning rates, numbers > 0; empty: the spec's lr"})
    target_sets: tuple[str, ...] = field(default=(), metadata={
        "help": "named sets of adapted layers of a timm ViT: " + ", ".join(
            f"{name} ({targets})" for name, targets in TARGET_SETS.items())
            + "; empty: the spec's targets"})
    scalings: tuple[str, ...] = field(default=("lora",), metadata={
        "help": "LoRA variants: lora (update scaled by alpha / r), rslora (alpha / sqrt(r)), "
                "dora (DoRA, alpha / r; trains alone, never in a pack)"})

    @classmethod
    def from_values(cls, ranks: Any = (2, 4, 8), alphas: Any = (2, 4, 8),
                    dropouts: Any = (0.1,), lrs: Any = (), target_sets: Any = (),
                    scalings: Any = ("lora",)) -> GridSpace:
        return cls(ranks=tuple(sorted({check_rank(r) for r in listed("ranks", ranks)})),
                   alphas=tuple(sorted({check_alpha(a) for a in listed("alphas", alphas)})),
                   dropouts=tuple(sorted({check_dropout(d)
                                          for d in listed("dropouts", dropouts)})),
                   lrs=tuple(sorted({check_lr(lr) for lr in listed("lrs", lrs, True)})),
                   target_sets=sorted_names(listed("target_sets", target_sets, True),
                                            check_target_set, TARGET_SETS),
                   scalings=sorted_names(listed("scalings", scalings), check_variant,
                                         VARIANTS))

    def to_dict(self) -> dict[str, list]:
        """The grid as stored in a study; the keys a grid had before learning rates, target
        sets and variants could be searched, and those only when they are searched."""
        values = {"ranks": list(self.ranks), "alphas": list(self.alphas),
                  "dropouts": list(self.dropouts)}
        if self.lrs:
            values["lrs"] = list(self.lrs)
        if self.target_sets:
            values["target_sets"] = list(self.target_sets)
        if self.scalings != ("lora",):
            values["scalings"] = list(self.scalings)
        return values

    def searches(self, param: str) -> bool:
        """Whether the grid gives `param` (one of `EXTRA_PARAMS`) values of its own."""
        return {"lr": bool(self.lrs), "targets": bool(self.target_sets),
                "scaling": self.scalings != ("lora",)}[param]

    @property
    def size(self) -> int:
        return (len(self.ranks) * len(self.alphas) * len(self.dropouts) * max(1, len(self.lrs))
                * max(1, len(self.target_sets)) * len(self.scalings))

    def points(self, spec: TrainSpec | None = None) -> list[LoraParams]:
        """Every point of the grid. A learning rate or set of layers equal to `spec`'s is
        left unset (None: the spec's), so that such a point is the one a grid without
        learning rates or target sets queued."""
        lrs = self.lrs or (None,)
        sets = self.target_sets or (None,)
        points = []
        for r, a, d, lr, name, variant in itertools.product(
                self.ranks, self.alphas, self.dropouts, lrs, sets, self.scalings):
            targets = TARGET_SETS[name] if name is not None else None
            if spec is not None:
                lr = None if lr == spec.lr else lr
                targets = None if targets and same_targets(targets, spec.targets) else targets
            scaling, dora = VARIANTS[variant]
            points.append(LoraParams(rank=r, alpha=a, dropout=d, scaling=scaling, dora=dora,
                                     lr=lr, targets=targets))
        return points

    def union(self, other: GridSpace) -> GridSpace:
        """The grid over the values of both: what a study that queued both has searched."""
        return GridSpace.from_values(ranks=(*self.ranks, *other.ranks),
                                     alphas=(*self.alphas, *other.alphas),
                                     dropouts=(*self.dropouts, *other.dropouts),
                                     lrs=(*self.lrs, *other.lrs),
                                     target_sets=(*self.target_sets, *other.target_sets),
                                     scalings=(*self.scalings, *other.scalings))


def point_key(point: LoraParams) -> tuple:
    """What tells two points apart: rank, alpha and dropout, then (name, value) for each
    param that is not the spec's (absent: the key a study without them always had)."""
    extras = tuple((name, value) for name, value in params_of(point).items()
                   if name in EXTRA_PARAMS)
    return (point.rank, round(point.alpha, 6), round(point.dropout, 6),
            *((name, round(value, 12) if isinstance(value, float) else value)
              for name, value in extras))


def params_of(point: LoraParams) -> dict[str, float | int | str]:
    """The point as Optuna trial params: rank, alpha, dropout, and `lr`, `targets` (a
    `TARGET_SETS` name) and `scaling` (a `VARIANTS` name) where they are not the spec's or
    plain LoRA's."""
    params: dict[str, float | int | str] = {"rank": point.rank, "alpha": point.alpha,
                                            "dropout": point.dropout}
    if point.lr is not None:
        params["lr"] = point.lr
    if point.targets is not None:
        params["targets"] = target_set_name(point.targets)
    if variant_of(point) != "lora":
        params["scaling"] = variant_of(point)
    return params


def target_set_name(targets: str) -> str:
    for name, listed_targets in TARGET_SETS.items():
        if same_targets(targets, listed_targets):
            return name
    raise SpaceError(f"layers {targets!r} are not a named set ({', '.join(TARGET_SETS)})")


def point_of(params: dict[str, Any]) -> LoraParams:
    """The point of a trial's params (`params_of`'s inverse)."""
    scaling, dora = VARIANTS[params.get("scaling", "lora")]
    lr = params.get("lr")
    targets = params.get("targets")
    return LoraParams(rank=int(params["rank"]), alpha=float(params["alpha"]),
                      dropout=float(params["dropout"]), scaling=scaling, dora=dora,
                      lr=float(lr) if lr is not None else None,
                      targets=TARGET_SETS[targets] if targets is not None else None)


@dataclass(frozen=True)
class TpeSpace:
    """What TPE samples from: ranks and alphas from finite sets (as the model card), dropout
    from a closed interval; when asked, the learning rate from a log-scale interval and the
    adapted layers and LoRA variant from sets (not asked: the spec's, plain LoRA)."""

    ranks: tuple[int, ...] = field(default=(2, 4, 8), metadata={
        "help": "LoRA ranks TPE chooses from"})
    alphas: tuple[float, ...] = field(default=(2.0, 4.0, 8.0), metadata={
        "help": "LoRA alphas TPE chooses from"})
    dropout_range: tuple[float, float] = field(default=(0.05, 0.30), metadata={
        "help": "[low, high]: the interval TPE draws dropout from, 0 <= low < high < 1"})
    lr_range: tuple[float, float] | None = field(default=None, metadata={
        "help": "[low, high]: the interval TPE draws the learning rate from, on a log scale; "
                "not set: the spec's lr"})
    target_sets: tuple[str, ...] = field(default=(), metadata={
        "help": "named sets of adapted layers TPE chooses from (as [grid] target_sets); "
                "empty: the spec's targets"})
    scalings: tuple[str, ...] = field(default=("lora",), metadata={
        "help": "LoRA variants TPE chooses from: lora, rslora, dora (as [grid] scalings)"})

    @classmethod
    def from_values(cls, ranks: Any = (2, 4, 8), alphas: Any = (2, 4, 8),
                    dropout_range: Any = (0.05, 0.30), lr_range: Any = None,
                    target_sets: Any = (), scalings: Any = ("lora",)) -> TpeSpace:
        grid = GridSpace.from_values(ranks=ranks, alphas=alphas, target_sets=target_sets,
                                     scalings=scalings)
        low, high = interval("dropout range", dropout_range, check_dropout)
        lrs = interval("lr range", lr_range, check_lr) if lr_range is not None else None
        return cls(ranks=grid.ranks, alphas=grid.alphas, dropout_range=(low, high),
                   lr_range=lrs, target_sets=grid.target_sets, scalings=grid.scalings)

    def searches(self, param: str) -> bool:
        """Whether TPE draws `param` (one of `EXTRA_PARAMS`); if not, a sampled trial takes
        the spec's value (plain LoRA for the scaling) and registers no such param."""
        return {"lr": self.lr_range is not None, "targets": bool(self.target_sets),
                "scaling": self.scalings != ("lora",)}[param]

    def to_dict(self) -> dict[str, list]:
        values = {"ranks": list(self.ranks), "alphas": list(self.alphas),
                  "dropout_range": list(self.dropout_range)}
        if self.lr_range is not None:
            values["lr_range"] = list(self.lr_range)
        if self.target_sets:
            values["target_sets"] = list(self.target_sets)
        if self.scalings != ("lora",):
            values["scalings"] = list(self.scalings)
        return values


def interval(name: str, values: Any, check) -> tuple[float, float]:
    if not isinstance(values, (list, tuple)) or len(values) != 2:
        raise SpaceError(f"{name} must be two numbers LO HI, got {values!r}")
    low, high = (check(value) for value in values)
    if not low < high:
        raise SpaceError(f"{name} must have LO < HI, got {low:g} {high:g}")
    return low, high


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
        space_keys = ("ranks", "alphas", "dropout_range", "lr_range", "target_sets", "scalings")
        unknown = set(values) - {"trials", "seed", "pruner", "startup_trials", *space_keys}
        if unknown:
            raise SpaceError(f"unknown key(s) {sorted(unknown)}")
        space = TpeSpace.from_values(**{key: values.pop(key) for key in space_keys
                                        if key in values})
        return cls(space=space, **values)


@dataclass(frozen=True)
class SearchedSpace:
    """Every value of each LoRA param a study has searched: its grid's and its TPE space's
    (a range by its ends). A trial registers its params with the bounds of these (`bounds`),
    so grid points and sampled trials share one history; the study stores only the grid and
    the TPE search, and this is derived from them (`StudyRecord.searched_space`).
    """

    ranks: tuple[int, ...] = ()
    alphas: tuple[float, ...] = ()
    dropouts: tuple[float, ...] = ()
    lrs: tuple[float, ...] = ()
    target_sets: tuple[str, ...] = ()
    tpe: TpeSpace | None = None  # what a sampled trial draws

    @classmethod
    def of(cls, grid: GridSpace | None, tpe: TpeSpace | None) -> SearchedSpace:
        space = cls()
        if grid is not None:
            space = cls(grid.ranks, grid.alphas, grid.dropouts, grid.lrs, grid.target_sets)
        if tpe is not None:
            space = cls((*space.ranks, *tpe.ranks), (*space.alphas, *tpe.alphas),
                        (*space.dropouts, *tpe.dropout_range),
                        (*space.lrs, *(tpe.lr_range or ())),
                        (*space.target_sets, *tpe.target_sets), tpe)
        return space

    def bounds(self, queued: LoraParams | None) -> dict[str, tuple]:
        """What each param of a trial is registered with: (low, high) of rank, alpha and
        dropout over the searched values and `queued` (a fixed point the space need not
        hold: one queued by hand, or by another version), and of the learning rate (log
        scale) where the trial has one; the choices of `targets` and `scaling` (always all
        of them: Optuna forbids a categorical param's choices to change within a study) where
        it has them. A queued point has the params `params_of` gives it; a sampled trial
        those its TPE space `searches`."""
        values = {"rank": [*self.ranks], "alpha": [*self.alphas], "dropout": [*self.dropouts]}
        if queued is not None:
            values["rank"].append(queued.rank)
            values["alpha"].append(queued.alpha)
            values["dropout"].append(queued.dropout)
        bounds: dict[str, tuple] = {name: (min(v), max(v)) for name, v in values.items()}
        if queued is not None:
            extras = set(params_of(queued)) & set(EXTRA_PARAMS)
        else:
            extras = {name for name in EXTRA_PARAMS if self.tpe and self.tpe.searches(name)}
        if "lr" in extras:
            lrs = [*self.lrs, *([queued.lr] if queued is not None else [])]
            bounds["lr"] = (min(lrs), max(lrs))
        if "targets" in extras:
            bounds["targets"] = tuple(TARGET_SETS)
        if "scaling" in extras:
            bounds["scaling"] = tuple(VARIANTS)
        return bounds

    @property
    def largest_rank(self) -> int | None:
        return max(self.ranks, default=None)

    @property
    def widest_targets(self) -> str | None:
        """The searched set of layers with the most names (None: only the spec's): what a
        pack's memory probe adapts, so that it measures the largest members."""
        if not self.target_sets:
            return None
        return max((TARGET_SETS[name] for name in self.target_sets),
                   key=lambda targets: len(targets.split(",")))


def space_disagreements(grid: GridSpace | None, tpe: TpeSpace) -> list[str]:
    """Why a grid (as recorded in a study) and a TPE space cannot share one study: TPE learns
    from every finished trial, so it must know each rank and alpha the grid uses (and each
    target set and variant, where it chooses them), and the grid's dropouts (and learning
    rates, where it draws them) must lie in its ranges."""
    def listed_values(values) -> str:
        return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)

    if grid is None:
        return []
    problems = []
    chosen = [("ranks", tpe.ranks), ("alphas", tpe.alphas)]
    if tpe.searches("targets"):
        chosen.append(("target_sets", tpe.target_sets))
    if tpe.searches("scaling"):
        chosen.append(("scalings", tpe.scalings))
    for name, tpe_values in chosen:
        extra = [v for v in getattr(grid, name) if v not in tpe_values]
        if extra:
            problems.append(f"grid {name} {listed_values(extra)} not among the TPE {name} "
                            f"{listed_values(tpe_values)}")
    ranges = [("dropouts", grid.dropouts, tpe.dropout_range)]
    if tpe.lr_range is not None:
        ranges.append(("lrs", grid.lrs, tpe.lr_range))
    for name, values, (low, high) in ranges:
        outside = [v for v in values if not low <= v <= high]
        if outside:
            problems.append(f"grid {name} {listed_values(outside)} outside the TPE range "
                            f"{low:g}..{high:g}")
    return problems
