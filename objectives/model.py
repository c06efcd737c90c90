"""The trial's network: a timm model, optionally with LoRA adapters from peft.

Two shapes of trial share one backbone builder:
- `build_baseline_model`: backbone frozen, only the classification head trains (the no-LoRA
  baseline of every study);
- `build_lora_model`: peft LoRA adapters on the attention projections plus a trainable head.

timm fuses q, k and v into one `qkv` Linear. The model card puts separate adapters on q, k and
v, which is not the same as one adapter on the fused layer (r=8: 259,684 trainable parameters
versus 185,956), so for targets "q,k,v" / "q,v" each block's `qkv` is replaced by `SplitQKV`,
three Linears sliced from the fused weight whose concatenated output is identical.
"""

from __future__ import annotations

from dataclasses import dataclass

import timm
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from objectives.spec import LoraParams, TrainSpec


class ModelError(ValueError):
    """A model that cannot be built; the message is one line for the user."""


class SplitQKV(nn.Module):
    """A fused qkv Linear as three Linears `q`, `k`, `v` with the same combined output."""

    def __init__(self, fused: nn.Linear):
        super().__init__()
        dim = fused.out_features // 3
        factory = {"device": fused.weight.device, "dtype": fused.weight.dtype}
        has_bias = fused.bias is not None
        self.q = nn.Linear(fused.in_features, dim, bias=has_bias, **factory)
        self.k = nn.Linear(fused.in_features, dim, bias=has_bias, **factory)
        self.v = nn.Linear(fused.in_features, dim, bias=has_bias, **factory)
        with torch.no_grad():
            for i, part in enumerate((self.q, self.k, self.v)):
                part.weight.copy_(fused.weight[i * dim:(i + 1) * dim])
                if has_bias:
                    part.bias.copy_(fused.bias[i * dim:(i + 1) * dim])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)


def split_qkv(model: nn.Module) -> int:
    """Replace every attention block's fused `qkv` Linear by a `SplitQKV`; returns how many."""
    replaced = 0
    for module in model.modules():
        fused = getattr(module, "qkv", None)
        if isinstance(fused, nn.Linear) and fused.out_features % 3 == 0:
            module.qkv = SplitQKV(fused)
            replaced += 1
    return replaced


def fuse_qkv_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Turn `...qkv.q.weight`, `...qkv.k.weight`, `...qkv.v.weight` back into timm's
    `...qkv.weight`, so a merged model loads into a plain `timm.create_model`."""
    fused: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        if prefix.endswith(".qkv.q"):
            base = prefix[: -len(".q")]
            parts = [state[f"{base}.{name}.{leaf}"] for name in ("q", "k", "v")]
            fused[f"{base}.{leaf}"] = torch.cat(parts, dim=0)
        elif not (prefix.endswith(".qkv.k") or prefix.endswith(".qkv.v")):
            fused[key] = value
    return fused


def head_name(model: nn.Module) -> str:
    return model.pretrained_cfg.get("classifier", "head")


def create_backbone(spec: TrainSpec, num_classes: int, pretrained: bool | None = None) -> nn.Module:
    """The timm model with a fresh `num_classes` head, q/k/v split when the targets ask for it.

    Weights come from `spec.weights` (a local file) when given, else from the hub when
    `spec.pretrained`; `pretrained=False` overrides both (used to count parameters offline).
    """
    if not timm.is_model(spec.model):
        raise ModelError(f"unknown timm model '{spec.model}' (see timm.list_models())")
    load = spec.pretrained if pretrained is None else pretrained
    kwargs = dict(spec.model_kwargs)
    if load and spec.weights:
        # custom_load off: timm's ViT configs point at .npz files with their own loader.
        kwargs["pretrained_cfg_overlay"] = {"file": spec.weights, "custom_load": False}
    try:
        model = timm.create_model(spec.model, pretrained=load, num_classes=num_classes, **kwargs)
    except (OSError, RuntimeError, ValueError) as error:
        source = spec.weights or "the model hub"
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelError(
            f"cannot build '{spec.model}' with weights from {source}: {reason}; "
            "pass --weights PATH to a local checkpoint, or pretrained = false") from None
    except TypeError as error:  # a model_kwargs entry the architecture does not take
        raise ModelError(f"cannot build '{spec.model}': {error}") from None
    if spec.targets != "qkv" and split_qkv(model) == 0:
        raise ModelError(f"'{spec.model}' has no fused qkv attention layers to split for "
                         f"targets {spec.targets}")
    return model


def build_baseline_model(spec: TrainSpec, num_classes: int, pretrained: bool | None = None
                         ) -> nn.Module:
    """Frozen backbone, trainable head: the no-LoRA baseline."""
    torch.manual_seed(spec.seed)
    model = create_backbone(spec, num_classes, pretrained)
    model.requires_grad_(False)
    model.get_submodule(head_name(model)).requires_grad_(True)
    return model


def lora_config(spec: TrainSpec, lora: LoraParams, head: str) -> LoraConfig:
    return LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=list(spec.target_modules), bias="none",
                      modules_to_save=[head])


def build_lora_model(spec: TrainSpec, num_classes: int, lora: LoraParams,
                     pretrained: bool | None = None) -> PeftModel:
    """LoRA adapters on the spec's targets plus a trainable head; the rest frozen."""
    torch.manual_seed(spec.seed)
    backbone = create_backbone(spec, num_classes, pretrained)
    try:
        return get_peft_model(backbone, lora_config(spec, lora, head_name(backbone)))
    except ValueError as error:
        raise ModelError(f"cannot put LoRA on {spec.targets} of '{spec.model}': {error}") from None


def build_model(spec: TrainSpec, num_classes: int, lora: LoraParams | None,
                pretrained: bool | None = None) -> nn.Module:
    if lora is None:
        return build_baseline_model(spec, num_classes, pretrained)
    return build_lora_model(spec, num_classes, lora, pretrained)


@dataclass(frozen=True)
class ParameterCount:
    trainable: int
    total: int

    @property
    def trainable_pct(self) -> float:
        return 100.0 * self.trainable / self.total


def count_parameters(model: nn.Module) -> ParameterCount:
    """Trainable and total parameters as a person would count them: peft's `modules_to_save`
    keeps a frozen copy of the original head (`original_module`) that is not part of the model
    being trained, so it is left out of the total."""
    trainable = total = 0
    for name, parameter in model.named_parameters():
        if ".original_module." in name:
            continue
        total += parameter.numel()
        trainable += parameter.numel() if parameter.requires_grad else 0
    return ParameterCount(trainable, total)


def planned_parameters(spec: TrainSpec, num_classes: int, lora: LoraParams | None
                       ) -> ParameterCount:
    """Parameter counts of a trial without downloading weights or allocating memory."""
    with torch.device("meta"):
        return count_parameters(build_model(spec, num_classes, lora, pretrained=False))


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights a trial trained (adapters and head), detached on the CPU."""
    return {name: parameter.detach().to("cpu", copy=True).contiguous()
            for name, parameter in model.named_parameters() if parameter.requires_grad}
