"""Offline tests of objectives.data: digits, a hand-written MNIST, generated image folders."""

from __future__ import annotations

import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from objectives import data
from objectives.data import (
    DatasetError,
    ImageSplits,
    check_dataset_name,
    dataset_num_classes,
    load_splits,
    stratified_split,
)
from objectives.spec import TrainSpec


@pytest.fixture(scope="module")
def digits() -> ImageSplits:
    return load_splits(TrainSpec(dataset="digits", seed=0))


def rows(images: torch.Tensor, labels: torch.Tensor) -> Counter:
    """The multiset of (image bytes, label): equal multisets mean the same samples."""
    pairs = zip(images, labels, strict=True)
    return Counter((image.numpy().tobytes(), int(label)) for image, label in pairs)


def test_digits_shapes_dtypes_and_values(digits: ImageSplits) -> None:
    assert digits.classes == [str(d) for d in range(10)]
    assert digits.num_classes == 10
    sizes = [len(digits.train_labels), len(digits.val_labels), len(digits.test_labels)]
    assert sum(sizes) == 1797 and min(sizes) > 0
    for images, labels in [(digits.train_images, digits.train_labels),
                           (digits.val_images, digits.val_labels),
                           (digits.test_images, digits.test_labels)]:
        assert images.dtype == torch.uint8 and images.shape[1:] == (1, 8, 8)
        assert labels.dtype == torch.int64 and labels.shape == (len(images),)
        assert images.device.type == "cpu"
        assert set(labels.unique().tolist()) == set(range(10))
    everything = torch.cat([digits.train_images, digits.val_images, digits.test_images])
    assert everything.min() == 0 and everything.max() == 255
    # 0..16 scaled by 255/16 and rounded: only those 17 levels appear.
    levels = set(np.rint(np.arange(17) * 255 / 16).astype(int).tolist())
    assert set(everything.unique().tolist()) <= levels


def test_digits_splits_partition_the_dataset(digits: ImageSplits) -> None:
    from sklearn.datasets import load_digits

    source = load_digits()
    original = torch.from_numpy(np.rint(source.images * 255 / 16)).to(torch.uint8).unsqueeze(1)
    union = (rows(digits.train_images, digits.train_labels)
             + rows(digits.val_images, digits.val_labels)
             + rows(digits.test_images, digits.test_labels))
    assert union == rows(original, torch.from_numpy(source.target))


def test_digits_splits_are_stratified(digits: ImageSplits) -> None:
    spec = TrainSpec(dataset="digits")
    total = Counter(torch.cat([digits.train_labels, digits.val_labels,
                               digits.test_labels]).tolist())
    test = Counter(digits.test_labels.tolist())
    val = Counter(digits.val_labels.tolist())
    for label, count in total.items():
        assert abs(test[label] - spec.test_fraction * count) <= 1
        rest = count - test[label]
        assert abs(val[label] - spec.val_fraction * rest) <= 1


def test_splits_are_deterministic_per_seed(digits: ImageSplits) -> None:
    again = load_splits(TrainSpec(dataset="digits", seed=0))
    other = load_splits(TrainSpec(dataset="digits", seed=1))
    for name in ["train_images", "train_labels", "val_images", "test_images", "test_labels"]:
        assert torch.equal(getattr(digits, name), getattr(again, name))
    assert not torch.equal(digits.test_images, other.test_images)
    assert not torch.equal(digits.val_images, other.val_images)


def test_stratified_split_indices() -> None:
    labels = torch.tensor([0] * 10 + [1] * 5 + [2] * 2 + [3])
    kept, held = stratified_split(labels, 0.2, torch.Generator().manual_seed(0))
    assert torch.equal(torch.cat([kept, held]).sort().values, torch.arange(len(labels)))
    # round(0.2 * n), at least 1 for classes of >= 2 samples, none from a single sample.
    assert Counter(labels[held].tolist()) == {0: 2, 1: 1, 2: 1}
    again, _ = stratified_split(labels, 0.2, torch.Generator().manual_seed(0))
    assert torch.equal(kept, again)
    # Never the whole class, however large the fraction.
    kept, held = stratified_split(labels, 0.95, torch.Generator().manual_seed(0))
    assert set(labels[kept].tolist()) == {0, 1, 2, 3}


def write_idx(path: Path, array: np.ndarray) -> None:
    """An uncompressed IDX file: magic 0x0000_08_<ndim> (uint8), then big-endian dims."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_read_from_raw_idx_files(tmp_path: Path) -> None:
    # torchvision reads root/MNIST/raw/<name> without .gz and checks only that the files exist.
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train_x = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    train_y = np.arange(20) % 10
    test_x = rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)
    test_y = np.arange(10)[::-1] % 10
    write_idx(raw / "train-images-idx3-ubyte", train_x)
    write_idx(raw / "train-labels-idx1-ubyte", train_y)
    write_idx(raw / "t10k-images-idx3-ubyte", test_x)
    write_idx(raw / "t10k-labels-idx1-ubyte", test_y)

    splits = load_splits(TrainSpec(dataset="mnist", data_dir=str(tmp_path), download=False,
                                   val_fraction=0.5))
    assert splits.num_classes == 10 and splits.classes[0] == "0 - zero"
    assert splits.test_images.shape == (10, 1, 28, 28) and splits.test_images.dtype == torch.uint8
    assert torch.equal(splits.test_images[:, 0], torch.from_numpy(test_x))
    assert torch.equal(splits.test_labels, torch.from_numpy(test_y).long())
    # 2 images per class, one of each held out for validation.
    assert len(splits.train_labels) == len(splits.val_labels) == 10
    train_and_val = (rows(splits.train_images, splits.train_labels)
                     + rows(splits.val_images, splits.val_labels))
    assert train_and_val == rows(torch.from_numpy(train_x).unsqueeze(1), torch.from_numpy(train_y))


def upright_glyph(index: int) -> np.ndarray:
    """A 28x28 image that changes under any flip or transpose: an 'L' (a long bar down the
    left, a short foot along the bottom) and a dot top right whose value is `index` + 1."""
    image = np.zeros((28, 28), dtype=np.uint8)
    image[2:24, 4] = 255
    image[23, 4:12] = 200
    image[1, 20] = index + 1
    return image


def write_emnist(root: Path, split: str, train_labels: list[int], test_labels: list[int]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """EMNIST's raw layout as torchvision reads it (root/EMNIST/raw/emnist-SPLIT-PART-...,
    gunzipped): images stored transposed, as in the real files. Returns the upright images."""
    raw = root / "EMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    upright = {}
    for part, labels in (("train", train_labels), ("test", test_labels)):
        images = np.stack([upright_glyph(i) for i in range(len(labels))])
        upright[part] = images
        write_idx(raw / f"emnist-{split}-{part}-images-idx3-ubyte", images.transpose(0, 2, 1))
        write_idx(raw / f"emnist-{split}-{part}-labels-idx1-ubyte", np.array(labels))
    return upright["train"], upright["test"]


def test_emnist_balanced_is_read_upright_with_torchvisions_classes(tmp_path: Path) -> None:
    train_labels = [label for label in range(47) for _ in range(2)]  # two images per class
    test_labels = [46, 0, 10, 36]
    train_x, test_x = write_emnist(tmp_path, "balanced", train_labels, test_labels)
    spec = TrainSpec(dataset="emnist_balanced", data_dir=str(tmp_path), download=False,
                     val_fraction=0.5)
    assert dataset_num_classes(spec) == 47
    splits = load_splits(spec)
    assert splits.num_classes == 47
    assert splits.classes[:11] == [*"0123456789", "A"]
    assert splits.classes[36:] == [*"abdefghnqrt"]  # lower case only where it differs
    assert splits.test_labels.tolist() == test_labels  # the official test split, in order
    assert splits.test_images.shape == (4, 1, 28, 28) and splits.test_images.dtype == torch.uint8
    assert splits.test_images.is_contiguous()
    # Upright: the 'L' stands as drawn, not as stored (its transpose).
    assert torch.equal(splits.test_images[:, 0], torch.from_numpy(test_x))
    assert splits.test_images[0, 0, 20, 4] == 255 and splits.test_images[0, 0, 4, 20] == 0
    train_and_val = (rows(splits.train_images, splits.train_labels)
                     + rows(splits.val_images, splits.val_labels))
    assert train_and_val == rows(torch.from_numpy(train_x).unsqueeze(1),
                                 torch.tensor(train_labels))
    assert len(splits.val_labels) == 47  # one of each class's two


def test_emnist_byclass_and_letters_classes(tmp_path: Path) -> None:
    write_emnist(tmp_path, "byclass", [0, 0, 61, 61, 35, 35], [61, 0])
    byclass = load_splits(TrainSpec(dataset="emnist_byclass", data_dir=str(tmp_path),
                                    download=False, val_fraction=0.5))
    assert byclass.num_classes == 62 == dataset_num_classes(TrainSpec(dataset="emnist_byclass"))
    assert byclass.classes[35:37] == ["Z", "a"] and byclass.classes[61] == "z"
    assert byclass.test_labels.tolist() == [61, 0]

    # torchvision numbers the letters 1..26 after an unused "N/A" class: here they are 0..25.
    write_emnist(tmp_path, "letters", [1, 1, 26, 26], [26, 1])
    letters = load_splits(TrainSpec(dataset="emnist_letters", data_dir=str(tmp_path),
                                    download=False, val_fraction=0.5))
    assert letters.classes == list("abcdefghijklmnopqrstuvwxyz")
    assert dataset_num_classes(TrainSpec(dataset="emnist_letters")) == 26
    assert letters.test_labels.tolist() == [25, 0]
    assert sorted(torch.cat([letters.train_labels, letters.val_labels]).tolist()) == [0, 0, 25, 25]


def test_emnist_split_files_are_told_apart(tmp_path: Path) -> None:
    write_emnist(tmp_path, "digits", [0, 0, 9, 9], [9])
    with pytest.raises(DatasetError) as caught:  # the digits split's files are not balanced's
        load_splits(TrainSpec(dataset="emnist_balanced", data_dir=str(tmp_path),
                              download=False))
    message = str(caught.value)
    assert "emnist-balanced-*-ubyte files" in message and "EMNIST/raw" in message
    assert "\n" not in message


@pytest.mark.parametrize("dataset", ["mnist", "cifar100", "emnist_balanced"])
def test_missing_dataset_without_download(tmp_path: Path, dataset: str) -> None:
    with pytest.raises(DatasetError) as caught:
        load_splits(TrainSpec(dataset=dataset, data_dir=str(tmp_path), download=False))
    message = str(caught.value)
    assert dataset in message and str(tmp_path) in message
    assert "downloading is off" in message and "--data-dir" in message
    assert "\n" not in message


def write_png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (12, 9)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


COLORS = {"cat": (200, 10, 10), "dog": (10, 200, 10), "emu": (10, 10, 200)}


def make_folder(root: Path, per_class: int) -> None:
    for name, color in COLORS.items():
        for i in range(per_class):
            write_png(root / name / f"{i}.png", color)


def test_imagefolder_single_folder(tmp_path: Path) -> None:
    make_folder(tmp_path, per_class=6)
    (tmp_path / "dog" / "notes.txt").write_text("not an image, skipped")
    write_png(tmp_path / "emu" / "nested" / "gray.png", (10, 10, 200))  # found recursively
    spec = TrainSpec(dataset=f"imagefolder:{tmp_path}", image_size=16, val_fraction=0.2,
                     test_fraction=0.2)
    assert dataset_num_classes(spec) == 3
    splits = load_splits(spec)
    assert splits.classes == ["cat", "dog", "emu"]
    assert splits.train_images.shape[1:] == (3, 16, 16)
    assert splits.train_images.dtype == torch.uint8
    assert len(splits.train_labels) + len(splits.val_labels) + len(splits.test_labels) == 19
    assert Counter(splits.test_labels.tolist()) == {0: 1, 1: 1, 2: 1}
    for images, labels in [(splits.train_images, splits.train_labels),
                           (splits.test_images, splits.test_labels)]:
        for image, label in zip(images, labels, strict=True):
            expected = torch.tensor(COLORS[splits.classes[label]], dtype=torch.uint8)
            assert torch.equal(image[:, 8, 8], expected)


def test_imagefolder_with_split_subfolders(tmp_path: Path) -> None:
    make_folder(tmp_path / "train", per_class=4)
    write_png(tmp_path / "test" / "dog" / "a.png", COLORS["dog"], size=(40, 30))
    write_png(tmp_path / "test" / "emu" / "b.png", COLORS["emu"])
    spec = TrainSpec(dataset=f"imagefolder:{tmp_path}", image_size=8, val_fraction=0.25)
    assert dataset_num_classes(spec) == 3
    splits = load_splits(spec)
    assert splits.classes == ["cat", "dog", "emu"]
    assert splits.test_labels.tolist() == [1, 2]  # the test folder as given, not held out
    assert splits.test_images.shape == (2, 3, 8, 8)
    assert len(splits.train_labels) == 9 and len(splits.val_labels) == 3


def test_imagefolder_corrupt_image(tmp_path: Path) -> None:
    make_folder(tmp_path, per_class=2)
    bad = tmp_path / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DatasetError, match="broken.png"):
        load_splits(TrainSpec(dataset=f"imagefolder:{tmp_path}", image_size=8))


def test_imagefolder_test_class_unknown_to_train(tmp_path: Path) -> None:
    make_folder(tmp_path / "train", per_class=2)
    write_png(tmp_path / "test" / "yak" / "a.png", (1, 2, 3))
    with pytest.raises(DatasetError, match="yak"):
        load_splits(TrainSpec(dataset=f"imagefolder:{tmp_path}", image_size=8))


def test_unknown_names(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown dataset 'imagenet'; choose from: .*cifar100"):
        check_dataset_name("imagenet")
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_splits(TrainSpec(dataset="imagenet"))
    with pytest.raises(DatasetError, match="no such folder"):
        check_dataset_name(f"imagefolder:{tmp_path / 'absent'}")
    with pytest.raises(DatasetError):
        check_dataset_name("imagefolder:")
    check_dataset_name("cifar10")
    check_dataset_name(f"imagefolder:{tmp_path}")


def test_num_classes_of_named_datasets_touches_nothing(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere")
    assert dataset_num_classes(TrainSpec(dataset="cifar100", data_dir=missing)) == 100
    assert dataset_num_classes(TrainSpec(dataset="fashion_mnist", data_dir=missing)) == 10
    assert dataset_num_classes(TrainSpec(dataset="emnist_balanced", data_dir=missing)) == 47
    assert not (tmp_path / "nowhere").exists()


class FakeCifar:
    """Stands in for torchvision's CIFAR10: absent until 'downloaded', numpy HWC arrays."""

    base_folder = "cifar-10-batches-py"
    classes = ["airplane", "automobile"]
    downloads: list[bool] = []

    def __init__(self, root: str, train: bool, download: bool) -> None:
        FakeCifar.downloads.append(download)
        if not download and len(FakeCifar.downloads) == 1:
            raise RuntimeError("Dataset not found or corrupted.")
        count = 8 if train else 4
        self.data = np.arange(count * 32 * 32 * 3, dtype=np.uint8).reshape(count, 32, 32, 3)
        self.targets = [i % 2 for i in range(count)]


def test_cifar_layout_and_download_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(data._TORCHVISION, "cifar10", FakeCifar)
    monkeypatch.setattr(FakeCifar, "downloads", [])
    splits = load_splits(TrainSpec(dataset="cifar10", download=True, val_fraction=0.25))
    assert FakeCifar.downloads == [False, True, False]  # train absent, downloaded; then test
    assert splits.classes == FakeCifar.classes
    assert splits.test_images.shape == (4, 3, 32, 32) and splits.test_images.is_contiguous()
    hwc = torch.from_numpy(FakeCifar("", train=False, download=False).data)
    assert torch.equal(splits.test_images, hwc.permute(0, 3, 1, 2))
    assert splits.test_labels.dtype == torch.int64
    assert len(splits.train_labels) == 6 and len(splits.val_labels) == 2
