"""The folder `search export --weights DIR` writes, read back as the backbone of a new study.

One study's winner is the starting point of the next (e.g. a backbone adapted to MNIST, then
fine-tuned on EMNIST). The folder holds `model.safetensors`: the winning model in plain timm
key names (LoRA merged into the weights, q/k/v fused, the head sized for the old study's
classes), and `search_export.json`: the old study's params, metrics, training spec and
classes. This module reads both; `objectives.model` decides whether they fit and loads them.
The folder also holds README.md (its model card), timm's `config.json` (which makes it a
folder `timm.create_model("local-dir:DIR", pretrained=True)` opens), the peft adapter of a
LoRA trial and, under `base_weights/`, a copy of a local backbone file the trial started from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor

from objectives.data import IMAGEFOLDER

MERGED_FILE = "model.safetensors"
EXPORT_DOCUMENT = "search_export.json"
# timm's model configuration, by the name its `local-dir:` and `hf-hub:` loaders look for.
TIMM_CONFIG = "config.json"
# A local backbone file the trial started from, copied into the folder so that the folder
# alone rebuilds the adapter's base model on any host (`objectives.export_model`).
BASE_WEIGHTS = "base_weights"

UNREADABLE = (SafetensorError, OSError)  # what safetensors raises for a damaged file

Shapes = dict[str, tuple[int, ...]]


def merged_file(folder: Path) -> Path | None:
    """The folder's merged weights file, or None when it has none."""
    path = folder / MERGED_FILE
    return path if path.is_file() else None


def resize_filter(dataset: str) -> str:
    """The filter, by timm's name, that brought the dataset's images to `image_size`: an image
    folder's files are resized with PIL's bicubic filter as they are decoded
    (`objectives.data.decode_image`); the named datasets' images by `objectives.augment.resize`,
    bilinear and antialiased (PIL's bilinear, which timm's transforms use, antialiases too)."""
    return "bicubic" if dataset.startswith(IMAGEFOLDER) else "bilinear"


def is_head_key(key: str, head: str | None) -> bool:
    """Whether state-dict `key` belongs to the head module named `head` (e.g. "head");
    never, for `head=None`."""
    return head is not None and key.startswith(head + ".")


def stored_shapes(path: Path) -> Shapes:
    """Every tensor's shape, from the file's header alone (no tensor is read).

    Raises `UNREADABLE` errors for a damaged file."""
    with safe_open(str(path), framework="pt") as file:
        return {key: tuple(file.get_slice(key).get_shape()) for key in file.keys()}


def backbone_state(path: Path, head: str) -> dict[str, Tensor]:
    """The file's tensors (on the CPU) without those of the head module `head`.

    Raises `UNREADABLE` errors for a damaged file."""
    state = load_file(str(path))
    return {key: value for key, value in state.items() if not is_head_key(key, head)}


def misfits(expected: Shapes, stored: Shapes, head: str | None) -> list[str]:
    """What keeps `stored` from loading into a model whose state has the `expected` shapes,
    the head (unless None) excluded on both sides: keys the file lacks, keys the model lacks,
    other shapes."""
    model = {key: shape for key, shape in expected.items() if not is_head_key(key, head)}
    file = {key: shape for key, shape in stored.items() if not is_head_key(key, head)}
    problems = [f"{key} missing from the file" for key in model if key not in file]
    problems += [f"{key} not in the model" for key in file if key not in model]
    problems += [f"{key} is {list(file[key])} in the file, {list(shape)} in the model"
                 for key, shape in model.items() if key in file and file[key] != shape]
    return problems


def shapes_of(state: dict[str, Tensor]) -> Shapes:
    return {key: tuple(value.shape) for key, value in state.items()}


def describe_misfits(problems: list[str]) -> str:
    """The first three problems, and how many more there are."""
    more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
    return "; ".join(problems[:3]) + more


def exporter_differences(folder: Path, model: str, model_kwargs: dict[str, Any]) -> list[str]:
    """`field: the exporter's -> this spec's` for the model name and every model_kwargs entry
    that differ from the spec of the study that wrote `folder`; empty when its
    `search_export.json` is missing or unreadable (there is then nothing to compare)."""
    try:
        exported = json.loads((folder / EXPORT_DOCUMENT).read_text())["spec"]
        old_model, old_kwargs = exported["model"], dict(exported.get("model_kwargs") or {})
    except (OSError, ValueError, KeyError, TypeError):
        return []
    differences = [f"model: {old_model!r} -> {model!r}"] if old_model != model else []
    for key in sorted(set(old_kwargs) | set(model_kwargs), key=str):
        old, new = old_kwargs.get(key), model_kwargs.get(key)
        if old != new:
            differences.append(f"model_kwargs.{key}: {_shown(old)} -> {_shown(new)}")
    return differences


def _shown(value: Any) -> str:
    return "unset" if value is None else repr(value)
