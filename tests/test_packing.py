"""A packed member computes what the same trial computes alone (objectives.packed_train).

Each test compares `run_pack` with `run_trial` (the peft model, trained alone) on the CPU:
per-epoch losses and accuracies, test metrics and trained weights agree to 1e-4, for a pack
of mixed ranks, alphas and dropouts plus the baseline, with a member pruned mid-way and
members resumed from checkpoints written alone or in a pack.
"""

from __future__ import annotations

import io
from dataclasses import replace

import pytest
import torch
from test_train import TINY as TRAIN_TINY

from objectives.checkpoint import read_training_state, training_state_bytes
from objectives.data import load_splits
from objectives.model import build_model, trainable_state_dict
from objectives.packed_model import PackedModel, pack_refusal
from objectives.packed_train import PackError, PackMember, run_pack
from objectives.spec import AugmentSpec, LoraParams
from objectives.train import run_trial

# test_train's tiny ViT, with every augmentation that draws per sample switched on.
TINY = replace(TRAIN_TINY, augment=AugmentSpec(
    hflip=0.5, crop_padding=2, color_jitter=(0.2, 0.2, 0.1, 0.02), mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5)))
POINTS = [None, LoraParams(2, 2, 0.1), LoraParams(4, 8, 0.2), LoraParams(8, 4, 0.0)]
PRUNED = 2  # the member that leaves the pack after epoch 1
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def digits():
    return load_splits(TINY)


@pytest.fixture(scope="module")
def alone(digits):
    """Each point trained alone, with its checkpoint after epoch 1."""
    results, checkpoints = [], []
    for point in POINTS:
        saved = []
        results.append(run_trial(TINY, point, digits, on_checkpoint=saved.append))
        checkpoints.append(saved[0])
    return results, checkpoints


def assert_same_epochs(solo, packed) -> None:
    for one, other in zip(solo, packed, strict=True):
        assert one.epoch == other.epoch
        for name in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert getattr(other, name) == pytest.approx(getattr(one, name), abs=TOLERANCE), name


def assert_same_trial(solo, packed) -> None:
    assert_same_epochs(solo.epochs, packed.epochs)
    assert packed.parameters == solo.parameters
    for name in ("accuracy", "weighted_f1", "auc_micro", "auc_macro"):
        assert getattr(packed.test, name) == pytest.approx(getattr(solo.test, name),
                                                           abs=TOLERANCE), name
    assert torch.equal(packed.confusion, solo.confusion)
    torch.testing.assert_close(packed.test_probabilities, solo.test_probabilities,
                               rtol=0, atol=TOLERANCE)
    assert packed.weights.keys() == solo.weights.keys()
    for key, weight in solo.weights.items():
        torch.testing.assert_close(packed.weights[key], weight, rtol=0, atol=TOLERANCE)


def round_trip(state):
    """A checkpoint as another worker reads it back from the artifact store."""
    return read_training_state(io.BytesIO(training_state_bytes(state)))


def test_each_member_trains_as_alone_also_when_another_is_pruned(digits, alone):
    solo, _ = alone
    seen: list[tuple[int, int]] = []

    def on_epoch(k, stats):
        seen.append((k, stats.epoch))
        return not (k == PRUNED and stats.epoch == 1)

    packed = run_pack(TINY, [PackMember(point) for point in POINTS], digits, on_epoch=on_epoch)
    assert packed[PRUNED] is None
    assert (PRUNED, 2) not in seen and (PRUNED, 1) in seen
    assert all((k, 3) in seen for k in range(len(POINTS)) if k != PRUNED)
    for k in range(len(POINTS)):
        if k != PRUNED:
            assert_same_trial(solo[k], packed[k])


def test_the_pruned_members_epochs_are_its_solo_epochs(digits, alone):
    solo, _ = alone
    history = []

    def on_epoch(k, stats):
        if k == PRUNED:
            history.append(stats)
        return k != PRUNED

    run_pack(TINY, [PackMember(point) for point in POINTS], digits, on_epoch=on_epoch)
    assert_same_epochs(solo[PRUNED].epochs[:1], history)


def test_a_packed_checkpoint_resumes_alone_and_a_solo_one_in_a_pack(digits, alone):
    solo, solo_checkpoints = alone
    packed_checkpoints = {}
    run_pack(TINY, [PackMember(point) for point in POINTS], digits,
             on_checkpoint=lambda k, state: packed_checkpoints.setdefault(k, round_trip(state)))
    for k, point in enumerate(POINTS):  # every member's checkpoint, alone
        resumed = run_trial(TINY, point, digits, resume=packed_checkpoints[k])
        assert_same_trial(solo[k], resumed)
    # Solo checkpoints of three points, resumed together in a pack of their own.
    members = [PackMember(POINTS[k], round_trip(solo_checkpoints[k])) for k in (0, 1, 3)]
    for k, result in zip((0, 1, 3), run_pack(TINY, members, digits), strict=True):
        assert result.epochs[0] == solo[k].epochs[0]  # the history came with the checkpoint
        assert_same_trial(solo[k], result)


def test_members_resuming_after_different_epochs_are_refused(digits, alone):
    _, checkpoints = alone
    with pytest.raises(PackError, match="same epoch"):
        run_pack(TINY, [PackMember(POINTS[1], checkpoints[1]), PackMember(POINTS[2])], digits)


def test_packed_weights_use_the_solo_models_names_in_its_order():
    packed = PackedModel(TINY, 10, POINTS)
    for k, point in enumerate(POINTS):
        solo = trainable_state_dict(build_model(TINY, 10, point))
        assert list(packed.member_weights(k)) == list(solo)
        for key, weight in solo.items():  # the same start, padding aside
            torch.testing.assert_close(packed.member_weights(k)[key], weight, rtol=0, atol=0)


def test_padded_ranks_stay_zero_and_a_baseline_member_has_no_update(digits):
    spec = replace(TINY, epochs=1)
    packed = PackedModel(spec, 10, [None, LoraParams(2, 4, 0.1), LoraParams(8, 8, 0.1)])
    images = torch.rand(4, 3, 16, 16)
    plain = build_model(spec, 10, None).eval()
    with torch.no_grad():
        # Before any training a member's update is B A x = 0: every member is the backbone.
        logits = packed.eval()(images)
        for k in range(3):
            torch.testing.assert_close(logits[k], plain(images), rtol=0, atol=1e-5)
    result = run_pack(spec, [PackMember(None), PackMember(LoraParams(2, 4, 0.1)),
                             PackMember(LoraParams(8, 8, 0.1))], digits)
    assert all(r is not None for r in result)
    # The rank-2 member's rows 2..8 of A and columns of B were zero padding throughout.
    assert all(weight.shape[0] == 2 for key, weight in result[1].weights.items()
               if "lora_A" in key)


@pytest.mark.parametrize("change, why", [
    ({"model": "resnet18", "targets": "conv2", "model_kwargs": {}, "image_size": 32},
     "batch statistics"),
    ({"head_hidden": 16}, "MLP head"),
    ({"compile": True}, "compile"),
    ({"model_kwargs": {**TINY.model_kwargs, "drop_path_rate": 0.1}}, "stochastic"),
])
def test_what_cannot_pack_is_said(change, why):
    assert why in pack_refusal(replace(TINY, **change), 10)


def test_a_vit_packs():
    assert pack_refusal(TINY, 10) is None
