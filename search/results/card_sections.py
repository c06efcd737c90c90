"""What the model card's sections say (`search.results.model_card` lays them out with its
template, `card_templates/model_card.md`): the trial, its training, its study's leaderboard.

Each function is given the export document (`search.results.export`: the trial's metrics, its
spec, why it was picked, where its base weights came from) and, where it needs it, the study's
leaderboard with its verdict (`search.results.leaderboard.study_board`). A figure the study did
not measure is left out, never filled in.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from objectives.data import IMAGEFOLDER, dataset_is_grayscale
from objectives.export_folder import resize_filter
from search.results.intervals import format_interval
from search.results.leaderboard import Board
from search.results.markdown import table
from search.results.point_columns import COLUMNS as EXTRA_COLUMNS
from search.results.point_columns import format_lr, own_parts
from search.study.space import point_of

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
TEST_METRICS = (("Test F1 (weighted)", "f1"), ("Test ROC AUC (micro)", "auc_micro"),
                ("Test ROC AUC (macro)", "auc_macro"))


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


def overview(document: dict[str, Any], board: Board) -> str:
    metrics, spec = document["metrics"], document["spec"]
    row = trial_row(board.frame, document["trial"])
    rows = [("Base model", describe_base(document["base_weights"])),
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
    rows += [(label, accuracy(metrics[key])) for label, key in TEST_METRICS
             if finite(metrics.get(key))]
    if "device" in metrics:
        rows.append(("Hardware", metrics["device"]))
    return table(["", ""], rows)


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
        lines.append(f"- LoRA adapters on `{spec['targets']}`"
                     + (": timm's fused `qkv` projection of each attention block is split into "
                        "three Linears `q`, `k`, `v` with an adapter each (`model.safetensors` "
                        "has them merged and fused back)" if splits_qkv(spec) else "")
                     + "; every other weight frozen.")
    else:
        lines.append("- Every backbone weight frozen.")
    if "total_params" in metrics:
        lines.append(f"- Parameters: {metrics['total_params']:,} in total, "
                     f"{metrics['trainable_params']:,} trained.")
    return "\n".join(lines)


DORA = ("DoRA: each adapted weight's magnitude trained apart from its direction, the adapters "
        "updating the direction")


def scaling_row(adapter: dict[str, Any]) -> tuple[str, str]:
    """How the adapters' update B A is scaled, as peft's adapter_config.json says it trained:
    alpha / sqrt(r) with rsLoRA (`use_rslora`), else alpha / r (LoRA's, and DoRA's)."""
    rank, alpha = adapter["r"], adapter["lora_alpha"]
    if adapter.get("use_rslora"):
        return "scaling alpha / sqrt(r) (rsLoRA)", f"{alpha / math.sqrt(rank):g}"
    return "scaling alpha / r", f"{alpha / rank:g}"


def hyperparameters(document: dict[str, Any], adapter: dict[str, Any] | None) -> str:
    """The LoRA (with an adapter), training and data tables, each under its heading."""
    spec, augment = document["spec"], document["spec"]["augment"]
    parts = []
    if adapter:
        rank, alpha = adapter["r"], adapter["lora_alpha"]
        parts += ["### LoRA", table(["", ""], [
            ("rank r", rank), ("alpha", f"{alpha:g}"), scaling_row(adapter),
            *([("variant", DORA)] if adapter.get("use_dora") else []),
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


def finished_trials(board: Board) -> pd.DataFrame:
    """The leaderboard's rows: every complete and pruned trial, best first."""
    return board.frame[board.frame["state"].isin(["COMPLETE", "PRUNED"])]


def leaderboard_table(document: dict[str, Any], board: Board, sources: dict[int, str]) -> str:
    """`search leaderboard`'s finished trials; how each came into the study from `sources`."""
    frame = finished_trials(board)
    models = frame["model"].nunique() > 1
    seeds = frame["seed"].nunique() > 1
    extras = [column for column in EXTRA_COLUMNS if column in frame]  # where the study has them
    headers = ["trial", "search", *(["model"] if models else []), "rank", "alpha", "dropout",
               *extras, *(["seed"] if seeds else []), "val acc", "val 95% CI", "test acc",
               "test 95% CI", "trainable", "note"]
    rows = []
    for _, row in frame.iterrows():
        source = sources.get(int(row["number"]), "")
        rows.append([
            row["number"], "**baseline**" if row["baseline"] else source,
            *([row["model"]] if models else []),
            shown(row["rank"]), shown(row["alpha"], "{:g}"), shown(row["dropout"], "{:.3g}"),
            *(extra_cell(column, row[column]) for column in extras),
            *([shown(row["seed"])] if seeds else []),
            shown(row["val_acc"], "{:.4f}"), format_interval(row.get("val_ci")),
            shown(row["test_acc"], "{:.4f}"), format_interval(row.get("test_ci")),
            shown(row["trainable_params"], "{:,}"), note(row, document["trial"])])
    return table(headers, rows)


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
    return "\n".join(lines) or "Not recorded."


def files_table(document: dict[str, Any], adapter: dict[str, Any] | None,
                config: dict[str, Any] | None) -> str:
    names = ["README.md", "search_export.json", "model.safetensors",
             *(["config.json"] if config else []),
             *(["adapter_config.json", "adapter_model.safetensors"] if adapter else [])]
    rows = [(f"`{name}`", FILE_ROLES[name]) for name in names]
    base = document["base_weights"]
    if base.get("file"):
        rows.append((f"`{base['file']}`", f"the base model's weights, sha256 `{base['sha256']}`"))
    return table(["file", "what"], rows)


# What the sections describe --------------------------------------------------------------------

def base_model(base: dict[str, Any]) -> str | None:
    """The hub id of the weights the trial started from; None for a local file, a random
    initialisation or timm weights served from elsewhere (the card's overview says which)."""
    return base.get("hf_hub_id") if base["source"] == "hub" else None


def hub_dataset(spec: dict[str, Any]) -> str | None:
    """The hub id of the spec's dataset, None for one that is not on the hub."""
    return HUB_DATASETS.get(spec["dataset"])


def dataset_name(spec: dict[str, Any]) -> str:
    """The spec's dataset; an image folder by its folder's name (the export keeps no path)."""
    name = spec["dataset"]
    return name.removeprefix(IMAGEFOLDER) if name.startswith(IMAGEFOLDER) else name


def splits_qkv(spec: dict[str, Any]) -> bool:
    """Whether the adapters sit on q, k, v of timm's split fused projection (`SplitQKV`)."""
    return any(name in ("q", "k", "v") for name in spec["targets"].split(","))


def describe_base(base: dict[str, Any]) -> str:
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
        text += (f"; {selection['configuration']} over {selection['seeds']} seed(s) "
                 f"(trials {', '.join(map(str, selection['trials']))}): mean validation accuracy "
                 f"{selection['val_acc_mean']:.4f}, 95% interval "
                 f"{format_interval(selection['val_ci'])}; the best: {selection['best']}")
    return text


def configuration(document: dict[str, Any]) -> str:
    """"rank 8, alpha 8, dropout 0.1", and what the exported point sets beside them (its lr,
    its layers, rsLoRA or DoRA: `search.results.point_columns.own_parts`)."""
    params = document["params"]
    return ", ".join([f"rank {params['rank']}, alpha {params['alpha']:g}, "
                      f"dropout {params['dropout']:g}", *own_parts(point_of(params))])


def resizing(spec: dict[str, Any]) -> str:
    """How the images were brought to image_size, named by `resize_filter` as config.json
    names it."""
    if resize_filter(spec["dataset"]) == "bicubic":
        return "bicubic, with PIL, as the image files are read"
    return "bilinear, antialiased"


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


# Formatting ------------------------------------------------------------------------------------

def trial_row(frame: pd.DataFrame, number: int) -> pd.Series | None:
    rows = frame[frame["number"] == number]
    return rows.iloc[0] if len(rows) else None


def flag(row: pd.Series, column: str) -> bool:
    """A yes/no column of the board; no where it is absent or unset (no verdict)."""
    value = row.get(column)
    return value is not None and not pd.isna(value) and bool(value)


def accuracy(value: Any) -> str:
    return f"{value:.4f}" if finite(value) else "-"


def ci(row: pd.Series | None, column: str) -> str:
    if row is None or not isinstance(row.get(column), list):
        return ""
    return f"(95% interval {format_interval(row[column])})"


def extra_cell(column: str, value: Any) -> str:
    if value is None or pd.isna(value):
        return "-"
    return format_lr(value) if column == "lr" else str(value)


def shown(value: Any, pattern: str = "{}") -> str:
    return "-" if value is None or pd.isna(value) else pattern.format(value)


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
