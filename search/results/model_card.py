"""The model card: README.md of the folder `search export --weights DIR` writes.

The Hugging Face hub shows a model repository's README.md as its page and reads its YAML front
matter (library, base model, dataset, tags, `model-index` results), so the export folder,
uploaded as it is, is a complete model repository. The front matter is huggingface_hub's
`ModelCardData` with an `EvalResult` per reported metric; the text is the Jinja template
`card_templates/model_card.md`, filled with what `search.results.card_sections` says of the
trial and its study (from what the study stored and nothing else).

Its quick start is code a user runs in the folder (e.g. after `git clone` of the uploaded
repository), with timm, peft, torch, safetensors, Pillow and numpy only: not this project.
Its code blocks are the macros of `card_templates/quick_start_code.jinja`; where the adapters
sit on q, k and v, the peft block carries the source of `objectives.split_qkv`, the code that
split them in training. `tests/test_model_card.py` extracts those blocks from a generated card
and runs them, so the card's own example cannot fall behind the files it describes.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from optuna.trial import FrozenTrial

from objectives import split_qkv
from objectives.data import IMAGEFOLDER, dataset_is_grayscale
from search.results.card_sections import (
    architecture,
    base_model,
    dataset_name,
    files_table,
    finished_trials,
    finite,
    hardware,
    hub_dataset,
    hyperparameters,
    leaderboard_table,
    overview,
    splits_qkv,
    summary,
    title,
)
from search.results.leaderboard import Board
from search.study.trials import configuration_key, is_baseline

TEMPLATES = Path(__file__).with_name("card_templates")
QUICK_START = "## Quick start"
# What the quick start's code says where a user puts their image; a test substitutes it.
IMAGE_PLACEHOLDER = "path/to/image.png"
# The hub's metric types of the card's metrics, by the split they were measured on.
REPORTED = {"validation": [("accuracy", "val_acc", "Validation accuracy")],
            "test": [("accuracy", "test_acc", "Test accuracy"),
                     ("f1", "f1", "Test F1 (weighted)"),
                     ("roc_auc", "auc_micro", "Test ROC AUC (micro)"),
                     ("roc_auc", "auc_macro", "Test ROC AUC (macro)")]}


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
    card = ModelCard.from_template(
        card_data(document, adapter),
        template_path=TEMPLATES / "model_card.md",
        title=title(document),
        summary=summary(document),
        overview=overview(document, board),
        architecture=architecture(document, adapter),
        hyperparameters=hyperparameters(document, adapter),
        study=document["study"],
        leaderboard=leaderboard_table(document, board, sources),
        unfinished=len(board.frame) - len(finished_trials(board)),
        verdict_lines=board.lines,
        hardware=hardware(document, board),
        classes=document["classes"],
        files=files_table(document, adapter, config),
        quick_start=quick_start(document, adapter, config))
    # Jinja drops a template's last newline; a text file ends with one.
    return f"{card.content}\n"


# The front matter ------------------------------------------------------------------------------

def card_data(document: dict[str, Any], adapter: dict[str, Any] | None) -> ModelCardData:
    """The hub's metadata: https://huggingface.co/docs/hub/model-cards#model-card-metadata."""
    metrics, base, spec = document["metrics"], document["base_weights"], document["spec"]
    extra = ({"base_model_weights": {"file": base["file"], "sha256": base["sha256"]}}
             if base.get("file") else {})
    return ModelCardData(
        library_name="peft" if adapter else "timm",
        # Hub ids only: the hub links both fields, and a bare timm name or a local dataset's
        # name would link to nothing or to someone else's repository.
        base_model=base_model(base),
        datasets=[hub_dataset(spec)] if hub_dataset(spec) else None,
        metrics=[name for name, keys in (("accuracy", ("val_acc", "test_acc")), ("f1", ("f1",)),
                                         ("roc_auc", ("auc_micro", "auc_macro")))
                 if any(finite(metrics.get(key)) for key in keys)],
        tags=["image-classification", "timm", *(["peft", "lora"] if adapter else []),
              "optuna", "lora-vit-search"],
        pipeline_tag="image-classification",
        model_name=f"{document['study']}-trial-{document['trial']}",
        eval_results=eval_results(metrics, dataset_name(spec), hub_dataset(spec)),
        **extra)


def front_matter(document: dict[str, Any], adapter: dict[str, Any] | None) -> dict[str, Any]:
    """The card's YAML front matter, as the hub reads it (`model-index` included)."""
    return card_data(document, adapter).to_dict()


def eval_results(metrics: dict[str, Any], dataset: str, hub_id: str | None) -> list[EvalResult]:
    """The validation and the test metrics, each split a result of the hub's `model-index`;
    its dataset `type` is the hub id where there is one, else the dataset's own name."""
    return [EvalResult(task_type="image-classification", task_name="Image Classification",
                       dataset_type=hub_id or dataset, dataset_name=dataset, dataset_split=split,
                       metric_type=kind, metric_name=name,
                       metric_value=round(float(metrics[key]), 4))
            for split, entries in REPORTED.items() for kind, key, name in entries
            if finite(metrics.get(key))]


# The quick start -------------------------------------------------------------------------------

@cache
def code_environment() -> jinja2.Environment:
    """The quick start's templates: a line of a code block's template is a line of its code
    (a tag's own line leaves nothing), and a value left out is an error, not a blank."""
    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), trim_blocks=True,
                              lstrip_blocks=True, undefined=jinja2.StrictUndefined,
                              autoescape=False)


def code_blocks() -> Any:
    """The macros of quick_start_code.jinja, one per code block."""
    return code_environment().get_template("quick_start_code.jinja").module


def quick_start(document: dict[str, Any], adapter: dict[str, Any] | None,
                config: dict[str, Any] | None = None) -> str:
    """The quick start section; with `config`, timm rebuilds the model from the folder alone."""
    return code_environment().get_template("quick_start.md").render(
        adapter=bool(adapter), local_dir=bool(config), prepare_code=prepare_code(document),
        timm_code=str(code_blocks().local_dir()) if config else timm_code(document),
        peft_code=peft_code(document, adapter) if adapter else "")


def prepare_code(document: dict[str, Any]) -> str:
    spec = document["spec"]
    augment = spec["augment"]
    decode = ("imagefolder" if spec["dataset"].startswith(IMAGEFOLDER)
              else "grayscale" if dataset_is_grayscale(spec["dataset"]) else "rgb")
    return str(code_blocks().prepare(IMAGE_PLACEHOLDER, spec["image_size"],
                                     list(augment["mean"]), list(augment["std"]), decode))


def timm_code(document: dict[str, Any]) -> str:
    """timm alone, the MLP head put in by hand: a folder without config.json."""
    spec = document["spec"]
    return str(code_blocks().timm_by_hand(document["model"], model_arguments(spec),
                                          head_name(document, None), spec["head_hidden"]))


def peft_code(document: dict[str, Any], adapter: dict[str, Any]) -> str:
    """The adapter on the base model the trial started from, rebuilt as training built it."""
    spec, base = document["spec"], document["base_weights"]
    name = document["model"]
    if base["source"] == "hub":
        name = (base.get("hf_hub_id") or "").removeprefix("timm/") or name
    weights_file = None if base["source"] == "hub" else base.get("file")
    pretrained = base["source"] == "hub" or bool(weights_file)
    source = ("\n\n\n".join(inspect.getsource(code).rstrip() for code in
                            (split_qkv.SplitQKV, split_qkv.split_qkv))
              if splits_qkv(spec) else "")
    return str(code_blocks().peft(
        name, pretrained, weights_file, None if pretrained else base["seed"],
        model_arguments(spec), head_name(document, adapter), spec["head_hidden"], source))


def model_arguments(spec: dict[str, Any]) -> str:
    """The spec's model_kwargs as `timm.create_model` arguments ("" for none)."""
    kwargs = spec["model_kwargs"]
    if not all(str(key).isidentifier() for key in kwargs):
        return f"**{kwargs!r}"
    return ", ".join(f"{key}={value!r}" for key, value in kwargs.items())


def head_name(document: dict[str, Any], adapter: dict[str, Any] | None) -> str | None:
    """The classifier an MLP head replaces: the adapter's trained module, else timm's own."""
    if not document["spec"]["head_hidden"]:
        return None
    return ((adapter or {}).get("modules_to_save") or [None])[0] or classifier_name(
        document["model"])


def classifier_name(model: str) -> str:
    import timm

    config = timm.models.get_pretrained_cfg(model)
    return getattr(config, "classifier", None) or "head"
