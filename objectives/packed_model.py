"""K trials on one frozen backbone: a pack's model.

Members share everything but their LoRA parameters (same model, data, optimiser, seed): one
copy of the frozen backbone runs on all members' activations stacked along the batch (K x B
images), so each frozen matmul is K times larger instead of K times more numerous. Each
adapted Linear gets a `PackedLoraLinear`: every member's low-rank update stacked,
[K, r_max, in] and [K, out, r_max], ranks padded to the pack's largest with zero rows and
columns (their gradients are zero, so AdamW keeps them exactly zero), its own scaling
(`LoraParams.scale`: alpha / r, or alpha / sqrt(r) for rsLoRA) and dropout probability,
applied with two batched matmuls. The head becomes `PackedHead`, one Linear per member as one
batched matmul. A baseline member (no LoRA) has scaling 0 and zero adapters: its activations
are the frozen backbone's, its head trains as alone.

Each member starts as it would alone: the backbone and head come from `create_backbone` after
`torch.manual_seed(spec.seed)` (as `build_baseline_model` / `build_lora_model` build them), its
`lora_A` from `adapter_seeding.lora_a_init(spec.seed, ...)`, its dropout masks from the same
stream (`adapter_seeding`). `member_weights` / `load_member_weights` read and write a member in
the solo model's `trainable_state_dict` format (peft's key names), so checkpoints, exports and
artifacts are the same whether a trial ran alone or packed.

What cannot be packed runs alone (`pack_refusal` says why): normalisation with batch
statistics (one member's images would change another's), stochastic frozen layers (their draws
would differ from a member's solo run), convolution targets, an MLP head, torch.compile, and
a DoRA point (`point_pack_refusal`).
"""

from __future__ import annotations

import torch
from torch import nn

from objectives.adapter_seeding import dropout_draw, lora_a_init
from objectives.model import adapted_layers, create_backbone, head_name
from objectives.spec import LoraParams, TrainSpec


class PackedLoraLinear(nn.Module):
    """A frozen Linear plus K members' LoRA updates; input and output [K * B, ..., features],
    member k's rows at [k * B, (k + 1) * B)."""

    def __init__(self, base: nn.Linear, members: list[LoraParams | None],
                 a_inits: list[torch.Tensor | None]) -> None:
        super().__init__()
        self.base = base
        rank = max((member.rank for member in members if member is not None), default=1)
        count, factory = len(members), {"device": base.weight.device, "dtype": base.weight.dtype}
        a = torch.zeros(count, rank, base.in_features, **factory)
        for k, init in enumerate(a_inits):
            if init is not None:
                a[k, :init.shape[0]] = init
        self.lora_A = nn.Parameter(a)
        self.lora_B = nn.Parameter(torch.zeros(count, base.out_features, rank, **factory))
        self.register_buffer("scaling", torch.tensor(
            [m.scale if m is not None else 0.0 for m in members], **factory))
        self.register_buffer("dropout", torch.tensor(
            [m.dropout if m is not None else 0.0 for m in members], **factory))
        self.generator: torch.Generator | None = None  # the pack's dropout stream
        # Whether any member has dropout, as a Python bool: reading the `dropout` buffer
        # instead would make every layer wait for the GPU.
        self.draws = any(m is not None and m.dropout > 0 for m in members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)
        count = self.lora_A.shape[0]
        stacked = x.reshape(count, -1, x.shape[-1])  # [K, B * T, in]
        if self.training and self.draws:
            # One draw for all members, the one each would make alone (`SeededDropout`).
            draw = dropout_draw(stacked.shape[1:], self.generator, x.device)
            p = self.dropout.view(-1, 1, 1)
            stacked = stacked * (draw >= p) / (1 - p)
        update = torch.bmm(torch.bmm(stacked, self.lora_A.transpose(1, 2)),
                           self.lora_B.transpose(1, 2)) * self.scaling.view(-1, 1, 1)
        return (result + update.reshape(result.shape)).to(result.dtype)


class PackedHead(nn.Module):
    """K copies of a Linear head, each trained by its own member: [K * B, in] -> [K * B, out]."""

    def __init__(self, head: nn.Linear, count: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(head.weight.detach().unsqueeze(0).repeat(count, 1, 1))
        self.bias = nn.Parameter(head.bias.detach().unsqueeze(0).repeat(count, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        count = self.weight.shape[0]
        stacked = x.reshape(count, -1, x.shape[-1])
        out = torch.baddbmm(self.bias.unsqueeze(1).to(stacked.dtype), stacked,
                            self.weight.transpose(1, 2).to(stacked.dtype))
        return out.reshape(-1, out.shape[-1])


def point_pack_refusal(lora: LoraParams | None) -> str | None:
    """Why a trial of point `lora` cannot share a pack whatever its spec, or None."""
    if lora is not None and lora.dora:
        # DoRA scales each output feature of W + s B A by a trained magnitude over that row's
        # norm: not a low-rank term added to the frozen layer's output, which is all that
        # `PackedLoraLinear` stacks.
        return "a DoRA point trains alone (its update is not an added low-rank term)"
    return None


def pack_refusal(spec: TrainSpec, num_classes: int, lora: LoraParams | None = None
                 ) -> str | None:
    """Why trials of `spec` (of point `lora`, when given) cannot share a pack, or None when
    they can (the model is built on the meta device: nothing is loaded)."""
    point = point_pack_refusal(lora)
    if point is not None:
        return point
    if spec.compile:
        return "packing does not compile (compile = true)"
    if spec.head_hidden:
        return "an MLP head (head_hidden) is not packed"
    with torch.device("meta"):
        model = create_backbone(spec, num_classes, pretrained=False)
    for name, module in model.named_modules():
        if getattr(module, "track_running_stats", False) or any(
                key.startswith("running_") for key, _ in module.named_buffers(recurse=False)):
            return (f"'{spec.model}' normalises with batch statistics ({name}: "
                    f"{type(module).__name__}): one member's images would change another's")
        if (isinstance(module, nn.Dropout) and module.p > 0) or (
                getattr(module, "drop_prob", 0) or 0) > 0:
            return f"'{spec.model}' has a stochastic frozen layer ({name}: {type(module).__name__})"
    if not isinstance(model.get_submodule(head_name(model)), nn.Linear):
        return f"the head of '{spec.model}' is not a Linear layer"
    for layers in adapted_layers(spec, num_classes).values():
        for path, layer in layers.items():
            if not isinstance(layer, nn.Linear):
                return f"LoRA target {path} is a {type(layer).__name__}; only Linear ones pack"
    return None


def target_paths(spec: TrainSpec, num_classes: int, model: nn.Module) -> list[str]:
    """The adapted layers' paths in `model`'s module order (the order peft's layers have)."""
    paths = {path for layers in adapted_layers(spec, num_classes).values() for path in layers}
    return [name for name, _ in model.named_modules() if name in paths]


class PackedModel(nn.Module):
    """The pack's network: `backbone` (frozen, adapted layers swapped for `PackedLoraLinear`,
    head for `PackedHead`) run on each batch repeated once per member."""

    def __init__(self, spec: TrainSpec, num_classes: int, members: list[LoraParams | None]
                 ) -> None:
        super().__init__()
        for member in members:
            if (why := point_pack_refusal(member)) is not None:
                raise ValueError(f"{member} cannot be packed: {why}")
        torch.manual_seed(spec.seed)  # the backbone's and head's start, as alone
        backbone = create_backbone(spec, num_classes)
        backbone.requires_grad_(False)
        self.members = list(members)
        self.head = head_name(backbone)
        self.paths = target_paths(spec, num_classes, backbone) if any(members) else []
        inits: list[list[torch.Tensor | None]] = [[None] * len(self.paths) for _ in members]
        for k, member in enumerate(members):
            if member is not None:
                shapes = [(member.rank, backbone.get_submodule(path).in_features)
                          for path in self.paths]
                inits[k] = lora_a_init(spec.seed, shapes)
        for i, path in enumerate(self.paths):
            backbone.set_submodule(path, PackedLoraLinear(
                backbone.get_submodule(path), members, [init[i] for init in inits]))
        backbone.set_submodule(self.head, PackedHead(backbone.get_submodule(self.head),
                                                     len(members)))
        self.backbone = backbone

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def has_lora(self) -> bool:
        return any(member is not None for member in self.members)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B, ...] images -> [K, B, classes] logits, one slice per member."""
        logits = self.backbone(images.repeat(self.size, *([1] * (images.dim() - 1))))
        return logits.view(self.size, len(images), -1)

    def adapters(self) -> list[PackedLoraLinear]:
        return [self.backbone.get_submodule(path) for path in self.paths]

    def head_module(self) -> PackedHead:
        return self.backbone.get_submodule(self.head)

    def trained_parameters(self) -> list[nn.Parameter]:
        """Every member-stacked parameter (dimension 0 is the member), in a fixed order."""
        params = [p for layer in self.adapters() for p in (layer.lora_A, layer.lora_B)]
        head = self.head_module()
        return params + [head.weight, head.bias]

    def use_dropout_generator(self, generator: torch.Generator) -> None:
        for layer in self.adapters():
            layer.generator = generator

    def member_slices(self, k: int) -> list[tuple[str, nn.Parameter, tuple]]:
        """Member k's trained tensors as (solo key, packed parameter, index), in the order
        the solo model's trainable parameters (and so its optimizer's) have."""
        member = self.members[k]
        head = self.head_module()
        if member is None:
            return [(f"{self.head}.weight", head.weight, (k,)),
                    (f"{self.head}.bias", head.bias, (k,))]
        rank, slices = member.rank, []
        for path, layer in zip(self.paths, self.adapters(), strict=True):
            prefix = f"base_model.model.{path}"
            slices.append((f"{prefix}.lora_A.default.weight", layer.lora_A,
                           (k, slice(0, rank))))
            slices.append((f"{prefix}.lora_B.default.weight", layer.lora_B,
                           (k, slice(None), slice(0, rank))))
        prefix = f"base_model.model.{self.head}.modules_to_save.default"
        return slices + [(f"{prefix}.weight", head.weight, (k,)),
                         (f"{prefix}.bias", head.bias, (k,))]

    def member_weights(self, k: int) -> dict[str, torch.Tensor]:
        """Member k's weights as its solo model's `trainable_state_dict` (CPU copies)."""
        return {key: param.detach()[index].to("cpu", copy=True).contiguous()
                for key, param, index in self.member_slices(k)}

    @torch.no_grad()
    def load_member_weights(self, k: int, weights: dict[str, torch.Tensor]) -> list[str]:
        """Put a solo-format state of member k in place; what keeps it from fitting."""
        slices = self.member_slices(k)
        known = {key for key, _, _ in slices}
        problems = [f"{key} unknown to the model" for key in weights if key not in known]
        problems += [f"{key} missing" for key in sorted(known - set(weights))]
        for key, param, index in slices:
            if key in weights and param[index].shape != weights[key].shape:
                problems.append(f"{key} of shape {list(weights[key].shape)}, not "
                                f"{list(param[index].shape)}")
        if not problems:
            for key, param, index in slices:
                param[index] = weights[key].to(param.device, param.dtype)
        return problems

    @torch.no_grad()
    def keep_members(self, keep: list[int]) -> None:
        """Drop every member not in `keep` (positions of the current pack): their slices of
        every stacked parameter and buffer go; new Parameters replace the old ones."""
        index = torch.tensor(keep, device=self.head_module().weight.device)
        for layer in self.adapters():
            layer.lora_A = nn.Parameter(layer.lora_A.index_select(0, index))
            layer.lora_B = nn.Parameter(layer.lora_B.index_select(0, index))
            layer.scaling = layer.scaling.index_select(0, index)
            layer.dropout = layer.dropout.index_select(0, index)
            layer.draws = any(self.members[k] is not None and self.members[k].dropout > 0
                              for k in keep)
        head = self.head_module()
        head.weight = nn.Parameter(head.weight.index_select(0, index))
        head.bias = nn.Parameter(head.bias.index_select(0, index))
        self.members = [self.members[k] for k in keep]
