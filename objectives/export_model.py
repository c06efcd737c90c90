"""Writing a trained trial as files other tools load, without retraining.

A LoRA trial becomes a peft adapter folder (`adapter_config.json`, `adapter_model.safetensors`,
the trained head included) that `PeftModel.from_pretrained` loads onto `create_backbone(spec,
num_classes)`, plus `model.safetensors`: the adapters merged into the backbone, with q/k/v
fused back, so it loads into a plain `timm.create_model(spec.model, num_classes=...)`.
A baseline trial has no adapter: only `model.safetensors` is written. The folder also serves
as another study's starting backbone (`objectives.export_folder`).
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from objectives.export_folder import MERGED_FILE, describe_misfits
from objectives.model import build_model, fuse_qkv_state_dict, load_trainable_state
from objectives.spec import LoraParams, TrainSpec
from objectives.user_error import UserError


class ExportError(UserError):
    """Weights that do not fit the model they should belong to; one line for the user."""


def load_trained_model(spec: TrainSpec, num_classes: int, lora: LoraParams | None,
                       weights_file: str | Path) -> nn.Module:
    """Rebuild the trial's model (same seed, same backbone weights) and load what it trained."""
    model = build_model(spec, num_classes, lora)
    problems = load_trainable_state(model, load_file(str(weights_file)))
    if problems:
        raise ExportError(f"{weights_file} does not fit the trial's model: "
                          f"{describe_misfits(problems)}")
    return model.eval()


def write_model_folder(model: nn.Module, lora: LoraParams | None, folder: str | Path) -> list[str]:
    """Write the adapter folder (LoRA only) and the merged weights; returns the file names."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if lora is not None:
        model.save_pretrained(str(folder))
        model = model.merge_and_unload()
    state = {k: v.contiguous() for k, v in fuse_qkv_state_dict(model.state_dict()).items()}
    save_file(state, str(folder / MERGED_FILE))
    return sorted(p.name for p in folder.iterdir())
