"""Several models in one study: extra baselines, LoRA on a CNN's convolutions, bigger heads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from run_cli import board, search

from objectives.export_model import write_model_folder
from objectives.inference import load_exported_model
from objectives.model import ModelError, build_model, check_targets, planned_parameters
from objectives.spec import LoraParams, TrainSpec
from search.study.baselines import Baseline, BaselineError, parse_baselines
from search.study.study_spec import SpecError, parse_spec

RESNET = TrainSpec(model="resnet18", pretrained=False, targets="conv2", dataset="digits",
                   image_size=32, epochs=1, batch_size=64, device="cpu")
# resnet18's eight BasicBlocks: conv2 is a 3x3 convolution from C to C channels, with C =
# 64, 64, 128, 128, 256, 256, 512, 512.
BLOCK_CHANNELS = [64, 64, 128, 128, 256, 256, 512, 512]


def test_lora_on_a_cnns_convolutions_counts_as_by_hand():
    rank, classes = 4, 10
    # LoRA on a k x k convolution: A is a k x k convolution C_in -> r (r·C_in·k² weights),
    # B a 1 x 1 convolution r -> C_out (C_out·r); no biases. The head: 512·10 + 10.
    adapters = sum(rank * c * 3 * 3 + c * rank for c in BLOCK_CHANNELS)
    head = 512 * classes + classes
    count = planned_parameters(RESNET, classes, LoraParams(rank, 8, 0.0))
    assert count.trainable == adapters + head == 81_930
    assert count.total == 11_181_642 + adapters
    # All three convolutions of each bottleneck / both of each basic block, and a Linear.
    both = planned_parameters(TrainSpec(**{**RESNET.__dict__, "targets": "conv1,conv2"}),
                              classes, LoraParams(rank, 8, 0.0))
    stem = rank * 3 * 7 * 7 + 64 * rank  # the 7 x 7 stem `conv1` matches too
    firsts = sum(rank * c_in * 9 + c_out * rank for c_in, c_out in
                 [(64, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256),
                  (256, 512), (512, 512)])
    assert both.trainable == adapters + head + stem + firsts


def test_a_bigger_head_counts_and_trains_alone():
    count = planned_parameters(TrainSpec(**{**RESNET.__dict__, "head_hidden": 64}), 10, None)
    assert count.trainable == 512 * 64 + 64 + 64 * 10 + 10
    model = build_model(TrainSpec(**{**RESNET.__dict__, "head_hidden": 64}), 10, None)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.0.weight", "fc.0.bias", "fc.2.weight", "fc.2.bias"}


@pytest.mark.parametrize("model, targets, message", [
    ("resnet18", "q,k,v", "no Linear or ungrouped Conv2d layer named 'q'"),
    ("efficientnet_b0", "conv_dw", "named 'conv_dw'"),  # depthwise: peft cannot merge it
    ("resnet18", "fc", "named 'fc'"),  # the head trains whole; it is no LoRA target
])
def test_targets_that_lora_cannot_use_are_named(model, targets, message):
    with pytest.raises(ModelError, match=message):
        check_targets(TrainSpec(model=model, pretrained=False, targets=targets), 10)
    check_targets(TrainSpec(model="efficientnet_b0", pretrained=False,
                            targets="conv_pw,conv_pwl"), 10)


@pytest.mark.parametrize("head_hidden", [0, 16])
def test_a_cnn_lora_export_predicts_as_the_trained_model(tmp_path, head_hidden):
    spec = TrainSpec(**{**RESNET.__dict__, "head_hidden": head_hidden})
    lora = LoraParams(4, 8, 0.0)
    model = build_model(spec, 10, lora)
    with torch.no_grad():  # trained-looking adapters: B starts at zero, which would hide bugs
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.05)
    model.eval()
    images = torch.rand(4, 3, 32, 32)
    expected = model(images)
    write_model_folder(model, lora, tmp_path / "export")
    merged = load_exported_model(tmp_path / "export", spec, 10, torch.device("cpu"))
    torch.testing.assert_close(merged(images), expected, rtol=1e-4, atol=1e-4)
    (tmp_path / "export" / "model.safetensors").unlink()
    adapter = load_exported_model(tmp_path / "export", spec, 10, torch.device("cpu"))
    torch.testing.assert_close(adapter(images), expected, rtol=1e-4, atol=1e-4)


def test_baseline_entries_parse_and_the_studys_own_comes_first():
    study = TrainSpec(model="vit_small_patch16_224")
    parsed = parse_baselines(["resnet50:head", {"model": "efficientnet_b0", "head_hidden": 384},
                              "vit_small_patch16_224:head"], study)
    assert parsed == (Baseline(), Baseline(model="resnet50"),
                      Baseline(model="efficientnet_b0", head_hidden=384))
    assert parse_baselines([], study) == (Baseline(),)
    assert parsed[1].train_overrides() == {"model": "resnet50", "model_kwargs": {},
                                           "weights": None, "head_hidden": 0}
    assert len({b.key() for b in parsed}) == 3


@pytest.mark.parametrize("values, message", [
    ("resnet50:head", "must be a list"),
    (["resnet50"], "write 'head' or 'MODEL:head'"),
    (["resnet50:lora"], "unknown method"),
    (["resnet5000:head"], "not a timm model"),
    ([{"model": "resnet50", "head": 3}], "unknown key"),
    ([{"model": "resnet50", "head_hidden": -1}], "head_hidden"),
    ([{"model": "resnet50", "weights": "nowhere.safetensors"}], "does not exist"),
    (["resnet50:head", {"model": "resnet50"}], "twice"),
])
def test_bad_baselines_are_refused_with_one_line(values, message):
    with pytest.raises(BaselineError, match=message):
        parse_baselines(values, TrainSpec())
    with pytest.raises(SpecError, match="study.baseline"):
        parse_spec({"study": {"baselines": values}, "train": {"dataset": "digits"}},
                   "spec.toml", "x")


SPEC = """
[study]
name = "cnn"
baselines = ["head", { model = "mobilenetv3_small_050", head_hidden = 16 }]

[grid]
ranks = [2]
alphas = [4]
dropouts = [0.0]

[train]
model = "resnet18"
pretrained = false
model_kwargs = { zero_init_last = false }
targets = "conv2"
dataset = "digits"
image_size = 32
epochs = 1
batch_size = 64
lr = 3e-3

[train.augment]
hflip = 0.0
crop_padding = 2
color_jitter = [0.2, 0.2, 0.0, 0.0]
"""


@pytest.fixture(scope="module")
def cnn_study(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cnn")
    (folder / "cnn.toml").write_text(SPEC)
    result = search("grid", "--spec", "cnn.toml", cwd=folder)
    (folder / "grid.stderr").write_text(result.stderr)
    return folder


def test_a_study_compares_models_marked_on_the_leaderboard(cnn_study):
    rows = {(row["model"], row["method"]): row for row in board(cnn_study, "cnn")}
    assert set(rows) == {("resnet18", "head"), ("mobilenetv3_small_050", "head"),
                         ("resnet18", "lora")}
    assert {row["state"] for row in rows.values()} == {"COMPLETE"}
    assert rows[("resnet18", "lora")]["trainable_params"] == sum(
        2 * c * 9 + c * 2 for c in BLOCK_CHANNELS) + 512 * 10 + 10
    mobile = rows[("mobilenetv3_small_050", "head")]
    assert mobile["baseline"] and mobile["trainable_params"] == 1024 * 16 + 16 + 16 * 10 + 10
    assert "queued 2 baselines and 1 grid point" in (cnn_study / "grid.stderr").read_text()
    # Running the command again queues nothing: each baseline is held once.
    again = search("grid", "--spec", "cnn.toml", cwd=cnn_study)
    assert "queued 0 baselines and 0 grid point(s); 3 already there" in again.stderr


def test_the_report_and_export_name_each_trials_model(cnn_study):
    search("report", "--study", "cnn", "--out", "report", cwd=cnn_study)
    table = (cnn_study / "report" / "report.csv").read_text()
    assert "mobilenetv3_small_050" in table and "resnet18" in table
    number = next(row["number"] for row in board(cnn_study, "cnn")
                  if row["model"] == "mobilenetv3_small_050")
    search("export", "--study", "cnn", "--trial", str(number), "--out", "mobile.json",
           "--weights", "mobile", cwd=cnn_study)
    document = json.loads((cnn_study / "mobile.json").read_text())
    assert (document["model"], document["method"]) == ("mobilenetv3_small_050", "head")
    assert document["spec"]["model"] == "mobilenetv3_small_050"
    assert document["spec"]["head_hidden"] == 16


def test_every_cnn_adapter_receives_gradient():
    # timm zero-initialises each residual block's last BatchNorm (`zero_init_last`), which
    # blocks the gradient to conv2 of a randomly initialised ResNet; pretrained ones are not.
    spec = TrainSpec(**{**RESNET.__dict__, "model_kwargs": {"zero_init_last": False}})
    model = build_model(spec, 10, LoraParams(4, 8, 0.0)).train()
    images, labels = torch.rand(8, 3, 32, 32), torch.randint(10, (8,))
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    adapters = {name: p.grad for name, p in model.named_parameters() if "lora_B" in name}
    assert len(adapters) == len(BLOCK_CHANNELS)
    assert all(grad is not None and grad.abs().sum() > 0 for grad in adapters.values())
