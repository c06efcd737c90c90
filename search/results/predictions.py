"""`search predict`: classify image files with a folder that `search export --weights` wrote.

This module knows the export's document (`search_export.json`: the spec and class names) and
how results are printed; loading the weights and the tensor work are `objectives.inference`'s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from objectives.export_folder import EXPORT_DOCUMENT
from objectives.inference import InferenceError, top_classes
from objectives.spec import TrainSpec


@dataclass(frozen=True)
class ExportedTrial:
    """What an export folder says about its model: the trial's spec and its class names, in
    the order of the model's outputs."""

    spec: TrainSpec
    classes: list[str]


def read_export(folder: Path) -> ExportedTrial:
    """The spec and classes of `folder`/search_export.json; InferenceError when there is none."""
    if not folder.is_dir():
        raise InferenceError(f"model folder {folder} does not exist")
    path = folder / EXPORT_DOCUMENT
    if not path.is_file():
        raise InferenceError(f"{folder} has no {EXPORT_DOCUMENT}: not a folder written by "
                             "`search export --weights DIR`")
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InferenceError(f"cannot read {path}: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("spec"), dict):
        raise InferenceError(f"{path} has no spec")
    classes = document.get("classes")
    if not isinstance(classes, list) or not classes:
        raise InferenceError(f"{path} lists no classes")
    return ExportedTrial(spec=exported_spec(document["spec"], str(path)),
                         classes=[str(name) for name in classes])


def exported_spec(values: dict[str, Any], source: str) -> TrainSpec:
    """The stored spec with its types checked (SpecError otherwise). Not `validate_train_spec`:
    that wants the training host's backbone file and dataset, which predicting on another host
    needs neither of (the merged weights hold everything)."""
    return TrainSpec.from_dict(values, f"{source}: spec")


def prediction_records(images: list[str], probabilities: Tensor, classes: list[str],
                       top_k: int) -> list[dict[str, Any]]:
    """One {"image", "predictions"} record per image, the top_k classes most probable first."""
    values, indices = top_classes(probabilities, top_k)
    return [{"image": image,
             "predictions": [{"class": classes[index], "index": index, "probability": value}
                             for value, index in zip(row_values, row_indices, strict=True)]}
            for image, row_values, row_indices in zip(images, values.tolist(), indices.tolist(),
                                                      strict=True)]


def render_predictions(records: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(records, indent=1)
    blocks = []
    for record in records:
        width = max(len(p["class"]) for p in record["predictions"])
        lines = [f"  {p['class']:<{width}}  {100 * p['probability']:6.2f}%"
                 for p in record["predictions"]]
        blocks.append("\n".join([record["image"], *lines]))
    return "\n\n".join(blocks)
