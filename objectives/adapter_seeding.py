"""Where a LoRA trial's randomness comes from: its adapters' initial weights and its dropout.

A trial trained alone (a peft model) and the same trial trained as a member of a pack
(`objectives.packed_model`) must compute the same thing. peft draws the initial `lora_A`
weights and nn.Dropout draws its masks from torch's global generator, whose stream depends on
everything else that drew from it (how many layers were built before, other members of a
pack). So both paths draw them here instead, from generators seeded by the trial's seed alone:

- `lora_a_init(seed, shapes)`: each adapted layer's `lora_A`, in the model's layer order, drawn
  as peft draws them (Kaiming uniform, a = sqrt(5)) from one CPU generator; `lora_B` starts at
  zero as in peft, so the update starts at zero;
- `SeededDropout`: the adapter-input dropout. In training with p > 0 it draws one uniform
  value per input element from the trial's dropout generator (on the device) at every call, so
  the stream, and a checkpoint's copy of it, is the same for every trial with dropout at the
  same step: a member with p = 0.1 and one with p = 0.3 of a pack share each draw and compare
  it with their own p, exactly as each would alone. With p = 0 nothing is drawn, as peft's
  nn.Identity draws nothing (a pack draws while any member has dropout).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

# The dropout generator's seed is the trial's seed plus this, so that its stream is not the
# batch generator's (seeded with the trial's seed itself).
DROPOUT_SEED_OFFSET = 1_000_003


def lora_a_init(seed: int, shapes: Iterable[tuple[int, ...]]) -> list[torch.Tensor]:
    """Initial `lora_A` weights of a trial's adapted layers, one per shape [rank, fan_in, ...]
    in the model's layer order, on the CPU: Kaiming uniform with a = sqrt(5), peft's default."""
    generator = torch.Generator().manual_seed(seed)
    weights = []
    for shape in shapes:
        weight = torch.empty(shape)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
        weights.append(weight)
    return weights


def dropout_generator(seed: int, device: torch.device) -> torch.Generator:
    """The trial's dropout generator on `device`."""
    return torch.Generator(device).manual_seed(seed + DROPOUT_SEED_OFFSET)


def dropout_draw(shape: torch.Size, generator: torch.Generator | None,
                 device: torch.device) -> torch.Tensor:
    """One uniform [0, 1) value per element of an adapter input: kept where >= p."""
    return torch.rand(shape, generator=generator, device=device)


class SeededDropout(nn.Module):
    """Dropout with probability `p` whose masks come from `generator` (set once the device is
    known, `use_dropout_generator`), drawn at every training call when p > 0."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = dropout_draw(x.shape, self.generator, x.device) >= self.p
        return x * keep / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def lora_layers_of(model: nn.Module) -> list[nn.Module]:
    """peft's LoRA layers of `model` in module order (the order the forward reaches them in a
    ViT: q, k, v of block 0, then block 1, ...)."""
    return [module for module in model.modules()
            if isinstance(getattr(module, "lora_A", None), nn.ModuleDict)]


def seed_peft_adapters(model: nn.Module, seed: int) -> None:
    """Give a freshly built peft model the trial's seeded `lora_A` weights and `SeededDropout`s
    in place of peft's (global-generator) ones."""
    layers = lora_layers_of(model)
    weights = lora_a_init(seed, [tuple(layer.lora_A["default"].weight.shape)
                                 for layer in layers])
    with torch.no_grad():
        for layer, weight in zip(layers, weights, strict=True):
            if layer.lora_A["default"].weight.device.type != "meta":
                layer.lora_A["default"].weight.copy_(weight)
            dropout = layer.lora_dropout["default"]
            layer.lora_dropout["default"] = SeededDropout(getattr(dropout, "p", 0.0))


def use_dropout_generator(model: nn.Module, generator: torch.Generator) -> None:
    """Point every `SeededDropout` of `model` at the trial's dropout generator."""
    for module in model.modules():
        if isinstance(module, SeededDropout):
            module.generator = generator
