"""Input checks made before a study is created: a dataset's files and splits, the image files
given to `search predict`, and LoRA ranks larger than the adapted layers."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from PIL import Image
from torch import nn

from objectives import data
from objectives.data import (
    IMAGE_EXTENSIONS,
    DatasetError,
    DatasetSummary,
    check_dataset,
    load_splits,
)
from objectives.inference import InferenceError, check_image_files
from objectives.model import (
    ModelError,
    check_rank_fits_model,
    max_rank,
    planned_parameters,
    rank_limit,
)
from objectives.spec import LoraParams, TrainSpec

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ("cat", "dog", "emu")


def demo_spec() -> TrainSpec:
    with open(ROOT / "studies" / "demo.toml", "rb") as file:
        return TrainSpec.from_dict(tomllib.load(file)["train"])


def write_jpeg(path: Path, seed: int, size: tuple[int, int] = (64, 48)) -> None:
    """A noisy photo-like JPEG: most of its bytes are scan data, so cutting it truncates that."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def make_folder(root: Path, per_class: int, classes: tuple[str, ...] = CLASSES) -> None:
    for index, name in enumerate(classes):
        for i in range(per_class):
            write_jpeg(root / name / f"{i}.jpg", seed=100 * index + i)


def imagefolder(root: Path, **overrides) -> TrainSpec:
    return TrainSpec(dataset=f"imagefolder:{root}", image_size=8, **overrides)


def refusal(spec: TrainSpec) -> str:
    with pytest.raises(DatasetError) as caught:
        check_dataset(spec)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_every_unreadable_image_is_named_in_one_message(tmp_path: Path) -> None:
    make_folder(tmp_path, per_class=4)
    truncate(tmp_path / "cat" / "1.jpg")
    truncate(tmp_path / "emu" / "3.jpg")
    (tmp_path / "dog" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    # The header of a truncated JPEG reads fine: only decoding all of it finds the cut.
    with Image.open(tmp_path / "cat" / "1.jpg") as image:
        assert image.size == (64, 48)
    with pytest.raises(DatasetError):  # the loader fails on them, one at a time
        load_splits(imagefolder(tmp_path))

    message = refusal(imagefolder(tmp_path))
    assert message.startswith(f"3 unreadable images in {tmp_path}: ")
    assert "cat/1.jpg (image file is truncated" in message
    assert "emu/3.jpg (image file is truncated" in message
    assert "dog/x.png (cannot identify image file)" in message
    assert "more" not in message


def test_past_20_unreadable_images_are_counted(tmp_path: Path) -> None:
    make_folder(tmp_path, per_class=3)
    for i in range(25):
        (tmp_path / CLASSES[i % 3] / f"bad{i:02}.jpg").write_bytes(b"not a jpeg")
    message = refusal(imagefolder(tmp_path))
    assert message.startswith(f"25 unreadable images in {tmp_path}: ")
    assert message.count("(cannot identify image file)") == 20
    assert message.endswith(", and 5 more")


def test_one_unreadable_image_in_a_split_folder(tmp_path: Path) -> None:
    make_folder(tmp_path / "train", per_class=3)
    make_folder(tmp_path / "test", per_class=1)
    truncate(tmp_path / "test" / "dog" / "0.jpg")
    message = refusal(imagefolder(tmp_path))
    assert message.startswith(f"1 unreadable image in {tmp_path}: test/dog/0.jpg (image file is")


def test_a_folder_too_small_for_its_held_out_splits_is_refused_with_counts(tmp_path: Path
                                                                            ) -> None:
    classes = tuple(f"c{i}" for i in range(10))
    make_folder(tmp_path, per_class=2, classes=classes)
    message = refusal(imagefolder(tmp_path, val_fraction=0.1))
    assert message.startswith("val split would be empty: ")
    assert f"{tmp_path} has 20 images in 10 classes (2 a class)" in message
    assert "test_fraction 0.2 holds out 10 of them as the test split, leaving 1 a class" in message
    assert "val_fraction 0.1" in message and f"{tmp_path}/train" in message


def test_classes_too_small_for_the_test_split_are_named(tmp_path: Path) -> None:
    make_folder(tmp_path, per_class=3)
    write_jpeg(tmp_path / "yak" / "0.jpg", seed=7)
    message = refusal(imagefolder(tmp_path))
    assert message.startswith("test split would have no image of class 'yak': ")
    assert "10 images in 4 classes (1 to 3 a class)" in message


def test_an_empty_class_folder_of_the_test_split_is_refused(tmp_path: Path) -> None:
    make_folder(tmp_path / "train", per_class=3)
    make_folder(tmp_path / "test", per_class=1, classes=("dog", "emu"))
    (tmp_path / "test" / "cat").mkdir()
    load_splits(imagefolder(tmp_path))  # loads, and would train with no test image of a cat
    message = refusal(imagefolder(tmp_path))
    assert message.startswith(f"{tmp_path / 'test'} has no image of class 'cat' (2 images")


def test_split_sizes_are_those_load_splits_gives(tmp_path: Path) -> None:
    make_folder(tmp_path, per_class=7)
    spec = imagefolder(tmp_path, val_fraction=0.25)
    summary = check_dataset(spec)
    splits = load_splits(spec)
    assert (summary.train_size, summary.val_size, summary.test_size) == (
        len(splits.train_labels), len(splits.val_labels), len(splits.test_labels))
    assert summary.classes == CLASSES and summary.describe() == (
        "train 12 / val 6 / test 3 images, 3 classes")

    demo = demo_spec()
    summary = check_dataset(demo)
    digits = load_splits(demo)
    assert summary.describe() == (f"train {len(digits.train_labels):,} / val "
                                  f"{len(digits.val_labels)} / test {len(digits.test_labels)} "
                                  "images, 10 classes")
    assert summary.train_size + summary.val_size + summary.test_size == 1797


def test_describe_uses_thousands_separators() -> None:
    summary = DatasetSummary(1700, 300, 500, tuple(str(i) for i in range(10)))
    assert summary.describe() == "train 1,700 / val 300 / test 500 images, 10 classes"
    assert DatasetSummary(12_345, 1, 0, ("a",)).describe() == (
        "train 12,345 / val 1 / test 0 images, 1 class")


class FakeCifar:
    """torchvision's CIFAR10 shape of dataset whose test split has no 'automobile'."""

    classes = ["airplane", "automobile"]

    def __init__(self, root: str, train: bool, download: bool) -> None:
        self.targets = [0, 1] * 4 if train else [0, 0]
        self.data = np.zeros((len(self.targets), 4, 4, 3), dtype=np.uint8)


def test_named_datasets_are_checked_from_their_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(data._TORCHVISION, "cifar10", FakeCifar)
    message = refusal(TrainSpec(dataset="cifar10", download=False))
    assert message.startswith("cifar10's test split has no image of class 'automobile'")


def test_gif_is_neither_trained_on_nor_predicted(tmp_path: Path) -> None:
    assert ".gif" not in IMAGE_EXTENSIONS and ".jpg" in IMAGE_EXTENSIONS
    make_folder(tmp_path / "data", per_class=5)
    gif = tmp_path / "data" / "cat" / "moving.gif"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(gif)
    summary = check_dataset(imagefolder(tmp_path / "data"))
    assert summary.train_size + summary.val_size + summary.test_size == 15  # the gif left out
    with pytest.raises(InferenceError) as caught:
        check_image_files([gif])
    assert str(caught.value) == (f"{gif} is a .gif file; supported image files: "
                                 f"{', '.join(IMAGE_EXTENSIONS)}")
    upper = tmp_path / "data" / "cat" / "UPPER.JPG"
    write_jpeg(upper, seed=1)
    check_image_files([tmp_path / "data" / "cat" / "0.jpg", upper])  # any case, as training


def test_predict_tells_a_directory_from_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InferenceError) as caught:
        check_image_files([tmp_path])
    assert str(caught.value) == f"{tmp_path} is a directory, not an image file"
    with pytest.raises(InferenceError) as caught:
        check_image_files([tmp_path / "absent.png", tmp_path])
    assert str(caught.value) == f"no such image file: {tmp_path / 'absent.png'} (and 1 more)"


def test_a_rank_beyond_the_smallest_adapted_layer_is_refused() -> None:
    demo = demo_spec()  # vit_tiny with embed_dim 96: q, k and v are 96 x 96
    assert max_rank(demo, 10) == 96
    check_rank_fits_model(demo, 10, 96)
    assert planned_parameters(demo, 10, LoraParams(96, 96, 0.1)).trainable > 0
    with pytest.raises(ModelError) as caught:
        check_rank_fits_model(demo, 10, 99999999999)
    assert str(caught.value) == ("rank 99999999999 is larger than the smallest adapted layer "
                                 "allows (96 for 'q' in vit_tiny_patch16_224)")
    fused = TrainSpec(targets="qkv")  # the model card's ViT-S: qkv is 384 -> 1152
    with pytest.raises(ModelError, match=r"\(384 for 'qkv' in vit_small_patch16_224\)"):
        check_rank_fits_model(fused, 100, 385)


def test_a_convolutions_rank_is_bounded_by_its_input_patch() -> None:
    # resnet50's conv3 are 1x1 convolutions from 64 channels (first stage) to 256.
    resnet = TrainSpec(model="resnet50", targets="conv3", pretrained=False)
    assert max_rank(resnet, 10) == 64
    check_rank_fits_model(resnet, 10, 64)
    with pytest.raises(ModelError, match=r"rank 65 .* \(64 for 'conv3' in resnet50\)"):
        check_rank_fits_model(resnet, 10, 65)
    # peft's conv LoRA: r filters of in x kh x kw, then a 1x1 conv to out; its update has
    # rank at most min(out, in x kh x kw), here 3 x 3 x 3 = 27 whatever r is.
    conv = nn.Conv2d(3, 200, 3)
    assert rank_limit(conv) == 27 and rank_limit(nn.Linear(384, 1152)) == 384
    model = get_peft_model(nn.Sequential(conv), LoraConfig(r=40, target_modules=["0"],
                                                           init_lora_weights=False))
    delta = model.base_model.model[0].get_delta_weight("default")
    assert torch.linalg.matrix_rank(delta.reshape(200, -1)) == 27


def test_the_cli_refuses_unreadable_images_before_it_creates_a_study(tmp_path: Path) -> None:
    from run_cli import search

    make_folder(tmp_path / "photos", per_class=12)
    for name in ("cat/0.jpg", "dog/1.jpg"):
        truncate(tmp_path / "photos" / name)
    result = search("grid", "--spec", str(ROOT / "studies" / "demo.toml"), "--dataset",
                    f"imagefolder:{tmp_path / 'photos'}", "--workers", "0", cwd=tmp_path,
                    check=False)
    assert result.returncode == 2, result.stderr
    line, = result.stderr.strip().splitlines()
    assert "2 unreadable images" in line and "cat/0.jpg" in line and "dog/1.jpg" in line
    assert not (tmp_path / "search.db").exists()


def test_the_cli_says_the_split_sizes_when_it_queues(tmp_path: Path) -> None:
    from run_cli import search

    make_folder(tmp_path / "photos", per_class=20)
    result = search("grid", "--spec", str(ROOT / "studies" / "demo.toml"), "--dataset",
                    f"imagefolder:{tmp_path / 'photos'}", "--ranks", "2", "--alphas", "2",
                    "--workers", "0", cwd=tmp_path)
    summary = check_dataset(dataclasses.replace(demo_spec(),
                                                dataset=f"imagefolder:{tmp_path / 'photos'}"))
    assert f"({summary.describe()})" in result.stderr
    assert summary.train_size + summary.val_size + summary.test_size == 60
