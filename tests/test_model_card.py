"""The export folder as a Hugging Face model repository: its README.md is a filled model card
whose quick start runs, no file in it names a path of the exporting host, and it works (for
`search predict` and for the card's own code) after it is moved elsewhere.

One one-epoch demo study (baseline + one LoRA point); both trials are exported with weights.
The quick start is run as a user runs it: in the folder, with this venv's Python, and only
timm, peft, torch, safetensors, Pillow and numpy importable from it (not this project).
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from PIL import Image
from run_cli import FAST, ROOT, board, search

from search.results.model_card import IMAGE_PLACEHOLDER, QUICK_START

IMAGES = 3  # test-split digits written as PNG files
QUICK_START_MODULES = {"json", "numpy", "torch", "timm", "peft", "safetensors", "PIL"}


@pytest.fixture(scope="module")
def study_folder(tmp_path_factory) -> Path:
    """The finished demo study with its LoRA trial exported to lora/, its baseline to head/,
    and a few test-split digits as PNG files."""
    folder = tmp_path_factory.mktemp("card")
    search("grid", *FAST, "--ranks", "2", "--alphas", "2", "--workers", "1", cwd=folder)
    for row in board(folder):
        name = "head" if row["baseline"] else "lora"
        search("export", "--study", "demo", "--trial", str(row["number"]), "--out",
               f"{name}.json", "--weights", name, cwd=folder)
    for index, image in enumerate(digits_of_test_split(folder)):
        Image.fromarray(image[0].numpy(), mode="L").save(folder / f"digit{index}.png")
    return folder


def digits_of_test_split(folder: Path):
    from objectives.data import load_splits
    from search.study.study_record import StudyRecord

    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{folder / 'search.db'}")
    return list(load_splits(StudyRecord(study).train_spec).test_images[:IMAGES])


def card_of(folder: Path) -> tuple[dict, str]:
    """The README's YAML front matter and its markdown body."""
    text = (folder / "README.md").read_text(encoding="utf-8")
    match = re.match(r"---\n(.*?)\n---\n(.*)", text, re.S)
    assert match, "README.md does not start with YAML front matter"
    return yaml.safe_load(match.group(1)), match.group(2)


def document_of(folder: Path) -> dict:
    return json.loads((folder / "search_export.json").read_text())


def quick_start_blocks(body: str) -> list[str]:
    section = body[body.index(QUICK_START):]
    section = section[:section.find("\n## ", 1)] if "\n## " in section[1:] else section
    return re.findall(r"```python\n(.*?)```", section, re.S)


def files_in(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


def predictions(folder: Path, images: list[Path], cwd: Path) -> list[list[tuple[str, float]]]:
    """`search predict`'s top 5 of each image: (class, percent rounded as the card prints)."""
    out = search("predict", "--model", str(folder), "--format", "json",
                 *map(str, images), cwd=cwd).stdout
    return [[(p["class"], round(100 * p["probability"], 2)) for p in record["predictions"]]
            for record in json.loads(out)]


def moved(folder: Path, root: Path) -> Path:
    """A copy of `folder` moved (shutil.move) under `root`, to a path that names neither the
    study nor the original folder."""
    staging = root / "staging"
    shutil.copytree(folder, staging)
    target = Path(tempfile.mkdtemp(dir=root)) / "model"
    shutil.move(str(staging), str(target))
    return target


@pytest.mark.parametrize("name, library", [("lora", "peft"), ("head", "timm")])
def test_the_card_has_the_hubs_front_matter(study_folder, name, library):
    meta, body = card_of(study_folder / name)
    document = document_of(study_folder / name)
    assert meta["library_name"] == library
    # A local backbone file has no hub id, and scikit-learn's digits are no hub dataset: the
    # text says what they are (tests/test_timm_export.py has the hub's ids).
    assert "base_model" not in meta and "datasets" not in meta
    base = document["base_weights"]
    assert meta["base_model_weights"] == {"file": base["file"], "sha256": base["sha256"]}
    assert meta["pipeline_tag"] == "image-classification"
    assert set(meta["metrics"]) == {"accuracy", "f1", "roc_auc"}
    assert "image-classification" in meta["tags"] and ("lora" in meta["tags"]) == (name == "lora")
    (entry,) = meta["model-index"]
    results = {result["dataset"]["split"]: result for result in entry["results"]}
    assert set(results) == {"validation", "test"}
    for result in results.values():
        assert result["task"]["type"] == "image-classification"
        assert result["dataset"]["type"] == result["dataset"]["name"] == "digits"
    metrics = document["metrics"]
    values = {(split, m["name"]): m["value"] for split, r in results.items() for m in r["metrics"]}
    assert values == {
        ("validation", "Validation accuracy"): round(metrics["val_acc"], 4),
        ("test", "Test accuracy"): round(metrics["test_acc"], 4),
        ("test", "Test F1 (weighted)"): round(metrics["f1"], 4),
        ("test", "Test ROC AUC (micro)"): round(metrics["auc_micro"], 4),
        ("test", "Test ROC AUC (macro)"): round(metrics["auc_macro"], 4)}
    assert "[More Information Needed]" not in body  # peft's template is gone

    hub = pytest.importorskip("huggingface_hub")
    card = hub.ModelCard.load(study_folder / name / "README.md")  # a local file: offline
    assert card.data.library_name == library and card.data.base_model is None
    assert {(e.dataset_split, e.metric_type, e.metric_value) for e in card.data.eval_results} == \
        {(split, m["type"], m["value"]) for split, r in results.items() for m in r["metrics"]}


def test_the_card_shows_what_the_study_measured(study_folder):
    from search.results.leaderboard import study_board

    _, body = card_of(study_folder / "lora")
    document = document_of(study_folder / "lora")
    metrics = document["metrics"]
    assert body.startswith("\n# vit_tiny_patch16_224 + LoRA — digits\n")
    for section in ("Overview", "Architecture", "Hyperparameters", "Leaderboard: study `demo`",
                    "Hardware and time", "Classes", "Files", "Quick start"):
        assert f"\n## {section}" in body, section
    assert f"validation accuracy {metrics['val_acc']:.4f}, test accuracy " \
           f"{metrics['test_acc']:.4f}" in body
    assert (f"| Trainable parameters | {metrics['trainable_params']:,} / "
            f"{metrics['total_params']:,} ({metrics['trainable_pct']:.3f}%) |") in body
    params = document["params"]
    assert f"| rank r | {params['rank']} |" in body and f"| alpha | {params['alpha']:g} |" in body
    assert f"| scaling alpha / r | {params['alpha'] / params['rank']:g} |" in body
    assert f"trial {document['trial']}, {document['selection']['why']}" in body
    assert metrics["device"] in body

    # The leaderboard: every trial, best first, the baseline marked, intervals and verdict.
    study = optuna.load_study(study_name="demo",
                              storage=f"sqlite:///{study_folder / 'search.db'}")
    board_ = study_board(study, by="trial")
    rows = [line for line in body.splitlines() if re.match(r"\| \d+ \|", line)]
    assert [int(line.split("|")[1]) for line in rows] == board_.frame["number"].tolist()
    for line, (_, row) in zip(rows, board_.frame.iterrows(), strict=True):
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert cells[1] == ("**baseline**" if row["baseline"] else "grid")
        assert f"{row['val_acc']:.4f}" in cells and f"{row['test_acc']:.4f}" in cells
        low, high = row["val_ci"]
        assert f"{low:.3f}-{high:.3f}" in cells
        assert ("**exported**" in cells[-1]) == (row["number"] == document["trial"])
    for line in board_.lines:
        assert f"- {line}" in body
    low, high = board_.frame.set_index("number").loc[document["trial"], "test_ci"]
    assert f"(95% interval {low:.3f}-{high:.3f})" in body
    assert ", ".join(f"`{name}`" for name in document["classes"]) in body


def test_a_card_without_a_verdict_says_so(study_folder):
    # A study made before trials stored their outcomes has no verdict (search.results.verdict).
    from search.results.leaderboard import Board, leaderboard
    from search.results.model_card import render_card

    study = optuna.load_study(study_name="demo",
                              storage=f"sqlite:///{study_folder / 'search.db'}")
    reason = "no verdict: trial 0 has no stored outcomes"
    board_ = Board(leaderboard(study), ["best LoRA: ...", reason], "trial")
    adapter = json.loads((study_folder / "lora" / "adapter_config.json").read_text())
    card = render_card(document_of(study_folder / "lora"), board_, {}, adapter)
    assert "(no intervals: the study has no verdict)" in card and f"- {reason}" in card
    assert "95% interval" not in card


def run_quick_start(folder: Path, image: Path) -> list[list[tuple[str, float]]]:
    """Each way the card's quick start loads the model (its first block, the preparation,
    followed by each other block), run in `folder`; what each printed."""
    _, body = card_of(folder)
    first, *others = quick_start_blocks(body)
    outputs = []
    for block in others:
        code = f"{first}\n{block}".replace(IMAGE_PLACEHOLDER, str(image))
        imported = {alias.name.split(".")[0] for node in ast.walk(ast.parse(code))
                    if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(ast.parse(code))
                     if isinstance(node, ast.ImportFrom)}
        assert imported <= QUICK_START_MODULES, imported
        # -I: no PYTHONPATH, no current folder on sys.path; the imports are checked above.
        result = subprocess.run([sys.executable, "-I", "-c", code], cwd=folder,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.strip().splitlines()
        outputs.append([(name, float(percent.rstrip("%")))
                        for name, percent in (line.rsplit(": ", 1) for line in lines)])
    return outputs


@pytest.mark.parametrize("name, ways", [("lora", 2), ("head", 1)])
def test_the_quick_start_runs_in_the_moved_folder_as_search_predict_does(
        study_folder, tmp_path, name, ways):
    folder = moved(study_folder / name, tmp_path)
    image = study_folder / "digit0.png"
    outputs = run_quick_start(folder, image)
    assert len(outputs) == ways  # timm alone, and peft when there is an adapter
    (expected,) = predictions(folder, [image], cwd=tmp_path)
    for printed in outputs:
        assert [c for c, _ in printed] == [c for c, _ in expected]
        np.testing.assert_allclose([p for _, p in printed], [p for _, p in expected], atol=0.011)


def test_no_exported_file_names_a_path_of_the_exporting_host(study_folder):
    host_paths = {str(ROOT), str(study_folder), str(Path(tempfile.gettempdir()).resolve()) + "/",
                  str(Path.home()) + "/"}
    for name in ("lora", "head"):
        for path in files_in(study_folder / name):
            data = path.read_bytes()
            for host_path in host_paths:
                assert host_path.encode() not in data, f"{path} names {host_path}"
            if path.suffix in (".json", ".yaml", ".md", ".txt"):
                data.decode("utf-8")  # a text file the hub shows
        document = document_of(study_folder / name)
        base = document["base_weights"]
        assert document["spec"]["weights"] == base["file"] == \
            "base_weights/demo-vit-tiny-mnist.safetensors"
        original = ROOT / "studies" / "weights" / "demo-vit-tiny-mnist.safetensors"
        from objectives.export_model import sha256_of

        assert base["sha256"] == sha256_of(original)
        assert (study_folder / name / base["file"]).read_bytes() == original.read_bytes()
        # The --out document keeps the study's own spec, with the backbone where it was.
        out = json.loads((study_folder / f"{name}.json").read_text())
        assert out["spec"]["weights"] == str(original)


def test_search_predict_works_after_the_folder_is_moved(study_folder, tmp_path):
    images = [study_folder / f"digit{index}.png" for index in range(IMAGES)]
    expected = predictions(study_folder / "lora", images, cwd=study_folder)
    folder = moved(study_folder / "lora", tmp_path)
    assert predictions(folder, images, cwd=tmp_path) == expected
    # Without the merged weights, the adapter goes on the folder's own copy of the backbone.
    (folder / "model.safetensors").unlink()
    adapter_only = predictions(folder, images, cwd=tmp_path)
    for got, want in zip(adapter_only, expected, strict=True):
        assert [c for c, _ in got] == [c for c, _ in want]
        np.testing.assert_allclose([p for _, p in got], [p for _, p in want], atol=0.011)
    (folder / "base_weights" / "demo-vit-tiny-mnist.safetensors").unlink()
    result = search("predict", "--model", str(folder), str(images[0]), cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert "base_weights/demo-vit-tiny-mnist.safetensors" in result.stderr


def test_the_folder_uploads_to_the_hub_as_it_is(study_folder):
    hub = pytest.importorskip("huggingface_hub")
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

    for name in ("lora", "head"):
        folder = study_folder / name
        assert (folder / "README.md").is_file()
        entries = list(folder.rglob("*"))
        assert not any(entry.is_symlink() for entry in entries)
        assert all(entry.resolve().is_relative_to(folder.resolve()) for entry in entries)
        relative = [path.relative_to(folder).as_posix() for path in files_in(folder)]
        # upload_folder's default filter keeps every file.
        assert list(filter_repo_objects(relative, ignore_patterns=DEFAULT_IGNORE_PATTERNS)) == \
            relative
        expected = {"README.md", "search_export.json", "model.safetensors", "config.json",
                    "base_weights/demo-vit-tiny-mnist.safetensors"}
        if name == "lora":
            expected |= {"adapter_config.json", "adapter_model.safetensors"}
        assert set(relative) == expected
        # What upload_folder commits, built offline: each file's path and content hash.
        operations = {path: hub.CommitOperationAdd(path_in_repo=path,
                                                   path_or_fileobj=str(folder / path))
                      for path in relative}
        base = document_of(folder)["base_weights"]
        assert operations[base["file"]].upload_info.sha256.hex() == base["sha256"]


def test_base_weights_without_a_local_file_are_named_not_copied(tmp_path):
    from objectives.export_model import copy_base_weights
    from objectives.spec import TrainSpec
    from search.results.model_card import peft_code

    hub = copy_base_weights(TrainSpec(model="vit_small_patch16_224"), tmp_path)
    assert hub == {"model": "vit_small_patch16_224", "source": "hub",
                   "hf_hub_id": "timm/vit_small_patch16_224.augreg_in21k_ft_in1k"}
    random = copy_base_weights(TrainSpec(pretrained=False, seed=3,
                                         weights=str(tmp_path / "ignored.safetensors")), tmp_path)
    assert random == {"model": "vit_small_patch16_224", "source": "none", "seed": 3}
    assert not any(tmp_path.iterdir())
    document = {"model": "vit_small_patch16_224", "base_weights": hub,
                "spec": {**TrainSpec().to_dict(), "weights": None}}
    code = peft_code(document, {"modules_to_save": ["head"]})
    assert '"vit_small_patch16_224.augreg_in21k_ft_in1k", num_classes=len(classes)' in code
    assert "pretrained=True" in code and "pretrained_cfg_overlay" not in code


def test_the_exported_spec_keeps_no_dataset_path():
    from objectives.spec import TrainSpec
    from search.results.export import portable_document

    spec = TrainSpec(dataset="imagefolder:/srv/images/flowers", data_dir="/srv/torchvision",
                     weights="/srv/weights/backbone.safetensors").to_dict()
    base = {"model": spec["model"], "source": "file", "file": "base_weights/backbone.safetensors",
            "sha256": "0" * 64}
    document = portable_document({"spec": spec, "trial": 1}, base)
    assert document["spec"]["dataset"] == "imagefolder:flowers"
    assert document["spec"]["data_dir"] == "torchvision"
    assert document["spec"]["weights"] == "base_weights/backbone.safetensors"
    assert document["base_weights"] == base and "/srv" not in json.dumps(document)


def test_the_peft_quick_start_splits_qkv_with_the_code_training_uses():
    # One source: the card carries objectives/split_qkv.py's own code, not a copy of it (the
    # quick start test above runs it without this project importable).
    import inspect

    from objectives import split_qkv
    from objectives.spec import TrainSpec
    from search.results.model_card import peft_code

    spec = TrainSpec(targets="q,k,v", pretrained=False, seed=3)
    document = {"model": spec.model, "spec": spec.to_dict(),
                "base_weights": {"model": spec.model, "source": "none", "seed": 3}}
    code = peft_code(document, {"modules_to_save": ["head"]})
    assert inspect.getsource(split_qkv.SplitQKV) in code
    assert inspect.getsource(split_qkv.split_qkv) in code
    assert "split_qkv(backbone)" in code and "torch.manual_seed(3)" in code
    fused_only = peft_code({**document, "spec": TrainSpec(targets="qkv").to_dict()}, {})
    assert "SplitQKV" not in fused_only and "split_qkv" not in fused_only


@pytest.mark.parametrize("use_rslora, use_dora, scaling, variant", [
    (False, False, "| scaling alpha / r | 2 |", None),
    (True, False, "| scaling alpha / sqrt(r) (rsLoRA) | 4 |", "rsLoRA"),
    (False, True, "| scaling alpha / r | 2 |", "DoRA")])
def test_the_card_says_how_the_exported_adapters_scale(use_rslora, use_dora, scaling, variant):
    from objectives.spec import TrainSpec
    from search.results.card_sections import configuration, hyperparameters

    adapter = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "bias": "none",
               "modules_to_save": ["head"], "use_rslora": use_rslora, "use_dora": use_dora}
    document = {"spec": TrainSpec().to_dict(),
                "params": {"rank": 4, "alpha": 8.0, "dropout": 0.1,
                           **({"scaling": variant.lower()} if variant else {})}}
    text = hyperparameters(document, adapter)
    assert scaling in text and ("| variant | DoRA:" in text) == use_dora
    assert configuration(document) == "rank 4, alpha 8, dropout 0.1" + (
        f", {variant}" if variant else "")
