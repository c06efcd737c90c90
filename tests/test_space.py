"""The grid space and its validation."""

from __future__ import annotations

import pytest

from objectives.spec import LoraParams
from search.study.space import GridSpace, SpaceError, params_of, point_key, point_of


def test_grid_is_the_cartesian_product_sorted_and_unique():
    grid = GridSpace.from_values(ranks=[8, 2, 4, 2], alphas=[4, 2], dropouts=[0.1])
    assert grid.ranks == (2, 4, 8) and grid.alphas == (2.0, 4.0)
    points = grid.points()
    assert len(points) == 6
    assert points[0] == LoraParams(2, 2.0, 0.1) and points[-1] == LoraParams(8, 4.0, 0.1)


@pytest.mark.parametrize("kwargs, message", [
    ({"ranks": [0]}, "rank must be a positive integer"),
    ({"ranks": [2.5]}, "rank must be a positive integer"),
    ({"ranks": [True]}, "rank must be a positive integer"),
    ({"alphas": [0]}, "alpha must be a number > 0"),
    ({"alphas": [float("inf")]}, "alpha must be a number > 0"),
    ({"dropouts": [-0.1]}, "dropout must be a number in [0, 1)"),
    ({"dropouts": [1]}, "dropout must be a number in [0, 1)"),
    ({"ranks": []}, "ranks must be a non-empty list"),
])
def test_bad_values_are_rejected(kwargs, message):
    with pytest.raises(SpaceError, match=message.replace("[", r"\[").replace(")", r"\)")):
        GridSpace.from_values(**kwargs)


def test_point_keys_survive_a_round_trip_through_params():
    point = LoraParams(4, 8.0, 0.1)
    stored = {k: float(v) if k != "rank" else v for k, v in params_of(point).items()}
    assert point_key(point_of(stored)) == point_key(LoraParams(4, 8, 0.1 + 1e-12))
