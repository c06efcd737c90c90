"""Frozen means frozen: a CNN's BatchNorm statistics stay as built, so what a trial saved (its
trainable weights) rebuilds the model it evaluated, in an export and in a resumed trial."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file
from test_baselines import RESNET
from torch import nn

import objectives.train
from objectives.checkpoint import read_training_state, training_state_bytes
from objectives.data import ImageSplits, load_splits
from objectives.export_model import load_trained_model
from objectives.model import build_model
from objectives.spec import LoraParams
from objectives.train import predict, run_trial, train_mode

# A resnet18 cut down to one narrow BasicBlock per stage: a trial takes about a second.
CNN = replace(RESNET, epochs=2, batch_size=32, lr=3e-3, model_kwargs={
    "zero_init_last": False, "layers": [1, 1, 1, 1], "channels": (8, 16, 32, 64),
    "stem_width": 8})
LORA = LoraParams(rank=2, alpha=4, dropout=0.0)


@pytest.fixture(scope="module")
def few_digits() -> ImageSplits:
    full = load_splits(CNN)
    return ImageSplits(full.train_images[:128], full.train_labels[:128],
                       full.val_images[:64], full.val_labels[:64],
                       full.test_images[:64], full.test_labels[:64], full.classes)


def statistics(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: buffer.detach().clone() for name, buffer in model.named_buffers()
            if "running_" in name or "num_batches_tracked" in name}


def test_a_cnn_lora_trial_keeps_its_statistics_and_its_export_predicts_as_evaluated(
        few_digits, tmp_path, monkeypatch):
    built = []

    def recording_build_model(*args, **kwargs):
        built.append(build_model(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(objectives.train, "build_model", recording_build_model)
    result = run_trial(CNN, LORA, few_digits)
    initial = statistics(build_model(CNN, few_digits.num_classes, LORA))
    assert any("running_mean" in name for name in initial)
    after = statistics(built[0])
    assert after.keys() == initial.keys()
    for name, tensor in initial.items():
        torch.testing.assert_close(after[name], tensor, rtol=0, atol=0, msg=name)

    save_file(result.weights, str(tmp_path / "weights.safetensors"))
    loaded = load_trained_model(CNN, few_digits.num_classes, LORA,
                                tmp_path / "weights.safetensors")
    probabilities = predict(loaded, few_digits.test_images, CNN).softmax(dim=1)
    torch.testing.assert_close(probabilities, result.test_probabilities, rtol=0, atol=1e-5)


def test_a_resumed_cnn_trial_ends_exactly_as_an_uninterrupted_one(few_digits):
    whole = run_trial(CNN, LORA, few_digits)
    states = []
    run_trial(CNN, LORA, few_digits, on_checkpoint=states.append)
    assert [s.epoch for s in states] == [1, 2]  # after the last epoch too (told on retry)
    saved = read_training_state(io.BytesIO(training_state_bytes(states[0])))
    resumed = run_trial(CNN, LORA, few_digits, resume=saved)
    assert [e.epoch for e in resumed.epochs] == [1, 2]
    assert resumed.epochs[-1].val_loss == whole.epochs[-1].val_loss
    assert resumed.test.accuracy == whole.test.accuracy
    torch.testing.assert_close(resumed.test_probabilities, whole.test_probabilities,
                               rtol=0, atol=0)
    for name, tensor in whole.weights.items():
        torch.testing.assert_close(resumed.weights[name], tensor, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "baseline"])
def test_only_trainable_norm_layers_train(lora):
    backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5),
                             nn.InstanceNorm2d(4, track_running_stats=True))
    head = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(4))
    model = nn.Sequential(backbone, head)
    backbone.requires_grad_(False)
    train_mode(model, lora)
    assert not backbone[1].training and not backbone[3].training
    assert backbone[2].training is lora  # frozen dropout: only LoRA trials train in train mode
    assert head[1].training
