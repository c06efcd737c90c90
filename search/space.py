"""The LoRA search space: ranks, alphas and dropouts, and the points of a grid over them.

Points are compared by `point_key`, which rounds the dropout so that 0.1 typed on a command
line and 0.1 read back from the database are the same point.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

from objectives.spec import LoraParams

BASELINE_KEY = ("baseline",)


class SpaceError(ValueError):
    """A rank, alpha or dropout outside what LoRA accepts; one line for the user."""


def check_rank(value: Any) -> int:
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

    ranks: tuple[int, ...] = (2, 4, 8)
    alphas: tuple[float, ...] = (2.0, 4.0, 8.0)
    dropouts: tuple[float, ...] = (0.1,)

    @classmethod
    def from_values(cls, ranks: Any = (2, 4, 8), alphas: Any = (2, 4, 8),
                    dropouts: Any = (0.1,)) -> GridSpace:
        for name, values in (("ranks", ranks), ("alphas", alphas), ("dropouts", dropouts)):
            if not isinstance(values, (list, tuple)) or not values:
                raise SpaceError(f"{name} must be a non-empty list, got {values!r}")
        return cls(ranks=tuple(sorted({check_rank(r) for r in ranks})),
                   alphas=tuple(sorted({check_alpha(a) for a in alphas})),
                   dropouts=tuple(sorted({check_dropout(d) for d in dropouts})))

    def points(self) -> list[LoraParams]:
        return [LoraParams(rank=r, alpha=a, dropout=d)
                for r, a, d in itertools.product(self.ranks, self.alphas, self.dropouts)]


def point_key(point: LoraParams) -> tuple:
    return (point.rank, round(point.alpha, 6), round(point.dropout, 6))


def params_of(point: LoraParams) -> dict[str, float | int]:
    """The point as Optuna trial params."""
    return {"rank": point.rank, "alpha": point.alpha, "dropout": point.dropout}


def point_of(params: dict[str, Any]) -> LoraParams:
    return LoraParams(rank=int(params["rank"]), alpha=float(params["alpha"]),
                      dropout=float(params["dropout"]))
