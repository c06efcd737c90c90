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
are the frozen backbone's, its head trains as alone. Members may adapt different layers
(`LoraParams.targets`): a layer a member does not adapt holds a zero adapter of scaling 0 for
it, as the baseline's, and each set of adapted layers has its own dropout stream.

Each member starts as it would alone: the backbone and head come from `create_backbone` after
`torch.manual_seed(spec.seed)` (as `build_baseline_model` / `build_lora_model` build them), its
`lora_A` from `adapter_seeding.lora_a_init(spec.seed, ...)`, its dropout masks from the same
stream (`adapter_seeding`). `member_weights` / `load_member_weights` read and write a member in
the solo model's `trainable_state_dict` format (peft's key names), so checkpoints, exports and
artifacts are the same whether a trial ran alone or packed.

What cannot be packed runs alone (`pack_refusal` says why): normalisation with batch
statistics (one member's images would change another's), stochastic frozen layers (their draws
would differ from a member's solo run), convolution targets, an MLP head, torch.compile, and
a DoRA point (`point_pack_refusal`); members that adapt timm's fused qkv do not pack with
members that split it (`members_refusal`).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from objectives.adapter_seeding import dropout_draw, lora_a_init
from objectives.model import adapted_layers, create_backbone, head_name
from objectives.spec import LoraParams, TrainSpec, trial_spec


class PackedLoraLinear(nn.Module):
    """A frozen Linear plus K members' LoRA updates; input and output [K * B, ..., features],
    member k's rows at [k * B, (k + 1) * B). `members[k]` is None where member k has no
    adapter on this layer (the baseline, or a member whose targets leave it out): its A and B
    stay zero, its scaling is 0.

    Dropout: member k draws its masks from dropout stream `streams[k]` (`PackedModel`: one
    stream per set of adapted layers), which `use_dropout_generators` provides."""

    def __init__(self, base: nn.Linear, members: list[LoraParams | None],
                 a_inits: list[torch.Tensor | None], streams: list[int]) -> None:
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
        self.register_buffer("draw_index", torch.zeros(count, dtype=torch.long,
                                                       device=base.weight.device),
                             persistent=False)
        self.generators: list[torch.Generator | None] = [None]  # the pack's dropout streams
        self.keep_members(members, streams, list(range(count)), slices=False)

    @torch.no_grad()
    def keep_members(self, members: list[LoraParams | None], streams: list[int],
                     keep: list[int], slices: bool = True) -> None:
        """Keep the members at positions `keep` (`members`, `streams`: theirs, in that
        order); `slices`: drop the others' parameter and buffer slices too."""
        if slices:
            index = torch.tensor(keep, device=self.lora_A.device)
            self.lora_A = nn.Parameter(self.lora_A.index_select(0, index))
            self.lora_B = nn.Parameter(self.lora_B.index_select(0, index))
            self.scaling = self.scaling.index_select(0, index)
            self.dropout = self.dropout.index_select(0, index)
        self.members, self.streams = list(members), list(streams)
        # The streams this layer draws from, as Python values: reading the `dropout` buffer
        # instead would make every layer wait for the GPU.
        self.drawn = sorted({stream for member, stream in zip(members, streams, strict=True)
                             if member is not None and member.dropout > 0})
        position = {stream: i for i, stream in enumerate(self.drawn)}
        # Which of this layer's draws each member compares with its p (a member that draws
        # nothing here has p = 0 and keeps everything, whichever it gets).
        self.draw_index = torch.tensor([position.get(stream, 0) for stream in streams],
                                       device=self.lora_A.device)

    @property
    def draws(self) -> bool:
        return bool(self.drawn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)
        count = self.lora_A.shape[0]
        stacked = x.reshape(count, -1, x.shape[-1])  # [K, B * T, in]
        if self.training and self.draws:
            # One draw per stream, the one each of its members would make alone
            # (`SeededDropout`), shared by the members with the same adapted layers.
            shape = stacked.shape[1:]
            if len(self.drawn) == 1:
                draw = dropout_draw(shape, self.generators[self.drawn[0]], x.device)
            else:
                draw = torch.stack([dropout_draw(shape, self.generators[stream], x.device)
                                    for stream in self.drawn])[self.draw_index]
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
    spec = trial_spec(spec, lora)  # the point's targets, when it names some
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


def members_refusal(spec: TrainSpec, members: list[LoraParams | None]) -> str | None:
    """Why `members` cannot train together on `spec`, or None: a DoRA point
    (`point_pack_refusal`), or targets that need different backbones (timm's fused qkv
    adapted by one member, split into q, k, v by another)."""
    for member in members:
        if (why := point_pack_refusal(member)) is not None:
            return why
    fused = {trial_spec(spec, m).splits_qkv for m in members if m is not None}
    if len(fused) > 1:
        return "members that adapt the fused qkv and members that split it into q, k, v"
    return None


def pack_groups(spec: TrainSpec, members: list[LoraParams | None]) -> list[list[int]]:
    """`members`' indices split into groups that may each train as one pack
    (`members_refusal` refuses none of them): a DoRA point alone, the rest by whether they
    split timm's fused qkv, the baseline (None, which adapts nothing) with the first of
    those. Groups in order of their first member."""
    alone, by_backbone = [], {}
    for index, member in enumerate(members):
        if point_pack_refusal(member) is not None:
            alone.append([index])
        elif member is not None:
            by_backbone.setdefault(trial_spec(spec, member).splits_qkv, []).append(index)
    shared = list(by_backbone.values()) or [[]]
    shared[0] = sorted(shared[0] + [i for i, member in enumerate(members) if member is None])
    return sorted((group for group in [*shared, *alone] if group), key=lambda group: group[0])


def backbone_spec(spec: TrainSpec, members: list[LoraParams | None]) -> TrainSpec:
    """The spec the pack's backbone is built from: targets naming every layer a member
    adapts, so that the backbone is split (q, k, v) when the members' models are."""
    names = [name for m in members if m is not None
             for name in trial_spec(spec, m).target_modules]
    if not names:
        return spec
    return replace(spec, targets=",".join(dict.fromkeys(names)))


class PackedModel(nn.Module):
    """The pack's network: `backbone` (frozen, adapted layers swapped for `PackedLoraLinear`,
    head for `PackedHead`) run on each batch repeated once per member.

    Members may adapt different layers (`LoraParams.targets`): every layer some member
    adapts is packed, with zero adapters of scaling 0 for the others. Alone, a member draws
    dropout masks at each of its own layers from one stream; members with the same layers
    draw the same values, members with other layers do not, so the pack keeps one stream per
    set of adapted layers (`stream_of`, `use_dropout_generators`)."""

    def __init__(self, spec: TrainSpec, num_classes: int, members: list[LoraParams | None]
                 ) -> None:
        super().__init__()
        if (why := members_refusal(spec, members)) is not None:
            raise ValueError(f"these members cannot be packed: {why}")
        torch.manual_seed(spec.seed)  # the backbone's and head's start, as alone
        backbone = create_backbone(backbone_spec(spec, members), num_classes)
        backbone.requires_grad_(False)
        self.members = list(members)
        self.head = head_name(backbone)
        own_paths = {}  # each member's targets' paths, computed once per targets
        for member in members:
            if member is not None:
                member_spec = trial_spec(spec, member)
                if member_spec.targets not in own_paths:
                    own_paths[member_spec.targets] = target_paths(member_spec, num_classes,
                                                                  backbone)
        self.member_paths = [frozenset(own_paths[trial_spec(spec, m).targets])
                             if m is not None else frozenset() for m in members]
        self.paths = target_paths(backbone_spec(spec, members), num_classes, backbone) \
            if any(members) else []
        drawing = list(dict.fromkeys(paths for m, paths in zip(members, self.member_paths,
                                                               strict=True)
                                     if m is not None and m.dropout > 0))
        # Member k's dropout stream: one per set of adapted layers (0 for a member with none).
        self.stream_of = [drawing.index(paths) if paths in drawing else 0
                          for paths in self.member_paths]
        self.stream_count = max(1, len(drawing))
        inits: list[dict[str, torch.Tensor]] = [{} for _ in members]
        for k, member in enumerate(members):
            if member is not None:
                paths = [path for path in self.paths if path in self.member_paths[k]]
                shapes = [(member.rank, backbone.get_submodule(path).in_features)
                          for path in paths]
                inits[k] = dict(zip(paths, lora_a_init(spec.seed, shapes), strict=True))
        for path in self.paths:
            backbone.set_submodule(path, PackedLoraLinear(
                backbone.get_submodule(path), self._present(path),
                [init.get(path) for init in inits], self.stream_of))
        backbone.set_submodule(self.head, PackedHead(backbone.get_submodule(self.head),
                                                     len(members)))
        self.backbone = backbone

    def _present(self, path: str) -> list[LoraParams | None]:
        """The members as a layer at `path` sees them: None where one does not adapt it."""
        return [m if path in paths else None
                for m, paths in zip(self.members, self.member_paths, strict=True)]

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

    def use_dropout_generators(self, generators: list[torch.Generator]) -> None:
        """The pack's dropout streams, `stream_count` of them (`stream_of` says whose)."""
        for layer in self.adapters():
            layer.generators = list(generators)

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
            if path not in self.member_paths[k]:
                continue
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
        every stacked parameter and buffer go; new Parameters replace the old ones. The
        dropout streams stay (a stream with no member left is no longer drawn)."""
        index = torch.tensor(keep, device=self.head_module().weight.device)
        self.members = [self.members[k] for k in keep]
        self.member_paths = [self.member_paths[k] for k in keep]
        self.stream_of = [self.stream_of[k] for k in keep]
        for path, layer in zip(self.paths, self.adapters(), strict=True):
            layer.keep_members(self._present(path), self.stream_of, keep)
        head = self.head_module()
        head.weight = nn.Parameter(head.weight.index_select(0, index))
        head.bias = nn.Parameter(head.bias.index_select(0, index))
