"""Datasets decoded once into uint8 tensors and split into train / val / test.

Every trial of a study trains on the same images, so they are decoded a single time, kept as
uint8 (a quarter of float32's memory) and handed to the trial whole; augmentation, resizing
of the small named datasets and normalisation happen later, batched on the trial's device.

Datasets (`TrainSpec.dataset`):
- "cifar10", "cifar100", "mnist", "fashion_mnist": torchvision's files under `data_dir`,
  downloaded there when absent and `download` allows it; the official test split is the test
  split.
- "emnist_balanced" (47 classes), "emnist_byclass" (62), "emnist_bymerge" (47),
  "emnist_letters" (26), "emnist_digits" (10), "emnist_mnist" (10): the EMNIST splits, read
  the same way from `data_dir/EMNIST/raw/emnist-SPLIT-{train,test}-{images-idx3,labels-idx1}-
  ubyte` (torchvision's download fetches all six splits at once, about 0.5 GB). Classes are
  torchvision's `EMNIST.classes_split_dict[SPLIT]`, except that "emnist_letters" drops its
  unused "N/A" class 0 and numbers a..z from 0. Images are transposed to stand upright (see
  `_upright`).
- "digits": scikit-learn's bundled 8x8 digits (offline); `test_fraction` is held out as test.
- "imagefolder:PATH": one subfolder of images per class, decoded with PIL, converted to RGB
  and resized to `image_size` so they stack. When PATH has a `train/` subfolder, `train/`,
  `val/` and `test/` are the splits (val and test optional); otherwise PATH is split. A
  relative PATH is relative to the working directory, not `data_dir`.

Splits that a dataset does not ship are held out of its train split, test first
(`test_fraction`) and then validation (`val_fraction`) from what is left. Both are stratified
by class and drawn from a generator seeded with `spec.seed`: the same spec gives identical
splits on any host.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import Tensor
from torchvision.datasets.folder import IMG_EXTENSIONS

from objectives.spec import TrainSpec

IMAGEFOLDER = "imagefolder:"
# Dataset name -> torchvision's EMNIST `split`.
EMNIST_SPLITS = {f"emnist_{split}": split
                 for split in ("balanced", "byclass", "bymerge", "letters", "digits", "mnist")}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "mnist": 10, "fashion_mnist": 10, "digits": 10,
               "emnist_balanced": 47, "emnist_byclass": 62, "emnist_bymerge": 47,
               "emnist_letters": 26, "emnist_digits": 10, "emnist_mnist": 10}
_TORCHVISION = {
    "cifar10": torchvision.datasets.CIFAR10,
    "cifar100": torchvision.datasets.CIFAR100,
    "mnist": torchvision.datasets.MNIST,
    "fashion_mnist": torchvision.datasets.FashionMNIST,
    **{name: torchvision.datasets.EMNIST for name in EMNIST_SPLITS},
}
_SPLITS = ("train", "val", "test")
# Datasets whose images are decoded with one channel (augment.to_float_rgb repeats it to three).
GRAYSCALE = frozenset({"mnist", "fashion_mnist", "digits", *EMNIST_SPLITS})

Split = tuple[Tensor, Tensor]  # (uint8 images [N, C, H, W], int64 labels [N])


class DatasetError(ValueError):
    """A dataset that cannot be found, read or downloaded; the message is one line for the user."""


@dataclass
class ImageSplits:
    """A dataset's three splits on the CPU.

    Images are uint8 [N, C, H, W] with C = 1 (grayscale) or 3 (RGB); labels are int64 [N],
    indices into `classes`.
    """

    train_images: Tensor
    train_labels: Tensor
    val_images: Tensor
    val_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def train_size(self) -> int:
        return len(self.train_labels)


def check_dataset_name(name: str) -> None:
    """Raise DatasetError unless `name` is a known dataset or an existing imagefolder path."""
    if name.startswith(IMAGEFOLDER):
        _imagefolder_root(name)
    elif name not in NUM_CLASSES:
        choices = ", ".join([*sorted(NUM_CLASSES), IMAGEFOLDER + "PATH"])
        raise DatasetError(f"unknown dataset {name!r}; choose from: {choices}")


def dataset_num_classes(spec: TrainSpec) -> int:
    """The dataset's class count without downloading or decoding anything.

    Named datasets come from a table; an imagefolder counts the class folders of its train
    split, as `load_splits` will.
    """
    check_dataset_name(spec.dataset)
    if spec.dataset.startswith(IMAGEFOLDER):
        folders = _split_folders(_imagefolder_root(spec.dataset))
        return len(_class_names(folders["train"]))
    return NUM_CLASSES[spec.dataset]


def load_splits(spec: TrainSpec) -> ImageSplits:
    """Decode `spec.dataset` and return its train, val and test splits (see the module doc)."""
    check_dataset_name(spec.dataset)
    val: Split | None = None
    test: Split | None = None
    if spec.dataset.startswith(IMAGEFOLDER):
        train, val, test, classes = _read_imagefolder(spec)
    elif spec.dataset == "digits":
        train, classes = _read_digits()
    elif spec.dataset in EMNIST_SPLITS:
        train, test, classes = _read_emnist(spec)
    else:
        train, test, classes = _read_torchvision(spec)

    generator = torch.Generator().manual_seed(spec.seed)
    if test is None:
        train, test = _hold_out(train, spec.test_fraction, generator)
    if val is None:
        train, val = _hold_out(train, spec.val_fraction, generator)
    return ImageSplits(*train, *val, *test, classes=classes)


def stratified_split(labels: Tensor, fraction: float,
                     generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Sorted indices (kept, held_out) of a seeded split holding out `fraction` of each class.

    A class of n >= 2 samples gives round(fraction * n) of them, clamped to [1, n - 1] so
    that both sides see every class it can; a class of one sample stays in `kept`. Classes are
    visited in label order and each draws one permutation from `generator`, so the split
    depends only on the labels, the fraction and the generator's state.
    """
    kept = [torch.empty(0, dtype=torch.int64)]
    held = [torch.empty(0, dtype=torch.int64)]
    for label in torch.unique(labels).tolist():
        members = (labels == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        count = len(members)
        n = min(max(round(fraction * count), 1), count - 1) if count >= 2 else 0
        held.append(members[:n])
        kept.append(members[n:])
    return torch.cat(kept).sort().values, torch.cat(held).sort().values


def _hold_out(split: Split, fraction: float, generator: torch.Generator) -> tuple[Split, Split]:
    images, labels = split
    kept, held = stratified_split(labels, fraction, generator)
    return (images[kept], labels[kept]), (images[held], labels[held])


def _short(error: BaseException) -> str:
    # torchvision's download errors span lines and end with the underlying cause.
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _read_torchvision(spec: TrainSpec) -> tuple[Split, Split, list[str]]:
    dataset_class = _TORCHVISION[spec.dataset]
    options = {"split": EMNIST_SPLITS[spec.dataset]} if spec.dataset in EMNIST_SPLITS else {}
    # Where torchvision looks for the files, so the message can say where to put them.
    subfolder = getattr(dataset_class, "base_folder", None) or f"{dataset_class.__name__}/raw"
    folder = Path(spec.data_dir) / subfolder
    what = (f"the emnist-{options['split']}-*-ubyte files (EMNIST's gzip.zip, gunzipped)"
            if options else f"torchvision's {spec.dataset} files")
    hint = f"put {what} there, or point --data-dir at the folder holding {subfolder}/"
    try:
        train = dataset_class(spec.data_dir, train=True, download=False, **options)
    except RuntimeError:  # torchvision's "Dataset not found": the one failure a download fixes
        if not spec.download:
            raise DatasetError(f"{spec.dataset} not found in {folder} and downloading is "
                               f"off; {hint}") from None
        try:
            train = dataset_class(spec.data_dir, train=True, download=True, **options)
        except Exception as error:  # urllib, http, ssl and torchvision each raise their own
            raise DatasetError(f"{spec.dataset} not found in {folder} and downloading it "
                               f"failed ({_short(error)}); {hint}") from None
    except Exception as error:  # present but damaged: torchvision asserts or unpickles
        raise DatasetError(f"cannot read {spec.dataset} from {folder}: {_short(error)}") from None
    try:
        test = dataset_class(spec.data_dir, train=False, download=False, **options)
    except Exception as error:
        raise DatasetError(f"cannot read {spec.dataset}'s test split from {folder}: "
                           f"{_short(error)}") from None
    return _arrays(train), _arrays(test), list(train.classes)


def _read_emnist(spec: TrainSpec) -> tuple[Split, Split, list[str]]:
    train, test, classes = _read_torchvision(spec)
    train, test = _upright(train), _upright(test)
    if EMNIST_SPLITS[spec.dataset] == "letters":
        # torchvision lists a class "N/A" at index 0 that no image has (the letters are 1..26):
        # kept, it would be a head output no image asks for and an empty row in every
        # per-class report, so a..z become 0..25.
        train, test, classes = _shift_down(train), _shift_down(test), classes[1:]
    return train, test, list(classes)


def _upright(split: Split) -> Split:
    """EMNIST's idx files store each image transposed relative to MNIST's (row i of the stored
    array is column i of the character), so torchvision's tensors show every character
    mirrored and turned by 90 degrees. Swapping H and W makes them upright as MNIST's digits
    are: a backbone trained on MNIST then sees the orientation it knows, and the confusion
    matrices and pictures of a study read as the characters they are."""
    images, labels = split
    return images.transpose(2, 3).contiguous(), labels


def _shift_down(split: Split) -> Split:
    images, labels = split
    return images, labels - 1


def _arrays(dataset: torchvision.datasets.VisionDataset) -> Split:
    # CIFAR's `.data` is a numpy [N, H, W, C] array, MNIST-like ones a uint8 tensor [N, H, W].
    data = torch.as_tensor(dataset.data)
    images = data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)
    return images.contiguous(), torch.as_tensor(dataset.targets, dtype=torch.int64)


def _read_digits() -> tuple[Split, list[str]]:
    # Imported here: scikit-learn is slow to import and only this dataset needs it.
    from sklearn.datasets import load_digits

    digits = load_digits()
    scaled = np.rint(digits.images * (255 / 16))  # pixel values are 0..16
    images = torch.from_numpy(scaled).to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(digits.target).to(torch.int64)
    return (images, labels), [str(digit) for digit in range(10)]


def _imagefolder_root(name: str) -> Path:
    text = name[len(IMAGEFOLDER):]
    if not text:
        raise DatasetError(f"{IMAGEFOLDER} needs a folder: {IMAGEFOLDER}PATH")
    root = Path(text).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{IMAGEFOLDER} no such folder '{root}'")
    return root


def _split_folders(root: Path) -> dict[str, Path | None]:
    if not (root / "train").is_dir():
        return {"train": root, "val": None, "test": None}
    return {split: root / split if (root / split).is_dir() else None for split in _SPLITS}


def _class_names(folder: Path) -> list[str]:
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DatasetError(f"{folder} has no class folders (one subfolder of images per class)")
    return names


def _read_imagefolder(spec: TrainSpec) -> tuple[Split, Split | None, Split | None, list[str]]:
    folders = _split_folders(_imagefolder_root(spec.dataset))
    classes = _class_names(folders["train"])
    splits = {split: _read_images(folder, classes, spec.image_size, split == "train")
              for split, folder in folders.items() if folder is not None}
    return splits["train"], splits.get("val"), splits.get("test"), classes


def _read_images(folder: Path, classes: list[str], size: int, every_class: bool) -> Split:
    """Decode `folder`'s images, labelled by their class folder's index in `classes`.

    `every_class`: each class must have images here (the train split); val and test may
    lack some classes but must not add any.
    """
    extra = sorted(set(_class_names(folder)) - set(classes))
    if extra:
        raise DatasetError(f"{folder} has class folders missing from the train split: "
                           f"{', '.join(extra)}")
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = sorted(p for p in (folder / name).rglob("*")
                       if p.suffix.lower() in IMG_EXTENSIONS and p.is_file()
                       and not p.name.startswith("."))
        if not found and every_class:
            raise DatasetError(f"class folder {folder / name} has no images "
                               f"({', '.join(IMG_EXTENSIONS)})")
        files += found
        labels += [label] * len(found)
    if not files:
        raise DatasetError(f"{folder} has no images ({', '.join(IMG_EXTENSIONS)})")

    images = torch.empty((len(files), 3, size, size), dtype=torch.uint8)
    # Threads suffice: PIL releases the GIL while it decodes and resizes.
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        for index, image in enumerate(pool.map(partial(_decode, size=size), files)):
            images[index] = image
    return images, torch.tensor(labels, dtype=torch.int64)


def _decode(path: Path, size: int) -> Tensor:
    return decode_image(path, grayscale=False, size=size)


def decode_image(path: str | Path, grayscale: bool, size: int | None = None) -> Tensor:
    """One image file as uint8 [C, H, W]: C = 1 (PIL mode "L") when `grayscale`, else 3 (RGB);
    resized to size × size with PIL's bicubic filter when `size` is given, as an imagefolder's
    images are when they are loaded."""
    try:
        with Image.open(path) as image:
            decoded = image.convert("L" if grayscale else "RGB")
            if size is not None:
                decoded = decoded.resize((size, size), Image.Resampling.BICUBIC)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise DatasetError(f"cannot read image {path}: {_short(error)}") from None
    array = torch.from_numpy(np.array(decoded))
    return array.unsqueeze(0) if grayscale else array.permute(2, 0, 1)


def dataset_is_grayscale(name: str) -> bool:
    """Whether `load_splits` gives the dataset's images one channel rather than three."""
    return name in GRAYSCALE
