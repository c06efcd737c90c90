"""timm's fused `qkv` attention projection as three Linears `q`, `k`, `v`, so that peft can put
an adapter on each (see `objectives.model`).

This module imports torch and nothing else on purpose: the model card's quick start
(`search.results.model_card`) copies its source into the code a user runs without this
project, so the card rebuilds the split exactly as training did.
"""

import torch
from torch import nn


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
    for module in list(model.modules()):
        fused = getattr(module, "qkv", None)
        if isinstance(fused, nn.Linear) and fused.out_features % 3 == 0:
            module.qkv = SplitQKV(fused)
            replaced += 1
    return replaced
