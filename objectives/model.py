"""The trial's network: a timm model, optionally with LoRA adapters from peft.

Two shapes of trial share one backbone builder:
- `build_baseline_model`: backbone frozen, only the classification head trains (the no-LoRA
  baseline of every study);
- `build_lora_model`: peft LoRA adapters on the spec's target layers (a ViT's attention
  projections, a CNN's convolutions or any Linear) plus a trainable head.

timm fuses q, k and v into one `qkv` Linear. The model card puts separate adapters on q, k and
v, which is not the same as one adapter on the fused layer (r=8: 259,684 trainable parameters
versus 185,956), so for targets "q,k,v" / "q,v" each block's `qkv` is replaced by `SplitQKV`,
three Linears sliced from the fused weight whose concatenated output is identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from objectives import export_folder
from objectives.adapter_seeding import seed_peft_adapters
from objectives.spec import LoraParams, TrainSpec, trial_spec
from objectives.split_qkv import SplitQKV, split_qkv
from objectives.user_error import UserError, first_line


class ModelError(UserError):
    """A model that cannot be built; the message is one line for the user."""


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
    """The timm model with a fresh `num_classes` head (an MLP when `spec.head_hidden`), q/k/v
    split when the targets name them, attention through SDPA.

    Weights come from `spec.weights` when given, else from the hub when `spec.pretrained`;
    `pretrained=False` overrides both (used to count parameters offline). `spec.weights` is a
    timm checkpoint file, or a folder written by `search export --weights` whose merged
    `model.safetensors` gives every weight but the head (see `load_exported_backbone`).
    """
    load = spec.pretrained if pretrained is None else pretrained
    from_export = load and spec.weights is not None and Path(spec.weights).is_dir()
    overlay = {}
    if load and spec.weights and not from_export:
        # custom_load off: timm's ViT configs point at .npz files with their own loader.
        overlay["pretrained_cfg_overlay"] = {"file": spec.weights, "custom_load": False}
    model = _timm_model(spec, num_classes, load and not from_export, **overlay)
    if from_export:
        # Before the split: the merged file holds timm's fused qkv weights.
        load_exported_backbone(model, spec)
    if spec.head_hidden:
        replace_head(model, spec.head_hidden, num_classes)
    if spec.splits_qkv:
        split_qkv(model)
    use_sdpa(model)
    return model


def replace_head(model: nn.Module, hidden: int, num_classes: int) -> None:
    """Swap the timm classifier for Linear -> ReLU -> Linear with `hidden` units: the bigger
    heads that head-only CNN baselines train (the paper's 8-11% trainable)."""
    name = head_name(model)
    old = model.get_submodule(name)
    if not isinstance(old, nn.Linear):
        raise ModelError(f"head_hidden: the head '{name}' of '{model.__class__.__name__}' is "
                         f"a {old.__class__.__name__}, not a Linear layer to replace")
    factory = {"device": old.weight.device, "dtype": old.weight.dtype}
    model.set_submodule(name, nn.Sequential(
        nn.Linear(old.in_features, hidden, **factory), nn.ReLU(),
        nn.Linear(hidden, num_classes, **factory)))


def use_sdpa(model: nn.Module) -> None:
    """Make every timm attention block use `F.scaled_dot_product_attention` (flash / memory-
    efficient kernels on a GPU) even where the TIMM_FUSED_ATTN environment turned it off."""
    for module in model.modules():
        if getattr(module, "fused_attn", None) is False:
            module.fused_attn = True


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers LoRA can adapt here, by path: Linear layers and ungrouped convolutions
    (peft cannot merge an adapter into a grouped / depthwise convolution)."""
    return {name: module for name, module in model.named_modules()
            if isinstance(module, nn.Linear)
            or (isinstance(module, nn.Conv2d) and module.groups == 1)}


def check_targets(spec: TrainSpec, num_classes: int) -> None:
    """Raise ModelError unless every name in `spec.targets` matches some layer LoRA can adapt
    (builds the model on the meta device: no weights are loaded)."""
    adapted_layers(spec, num_classes)


def adapted_layers(spec: TrainSpec, num_classes: int) -> dict[str, dict[str, nn.Module]]:
    """The layers LoRA adapts, by target name and then path, of the model built on the meta
    device; ModelError for a target that matches none."""
    with torch.device("meta"):
        model = create_backbone(spec, num_classes, pretrained=False)
    head = head_name(model)
    # The head trains whole: it is never a LoRA target.
    layers = {path: module for path, module in lora_layers(model).items()
              if path != head and not export_folder.is_head_key(path, head)}
    adapted = {}
    for target in spec.target_modules:
        adapted[target] = {path: module for path, module in layers.items()
                           if path == target or path.endswith("." + target)}
        if not adapted[target]:
            names = sorted({path.rsplit(".", 1)[-1] for path in layers})
            raise ModelError(f"targets: '{spec.model}' has no Linear or ungrouped Conv2d layer "
                             f"named '{target}'; its layer names: {', '.join(names[:20])}")
    return adapted


def rank_limit(layer: nn.Module) -> int:
    """The largest LoRA rank that `layer` can use: the rank of its weight as the matrix peft
    factors it. A Linear's is min(in, out); a Conv2d's update is lora_B (1x1 conv,
    r -> out_channels) after lora_A (r filters of in_channels x kh x kw), i.e. of
    [out_channels, in_channels * kh * kw]. A higher rank adds parameters, not capacity."""
    if isinstance(layer, nn.Conv2d):
        height, width = layer.kernel_size
        return min(layer.out_channels, layer.in_channels // layer.groups * height * width)
    return min(layer.in_features, layer.out_features)


def max_rank(spec: TrainSpec, num_classes: int) -> int:
    """The largest LoRA rank the spec's targets allow: `rank_limit` of the smallest adapted
    layer (the model is built on the meta device: nothing is loaded or allocated)."""
    return _smallest_layer(spec, num_classes)[0]


def check_rank_fits_model(spec: TrainSpec, num_classes: int, rank: int) -> None:
    """Raise ModelError when `rank` exceeds `max_rank(spec, num_classes)`."""
    limit, target = _smallest_layer(spec, num_classes)
    if rank > limit:
        raise ModelError(f"rank {rank} is larger than the smallest adapted layer allows "
                         f"({limit} for '{target}' in {spec.model})")


def _smallest_layer(spec: TrainSpec, num_classes: int) -> tuple[int, str]:
    """`max_rank` and the target name of a layer that sets it (the first in `spec.targets`
    of those that do)."""
    limits = [(rank_limit(layer), target)
              for target, layers in adapted_layers(spec, num_classes).items()
              for layer in layers.values()]
    return min(limits, key=lambda limit: limit[0])


def _timm_model(spec: TrainSpec, num_classes: int, pretrained: bool, **extra: Any) -> nn.Module:
    if not timm.is_model(spec.model):
        raise ModelError(f"unknown timm model '{spec.model}' (see timm.list_models())")
    try:
        return timm.create_model(spec.model, pretrained=pretrained, num_classes=num_classes,
                                 **spec.model_kwargs, **extra)
    except (OSError, RuntimeError, ValueError) as error:
        source = spec.weights or "the model hub"
        raise ModelError(
            f"cannot build '{spec.model}' with weights from {source}: {first_line(error)}; "
            "pass --weights PATH to a local checkpoint, or pretrained = false") from None
    except TypeError as error:  # a model_kwargs entry the architecture does not take
        raise ModelError(f"cannot build '{spec.model}': {error}") from None


def load_exported_backbone(model: nn.Module, spec: TrainSpec) -> None:
    """Load the merged weights of the export folder `spec.weights` into the plain timm
    `model`, all but its head.

    The head keeps its fresh, seeded initialisation whether or not the old study had as many
    classes: a new study's head is always new. Its classes are its own even when they count
    the same, and its no-LoRA baseline (frozen backbone, trained head) must start from an
    untrained head, as on any other backbone. Every other weight must fit exactly: a key
    missing on either side or a shape that differs is a ModelError naming what differs.
    """
    file = _check_export_fits(model, spec)
    try:
        state = export_folder.backbone_state(file, head_name(model))
    except export_folder.UNREADABLE as error:
        raise ModelError(f"cannot read {file}: {first_line(error)}") from None
    model.load_state_dict(state, strict=False)  # _check_export_fits: only the head is missing


def check_export_folder(spec: TrainSpec) -> None:
    """Raise ModelError unless the export folder `spec.weights` holds merged weights that fit
    the spec's model, head aside. Reads only the file's header and builds the model on the
    meta device, so a spec can be checked before a study is created."""
    with torch.device("meta"):
        model = _timm_model(spec, 1, pretrained=False)
    _check_export_fits(model, spec)


def _check_export_fits(model: nn.Module, spec: TrainSpec) -> Path:
    """The folder's merged weights file, once its tensors are known to fit `model`."""
    folder = Path(spec.weights)
    file = export_folder.merged_file(folder)
    if file is None:
        raise ModelError(f"weights folder {folder} has no {export_folder.MERGED_FILE}: pass a "
                         "folder written by `search export --weights DIR`, or a checkpoint file")
    try:
        stored = export_folder.stored_shapes(file)
    except export_folder.UNREADABLE as error:
        raise ModelError(f"cannot read {file}: {first_line(error)}") from None
    expected = export_folder.shapes_of(model.state_dict())
    problems = export_folder.misfits(expected, stored, head_name(model))
    if problems:
        differences = export_folder.exporter_differences(folder, spec.model, spec.model_kwargs)
        why = (f"the exporting study differs in {'; '.join(differences)}" if differences
               else export_folder.describe_misfits(problems))
        raise ModelError(f"the weights in {file} do not fit '{spec.model}' with "
                         f"model_kwargs {spec.model_kwargs}: {why}")
    return file


def build_baseline_model(spec: TrainSpec, num_classes: int, pretrained: bool | None = None
                         ) -> nn.Module:
    """Frozen backbone, trainable head: the no-LoRA baseline."""
    torch.manual_seed(spec.seed)
    model = create_backbone(spec, num_classes, pretrained)
    model.requires_grad_(False)
    model.get_submodule(head_name(model)).requires_grad_(True)
    return model


def lora_config(spec: TrainSpec, lora: LoraParams, head: str) -> LoraConfig:
    """peft's configuration of the point's adapters: its scaling rule and DoRA are peft's own
    options (`use_rslora`, `use_dora`)."""
    return LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=list(spec.target_modules), bias="none",
                      modules_to_save=[head], use_rslora=lora.scaling == "rslora",
                      use_dora=lora.dora)


def build_lora_model(spec: TrainSpec, num_classes: int, lora: LoraParams,
                     pretrained: bool | None = None) -> PeftModel:
    """LoRA adapters on the point's targets (else the spec's) plus a trainable head; the
    rest frozen. The adapters start from the trial's seed alone and their dropout draws from
    the trial's dropout generator (`objectives.adapter_seeding`), as a packed member's do."""
    spec = trial_spec(spec, lora)
    torch.manual_seed(spec.seed)
    backbone = create_backbone(spec, num_classes, pretrained)
    if spec.splits_qkv and not any(isinstance(m, SplitQKV) for m in backbone.modules()):
        raise ModelError(f"'{spec.model}' has no fused qkv attention layers to split for "
                         f"targets {spec.targets}")
    try:
        model = get_peft_model(backbone, lora_config(spec, lora, head_name(backbone)))
    except ValueError as error:
        raise ModelError(f"cannot put LoRA on {spec.targets} of '{spec.model}': {error}") from None
    seed_peft_adapters(model, spec.seed)  # the same start alone or in a pack
    return model


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


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Load weights that `trainable_state_dict` saved into `model` (built as the trial built
    it); what keeps them from fitting: weights the model lacks, trained weights `state` lacks.
    Empty when they fit."""
    result = model.load_state_dict(state, strict=False)
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    problems = [f"{key} unknown to the model" for key in result.unexpected_keys]
    problems += [f"{key} missing" for key in sorted(trainable & set(result.missing_keys))]
    return problems
