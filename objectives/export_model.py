"""Writing a trained trial as files other tools load, without retraining.

A LoRA trial becomes a peft adapter folder (`adapter_config.json`, `adapter_model.safetensors`,
the trained head included) that `PeftModel.from_pretrained` loads onto `create_backbone(spec,
num_classes)`, plus `model.safetensors`: the adapters merged into the backbone, with q/k/v
fused back, so it loads into a plain `timm.create_model(spec.model, num_classes=...)`.
A baseline trial has no adapter: only `model.safetensors` is written. Next to it, timm's
`config.json` (`write_timm_config`) names the architecture, its arguments, the classes and the
image preparation, so that `timm.create_model("local-dir:DIR", pretrained=True)` builds the
trained model, head included, and so does `"hf-hub:USER/NAME"` once the folder is uploaded.
The folder also serves as another study's starting backbone (`objectives.export_folder`).

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

import timm
import torch
from peft.utils import CONFIG_NAME as ADAPTER_CONFIG
from safetensors.torch import load_file, save_file
from torch import nn

from objectives.export_folder import (
    BASE_WEIGHTS,
    EXPORT_DOCUMENT,
    MERGED_FILE,
    TIMM_CONFIG,
    describe_misfits,
    misfits,
    resize_filter,
    shapes_of,
    stored_shapes,
)
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


def write_model_folder(model: nn.Module, lora: LoraParams | None, folder: str | Path,
                       base_model: str | None = None) -> list[str]:
    """Write the adapter folder (LoRA only) and the merged weights; returns the file names.

    `base_model`: the hub id of the backbone's weights, as adapter_config.json's
    `base_model_name_or_path` (left empty for a local file, which no hub id names)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if lora is not None:
        model.save_pretrained(str(folder))
        name_adapter_base(folder, base_model)
        model = model.merge_and_unload()
    state = {k: v.contiguous() for k, v in fuse_qkv_state_dict(model.state_dict()).items()}
    save_file(state, str(folder / MERGED_FILE))
    return sorted(p.name for p in folder.iterdir())


def name_adapter_base(folder: Path, base_model: str | None) -> None:
    """Set adapter_config.json's `base_model_name_or_path` once peft has written it: given to
    peft before, the id sends `save_pretrained` to the hub, to look at the base model's files."""
    path = folder / ADAPTER_CONFIG
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = base_model
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_timm_config(spec: TrainSpec, classes: list[str], folder: str | Path
                      ) -> dict[str, Any] | None:
    """Write `timm_config` as the folder's config.json, and return it, when the folder's merged
    weights load into the model it describes; otherwise write nothing and return None.

    They do not for a `head_hidden` head: no timm model argument builds that Linear -> ReLU ->
    Linear classifier, so no config.json rebuilds it, and timm would load such a folder with a
    fresh Linear head or not at all. That folder loads as the model card's quick start shows
    instead."""
    model = plain_model(spec, len(classes))
    stored = stored_shapes(Path(folder) / MERGED_FILE)
    if misfits(shapes_of(model.state_dict()), stored, head=None):
        return None
    config = timm_config(spec, classes, model)
    (Path(folder) / TIMM_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return config


def plain_model(spec: TrainSpec, num_classes: int) -> nn.Module:
    """The model timm builds from the config.json of `timm_config`, on the meta device (no
    weights are made or loaded)."""
    with torch.device("meta"):
        return timm.create_model(architecture(spec.model), num_classes=num_classes,
                                 **spec.model_kwargs)


def timm_config(spec: TrainSpec, classes: list[str], model: nn.Module) -> dict[str, Any]:
    """timm's config.json for the export of `spec` (the format `timm.models.push_to_hf_hub`
    writes): the architecture and its arguments, the classes, and in `pretrained_cfg` what
    timm's data config reads to prepare an image as the trial's evaluation did. `model` is
    `plain_model(spec, len(classes))`."""
    size = spec.image_size
    source = model.pretrained_cfg
    pretrained_cfg = {
        # A plain state dict: not the .npz files, with their own loader, that timm's ViT
        # configs name.
        "custom_load": False,
        "input_size": [3, size, size],
        "fixed_input_size": bool(source.get("fixed_input_size", False)),
        "interpolation": resize_filter(spec.dataset),
        # The whole image squashed to image_size x image_size, as the trial resized it: no crop.
        "crop_pct": 1.0,
        "crop_mode": "squash",
        "mean": list(spec.augment.mean),
        "std": list(spec.augment.std),
        # With the config's own count, timm keeps the trained head instead of discarding it as
        # one sized for other classes.
        "num_classes": len(classes),
        **{key: source[key] for key in ("first_conv", "classifier") if source.get(key)},
    }
    return {
        "architecture": architecture(spec.model),
        "num_classes": len(classes),
        "num_features": model.num_features,
        "model_args": dict(spec.model_kwargs),
        "label_names": list(classes),
        "pretrained_cfg": pretrained_cfg,
    }


def architecture(model: str) -> str:
    """timm's model name without its pretrained tag: the tag names weights this export
    replaces."""
    return timm.models.split_model_name_tag(model)[0]


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
