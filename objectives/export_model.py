"""Writing a trained trial as files other tools load, without retraining.

A LoRA trial becomes a peft adapter folder (`adapter_config.json`, `adapter_model.safetensors`,
the trained head included) that `PeftModel.from_pretrained` loads onto `create_backbone(spec,
num_classes)`, plus `model.safetensors`: the adapters merged into the backbone, with q/k/v
fused back, so it loads into a plain `timm.create_model(spec.model, num_classes=...)`.
A baseline trial has no adapter: only `model.safetensors` is written. The folder also serves
as another study's starting backbone (`objectives.export_folder`).

The folder must work on any host, and uploaded to the Hugging Face hub as it is: no path of
the exporting host may be needed or written. A local backbone file the trial started from
(not the hub's pretrained weights) is copied into `base_weights/` by `copy_base_weights`, and
named by the model and the file's sha256 in what it returns for `search_export.json`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from objectives.export_folder import BASE_WEIGHTS, EXPORT_DOCUMENT, MERGED_FILE, describe_misfits
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


def copy_base_weights(spec: TrainSpec, folder: str | Path) -> dict[str, Any]:
    """Where the trial's backbone weights came from, without a path of this host, for
    `search_export.json`'s `base_weights`; a local file is copied into `folder`/base_weights/.

    - `source: "file"`: a timm checkpoint file, copied as base_weights/<its name>;
    - `source: "export"`: an earlier export folder, whose merged `model.safetensors` (every
      weight but the head was loaded from it) is copied as base_weights/<folder name>.safetensors,
      with the study and trial that folder came from;
    - `source: "hub"`: timm's pretrained weights of the model, by their hub id;
    - `source: "none"`: `pretrained = false`, the seeded random initialisation.
    A copied file's record has `file` (relative to `folder`) and its `sha256`.
    """
    record: dict[str, Any] = {"model": spec.model}
    if not spec.pretrained:
        return {**record, "source": "none", "seed": spec.seed}
    if spec.weights is None:
        return {**record, "source": "hub", "hf_hub_id": hub_id(spec.model)}
    origin = Path(spec.weights)
    if origin.is_dir():
        record.update(source="export", export=exported_from(origin))
        origin, name = origin / MERGED_FILE, f"{origin.name}.safetensors"
    else:
        record["source"], name = "file", origin.name
    target = Path(folder) / BASE_WEIGHTS / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(origin, target)
    return {**record, "file": f"{BASE_WEIGHTS}/{name}", "sha256": sha256_of(target)}


def hub_id(model: str) -> str | None:
    """The hub repository timm loads `model`'s pretrained weights from (its default tag
    unless the name has one), e.g. timm/vit_small_patch16_224.augreg_in21k_ft_in1k."""
    import timm

    config = timm.models.get_pretrained_cfg(model)
    return getattr(config, "hf_hub_id", None) if config is not None else None


def exported_from(folder: Path) -> dict[str, Any]:
    """The study, trial and model of the export folder `folder`, from its search_export.json
    (empty when unreadable)."""
    try:
        document = json.loads((folder / EXPORT_DOCUMENT).read_text())
        return {key: document[key] for key in ("study", "trial", "model") if key in document}
    except (OSError, ValueError, TypeError):
        return {}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
