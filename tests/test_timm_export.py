"""The export folder as a timm model repository: its config.json makes
`timm.create_model("local-dir:DIR", pretrained=True)` (and `"hf-hub:USER/NAME"` once uploaded)
build the trained model as it is, head and class names included, and its card's metadata names
only what the hub can link.

One one-epoch demo study (baseline + one LoRA point), both trials exported; timm loads each
moved folder in a fresh process that cannot import this project, and must classify as
`search predict` does. The rest builds small models without pretrained weights (no study).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import optuna
import pytest
import timm
import torch
from PIL import Image
from run_cli import FAST, board, search
from safetensors.torch import save_file

from objectives.augment import eval_batch
from objectives.export_folder import TIMM_CONFIG
from objectives.export_model import write_model_folder, write_timm_config
from objectives.inference import read_image
from objectives.model import build_model
from objectives.spec import LoraParams, TrainSpec
from search.results.model_card import front_matter, hyperparameters, quick_start

IMAGES = 3  # test-split digits written as PNG files
TOP = 5
DEMO_KWARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 3}
HUB_ID = "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"
# A fresh interpreter (-I: no PYTHONPATH, nothing of this project importable) that loads the
# model by the name in argv[1] and prints the top classes, by the model's own label names, of
# the prepared images in argv[2].
LOAD_AND_CLASSIFY = f"""
import json, sys
import timm, torch
from safetensors.torch import load_file

model = timm.create_model(sys.argv[1], pretrained=True).eval()
labels = model.pretrained_cfg["label_names"]
with torch.no_grad():
    probabilities = model(load_file(sys.argv[2])["images"]).softmax(dim=1)
values, indices = probabilities.topk({TOP}, dim=1)
print(json.dumps([[(labels[i], v) for v, i in zip(row_v, row_i)]
                  for row_v, row_i in zip(values.tolist(), indices.tolist())]))
"""


@pytest.fixture(scope="module")
def study_folder(tmp_path_factory) -> Path:
    """The finished demo study, its LoRA trial exported to lora/ and its baseline to head/,
    and a few test-split digits as PNG files."""
    folder = tmp_path_factory.mktemp("timm_export")
    search("grid", *FAST, "--ranks", "2", "--alphas", "2", "--workers", "1", cwd=folder)
    for row in board(folder):
        name = "head" if row["baseline"] else "lora"
        search("export", "--study", "demo", "--trial", str(row["number"]), "--out",
               f"{name}.json", "--weights", name, cwd=folder)
    from objectives.data import load_splits
    from search.study.study_record import StudyRecord

    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{folder / 'search.db'}")
    for index, image in enumerate(load_splits(StudyRecord(study).train_spec).test_images[:IMAGES]):
        Image.fromarray(image[0].numpy(), mode="L").save(folder / f"digit{index}.png")
    return folder


def exported_spec(folder: Path) -> TrainSpec:
    from search.study.study_spec import train_spec_from_dict

    document = json.loads((folder / "search_export.json").read_text())
    return train_spec_from_dict({**document["spec"], "weights": None}, "test")


def prepared_images(folder: Path, images: list[Path], file: Path) -> Path:
    """The images as `search predict` feeds them to the model (decoded, resized, normalised),
    saved to `file` for a process without this project."""
    spec = exported_spec(folder)
    batch = torch.stack([read_image(path, spec) for path in images])
    save_file({"images": eval_batch(batch, spec.augment, spec.image_size).contiguous()},
              str(file))
    return file


def predictions(folder: Path, images: list[Path], cwd: Path) -> list[list[tuple[str, float]]]:
    out = search("predict", "--model", str(folder), "--format", "json", "--top-k", str(TOP),
                 *map(str, images), cwd=cwd).stdout
    return [[(p["class"], p["probability"]) for p in record["predictions"]]
            for record in json.loads(out)]


def moved(folder: Path, root: Path) -> Path:
    """A copy of `folder` moved under `root`, to a path naming neither the study nor it."""
    target = Path(tempfile.mkdtemp(dir=root)) / "model"
    shutil.move(str(shutil.copytree(folder, root / "staging")), str(target))
    return target


def as_hub_cache(folder: Path, root: Path, repo: str) -> Path:
    """A Hugging Face hub cache under `root` holding `folder` as the main revision of the model
    repository `repo`: what `hf_hub_download` finds offline after the folder was uploaded as it
    is and downloaded."""
    commit = "0" * 40
    repository = root / ("models--" + repo.replace("/", "--"))
    (repository / "refs").mkdir(parents=True)
    (repository / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repository / "snapshots" / commit)
    return root


def classify_in_fresh_process(name: str, images: Path, cwd: Path, env: dict[str, str]
                              ) -> list[list[tuple[str, float]]]:
    result = subprocess.run([sys.executable, "-I", "-c", LOAD_AND_CLASSIFY, name, str(images)],
                            cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return [[(label, value) for label, value in row] for row in json.loads(result.stdout)]


@pytest.mark.parametrize("name", ["lora", "head"])
@pytest.mark.parametrize("source", ["local-dir", "hf-hub"])
def test_timm_loads_the_moved_export_as_search_predict_classifies(
        study_folder, tmp_path, name, source):
    folder = moved(study_folder / name, tmp_path)
    images = [study_folder / f"digit{index}.png" for index in range(IMAGES)]
    prepared = prepared_images(folder, images, tmp_path / "images.safetensors")
    env = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
    if source == "local-dir":
        model = f"local-dir:{folder}"
    else:
        model = "hf-hub:someone/digits"
        cache = as_hub_cache(folder, tmp_path / "hub", "someone/digits")
        env |= {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    loaded = classify_in_fresh_process(model, prepared, tmp_path, env)
    expected = predictions(folder, images, cwd=tmp_path)
    for got, want in zip(loaded, expected, strict=True):
        assert [c for c, _ in got] == [c for c, _ in want]
        # Within 0.01 percentage points: the same weights, head included.
        np.testing.assert_allclose([p for _, p in got], [p for _, p in want], atol=1e-4)


def test_the_config_describes_the_trained_model_and_its_preparation(study_folder):
    for name in ("lora", "head"):
        folder = study_folder / name
        config = json.loads((folder / TIMM_CONFIG).read_text())
        document = json.loads((folder / "search_export.json").read_text())
        spec = document["spec"]
        assert config["architecture"] == document["model"] == "vit_tiny_patch16_224"
        assert config["num_classes"] == len(document["classes"]) == 10
        assert config["model_args"] == spec["model_kwargs"] == DEMO_KWARGS
        assert config["label_names"] == document["classes"]
        model = timm.create_model(f"local-dir:{folder}", pretrained=True)
        assert model.num_classes == 10
        data = timm.data.resolve_data_config(model=model)
        assert data == {"input_size": (3, 32, 32), "interpolation": "bilinear",
                        "mean": list(spec["augment"]["mean"]),
                        "std": list(spec["augment"]["std"]),
                        "crop_pct": 1.0, "crop_mode": "squash"}
        # The filter the card states is the one config.json names and the study used.
        card = (folder / "README.md").read_text(encoding="utf-8")
        assert "| image size | 32 x 32 (bilinear, antialiased) |" in card
        assert 'timm.create_model(f"local-dir:{folder}", pretrained=True)' in card
    adapter = json.loads((study_folder / "lora" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] is None  # a local backbone file: no hub id


# Small models, no study ---------------------------------------------------------------------

def tiny_spec(**changes) -> TrainSpec:
    values = {"model": "vit_tiny_patch16_224", "pretrained": False, "model_kwargs": DEMO_KWARGS,
              "image_size": 32, "dataset": "digits", **changes}
    return TrainSpec(**values)


def exported_tiny(spec: TrainSpec, folder: Path, lora: LoraParams | None = None,
                  base_model: str | None = None) -> torch.nn.Module:
    """A 3-class model of `spec` written as an export folder; returns it merged (eval)."""
    model = build_model(spec, 3, lora, pretrained=False).eval()
    write_model_folder(model, lora, folder, base_model=base_model)
    write_timm_config(spec, ["a", "b", "c"], folder)
    return model.merge_and_unload() if lora else model


def test_local_dir_gives_the_exported_model_head_included(tmp_path):
    model = exported_tiny(tiny_spec(), tmp_path, LoraParams(rank=2, alpha=4, dropout=0.0),
                          base_model=HUB_ID)
    torch.manual_seed(1)
    loaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    assert loaded.pretrained_cfg["label_names"] == ["a", "b", "c"]
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images), rtol=1e-5, atol=1e-5)
    adapter = json.loads((tmp_path / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == HUB_ID


def test_an_mlp_head_gets_no_config_and_the_card_says_why(tmp_path):
    # timm's ViT has no argument for a Linear -> ReLU -> Linear head: no config.json rebuilds it.
    spec = tiny_spec(head_hidden=16)
    exported_tiny(spec, tmp_path)
    assert write_timm_config(spec, ["a", "b", "c"], tmp_path) is None
    assert not (tmp_path / TIMM_CONFIG).exists()
    document = {"model": spec.model, "spec": spec.to_dict(), "base_weights": {"source": "none"}}
    text = quick_start(document, None, None)
    assert "local-dir:" in text and "no `config.json`" in text
    assert "local-dir:{folder}" not in text and "nn.Sequential(" in text


def test_timm_prepares_an_image_folder_image_as_search_predict_does(tmp_path):
    # An image folder's files were resized with PIL's bicubic filter when read: config.json says
    # so, and timm's own transform then gives search predict's input exactly.
    spec = tiny_spec(dataset="imagefolder:flowers",
                     augment=TrainSpec().augment)  # mean, std of CIFAR-100: not 0.5
    exported_tiny(spec, tmp_path / "model")
    image = tmp_path / "photo.png"
    pixels = np.random.default_rng(0).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(image)
    model = timm.create_model(f"local-dir:{tmp_path / 'model'}", pretrained=True)
    data = timm.data.resolve_data_config(model=model)
    assert data["interpolation"] == "bicubic"
    transform = timm.data.create_transform(**data)
    with Image.open(image) as opened:
        by_timm = transform(opened.convert("RGB"))
    ours = eval_batch(read_image(image, spec)[None], spec.augment, spec.image_size)[0]
    torch.testing.assert_close(by_timm, ours, rtol=0, atol=1e-5)
    assert "| image size | 32 x 32 (bicubic, with PIL, as the image files are read) |" in \
        hyperparameters({"spec": spec.to_dict()}, None)


def card_document(spec: TrainSpec, base: dict) -> dict:
    return {"metrics": {"val_acc": 0.5}, "base_weights": base, "spec": spec.to_dict(),
            "study": "s", "trial": 0, "model": spec.model}


@pytest.mark.parametrize("dataset, listed", [
    ("cifar100", ["uoft-cs/cifar100"]), ("mnist", ["ylecun/mnist"]), ("digits", None),
    ("emnist_letters", None), ("imagefolder:flowers", None)])
def test_the_front_matter_lists_only_hub_datasets(dataset, listed):
    spec = TrainSpec(dataset=dataset)
    meta = front_matter(card_document(spec, {"model": spec.model, "source": "none", "seed": 0}),
                        None)
    assert meta.get("datasets") == listed
    (result,) = meta["model-index"][0]["results"]
    assert result["dataset"]["type"] == (listed[0] if listed else result["dataset"]["name"])


def test_the_front_matter_names_a_base_model_by_its_hub_id_only(tmp_path):
    spec = TrainSpec(model="vit_tiny_patch16_224")
    hub = {"model": spec.model, "source": "hub", "hf_hub_id": HUB_ID}
    assert front_matter(card_document(spec, hub), None)["base_model"] == HUB_ID
    local = {"model": spec.model, "source": "file", "file": "base_weights/b.safetensors",
             "sha256": "0" * 64}
    meta = front_matter(card_document(spec, local), None)
    assert "base_model" not in meta  # not the bare timm name: it is no hub repository
    assert meta["base_model_weights"] == {"file": local["file"], "sha256": local["sha256"]}
    assert "base_model" not in front_matter(
        card_document(spec, {"model": spec.model, "source": "none", "seed": 0}), None)



def test_a_point_on_all_layers_with_rslora_exports_its_own_layers_scaling_and_lr(tmp_path):
    # A trial whose point adapts every linear layer with rsLoRA and its own learning rate, its
    # adapters made non-zero: the export rebuilds the point's model (not the spec's q,k,v
    # with alpha / r), its merged weights give the trained model's outputs in plain timm, and
    # its search_export.json carries the layers, variant and lr that reproduce it.
    from objectives.model import trainable_state_dict
    from objectives.spec import TARGET_SETS, trial_spec
    from search.results.export import export_document, export_weights
    from search.study.artifacts import artifact_store

    spec = tiny_spec(lr=3e-4)
    params = {"rank": 2, "alpha": 4.0, "dropout": 0.0, "lr": 1e-3, "targets": "all",
              "scaling": "rslora"}
    point = LoraParams(2, 4.0, 0.0, scaling="rslora", lr=1e-3, targets=TARGET_SETS["all"])
    model = build_model(spec, 3, point, pretrained=False)
    torch.manual_seed(3)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    weights = tmp_path / "weights.safetensors"
    save_file(trainable_state_dict(model), str(weights))
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'x.db'}", study_name="x",
                                direction="maximize")
    study.set_user_attr("train_spec", spec.to_dict())
    study.set_user_attr("classes", ["a", "b", "c"])
    distributions = {"rank": optuna.distributions.IntDistribution(1, 8),
                     "alpha": optuna.distributions.FloatDistribution(1, 8),
                     "dropout": optuna.distributions.FloatDistribution(0, 0.5),
                     "lr": optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True),
                     "targets": optuna.distributions.CategoricalDistribution(tuple(TARGET_SETS)),
                     "scaling": optuna.distributions.CategoricalDistribution(
                         ("lora", "rslora", "dora"))}
    store = artifact_store(tmp_path / "artifacts")
    study.enqueue_trial(params)  # as a grid queues its points
    trial = study.ask(distributions)
    for key, value in {"baseline": False, "test_acc": 0.8, "seed": 0}.items():
        trial.set_user_attr(key, value)
    trial.set_user_attr("weights_artifact", optuna.artifacts.upload_artifact(
        artifact_store=store, file_path=str(weights), study_or_trial=trial))
    study.tell(trial, 0.9)
    frozen = study.trials[0]
    assert frozen.params == params  # as asked: the trial's params are the point's
    document = export_document(study, frozen)
    folder = tmp_path / "export"
    export_weights(study, frozen, store, folder, document)

    exported = json.loads((folder / "search_export.json").read_text())
    assert exported["spec"]["targets"] == TARGET_SETS["all"] and exported["spec"]["lr"] == 1e-3
    assert exported["params"]["scaling"] == "rslora" and exported["params"]["targets"] == "all"
    adapter = json.loads((folder / "adapter_config.json").read_text())
    assert adapter["use_rslora"] is True and adapter["use_dora"] is False
    assert {"mlp.fc1", "mlp.fc2", "attn.proj", "q", "k", "v"} <= set(adapter["target_modules"])
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        trained = model.eval()(images)
        torch.testing.assert_close(loaded(images), trained, rtol=1e-4, atol=1e-4)
        # The spec's own layers and scaling would be another model.
        assert trial_spec(spec, point).targets != spec.targets
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert "rank 2, alpha 4, dropout 0, lr 0.001, targets all, rsLoRA" in card
    assert f"LoRA adapters on `{TARGET_SETS['all']}`" in card
    assert "AdamW, lr 0.001," in card
