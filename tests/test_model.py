"""Models: the model card's exact trainable counts, the q/k/v split, and frozen parts."""

from __future__ import annotations

import pytest
import timm
import torch

from objectives.model import (
    build_baseline_model,
    build_lora_model,
    count_parameters,
    fuse_qkv_state_dict,
    planned_parameters,
    split_qkv,
)
from objectives.spec import LoraParams, TrainSpec

CARD = TrainSpec()  # vit_small_patch16_224, q,k,v


@pytest.mark.parametrize("rank, trainable", [(None, 38_500), (2, 93_796), (4, 149_092),
                                             (8, 259_684)])
def test_model_card_trainable_counts(rank, trainable):
    lora = LoraParams(rank, rank, 0.1) if rank else None
    count = planned_parameters(CARD, 100, lora)
    assert count.trainable == trainable
    if rank == 8:
        assert count.total == 21_925_348
        assert round(count.trainable_pct, 2) == 1.18


def test_fused_and_query_value_targets_count_differently_from_split():
    fused = planned_parameters(TrainSpec(targets="qkv"), 100, LoraParams(8, 8, 0.1))
    query_value = planned_parameters(TrainSpec(targets="q,v"), 100, LoraParams(8, 8, 0.1))
    # fused: 12 blocks x 8 x (384 + 1152); q,v: 12 x 2 x 8 x (384 + 384); both + the head
    assert fused.trainable == 12 * 8 * (384 + 1152) + 38_500
    assert query_value.trainable == 12 * 2 * 8 * (384 + 384) + 38_500


TINY = TrainSpec(model="vit_tiny_patch16_224", pretrained=False, image_size=32,
                 model_kwargs={"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2,
                               "num_heads": 3})


def test_split_qkv_keeps_outputs_and_fuses_back():
    torch.manual_seed(0)
    model = timm.create_model(TINY.model, num_classes=5, **TINY.model_kwargs).eval()
    x = torch.randn(3, 3, 32, 32)
    before = model(x)
    assert split_qkv(model) == 2
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    plain = timm.create_model(TINY.model, num_classes=5, **TINY.model_kwargs).eval()
    plain.load_state_dict(fuse_qkv_state_dict(model.state_dict()))
    torch.testing.assert_close(plain(x), before, rtol=0, atol=0)


def test_baseline_trains_only_the_head():
    model = build_baseline_model(TINY, 5)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias"}


def test_lora_trains_adapters_and_head_only_and_starts_as_the_backbone():
    lora = build_lora_model(TINY, 5, LoraParams(2, 4, 0.0)).eval()
    baseline = build_baseline_model(TINY, 5).eval()
    names = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert all("lora_" in n or "head" in n for n in names)
    assert any(".q.lora_A" in n for n in names) and any(".v.lora_B" in n for n in names)
    x = torch.randn(2, 3, 32, 32)
    # LoRA's B starts at zero and both models are built from the same seed.
    torch.testing.assert_close(lora(x), baseline(x))
    assert count_parameters(lora).trainable == 2 * 3 * 2 * (48 + 48) + 48 * 5 + 5


def test_attention_runs_through_sdpa_even_when_timm_was_told_otherwise(monkeypatch):
    import timm.layers.config

    monkeypatch.setattr(timm.layers.config, "_USE_FUSED_ATTN", 0)  # TIMM_FUSED_ATTN=0
    spec = TrainSpec(model="vit_tiny_patch16_224", pretrained=False, model_kwargs={
        "img_size": 16, "patch_size": 8, "embed_dim": 24, "depth": 2, "num_heads": 2})
    model = build_lora_model(spec, 3, LoraParams(2, 4, 0.0)).eval()
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counted(*args, **kwargs):
        calls.append(1)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)
    model(torch.rand(2, 3, 16, 16))
    assert len(calls) == 2  # one per block
