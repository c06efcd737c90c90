"""One trial on the CPU: seeded repeatability, learning, frozen parts, reported epochs."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from objectives.checkpoint import CheckpointError, read_training_state, training_state_bytes
from objectives.data import load_splits
from objectives.spec import AugmentSpec, LoraParams, TrainSpec
from objectives.train import compile_full_batches, run_trial
from search.study.study_spec import load_spec

ROOT = Path(__file__).resolve().parent.parent

# A ViT small enough that a trial takes a few seconds, on scikit-learn's bundled digits.
TINY = TrainSpec(
    model="vit_tiny_patch16_224", pretrained=False,
    model_kwargs={"img_size": 16, "patch_size": 4, "embed_dim": 48, "depth": 2, "num_heads": 3},
    dataset="digits", image_size=16, epochs=3, batch_size=64, lr=3e-3, device="cpu",
    augment=AugmentSpec(hflip=0.0, crop_padding=2, color_jitter=(0.2, 0.2, 0.0, 0.0),
                        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
)
LORA = LoraParams(rank=4, alpha=8, dropout=0.1)


@pytest.fixture(scope="module")
def digits():
    return load_splits(TINY)


def comparable(result) -> dict:
    summary = result.summary()
    for timing in ("train_seconds", "images_per_second"):
        summary.pop(timing)
    return {**summary, "epochs": [(e.train_loss, e.val_loss, e.val_acc) for e in result.epochs]}


def test_same_spec_and_params_give_the_same_numbers(digits):
    first = run_trial(TINY, LORA, digits)
    second = run_trial(TINY, LORA, digits)
    assert comparable(first) == comparable(second)
    for name, tensor in first.weights.items():
        torch.testing.assert_close(tensor, second.weights[name], rtol=0, atol=0)


def test_another_seed_gives_other_numbers(digits):
    first = run_trial(TINY, LORA, digits)
    other = run_trial(replace(TINY, seed=1), LORA, digits)
    assert comparable(first)["epochs"] != comparable(other)["epochs"]


def test_a_lora_trial_on_the_demo_backbone_learns_and_reports_every_epoch(digits):
    demo = replace(load_spec(ROOT / "studies" / "demo.toml").train, epochs=3, device="cpu")
    seen = []
    result = run_trial(demo, LORA, on_epoch=seen.append)
    assert [e.epoch for e in seen] == [1, 2, 3]
    assert seen[-1].train_loss < seen[0].train_loss
    assert result.val_acc == seen[-1].val_acc
    # Which images it got right: what pairs two trials' accuracies (search.results.verdict).
    assert result.val_correct.dtype == torch.bool
    assert result.val_correct.float().mean().item() == pytest.approx(result.val_acc)
    assert result.test_correct.float().mean().item() == pytest.approx(result.test.accuracy)
    assert len(result.test_correct) == len(result.test_labels)
    # Ten balanced classes: chance is 0.1; the MNIST-pretrained backbone adapts to the digits.
    assert result.test.accuracy > 0.8
    assert result.confusion.sum() == len(digits.test_labels)
    assert any(".lora_A." in name for name in result.weights)
    assert any(".head." in name for name in result.weights)


def test_the_baseline_trains_only_the_head(digits):
    result = run_trial(replace(TINY, epochs=1), None, digits)
    assert result.weights and all("head" in name for name in result.weights)
    assert result.parameters.trainable == 48 * 10 + 10


def test_a_stopping_callback_ends_the_trial(digits):
    class Stop(Exception):
        pass

    def stop_after_first(stats):
        raise Stop(stats.epoch)

    with pytest.raises(Stop):
        run_trial(TINY, LORA, digits, on_epoch=stop_after_first)


@pytest.mark.parametrize("lora", [LORA, None], ids=["lora", "baseline"])
def test_a_trial_resumed_from_a_checkpoint_ends_exactly_as_an_uninterrupted_one(digits, lora):
    whole = run_trial(TINY, lora, digits)
    states = []
    run_trial(TINY, lora, digits, on_checkpoint=states.append)
    assert [s.epoch for s in states] == [1, 2, 3]  # the last too: a trial never told resumes
    # Through bytes, as the artifact store keeps it; a fresh model, optimizer and generators.
    saved = read_training_state(io.BytesIO(training_state_bytes(states[0])))
    assert states[1].history[0].val_correct is not None  # kept while training ...
    second = read_training_state(io.BytesIO(training_state_bytes(states[1])))
    assert second.history[0].val_correct is None  # ... only the last epoch's in a checkpoint
    assert torch.equal(second.history[1].val_correct, states[1].history[1].val_correct)
    seen = []
    resumed = run_trial(TINY, lora, digits, on_epoch=seen.append, resume=saved)
    assert [e.epoch for e in seen] == [2, 3]
    assert comparable(resumed) == comparable(whole)
    for name, tensor in whole.weights.items():
        torch.testing.assert_close(tensor, resumed.weights[name], rtol=0, atol=0)
    # After the last epoch: no epoch runs, and the result is the uninterrupted one's.
    final = read_training_state(io.BytesIO(training_state_bytes(states[2])))
    seen.clear()
    told = run_trial(TINY, lora, digits, on_epoch=seen.append, resume=final)
    assert seen == []
    assert comparable(told) == comparable(whole)
    assert torch.equal(told.val_correct, whole.val_correct)


def test_a_checkpoint_of_other_params_or_a_damaged_one_is_refused(digits):
    states = []
    run_trial(TINY, LORA, digits, on_checkpoint=states.append)
    other = LoraParams(rank=2, alpha=8, dropout=0.1)
    with pytest.raises(CheckpointError, match="not of"):
        run_trial(TINY, other, digits, resume=states[0])
    data = training_state_bytes(states[0])
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        read_training_state(io.BytesIO(data[: len(data) // 2]))


def test_a_compiled_trial_matches_the_eager_one(digits):
    """`compile = true` changes speed, not the trial: full batches run through the compiled
    graph (train and eval mode), the last, smaller batch eagerly, with the same numbers."""
    spec = replace(TINY, epochs=1, model_kwargs={**TINY.model_kwargs, "depth": 1},
                   eval_batch_size=64)
    eager = run_trial(spec, LORA, digits)
    compiled = run_trial(replace(spec, compile=True), LORA, digits)
    for ours, theirs in zip(compiled.epochs, eager.epochs, strict=True):
        assert ours.train_loss == pytest.approx(theirs.train_loss, rel=1e-4)
        assert ours.val_loss == pytest.approx(theirs.val_loss, rel=1e-4)
    assert compiled.test.accuracy == pytest.approx(eager.test.accuracy, abs=2 / len(
        digits.test_labels))


def test_compiled_forward_runs_full_batches_compiled_and_smaller_ones_eagerly():
    class Recorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 2)
            self.calls = []

        def forward(self, images):
            # True only inside the compiled graph (traced once, replayed on every call).
            self.calls.append((len(images), self.training, torch.compiler.is_compiling()))
            return self.linear(images)

    model = Recorder()
    forward = compile_full_batches(model, {8})
    for mode in (True, False):
        model.train(mode)
        for size in (8, 8, 3):
            forward(torch.randn(size, 4))
    assert model.calls == [(8, True, True), (8, True, True), (3, True, False),
                           (8, False, True), (8, False, True), (3, False, False)]
