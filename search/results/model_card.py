"""The model card: README.md of the folder `search export --weights DIR` writes.

The Hugging Face hub shows a model repository's README.md as its page and reads its YAML front
matter (library, base model, dataset, tags, `model-index` results), so the export folder,
uploaded as it is, is a complete model repository. The card is written from what the study
stored and nothing else: the export document (`search.results.export`: the trial's metrics,
its spec, why it was picked, where its base weights came from) and the study's leaderboard
with its verdict (`search.results.leaderboard.study_board`: intervals, ties, the baseline's
gap). A figure the study did not measure is left out, never filled in.

Its quick start is code a user runs in the folder (e.g. after `git clone` of the uploaded
repository), with timm, peft, torch, safetensors, Pillow and numpy only: not this project.
`tests/test_model_card.py` extracts those blocks from a generated card and runs them, so the
card's own example cannot fall behind the files it describes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd
import yaml
from optuna.trial import FrozenTrial

from objectives.data import IMAGEFOLDER, dataset_is_grayscale
from objectives.export_folder import resize_filter
from search.results.leaderboard import Board
from search.results.markdown import table
from search.study.trials import configuration_key, is_baseline

QUICK_START = "## Quick start"
# What the quick start's code says where a user puts their image; a test substitutes it.
IMAGE_PLACEHOLDER = "path/to/image.png"
FILE_ROLES = {
    "README.md": "this model card",
    "search_export.json": "the trial's params, metrics, training spec, classes and how it was "
                          "picked (read by `search predict`)",
    "model.safetensors": "the whole model for plain timm (LoRA merged into the weights)",
    "config.json": "timm's configuration: architecture, model arguments, classes, input size, "
                   "mean, std and resize filter (`timm.create_model(\"local-dir:...\", "
                   "pretrained=True)`)",
    "adapter_config.json": "the peft LoRA configuration",
    "adapter_model.safetensors": "the LoRA adapters and the trained head (peft)",
}
# The hub's ids of the datasets that are on it; the others (scikit-learn's digits, EMNIST, an
# image folder) are described in the card's text and listed as no hub dataset.
HUB_DATASETS = {"cifar10": "uoft-cs/cifar10", "cifar100": "uoft-cs/cifar100",
                "mnist": "ylecun/mnist", "fashion_mnist": "zalando-datasets/fashion_mnist"}


def trial_sources(trials: Sequence[FrozenTrial]) -> dict[int, str]:
    """How each trial came into the study: "baseline", "grid" (a queued point) or "TPE" (a
    point the sampler drew; its seed replicates, queued afterwards, count as TPE too)."""
    sampled = {configuration_key(t) for t in trials
               if not is_baseline(t) and "fixed_params" not in t.system_attrs}
    return {t.number: "baseline" if is_baseline(t)
            else "TPE" if configuration_key(t) in sampled else "grid" for t in trials}


def render_card(document: dict[str, Any], board: Board, sources: dict[int, str],
                adapter: dict[str, Any] | None, config: dict[str, Any] | None = None) -> str:
    """README.md for the export folder of `document` (its portable form, with `base_weights`),
    from the study's `board` (by trial); `adapter` is the folder's adapter_config.json, None
    for a baseline; `config` its timm config.json, None when it has none (an MLP head)."""
    row = trial_row(board.frame, document["trial"])
    sections = [
        "---\n" + yaml.safe_dump(front_matter(document, adapter), sort_keys=False) + "---",
        f"# {title(document)}",
        summary(document),
        overview(document, board, row),
        architecture(document, adapter),
        hyperparameters(document, adapter),
        leaderboard_section(document, board, sources),
        hardware(document, board),
        classes_section(document),
        files_section(document, adapter, config),
        quick_start(document, adapter, config),
    ]
    return "\n\n".join(sections) + "\n"


# The front matter ------------------------------------------------------------------------------

def front_matter(document: dict[str, Any], adapter: dict[str, Any] | None) -> dict[str, Any]:
    """The hub's metadata: https://huggingface.co/docs/hub/model-cards#model-card-metadata."""
    metrics, base = document["metrics"], document["base_weights"]
    dataset = dataset_name(document["spec"])
    data: dict[str, Any] = {"library_name": "peft" if adapter else "timm"}
    # Hub ids only: the hub links both fields, and a bare timm name or a local dataset's name
    # would link to nothing or to someone else's repository.
    if base_model(base):
        data["base_model"] = base_model(base)
    if base.get("file"):
        data["base_model_weights"] = {"file": base["file"], "sha256": base["sha256"]}
    if hub_dataset(document["spec"]):
        data["datasets"] = [hub_dataset(document["spec"])]
    data |= {
        "metrics": [name for name, keys in (("accuracy", ("val_acc", "test_acc")), ("f1", ("f1",)),
                                            ("roc_auc", ("auc_micro", "auc_macro")))
                    if any(finite(metrics.get(key)) for key in keys)],
        "tags": ["image-classification", "timm", *(["peft", "lora"] if adapter else []),
                 "optuna", "lora-vit-search"],
        "pipeline_tag": "image-classification",
        "model-index": [{"name": f"{document['study']}-trial-{document['trial']}",
                         "results": model_index_results(metrics, dataset,
                                                        hub_dataset(document["spec"]))}],
    }
    return data


def model_index_results(metrics: dict[str, Any], dataset: str, hub_id: str | None = None
                        ) -> list[dict[str, Any]]:
    """The validation and the test metrics, each split a result of the hub's `model-index`;
    its dataset `type` is the hub id where there is one, else the dataset's own name."""
    splits = {"validation": [("accuracy", "val_acc", "Validation accuracy")],
              "test": [("accuracy", "test_acc", "Test accuracy"),
                       ("f1", "f1", "Test F1 (weighted)"),
                       ("roc_auc", "auc_micro", "Test ROC AUC (micro)"),
                       ("roc_auc", "auc_macro", "Test ROC AUC (macro)")]}
    results = []
    for split, entries in splits.items():
        values = [{"type": kind, "value": round(float(metrics[key]), 4), "name": name}
                  for kind, key, name in entries if finite(metrics.get(key))]
        if values:
            results.append({
                "task": {"type": "image-classification", "name": "Image Classification"},
                "dataset": {"name": dataset, "type": hub_id or dataset, "split": split},
                "metrics": values})
    return results


def base_model(base: dict[str, Any]) -> str | None:
    """The hub id of the weights the trial started from; None for a local file, a random
    initialisation or timm weights served from elsewhere (the card's overview says which)."""
    return base.get("hf_hub_id") if base["source"] == "hub" else None


def hub_dataset(spec: dict[str, Any]) -> str | None:
    """The hub id of the spec's dataset, None for one that is not on the hub."""
    return HUB_DATASETS.get(spec["dataset"])


# The sections ----------------------------------------------------------------------------------

def title(document: dict[str, Any]) -> str:
    method = ", head only" if document["baseline"] else " + LoRA"
    return f"{document['model']}{method} — {dataset_name(document['spec'])}"


def summary(document: dict[str, Any]) -> str:
    metrics, spec = document["metrics"], document["spec"]
    what = (f"The classification head of timm's `{document['model']}`, trained on a frozen "
            "backbone (the study's no-LoRA baseline)" if document["baseline"] else
            f"LoRA ({configuration(document)}) on `{spec['targets']}` of timm's "
            f"`{document['model']}`, with a trained {len(document['classes'])}-class head")
    scores = ", ".join(f"{label} {accuracy(metrics.get(key))}"
                       for label, key in (("validation accuracy", "val_acc"),
                                          ("test accuracy", "test_acc"))
                       if finite(metrics.get(key)))
    return (f"{what}, fine-tuned on `{dataset_name(spec)}` by the hyperparameter study "
            f"`{document['study']}` (trial {document['trial']}): {scores}.")


def overview(document: dict[str, Any], board: Board, row: pd.Series | None) -> str:
    metrics, spec = document["metrics"], document["spec"]
    rows = [("Base model", describe_base(document["base_weights"], spec)),
            ("Dataset", describe_dataset(document, board))]
    if document["baseline"]:
        rows.append(("Method", "frozen backbone, trained classification head (no LoRA)"))
    else:
        rows += [("Method", f"LoRA (peft) on `{spec['targets']}`, classification head trained, "
                            "the rest frozen"),
                 ("Configuration", configuration(document))]
    rows.append(("Chosen", describe_selection(document)))
    if "trainable_params" in metrics and "total_params" in metrics:
        rows.append(("Trainable parameters",
                     f"{metrics['trainable_params']:,} / {metrics['total_params']:,} "
                     f"({metrics['trainable_pct']:.3f}%)"))
    interval = "(no intervals: the study has no verdict)" if board.verdict is None else ""
    rows.append(("Validation accuracy",
                 " ".join(filter(None, [accuracy(metrics.get("val_acc")),
                                        ci(row, "val_ci") or interval,
                                        baseline_gap(document, board.frame, row)]))))
    if finite(metrics.get("test_acc")):
        rows.append(("Test accuracy", " ".join(filter(None, [accuracy(metrics["test_acc"]),
                                                             ci(row, "test_ci")]))))
    for label, key in (("Test F1 (weighted)", "f1"), ("Test ROC AUC (micro)", "auc_micro"),
                       ("Test ROC AUC (macro)", "auc_macro")):
        if finite(metrics.get(key)):
            rows.append((label, accuracy(metrics[key])))
    if "device" in metrics:
        rows.append(("Hardware", metrics["device"]))
    return "## Overview\n\n" + table(["", ""], rows)


def architecture(document: dict[str, Any], adapter: dict[str, Any] | None) -> str:
    spec, metrics = document["spec"], document["metrics"]
    kwargs = ", ".join(f"{key}={value!r}" for key, value in spec["model_kwargs"].items())
    size = spec["image_size"]
    channels = ("grayscale images repeated to 3 channels"
                if dataset_is_grayscale(spec["dataset"]) else "RGB")
    head = (f"Linear -> ReLU -> Linear ({spec['head_hidden']} hidden units) -> "
            f"{len(document['classes'])} classes" if spec["head_hidden"] else
            f"Linear -> {len(document['classes'])} classes")
    lines = [f"- timm `{document['model']}`" + (f" with `{kwargs}`" if kwargs else "")
             + f"; input {size} x {size}, {channels}.",
             f"- Classification head: {head}, trained."]
    if adapter:
        split = any(name in ("q", "k", "v") for name in spec["targets"].split(","))
        lines.append(f"- LoRA adapters on `{spec['targets']}`"
                     + (": timm's fused `qkv` projection of each attention block is split into "
                        "three Linears `q`, `k`, `v` with an adapter each (`model.safetensors` "
                        "has them merged and fused back)" if split else "")
                     + "; every other weight frozen.")
    else:
        lines.append("- Every backbone weight frozen.")
    if "total_params" in metrics:
        lines.append(f"- Parameters: {metrics['total_params']:,} in total, "
                     f"{metrics['trainable_params']:,} trained.")
    return "## Architecture\n\n" + "\n".join(lines)


def hyperparameters(document: dict[str, Any], adapter: dict[str, Any] | None) -> str:
    spec, augment = document["spec"], document["spec"]["augment"]
    parts = ["## Hyperparameters"]
    if adapter:
        rank, alpha = adapter["r"], adapter["lora_alpha"]
        parts += ["### LoRA", table(["", ""], [
            ("rank r", rank), ("alpha", f"{alpha:g}"), ("scaling alpha / r", f"{alpha / rank:g}"),
            ("dropout", f"{adapter['lora_dropout']:g}"), ("target modules", spec["targets"]),
            ("bias", adapter["bias"]),
            ("also trained", ", ".join(adapter.get("modules_to_save") or []) or "-")])]
    precision = ("bf16 autocast on CUDA, float32 on a CPU" if spec["bf16"] else "float32")
    parts += ["### Training", table(["", ""], [
        ("optimizer", f"AdamW, lr {spec['lr']:g}, weight decay {spec['weight_decay']:g}"),
        ("schedule", "cosine annealing per step over all epochs, no warm-up"),
        ("batch size", f"{spec['batch_size']} (evaluation {spec['eval_batch_size']})"),
        ("epochs", spec["epochs"]),
        ("loss", "cross-entropy"),
        ("precision", precision),
        ("torch.compile", "yes" if spec["compile"] else "no"),
        ("seed", spec["seed"] if spec.get("split_seed") is None
         else f"{spec['seed']} (splits: {spec['split_seed']})"),
    ])]
    affine = (augment["affine_degrees"], augment["affine_translate"], list(augment["affine_scale"]))
    brightness, contrast, saturation, hue = augment["color_jitter"]
    parts += ["### Data and augmentation", table(["", ""], [
        ("dataset", f"`{dataset_name(spec)}`"),
        ("image size", f"{spec['image_size']} x {spec['image_size']} ({resizing(spec)})"),
        ("validation", f"{spec['val_fraction']:g} of the training images, held out (stratified, "
                       "seeded)"),
        ("test", f"the dataset's test split; {spec['test_fraction']:g} of the images held out "
                 "for a dataset without one"),
        ("horizontal flip", f"p = {augment['hflip']:g}"),
        ("random crop", f"padding {augment['crop_padding']}" if augment["crop_padding"] else "off"),
        ("random affine", "off" if affine == (0, 0, [1, 1]) else
         f"degrees {affine[0]:g}, translate {affine[1]:g}, "
         f"scale {affine[2][0]:g}-{affine[2][1]:g}"),
        ("colour jitter", f"brightness {brightness:g}, contrast {contrast:g}, "
                          f"saturation {saturation:g}, hue {hue:g}"),
        ("normalisation", f"mean {list(augment['mean'])}, std {list(augment['std'])}"),
    ])]
    return "\n\n".join(parts)


def leaderboard_section(document: dict[str, Any], board: Board, sources: dict[int, str]) -> str:
    """Every complete and pruned trial, best first (`search leaderboard`), then the verdict."""
    frame = board.frame[board.frame["state"].isin(["COMPLETE", "PRUNED"])]
    models = frame["model"].nunique() > 1
    seeds = frame["seed"].nunique() > 1
    headers = ["trial", "search", *(["model"] if models else []), "rank", "alpha", "dropout",
               *(["seed"] if seeds else []), "val acc", "val 95% CI", "test acc",
               "test 95% CI", "trainable", "note"]
    rows = []
    for _, row in frame.iterrows():
        source = sources.get(int(row["number"]), "")
        rows.append([
            row["number"], "**baseline**" if row["baseline"] else source,
            *([row["model"]] if models else []),
            shown(row["rank"]), shown(row["alpha"], "{:g}"), shown(row["dropout"], "{:.3g}"),
            *([shown(row["seed"])] if seeds else []),
            shown(row["val_acc"], "{:.4f}"), interval(row.get("val_ci")),
            shown(row["test_acc"], "{:.4f}"), interval(row.get("test_ci")),
            shown(row["trainable_params"], "{:,}"), note(row, document["trial"])])
    others = len(board.frame) - len(frame)
    text = [f"## Leaderboard: study `{document['study']}`",
            "Every finished trial, best validation accuracy first; the baseline trains the head "
            "alone on the frozen backbone. Intervals are 95% Wilson intervals of each trial's "
            "accuracy.", table(headers, rows)]
    if others:
        text.append(f"{others} more trial(s) neither complete nor pruned (failed, running or "
                    "waiting).")
    text.append("\n".join(f"- {line}" for line in board.lines))
    return "\n\n".join(text)


def hardware(document: dict[str, Any], board: Board) -> str:
    metrics = document["metrics"]
    lines = []
    if "device" in metrics:
        seconds = metrics.get("train_seconds")
        speed = metrics.get("images_per_second")
        lines.append(f"- This trial: {metrics['device']}"
                     + (f", {seconds:.1f} s of training" if finite(seconds) else "")
                     + (f", {speed:.1f} training images/s" if finite(speed) else "") + ".")
    done = board.frame[board.frame["state"] == "COMPLETE"]
    total = done["train_seconds"].dropna()
    if len(total):
        lines.append(f"- The study: {len(done)} complete trial(s), {total.sum():.1f} s of "
                     "training in all.")
    return "## Hardware and time\n\n" + ("\n".join(lines) or "Not recorded.")


def classes_section(document: dict[str, Any]) -> str:
    names = ", ".join(f"`{name}`" for name in document["classes"])
    return (f"## Classes\n\n{len(document['classes'])} classes, in the order of the model's "
            f"outputs (also in `search_export.json`): {names}.")


def files_section(document: dict[str, Any], adapter: dict[str, Any] | None,
                  config: dict[str, Any] | None = None) -> str:
    names = ["README.md", "search_export.json", "model.safetensors",
             *(["config.json"] if config else []),
             *(["adapter_config.json", "adapter_model.safetensors"] if adapter else [])]
    rows = [(f"`{name}`", FILE_ROLES[name]) for name in names]
    base = document["base_weights"]
    if base.get("file"):
        rows.append((f"`{base['file']}`", f"the base model's weights, sha256 `{base['sha256']}`"))
    return ("## Files\n\nThe folder is self-contained (no path outside it is needed) and uploads "
            "to the hub as it is, e.g. `huggingface_hub.upload_folder(folder_path=..., "
            "repo_id=...)`.\n\n" + table(["file", "what"], rows))


# The quick start -------------------------------------------------------------------------------

def quick_start(document: dict[str, Any], adapter: dict[str, Any] | None,
                config: dict[str, Any] | None = None) -> str:
    text = [QUICK_START,
            "Run the code in this folder (e.g. after `git clone` of this repository), or set "
            "`folder` to its path; set `image` to your image file. It needs timm, torch, "
            "safetensors, Pillow and numpy" + (", and peft for the adapter" if adapter else "")
            + ". First, the image preparation the study evaluated with:",
            code_block(prepare_code(document)),
            "The model with timm alone" + (" (LoRA merged into the weights, no peft)"
                                           if adapter else " (the baseline has no adapter)")
            + (TIMM_LOCAL_DIR if config else TIMM_BY_HAND),
            code_block(local_dir_code() if config else timm_code(document)),
            *([TIMM_LOCAL_DIR_NOTES] if config else [])]
    if adapter:
        text += ["Or the LoRA adapter on its base model, with peft:",
                 code_block(peft_code(document, adapter))]
    text.append("Each prints the image's 5 most probable classes, in percent.")
    return "\n\n".join(text)


TIMM_LOCAL_DIR = (
    "; `config.json` gives timm the architecture, its arguments and the classes, so "
    "`local-dir:` (timm 1.0.16 or newer) builds the trained model, head included, from this "
    "folder:")
TIMM_LOCAL_DIR_NOTES = (
    "Once the folder is uploaded, `timm.create_model(\"hf-hub:USER/NAME\", pretrained=True)` "
    "does the same. The config's `pretrained_cfg` holds the input size, mean, std and resize "
    "filter of the preparation above, for `timm.data.resolve_data_config(model=model)`. Not "
    "`timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=...))`: that "
    "drops the trained head, as one sized for the base model's classes, for an untrained one.")
TIMM_BY_HAND = (
    "; no timm model argument builds this MLP head, so this folder has no `config.json` and "
    "`local-dir:` cannot rebuild it: the MLP head replaces timm's before the weights are "
    "loaded:")


def local_dir_code() -> str:
    return "\n".join([
        "import timm",
        "",
        'model = timm.create_model(f"local-dir:{folder}", pretrained=True)  # config.json, '
        "model.safetensors",
        "classify(model.eval(), image)",
    ])


def prepare_code(document: dict[str, Any]) -> str:
    spec = document["spec"]
    size, augment = spec["image_size"], spec["augment"]
    if spec["dataset"].startswith(IMAGEFOLDER):  # its images were PIL-resized when loaded
        decode = [f'    pixels = Image.open(path).convert("RGB").resize(({size}, {size}), '
                  "Image.Resampling.BICUBIC)",
                  "    x = torch.from_numpy(np.array(pixels)).permute(2, 0, 1)[None].float() / 255"]
    elif dataset_is_grayscale(spec["dataset"]):
        decode = ['    pixels = np.array(Image.open(path).convert("L"))  # grayscale, as trained',
                  "    x = (torch.from_numpy(pixels)[None, None].float() / 255)"
                  ".expand(-1, 3, -1, -1)"]
    else:
        decode = ['    pixels = np.array(Image.open(path).convert("RGB"))',
                  "    x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255"]
    return "\n".join([
        "import json",
        "",
        "import numpy as np",
        "import torch",
        "import torch.nn.functional as F",
        "from PIL import Image",
        "",
        'folder = "."  # this folder',
        f'image = "{IMAGE_PLACEHOLDER}"  # the image to classify',
        'classes = json.load(open(f"{folder}/search_export.json"))["classes"]',
        "",
        "",
        "def prepare(path):",
        f'    """The image as a normalised float32 batch of one, [1, 3, {size}, {size}]."""',
        *decode,
        f"    if x.shape[-2:] != ({size}, {size}):",
        f"        x = F.interpolate(x, size=({size}, {size}), mode=\"bilinear\", "
        "align_corners=False, antialias=True)",
        f"    mean = torch.tensor({list(augment['mean'])}).view(1, 3, 1, 1)",
        f"    std = torch.tensor({list(augment['std'])}).view(1, 3, 1, 1)",
        "    return (x - mean) / std",
        "",
        "",
        "def classify(model, path, top=5):",
        '    """Print the `top` most probable classes of the image at `path`, in percent."""',
        "    with torch.no_grad():",
        "        probabilities = model(prepare(path)).softmax(dim=1)[0]",
        "    values, indices = probabilities.topk(min(top, len(classes)))",
        "    for value, index in zip(values.tolist(), indices.tolist()):",
        '        print(f"{classes[index]}: {100 * value:.2f}%")',
    ])


def timm_code(document: dict[str, Any]) -> str:
    spec = document["spec"]
    return "\n".join([
        "import timm",
        *(["from torch import nn"] if spec["head_hidden"] else []),
        "from safetensors.torch import load_file",
        "",
        f"model = timm.create_model({create_arguments(document['model'], spec)})",
        *head_code("model", document, None),
        'model.load_state_dict(load_file(f"{folder}/model.safetensors"))',
        "classify(model.eval(), image)",
    ])


def peft_code(document: dict[str, Any], adapter: dict[str, Any]) -> str:
    spec, base = document["spec"], document["base_weights"]
    split = any(name in ("q", "k", "v") for name in spec["targets"].split(","))
    lines = ["import timm", "import torch", "from peft import PeftModel", "from torch import nn",
             ""]
    if split:
        lines += [
            "",
            "class SplitQKV(nn.Module):",
            '    """timm\'s fused qkv Linear as three Linears q, k, v (the adapters\' layers), '
            'with the same output."""',
            "",
            "    def __init__(self, fused):",
            "        super().__init__()",
            "        dim, bias = fused.out_features // 3, fused.bias is not None",
            "        self.q, self.k, self.v = (nn.Linear(fused.in_features, dim, bias=bias) "
            "for _ in range(3))",
            "        with torch.no_grad():",
            "            for i, part in enumerate((self.q, self.k, self.v)):",
            "                part.weight.copy_(fused.weight[i * dim:(i + 1) * dim])",
            "                if bias:",
            "                    part.bias.copy_(fused.bias[i * dim:(i + 1) * dim])",
            "",
            "    def forward(self, x):",
            "        return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)",
            "",
            ""]
    if base["source"] == "hub":
        name = (base.get("hf_hub_id") or "").removeprefix("timm/") or document["model"]
        arguments = create_arguments(name, spec, "pretrained=True")
        lines.append(f"backbone = timm.create_model({arguments})")
    elif base.get("file"):
        overlay = ('pretrained_cfg_overlay={"file": '
                   f'f"{{folder}}/{base["file"]}", "custom_load": False}}')
        arguments = create_arguments(document["model"], spec, "pretrained=True", overlay)
        lines.append(f"backbone = timm.create_model({arguments})")
    else:
        lines += [f"torch.manual_seed({base['seed']})  # the initialisation it was trained on",
                  f"backbone = timm.create_model({create_arguments(document['model'], spec)})"]
    lines += head_code("backbone", document, adapter)
    if split:
        lines += ["for module in list(backbone.modules()):",
                  '    fused = getattr(module, "qkv", None)',
                  "    if isinstance(fused, nn.Linear) and fused.out_features % 3 == 0:",
                  "        module.qkv = SplitQKV(fused)"]
    lines += ["model = PeftModel.from_pretrained(backbone, folder)  # adapters and trained head",
              "classify(model.eval(), image)"]
    return "\n".join(lines)


def create_arguments(name: str, spec: dict[str, Any], *extra: str) -> str:
    """`timm.create_model`'s arguments for the spec's model, one group a line."""
    kwargs = spec["model_kwargs"]
    named = ", ".join(f"{key}={value!r}" for key, value in kwargs.items())
    if not all(str(key).isidentifier() for key in kwargs):
        named = f"**{kwargs!r}"
    groups = [f'"{name}", num_classes=len(classes)', *extra, *([named] if kwargs else [])]
    return "\n    " + ",\n    ".join(groups) + ",\n"


def head_code(model: str, document: dict[str, Any], adapter: dict[str, Any] | None) -> list[str]:
    """The MLP head of a spec with `head_hidden`, in place of timm's Linear classifier."""
    hidden = document["spec"]["head_hidden"]
    if not hidden:
        return []
    name = ((adapter or {}).get("modules_to_save") or [None])[0] or classifier_name(
        document["model"])
    return [f'head = {model}.get_submodule("{name}")  # an MLP in place of the Linear head',
            f'{model}.set_submodule("{name}", nn.Sequential(',
            f"    nn.Linear(head.in_features, {hidden}), nn.ReLU(), "
            f"nn.Linear({hidden}, len(classes))))"]


def classifier_name(model: str) -> str:
    import timm

    config = timm.models.get_pretrained_cfg(model)
    return getattr(config, "classifier", None) or "head"


def resizing(spec: dict[str, Any]) -> str:
    """How the images were brought to image_size, named by `resize_filter` as config.json
    names it."""
    if resize_filter(spec["dataset"]) == "bicubic":
        return "bicubic, with PIL, as the image files are read"
    return "bilinear, antialiased"


def code_block(code: str) -> str:
    return f"```python\n{code}\n```"


# Formatting ------------------------------------------------------------------------------------

def trial_row(frame: pd.DataFrame, number: int) -> pd.Series | None:
    rows = frame[frame["number"] == number]
    return rows.iloc[0] if len(rows) else None


def baseline_gap(document: dict[str, Any], frame: pd.DataFrame, row: pd.Series | None) -> str:
    """The trial's validation accuracy against the frozen baseline of its model (the baseline
    of its seed, when the study has several)."""
    if document["baseline"] or not finite(document["metrics"].get("val_acc")):
        return ""
    done = frame[(frame["state"] == "COMPLETE") & frame["baseline"]
                 & (frame["model"] == document["model"])]
    if row is not None and len(done[done["seed"] == row["seed"]]):
        done = done[done["seed"] == row["seed"]]
    if done.empty:
        return ""
    base = done.iloc[0]
    gap = 100 * (document["metrics"]["val_acc"] - base["val_acc"])
    return (f"{abs(gap):.1f} pp {'above' if gap >= 0 else 'below'} the frozen baseline "
            f"(trial {base['number']}: {base['val_acc']:.4f})")


def describe_base(base: dict[str, Any], spec: dict[str, Any]) -> str:
    model = f"timm `{base['model']}`"
    if base["source"] == "hub":
        return (f"{model}, pretrained weights from the hub: `{base_model(base)}`"
                if base_model(base) else f"{model}, timm's pretrained weights")
    if base["source"] == "none":
        return f"{model}, not pretrained (random initialisation, seed {base['seed']})"
    origin = ""
    if base["source"] == "export" and base.get("export"):
        exported = base["export"]
        origin = (f", the merged weights of an earlier export (study `{exported.get('study')}`, "
                  f"trial {exported.get('trial')})")
    return (f"{model}, weights from a local file{origin}, included as `{base['file']}` "
            f"(sha256 `{base['sha256']}`)")


def describe_dataset(document: dict[str, Any], board: Board) -> str:
    spec = document["spec"]
    text = f"`{dataset_name(spec)}`"
    if spec["dataset"].startswith(IMAGEFOLDER):
        text = f"a local image folder, {text} (not on the hub)"
    elif spec["dataset"] == "digits":
        text += " (scikit-learn's bundled 8 x 8 digits, not on the hub)"
    elif hub_dataset(spec):
        text += f" (hub: `{hub_dataset(spec)}`)"
    text += f", {len(document['classes'])} classes"
    verdict = board.verdict
    if verdict is not None:
        text += f"; {verdict.best.val.shape[1]:,} validation images"
        if verdict.best.test is not None:
            text += f", {verdict.best.test.shape[1]:,} test images"
    return text


def describe_selection(document: dict[str, Any]) -> str:
    selection = document["selection"]
    pick = f"`--pick {selection['pick']}`: " if selection["pick"] != "trial" else ""
    text = f"trial {document['trial']}, {pick}{selection['why']}"
    if selection["pick"] == "recommended":
        low, high = selection["val_ci"]
        text += (f"; {selection['configuration']} over {selection['seeds']} seed(s) "
                 f"(trials {', '.join(map(str, selection['trials']))}): mean validation accuracy "
                 f"{selection['val_acc_mean']:.4f}, 95% interval {low:.3f}-{high:.3f}; "
                 f"the best: {selection['best']}")
    return text


def configuration(document: dict[str, Any]) -> str:
    params = document["params"]
    return f"rank {params['rank']}, alpha {params['alpha']:g}, dropout {params['dropout']:g}"


def dataset_name(spec: dict[str, Any]) -> str:
    """The spec's dataset; an image folder by its folder's name (the export keeps no path)."""
    name = spec["dataset"]
    return name.removeprefix(IMAGEFOLDER) if name.startswith(IMAGEFOLDER) else name


def note(row: pd.Series, exported: int) -> str:
    notes = ["**exported**"] if row["number"] == exported else []
    if flag(row, "recommended"):
        notes.append("recommended")
    elif flag(row, "tied"):
        notes.append("tied with the best")
    if row["state"] == "PRUNED":
        notes.append(f"pruned after epoch {shown(row['epochs'])}")
    if row["note"]:
        notes.append(row["note"])
    return "; ".join(notes)


def flag(row: pd.Series, column: str) -> bool:
    """A yes/no column of the board; no where it is absent or unset (no verdict)."""
    value = row.get(column)
    return value is not None and not pd.isna(value) and bool(value)


def accuracy(value: Any) -> str:
    return f"{value:.4f}" if finite(value) else "-"


def ci(row: pd.Series | None, column: str) -> str:
    if row is None or not isinstance(row.get(column), list):
        return ""
    low, high = row[column]
    return f"(95% interval {low:.3f}-{high:.3f})"


def interval(value: Any) -> str:
    return f"{value[0]:.3f}-{value[1]:.3f}" if isinstance(value, list) else "-"


def shown(value: Any, pattern: str = "{}") -> str:
    return "-" if value is None or pd.isna(value) else pattern.format(value)


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


