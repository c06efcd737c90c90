"""`search predict` on a real export of the demo: the same classes and probabilities as the
trained trial gives in this process, from either the merged weights or the adapter alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from PIL import Image
from run_cli import FAST, board, search, search_in_process

IMAGES = 8  # test-split images written as PNG files
# One more: a test image enlarged by PIL and stored as RGB, so predict must convert it to one
# channel like the digits it was trained on and resize a size no other image has.
LARGE = "large.png"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A one-epoch demo study (baseline + one LoRA point), its LoRA trial exported with weights
    to lora/, and test-split images of the demo's digits as PNG files."""
    folder = tmp_path_factory.mktemp("predict")
    search("grid", *FAST, "--ranks", "2", "--alphas", "2", "--workers", "1", cwd=folder)
    lora = next(row for row in board(folder) if not row["baseline"])
    search("export", "--study", "demo", "--trial", str(lora["number"]), "--out", "lora.json",
           "--weights", "lora", cwd=folder)
    digits = evaluated_digits(folder)
    for index, image in enumerate(digits):
        Image.fromarray(image[0].numpy(), mode="L").save(folder / f"digit{index}.png")
    enlarged(digits[0]).convert("RGB").save(folder / LARGE)
    return folder


def demo_study(folder: Path) -> optuna.Study:
    return optuna.load_study(study_name="demo", storage=f"sqlite:///{folder / 'search.db'}")


def evaluated_digits(folder: Path) -> list[torch.Tensor]:
    """The first IMAGES images of the test split the trials evaluated, uint8 [1, 8, 8] each."""
    from objectives.data import load_splits
    from search.study.study_record import StudyRecord

    return list(load_splits(StudyRecord(demo_study(folder)).train_spec).test_images[:IMAGES])


def enlarged(digit: torch.Tensor) -> Image.Image:
    return Image.fromarray(digit[0].numpy(), mode="L").resize((24, 24))


def model_inputs(folder: Path) -> list[torch.Tensor]:
    """The uint8 [1, H, W] pixels of each of image_files(), as the trial's data would hold them
    (LARGE's RGB equal channels are its gray values)."""
    digits = evaluated_digits(folder)
    return [*digits, torch.from_numpy(np.array(enlarged(digits[0]))).unsqueeze(0)]


def image_files() -> list[str]:
    return [*(f"digit{index}.png" for index in range(IMAGES)), LARGE]


def trained_probabilities(folder: Path, trial_number: int) -> torch.Tensor:
    """Softmax of the trial's own model, rebuilt from its stored weights as export does, on
    the test images: objectives.train.predict, i.e. the code the trial evaluated with."""
    from objectives.export_model import load_trained_model
    from objectives.train import predict
    from search.study.artifacts import artifact_store
    from search.study.study_record import StudyRecord
    from search.study.trials import trial_point

    study = demo_study(folder)
    trial = study.trials[trial_number]
    spec = StudyRecord(study).train_spec
    weights = folder / f"trial{trial_number}.safetensors"
    optuna.artifacts.download_artifact(
        artifact_store=artifact_store(folder / "search-artifacts"), file_path=str(weights),
        artifact_id=trial.user_attrs["weights_artifact"])
    model = load_trained_model(spec, 10, trial_point(trial), weights)
    # One image at a time: the test images come in two sizes.
    return torch.cat([predict(model, image.unsqueeze(0), spec).softmax(dim=1)
                      for image in model_inputs(folder)])


def as_matrix(records: list[dict], classes: int = 10) -> torch.Tensor:
    """The probabilities of a json output with every class listed, as [images, classes]."""
    matrix = torch.full((len(records), classes), float("nan"))
    for row, record in enumerate(records):
        for prediction in record["predictions"]:
            matrix[row, prediction["index"]] = prediction["probability"]
    return matrix


def predict_in_process(args: list[str], folder: Path, capsys, monkeypatch):
    return search_in_process(["predict", *args], folder, capsys, monkeypatch)


def test_predict_gives_the_trained_models_classes_and_probabilities(exported):
    trial = json.loads((exported / "lora.json").read_text())["trial"]
    result = search("predict", "--model", "lora", "--format", "json", "--top-k", "50",
                    *image_files(), cwd=exported)
    records = json.loads(result.stdout)
    assert [record["image"] for record in records] == image_files()
    for record in records:
        predictions = record["predictions"]
        assert len(predictions) == 10  # --top-k 50 clamped to the classes
        assert [p["class"] for p in predictions] == [str(p["index"]) for p in predictions]
        probabilities = [p["probability"] for p in predictions]
        assert probabilities == sorted(probabilities, reverse=True)
    expected = trained_probabilities(exported, trial)
    torch.testing.assert_close(as_matrix(records), expected, rtol=0, atol=1e-4)
    assert [record["predictions"][0]["index"] for record in records] == \
        expected.argmax(dim=1).tolist()


def test_the_adapter_alone_gives_the_same_predictions_as_the_merged_weights(
        exported, tmp_path, capsys, monkeypatch):
    adapter = tmp_path / "adapter"
    shutil.copytree(exported / "lora", adapter)
    (adapter / "model.safetensors").unlink()
    outputs = {}
    for folder in (exported / "lora", adapter):
        code, out, err = predict_in_process(["--model", str(folder), "--format", "json",
                                             "--top-k", "10", *image_files()],
                                            exported, capsys, monkeypatch)
        assert code == 0, err
        outputs[folder] = json.loads(out)
    merged, from_adapter = outputs.values()
    torch.testing.assert_close(as_matrix(from_adapter), as_matrix(merged), rtol=0, atol=1e-5)


def test_the_table_shows_each_image_with_its_top_k_classes(exported, capsys, monkeypatch):
    code, out, _ = predict_in_process(["--model", "lora", "--top-k", "3", "digit0.png",
                                       "digit1.png"], exported, capsys, monkeypatch)
    assert code == 0
    blocks = out.strip().split("\n\n")
    assert [block.splitlines()[0] for block in blocks] == ["digit0.png", "digit1.png"]
    for block in blocks:
        rows = [line.split() for line in block.splitlines()[1:]]
        assert len(rows) == 3
        assert all(name in "0123456789" and percent.endswith("%") for name, percent in rows)
        percents = [float(percent.rstrip("%")) for _, percent in rows]
        assert percents == sorted(percents, reverse=True) and 0 <= sum(percents) <= 100.01


def five_classes(exported: Path, folder: Path) -> list[str]:
    """A copy of the export whose document lists 5 classes for a 10-class model."""
    shutil.copytree(exported / "lora", folder / "five")
    document = json.loads((folder / "five" / "search_export.json").read_text())
    document["classes"] = document["classes"][:5]
    (folder / "five" / "search_export.json").write_text(json.dumps(document))
    return ["--model", str(folder / "five"), "digit0.png"]


@pytest.mark.parametrize("args, message", [
    (["--model", "missing", "digit0.png"], "model folder missing does not exist"),
    (["--model", ".", "digit0.png"], "has no search_export.json"),
    (["--model", "lora", "digit0.png", "nowhere.png"], "no such image file: nowhere.png"),
    (["--model", "lora", "lora"], "lora is a directory, not an image file"),
    (["--model", "lora", "--top-k", "0", "digit0.png"], "--top-k: must be a positive integer"),
    (["--model", "lora", "--top-k", "-2", "digit0.png"], "--top-k: must be a positive integer"),
    (five_classes, "does not fit vit_tiny_patch16_224 with 5 classes"),
])
def test_bad_input_exits_2_with_one_line(exported, tmp_path, args, message, capsys,
                                         monkeypatch):
    if callable(args):
        args = args(exported, tmp_path)
    code, out, err = predict_in_process(args, exported, capsys, monkeypatch)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert out == ""


def test_an_unreadable_image_is_named_without_a_traceback(exported):
    (exported / "x.png").write_text("not an image\n")
    result = search("predict", "--model", "lora", "digit0.png", "x.png", cwd=exported,
                    check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "cannot read image x.png" in lines[0]
    assert result.stdout == ""


@pytest.mark.parametrize("dataset, shape", [
    ("digits", (1, 5, 7)),  # grayscale datasets: PIL's luma, one channel, size kept
    ("cifar10", (3, 5, 7)),  # RGB, size kept: eval_batch resizes
    ("imagefolder:{folder}", (3, 32, 32)),  # decoded as an imagefolder's: PIL-resized
])
def test_images_are_decoded_as_the_training_data_were(tmp_path, dataset, shape):
    from objectives.inference import read_image
    from objectives.spec import TrainSpec

    colours = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(colours).save(tmp_path / "colour.png")
    spec = TrainSpec(dataset=dataset.format(folder=tmp_path), image_size=32)
    image = read_image(tmp_path / "colour.png", spec)
    assert image.dtype == torch.uint8 and tuple(image.shape) == shape
    with Image.open(tmp_path / "colour.png") as file:
        if shape[0] == 1:
            assert np.array_equal(image[0].numpy(), np.array(file.convert("L")))
        elif shape[1:] == (5, 7):
            assert np.array_equal(image.permute(1, 2, 0).numpy(), colours)
