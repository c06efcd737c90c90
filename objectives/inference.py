"""Classifying image files with a model that `search export --weights DIR` wrote.

Nothing here retrains or needs the study. The folder's weights go onto a freshly built timm
model, and every image is prepared the way the trial's validation and test images were:
decoded as the training data were (one channel for the grayscale datasets, RGB otherwise, and
PIL-resized to `image_size` for an imagefolder), then `objectives.train.predict`, i.e.
`augment.eval_batch` (resize to `image_size`, normalise) and the forward pass under the trial's
autocast.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model_state_dict
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from objectives.data import (
    IMAGE_EXTENSIONS,
    IMAGEFOLDER,
    dataset_is_grayscale,
    decode_image,
    has_image_extension,
)
from objectives.export_folder import MERGED_FILE, describe_misfits, misfits, shapes_of
from objectives.model import create_backbone
from objectives.spec import TrainSpec
from objectives.train import predict
from objectives.user_error import UserError, first_line

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class InferenceError(UserError):
    """An exported model or an image that cannot be used for inference; one line for the user."""


def load_exported_model(folder: str | Path, spec: TrainSpec, num_classes: int,
                        device: torch.device) -> nn.Module:
    """The exported model of `folder`, in eval mode on `device`.

    From the merged `model.safetensors` when the folder has it: a plain timm model built
    without pretrained weights, so `spec.weights` need not exist on this host. Otherwise from
    the peft adapter (LoRA and head) on `create_backbone(spec, num_classes)`, which does need
    the pretrained backbone (the folder's own copy when the export made one: `in_folder`);
    the adapter is merged into it after loading. Weights that do not fit the model exactly
    (missing, extra or of another shape) are an `InferenceError`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InferenceError(f"model folder {folder} does not exist")
    spec = in_folder(spec, folder)
    if (folder / MERGED_FILE).is_file():
        model = load_merged(folder / MERGED_FILE, spec, num_classes)
    elif (folder / ADAPTER_CONFIG).is_file() and (folder / ADAPTER_WEIGHTS).is_file():
        model = load_adapter(folder, spec, num_classes)
    else:
        raise InferenceError(f"{folder} has no weights: neither {MERGED_FILE} nor a peft "
                             f"adapter ({ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}); write them "
                             f"with `search export --weights {folder}`")
    return model.to(device).eval()


def in_folder(spec: TrainSpec, folder: Path) -> TrainSpec:
    """`spec` with a relative `weights` taken inside `folder`: an export names its copy of the
    base weights relative to itself (`base_weights/...`), so that the folder works wherever
    it is moved; an older export's absolute path is kept as it is."""
    if spec.weights is None or Path(spec.weights).is_absolute():
        return spec
    return dataclasses.replace(spec, weights=str(folder / spec.weights))


def load_merged(file: Path, spec: TrainSpec, num_classes: int) -> nn.Module:
    # The merged file holds every weight with q, k, v fused back into timm's `qkv`, so the
    # model is built with fused attention and nothing pretrained to load first.
    model = create_backbone(dataclasses.replace(spec, targets="qkv"), num_classes,
                            pretrained=False)
    state = read_weights(file)
    check_weights_fit(model.state_dict(), state, file, spec, num_classes)
    model.load_state_dict(state)
    return model


def load_adapter(folder: Path, spec: TrainSpec, num_classes: int) -> nn.Module:
    # `weights` is a checkpoint file or an earlier study's export folder.
    if spec.pretrained and spec.weights and not Path(spec.weights).exists():
        raise InferenceError(f"{folder} has no {MERGED_FILE}, and its adapter needs the "
                             f"backbone weights {spec.weights}, which are not there")
    # Seeded as the trial seeded it: a backbone without pretrained weights is the same
    # random initialisation the adapter was trained on.
    torch.manual_seed(spec.seed)
    backbone = create_backbone(spec, num_classes)
    try:
        with warnings.catch_warnings():
            # peft only warns about adapter weights the file lacks; the check below makes any
            # difference between file and model an error instead.
            warnings.simplefilter("ignore")
            model = PeftModel.from_pretrained(backbone, str(folder))
    except (RuntimeError, ValueError, TypeError, KeyError, OSError, SafetensorError) as error:
        raise InferenceError(f"cannot load the adapter in {folder}: {first_line(error)}") from None
    file = folder / ADAPTER_WEIGHTS
    check_weights_fit(get_peft_model_state_dict(model), read_weights(file), file, spec,
                      num_classes)
    return model.merge_and_unload()


def read_weights(file: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(file))
    except (OSError, SafetensorError) as error:
        raise InferenceError(f"cannot read {file}: {first_line(error)}") from None


def check_weights_fit(expected: dict[str, Tensor], stored: dict[str, Tensor], file: Path,
                      spec: TrainSpec, num_classes: int) -> None:
    """Raise InferenceError unless `stored` has exactly the names and shapes of `expected`."""
    problems = misfits(shapes_of(expected), shapes_of(stored), head=None)
    if problems:
        raise InferenceError(f"{file} does not fit {spec.model} with {num_classes} classes: "
                             f"{describe_misfits(problems)}")


def read_image(path: str | Path, spec: TrainSpec) -> Tensor:
    """One image file as the trial's data loader would have decoded it: uint8 [C, H, W], with
    C = 1 for a grayscale dataset, 3 otherwise, at image_size for an imagefolder."""
    if spec.dataset.startswith(IMAGEFOLDER):
        return decode_image(path, grayscale=False, size=spec.image_size)
    return decode_image(path, grayscale=dataset_is_grayscale(spec.dataset))


def check_image_files(paths: Sequence[str | Path]) -> None:
    """Raise InferenceError naming the first of `paths` that is not an image file a study
    could have trained on: missing, a directory, or not named with one of IMAGE_EXTENSIONS
    (the files an imagefolder is read from); the count of any others follows it."""
    problems = [problem for path in paths if (problem := image_file_problem(path))]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InferenceError(f"{problems[0]}{more}")


def image_file_problem(path: str | Path) -> str | None:
    """Why `path` is not an image file to classify, or None."""
    if Path(path).is_dir():
        return f"{path} is a directory, not an image file"
    if not Path(path).is_file():
        return f"no such image file: {path}"
    if not has_image_extension(path):
        kind = f"a {Path(path).suffix} file" if Path(path).suffix else "a file without extension"
        return f"{path} is {kind}; supported image files: {', '.join(IMAGE_EXTENSIONS)}"
    return None


def classify_images(model: nn.Module, paths: Sequence[str | Path], spec: TrainSpec
                    ) -> Tensor:
    """Class probabilities (softmax, float32 on the CPU) [len(paths), classes], in `paths`' order.

    Images are decoded `spec.eval_batch_size` at a time (threads: PIL releases the GIL), so
    memory holds one batch of decoded images, not all of them. A missing file is reported
    before any work; an undecodable one as `DatasetError` naming it.
    """
    check_image_files(paths)
    device = next(model.parameters()).device
    chunks = []
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for start in range(0, len(paths), spec.eval_batch_size):
            chunk = paths[start:start + spec.eval_batch_size]
            images = list(pool.map(partial(read_image, spec=spec), chunk))
            chunks.append(probabilities_of(model, images, spec, device))
    if not chunks:
        return torch.empty(0, 0)
    return torch.cat(chunks)


def probabilities_of(model: nn.Module, images: list[Tensor], spec: TrainSpec,
                     device: torch.device) -> Tensor:
    """Softmax of `predict` on uint8 images [C, H, W]; images of one shape are stacked and
    evaluated together (files of a dataset usually share one), each shape on its own."""
    probabilities = torch.empty(0)
    by_shape: dict[torch.Size, list[int]] = {}
    for index, image in enumerate(images):
        by_shape.setdefault(image.shape, []).append(index)
    for indices in by_shape.values():
        batch = torch.stack([images[i] for i in indices]).to(device)
        result = predict(model, batch, spec).softmax(dim=1).cpu()
        if probabilities.numel() == 0:
            probabilities = torch.empty(len(images), result.shape[1])
        probabilities[indices] = result
    return probabilities


def top_classes(probabilities: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k largest probabilities of each row, largest first, and their class indices; k is
    clamped to the number of classes."""
    return probabilities.topk(min(k, probabilities.shape[1]), dim=1)
