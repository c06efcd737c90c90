"""The LoRA variants a point can name beyond rank, alpha and dropout (issue 28): named sets of
adapted layers, rsLoRA's scaling, a per-point learning rate, DoRA.

A pack that mixes rsLoRA members, members with their own learning rates and members adapting
other layers trains each as alone (to 1e-4 on the CPU, as tests/test_packing.py checks for
plain members), also with a member pruned and across checkpoints written alone and resumed in
a pack, or the reverse; a DoRA point builds, trains and runs alone.
"""

from __future__ import annotations

import io
import math
from dataclasses import replace

import pytest
import torch
from test_packing import TINY, assert_same_trial, round_trip

from objectives.checkpoint import read_training_state, training_state_bytes
from objectives.data import load_splits
from objectives.model import (
    adapted_layers,
    build_lora_model,
    build_model,
    count_parameters,
    trainable_state_dict,
)
from objectives.packed_model import PackedModel, pack_refusal
from objectives.packed_train import PackMember, run_pack
from objectives.spec import (
    TARGET_SETS,
    LoraParams,
    SpecError,
    TrainSpec,
    target_set,
    trial_lr,
)
from objectives.train import run_trial

SPEC = replace(TINY, epochs=2)  # lr 3e-3, targets q,k,v
# The baseline and an rsLoRA member of q, v at the spec's lr, members of every linear layer
# and of the attention's at lower rates of their own (the pack's optimiser runs at 3e-3 and
# scales their steps), and a plain member of the spec's targets: four sets of adapted layers,
# so four dropout streams.
POINTS = [None, LoraParams(2, 2, 0.1, scaling="rslora", targets="q,v"),
          LoraParams(4, 8, 0.2, lr=1e-3, targets=target_set("all")),
          LoraParams(8, 4, 0.1, scaling="rslora", lr=3e-4, targets=target_set("attn")),
          LoraParams(2, 4, 0.3)]
PRUNED = 2


def layer_paths(spec: TrainSpec) -> set[str]:
    return {path for layers in adapted_layers(spec, 10).values() for path in layers}


@pytest.mark.parametrize("name", sorted(TARGET_SETS))
def test_target_sets_adapt_only_the_blocks_linears(name):
    paths = layer_paths(replace(SPEC, targets=target_set(name)))
    per_block = {"qkv": {"q", "k", "v"}, "qv": {"q", "v"}, "attn": {"q", "k", "v", "proj"},
                 "all": {"q", "k", "v", "proj", "fc1", "fc2"}}[name]
    assert {path.rsplit(".", 1)[-1] for path in paths} == per_block
    assert all(path.startswith("blocks.") for path in paths)
    assert len(paths) == 2 * len(per_block)  # two blocks


def test_a_bare_proj_would_adapt_the_patch_embedding_too():
    # Why the sets say "attn.proj": timm's patch embedding is a Conv2d named proj.
    assert "patch_embed.proj" in layer_paths(replace(SPEC, targets="proj"))


def test_all_linear_layers_train_as_peft_adapts_them():
    model = build_lora_model(replace(SPEC, targets=target_set("all")), 10, LoraParams(2, 4, 0))
    adapted = {name.split(".lora_A")[0].removeprefix("base_model.model.")
               for name, _ in model.named_parameters() if ".lora_A." in name}
    assert adapted == layer_paths(replace(SPEC, targets=target_set("all")))


def test_an_unknown_target_set_names_the_known_ones():
    with pytest.raises(SpecError, match="unknown set of adapted layers 'mlp'.*attn"):
        target_set("mlp")


def test_points_stored_before_the_variants_read_as_the_same_trials():
    old = LoraParams(**{"rank": 8, "alpha": 16.0, "dropout": 0.1})
    assert old == LoraParams(8, 16.0, 0.1, scaling="lora", dora=False, lr=None, targets=None)
    assert old.scale == 2.0 and trial_lr(SPEC, old) == SPEC.lr == trial_lr(SPEC, None)
    with pytest.raises(SpecError, match="scaling must be one of lora, rslora"):
        LoraParams(8, 16.0, 0.1, scaling="rs")
    with pytest.raises(SpecError, match="lr must be > 0"):
        LoraParams(8, 16.0, 0.1, lr=0.0)


def test_rslora_scales_as_peft_alone_and_packed():
    point = LoraParams(4, 8, 0.0, scaling="rslora")
    solo = build_lora_model(SPEC, 10, point)
    scalings = {layer.scaling["default"] for layer in solo.modules()
                if isinstance(getattr(layer, "scaling", None), dict)}
    assert scalings == {8 / math.sqrt(4)} == {point.scale}
    packed = PackedModel(SPEC, 10, [None, point, LoraParams(4, 8, 0.0)])
    assert all(layer.scaling.tolist() == [0.0, pytest.approx(4.0), 2.0]
               for layer in packed.adapters())


@pytest.fixture(scope="module")
def digits():
    return load_splits(SPEC)


@pytest.fixture(scope="module")
def alone(digits):
    """Each point trained alone, with its checkpoint after epoch 1."""
    results, checkpoints = [], []
    for point in POINTS:
        saved = []
        results.append(run_trial(SPEC, point, digits, on_checkpoint=saved.append))
        checkpoints.append(round_trip(saved[0]))
    return results, checkpoints


def test_a_points_lr_is_the_trials_lr(digits, alone):
    solo, _ = alone
    other = run_trial(replace(SPEC, lr=1e-3), replace(POINTS[2], lr=None), digits)
    assert [replace(e, images_per_second=0) for e in other.epochs] == \
        [replace(e, images_per_second=0) for e in solo[2].epochs]
    for key, weight in solo[2].weights.items():
        torch.testing.assert_close(other.weights[key], weight, rtol=0, atol=0)


def test_a_pack_mixing_scalings_lrs_and_layers_trains_each_as_alone(digits, alone):
    solo, _ = alone
    packed = run_pack(SPEC, [PackMember(point) for point in POINTS], digits)
    for k in range(len(POINTS)):
        assert_same_trial(solo[k], packed[k])


def test_the_others_train_as_alone_when_one_is_pruned(digits, alone):
    solo, _ = alone
    packed = run_pack(SPEC, [PackMember(point) for point in POINTS], digits,
                      on_epoch=lambda k, stats: k != PRUNED)
    assert packed[PRUNED] is None
    for k in range(len(POINTS)):
        if k != PRUNED:
            assert_same_trial(solo[k], packed[k])


def test_a_member_of_other_layers_keeps_the_solo_models_names_and_start():
    packed = PackedModel(SPEC, 10, POINTS)
    for k, point in enumerate(POINTS):
        solo = trainable_state_dict(build_model(SPEC, 10, point))
        assert list(packed.member_weights(k)) == list(solo)
        for key, weight in solo.items():
            torch.testing.assert_close(packed.member_weights(k)[key], weight, rtol=0, atol=0)
    assert len(packed.paths) == 2 * 6 and packed.stream_count == 4


def test_the_fused_qkv_and_split_q_k_v_do_not_pack_together():
    members = [LoraParams(2, 2, 0.1, targets="qkv"), LoraParams(2, 2, 0.1)]
    with pytest.raises(ValueError, match="fused qkv"):
        PackedModel(SPEC, 10, members)


def test_their_checkpoints_resume_alone_from_a_pack_and_in_a_pack_from_alone(digits, alone):
    solo, checkpoints = alone
    packed_checkpoints = {}
    run_pack(SPEC, [PackMember(point) for point in POINTS], digits,
             on_checkpoint=lambda k, state: packed_checkpoints.setdefault(k, round_trip(state)))
    for k in (2, 3):  # members whose lr is not the pack optimiser's
        assert_same_trial(solo[k], run_trial(SPEC, POINTS[k], digits,
                                             resume=packed_checkpoints[k]))
    # The first member's schedule is at 3e-4: the pack's comes from it, at 3e-3.
    order = (3, 2, 1)
    members = [PackMember(POINTS[k], checkpoints[k]) for k in order]
    for k, result in zip(order, run_pack(SPEC, members, digits), strict=True):
        assert_same_trial(solo[k], result)


DORA = LoraParams(2, 4, 0.1, dora=True)


def test_a_dora_point_builds_trains_its_adapters_and_head_only_and_runs_alone(digits):
    model = build_lora_model(SPEC, 10, DORA)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in name or ".head." in name for name in trainable)
    assert sum("lora_magnitude_vector" in name for name in trainable) == 2 * 3  # q, k, v
    # The magnitude vector (one per output feature) trains beside A and B.
    plain = count_parameters(build_lora_model(SPEC, 10, replace(DORA, dora=False)))
    assert count_parameters(model).trainable == plain.trainable + 2 * 3 * 48
    saved = []
    result = run_trial(replace(SPEC, epochs=1), DORA, digits, on_checkpoint=saved.append)
    assert math.isfinite(result.epochs[0].train_loss)
    start = build_lora_model(SPEC, 10, DORA)
    moved = [key for key, weight in start.state_dict().items()
             if key in result.weights and not torch.equal(result.weights[key], weight)]
    assert any(".lora_B." in key for key in moved)
    state = read_training_state(io.BytesIO(training_state_bytes(saved[0])))
    assert state.lora == DORA
    assert "DoRA" in pack_refusal(SPEC, 10, DORA)
    assert pack_refusal(SPEC, 10, POINTS[3]) is None
    with pytest.raises(ValueError, match="DoRA"):
        PackedModel(SPEC, 10, [None, DORA])


@pytest.mark.parametrize("point", [LoraParams(4, 8, 0.1, scaling="rslora"), DORA],
                         ids=["rslora", "dora"])
def test_peft_merges_the_variants_into_the_weights_an_export_writes(point):
    # `objectives.export_model` writes `merge_and_unload()`'s weights: they must compute what
    # the trained adapters did.
    model = build_lora_model(SPEC, 10, point).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name or "lora_magnitude_vector" in name:
                param.add_(torch.randn_like(param) * 0.1)
    images = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        adapted = model(images)
        merged = model.merge_and_unload()(images)
        untrained = build_lora_model(SPEC, 10, point).eval()(images)
    assert (adapted - untrained).abs().max() > 1e-3  # the adapters do change the outputs
    torch.testing.assert_close(merged, adapted, rtol=0, atol=1e-5)
