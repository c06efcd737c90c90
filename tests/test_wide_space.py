"""The wider space of issue 28: learning rates, sets of adapted layers and LoRA variants in
grids, TPE spaces, trial params, keys and packs (search.study.space, pack planning)."""

from __future__ import annotations

import optuna
import pytest

from objectives.packed_model import pack_groups
from objectives.spec import TARGET_SETS, LoraParams, TrainSpec
from search.study.space import (
    GridSpace,
    SearchedSpace,
    SpaceError,
    TpeSearch,
    TpeSpace,
    params_of,
    point_key,
    point_of,
    space_disagreements,
)
from search.study.study_spec import parse_spec
from search.study.tpe_search import settle_search
from search.worker.trial_run import suggest_point

WIDE = dict(ranks=[4, 2], alphas=[8], lrs=[1e-3, 1e-4, 1e-3], target_sets=["all", "qkv"],
            scalings=["rslora", "lora"])


def test_a_wide_grid_is_the_product_of_every_list_sorted_and_unique():
    grid = GridSpace.from_values(**WIDE)
    assert grid.lrs == (1e-4, 1e-3)
    assert grid.target_sets == ("qkv", "all")  # the order of TARGET_SETS
    assert grid.scalings == ("lora", "rslora")
    points = grid.points()
    assert len(points) == grid.size == 2 * 1 * 1 * 2 * 2 * 2
    assert len({point_key(p) for p in points}) == len(points)
    assert LoraParams(2, 8.0, 0.1, scaling="rslora", lr=1e-3, targets=TARGET_SETS["all"]) \
        in points


def test_a_grid_without_the_new_lists_stores_and_keys_what_it_always_did():
    grid = GridSpace.from_values(ranks=[2, 4], alphas=[2], dropouts=[0.1])
    assert grid.to_dict() == {"ranks": [2, 4], "alphas": [2.0], "dropouts": [0.1]}
    assert [point_key(p) for p in grid.points()] == [(2, 2.0, 0.1), (4, 2.0, 0.1)]
    assert [params_of(p) for p in grid.points()][0] == {"rank": 2, "alpha": 2.0,
                                                        "dropout": 0.1}
    assert GridSpace.from_values(**grid.to_dict()) == grid


def test_points_equal_to_the_spec_are_the_points_an_older_grid_queued():
    spec = TrainSpec(lr=1e-3, targets="q,k,v")
    grid = GridSpace.from_values(ranks=[2], alphas=[2], lrs=[1e-3, 1e-4],
                                 target_sets=["qkv", "all"])
    keys = {point_key(p) for p in grid.points(spec)}
    assert (2, 2.0, 0.1) in keys  # the spec's lr and layers: the old point itself
    assert (2, 2.0, 0.1, ("lr", 1e-4), ("targets", "all")) in keys


def test_params_round_trip_to_the_same_point_and_key():
    for point in GridSpace.from_values(scalings=["lora", "rslora", "dora"],
                                       **{k: v for k, v in WIDE.items()
                                          if k != "scalings"}).points():
        assert point_of(params_of(point)) == point
        assert point_key(point_of(params_of(point))) == point_key(point)
    dora = point_of({"rank": 2, "alpha": 2.0, "dropout": 0.0, "scaling": "dora"})
    assert dora.dora and dora.scaling == "lora"


@pytest.mark.parametrize("kwargs, message", [
    ({"lrs": [0]}, "learning rate must be a number > 0"),
    ({"lrs": ["fast"]}, "learning rate must be a number > 0"),
    ({"target_sets": ["mlp"]}, "unknown set of adapted layers 'mlp'"),
    ({"scalings": ["pissa"]}, "unknown LoRA variant 'pissa'"),
    ({"scalings": []}, "scalings must be a non-empty list"),
])
def test_bad_new_values_are_rejected_in_one_line(kwargs, message):
    with pytest.raises(SpaceError, match=message) as error:
        GridSpace.from_values(**kwargs)
    assert "\n" not in str(error.value)


def test_a_spec_grid_and_optuna_table_take_the_new_keys():
    spec = parse_spec({"grid": {"ranks": [2], "alphas": [2], "lrs": [1e-4, 3e-4],
                                "target_sets": ["qkv", "all"], "scalings": ["lora", "rslora"]},
                       "optuna": {"lr_range": [1e-5, 1e-3], "target_sets": ["qkv", "all"],
                                  "scalings": ["lora", "rslora"]},
                       "train": {"model": "vit_tiny_patch16_224"}}, "spec.toml", "s")
    assert spec.grid.size == 8
    assert spec.tpe.space.lr_range == (1e-5, 1e-3)
    assert TpeSearch.from_dict(spec.tpe.to_dict()) == spec.tpe
    assert space_disagreements(spec.grid, spec.tpe.space) == []


def test_a_tpe_space_must_cover_the_grids_new_values_where_it_searches_them():
    grid = GridSpace.from_values(lrs=[1e-2], target_sets=["attn"], scalings=["rslora"])
    problems = space_disagreements(grid, TpeSpace.from_values(
        lr_range=[1e-5, 1e-3], target_sets=["qkv", "all"], scalings=["lora", "dora"]))
    assert len(problems) == 3, problems
    assert any("grid lrs 0.01 outside the TPE range" in p for p in problems)
    # Where TPE does not search a param its sampled trials take the spec's: no conflict.
    assert space_disagreements(grid, TpeSpace.from_values()) == []


def test_a_stored_search_refuses_a_new_setting_it_did_not_have(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s")
    from search.study.study_record import StudyRecord
    StudyRecord(study).store_tpe_search(TpeSearch())
    asked = TpeSearch.from_dict({"lr_range": [1e-5, 1e-3]})
    from search.study.study_error import StudyError
    with pytest.raises(StudyError, match=r"lr_range: None \(stored\) vs \[1e-05, 0.001\]"):
        settle_search(study, asked, {"lr_range"})


def test_a_trial_registers_a_queued_points_params_and_a_sampled_trials_draws():
    study = optuna.create_study()
    grid = GridSpace.from_values(ranks=[2], alphas=[4], lrs=[1e-3], target_sets=["all"],
                                 scalings=["rslora"])
    (point,) = grid.points()
    study.enqueue_trial(params_of(point))
    trial = study.ask()
    space = SearchedSpace.of(grid, TpeSpace.from_values(lr_range=[1e-4, 1e-2],
                                                        scalings=["lora", "rslora"]))
    assert suggest_point(trial, space.bounds(point)) == point
    assert set(trial.params) == {"rank", "alpha", "dropout", "lr", "targets", "scaling"}
    sampled = study.ask()
    drawn = suggest_point(sampled, space.bounds(None))
    assert set(sampled.params) == {"rank", "alpha", "dropout", "lr", "scaling"}
    assert 1e-4 <= drawn.lr <= 1e-2 and drawn.targets is None


def test_packs_split_where_members_cannot_share_a_backbone():
    split = TrainSpec(targets="q,k,v")
    members = [None, LoraParams(2, 2, 0.1), LoraParams(4, 4, 0.1, dora=True),
               LoraParams(8, 8, 0.1, targets=TARGET_SETS["all"], lr=1e-4, scaling="rslora")]
    assert pack_groups(split, members) == [[0, 1, 3], [2]]
    fused = TrainSpec(targets="qkv")  # timm's fused layer: not with members that split it
    assert pack_groups(fused, [None, LoraParams(2, 2, 0.1),
                               LoraParams(2, 2, 0.1, targets="q,v")]) == [[0, 1], [2]]


def test_the_pack_probe_adapts_the_widest_searched_set():
    space = SearchedSpace.of(GridSpace.from_values(target_sets=["qv", "all"]), None)
    assert space.widest_targets == TARGET_SETS["all"]
    assert SearchedSpace.of(GridSpace.from_values(), None).widest_targets is None
