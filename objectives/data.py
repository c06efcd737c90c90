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
- "imagefolder:PATH": one subfolder of images per class, decoded with PIL to 8-bit RGB as
  `objectives.image_decoding` says (16-bit and float grayscale scaled by their full range,
  transparency composited on white, a mode it cannot decode refused by name) and resized to
  `image_size` so they stack. When PATH has a `train/` subfolder, `train/`, `val/` and
  `test/` are the splits (val and test optional); otherwise PATH is split. A relative PATH is
  relative to the working directory, not `data_dir`.

Splits that a dataset does not ship are held out of its train split, test first
(`test_fraction`) and then validation (`val_fraction`) from what is left. Both are stratified
by class and drawn from a generator seeded with `spec.split_seed` (default: `spec.seed`): the
same spec gives identical splits on any host.
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
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchvision.datasets.folder import IMG_EXTENSIONS

from objectives.image_decoding import to_8bit
from objectives.spec import TrainSpec
from objectives.user_error import UserError

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
# The image files an imagefolder is made of and `search predict` accepts, lower case:
# torchvision's ImageFolder list (.jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp), so a folder
# holds the same images here as under torchvision. PIL's `registered_extensions()` is no
# better: it also names formats PIL can only write (.pdf) or reads through outside tools
# (.eps: Ghostscript), and animated ones (.gif) of which only the first frame would be seen.
IMAGE_EXTENSIONS: tuple[str, ...] = IMG_EXTENSIONS
# At most this many unreadable files are named in check_dataset's message; the rest counted.
SHOWN_UNREADABLE = 20

Split = tuple[Tensor, Tensor]  # (uint8 images [N, C, H, W], int64 labels [N])


class DatasetError(UserError):
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

    images, labels = train
    kept, val_index, test_index = _hold_out_indices(labels, spec, val is None, test is None)
    if test_index is not None:
        test = images[test_index], labels[test_index]
    if val_index is not None:
        val = images[val_index], labels[val_index]
    if len(kept) < len(labels):
        train = images[kept], labels[kept]
    return ImageSplits(*train, *val, *test, classes=classes)


@dataclass(frozen=True)
class DatasetSummary:
    """The split sizes and classes that `load_splits` will give a spec (see `check_dataset`)."""

    train_size: int
    val_size: int
    test_size: int
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> str:
        """One line, e.g. "train 1,700 / val 300 / test 500 images, 10 classes"."""
        noun = "class" if self.num_classes == 1 else "classes"
        return (f"train {self.train_size:,} / val {self.val_size:,} / test {self.test_size:,} "
                f"images, {self.num_classes:,} {noun}")


def check_dataset(spec: TrainSpec) -> DatasetSummary:
    """What `load_splits(spec)` will give, checked before any study is created or changed.

    Raises DatasetError (one line) when loading would fail or a split would be empty or lack
    a class: an imagefolder's files are each decoded as the loader decodes them (the resize
    aside), and every unreadable one is reported at once (the first SHOWN_UNREADABLE named,
    the rest counted); a split is refused naming it and its counts. Split sizes come from the
    labels alone, through `load_splits`' own seeded hold-out. Named datasets are read as
    `load_splits` reads them (downloaded when absent and `spec.download` allows) and only
    their labels kept; "digits" is bundled.
    """
    check_dataset_name(spec.dataset)
    hint = ""
    if spec.dataset.startswith(IMAGEFOLDER):
        shipped, classes, names, hint = _imagefolder_labels(spec)
    elif spec.dataset == "digits":
        (_, labels), classes = _read_digits()
        shipped = {"train": labels, "val": None, "test": None}
        names = {"train": spec.dataset}
    else:
        train, test = _torchvision_datasets(spec)
        classes = list(train.classes)
        shipped = {"train": _targets(train), "val": None, "test": _targets(test)}
        if _drops_first_class(spec):
            shipped = {"train": shipped["train"] - 1, "val": None, "test": shipped["test"] - 1}
            classes = classes[1:]
        names = {split: f"{spec.dataset}'s {split} split" for split in _SPLITS}
    return _summarise(spec, shipped, classes, names, hint)


def _targets(dataset: torchvision.datasets.VisionDataset) -> Tensor:
    return torch.as_tensor(dataset.targets, dtype=torch.int64)


def _imagefolder_labels(spec: TrainSpec) -> tuple[dict[str, Tensor | None], list[str],
                                                  dict[str, str], str]:
    """The labels of an imagefolder's split folders (None for a split it lacks), its classes,
    each folder's name for messages and a hint on adding splits; every file decoded first."""
    root = _imagefolder_root(spec.dataset)
    folders = _split_folders(root)
    classes = _class_names(folders["train"])
    listed = {split: _list_images(folder, classes, split == "train")
              for split, folder in folders.items() if folder is not None}
    _check_readable(root, [file for files, _ in listed.values() for file in files])
    shipped = {split: torch.tensor(listed[split][1], dtype=torch.int64) if split in listed
               else None for split in _SPLITS}
    names = {split: str(folder) for split, folder in folders.items() if folder is not None}
    if folders["train"] == root:
        hint = f"add images, or split them into {root}/train, {root}/val and {root}/test"
    else:
        hint = f"add images, or give {root} its own {{split}}/ folder"
    return shipped, classes, names, hint


def _check_readable(root: Path, files: list[Path]) -> None:
    """Raise DatasetError naming the files below `root` that do not decode, all in one line."""
    # Threads, as the loader: PIL releases the GIL while it decodes.
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        reasons = list(pool.map(_unreadable, files))
    bad = [f"{file.relative_to(root)} ({reason})"
           for file, reason in zip(files, reasons, strict=True) if reason is not None]
    if bad:
        shown = ", ".join(bad[:SHOWN_UNREADABLE])
        more = (f", and {len(bad) - SHOWN_UNREADABLE:,} more" if len(bad) > SHOWN_UNREADABLE
                else "")
        raise DatasetError(f"{len(bad):,} unreadable image{'' if len(bad) == 1 else 's'} in "
                           f"{root}: {shown}{more}")


def _unreadable(path: Path) -> str | None:
    """Why `path` does not decode as `decode_image` decodes an imagefolder's files, or None.

    All of the file is decoded (`to_8bit` loads every pixel), so a truncated JPEG or PNG, or a
    mode or range of values `to_8bit` refuses, fails here as it would in the loader, and not
    only its header is read."""
    try:
        with Image.open(path) as image:
            to_8bit(image, "RGB")
    except UnidentifiedImageError:  # its message repeats the path
        return "cannot identify image file"
    except Exception as error:  # whatever a damaged file makes PIL raise, it cannot be used
        return _short(error)
    return None


def _summarise(spec: TrainSpec, shipped: dict[str, Tensor | None], classes: list[str],
               names: dict[str, str], hint: str) -> DatasetSummary:
    """The split sizes `load_splits` gives from the `shipped` splits' labels (None: held out
    of train); DatasetError when a split would miss a class. `names` names each shipped split
    in messages; `hint` ("{split}" filled in) says how to give a held-out split more images."""
    train = shipped["train"]
    held_val, held_test = shipped["val"] is None, shipped["test"] is None
    kept, val_index, test_index = _hold_out_indices(train, spec, held_val, held_test)
    splits = {"train": train[kept],
              "val": train[val_index] if held_val else shipped["val"],
              "test": train[test_index] if held_test else shipped["test"]}
    for split in ("train", "test", "val"):  # test is held out first
        missing = [classes[label] for label, count in enumerate(_class_counts(splits[split],
                                                                             classes)) if not count]
        if not missing:
            continue
        if split == "train" or not (held_val if split == "val" else held_test):
            raise DatasetError(f"{names[split]} has no image of {_which(missing, classes)} "
                               f"({len(splits[split]):,} images of {len(classes) - len(missing)} "
                               f"classes); each split needs images of every class")
        problem = ("be empty" if len(missing) == len(classes)
                   else f"have no image of {_which(missing, classes)}")
        counts = _class_counts(train, classes)
        message = (f"{split} split would {problem}: {names['train']} has {len(train):,} images "
                   f"in {len(classes)} classes ({_per_class(counts)} a class)")
        left = ""
        if split == "val" and held_test:
            pool = _class_counts(torch.cat([splits["train"], splits["val"]]), classes)
            message += (f"; test_fraction {spec.test_fraction} holds out "
                        f"{len(splits['test']):,} of them as the test split, leaving "
                        f"{_per_class(pool)} a class")
            left = " left"
        fraction = spec.val_fraction if split == "val" else spec.test_fraction
        message += (f"; {split}_fraction {fraction} holds out images only of classes with 2 or "
                    f"more{left}")
        raise DatasetError(message + (f"; {hint.format(split=split)}" if hint else ""))
    return DatasetSummary(len(splits["train"]), len(splits["val"]), len(splits["test"]),
                          tuple(classes))


def _class_counts(labels: Tensor, classes: list[str]) -> list[int]:
    return torch.bincount(labels, minlength=len(classes)).tolist()


def _per_class(counts: list[int]) -> str:
    low, high = min(counts), max(counts)
    return f"{low:,}" if low == high else f"{low:,} to {high:,}"


def _which(missing: list[str], classes: list[str], shown: int = 10) -> str:
    if len(missing) == 1:
        return f"class {missing[0]!r}"
    names = ", ".join(repr(name) for name in missing[:shown])
    more = f", ... ({len(missing) - shown} more)" if len(missing) > shown else ""
    return f"{len(missing)} of {len(classes)} classes ({names}{more})"


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


def _hold_out_indices(labels: Tensor, spec: TrainSpec, val: bool, test: bool
                      ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Sorted indices into `labels` (a dataset's train split) of the train, val and test
    splits that `load_splits` holds out of it: test first when `test`, then val from what is
    left when `val`; None for a split not held out. Labels alone decide them, so
    `check_dataset` sizes the splits without the images."""
    generator = torch.Generator().manual_seed(spec.splits_seed)
    kept = torch.arange(len(labels))
    held: dict[str, Tensor] = {}
    for split, fraction, wanted in (("test", spec.test_fraction, test),
                                    ("val", spec.val_fraction, val)):
        if wanted:
            keep, out = stratified_split(labels[kept], fraction, generator)
            kept, held[split] = kept[keep], kept[out]
    return kept, held.get("val"), held.get("test")


def _short(error: BaseException) -> str:
    # torchvision's download errors span lines and end with the underlying cause.
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _read_torchvision(spec: TrainSpec) -> tuple[Split, Split, list[str]]:
    train, test = _torchvision_datasets(spec)
    return _arrays(train), _arrays(test), list(train.classes)


def _torchvision_datasets(spec: TrainSpec) -> tuple[torchvision.datasets.VisionDataset,
                                                     torchvision.datasets.VisionDataset]:
    """torchvision's train and test datasets of `spec.dataset`, downloaded when absent and
    `spec.download` allows."""
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
    return train, test


def _read_emnist(spec: TrainSpec) -> tuple[Split, Split, list[str]]:
    train, test, classes = _read_torchvision(spec)
    train, test = _upright(train), _upright(test)
    if _drops_first_class(spec):
        train, test, classes = _shift_down(train), _shift_down(test), classes[1:]
    return train, test, list(classes)


def _drops_first_class(spec: TrainSpec) -> bool:
    # torchvision lists a class "N/A" at index 0 that no EMNIST letter has (they are 1..26):
    # kept, it would be a head output no image asks for and an empty row in every per-class
    # report, so a..z become 0..25.
    return EMNIST_SPLITS.get(spec.dataset) == "letters"


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


def has_image_extension(path: str | Path) -> bool:
    """Whether the file name ends in one of IMAGE_EXTENSIONS, in any case."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _list_images(folder: Path, classes: list[str], every_class: bool
                 ) -> tuple[list[Path], list[int]]:
    """`folder`'s image files, sorted by class, and their labels: each file's class folder's
    index in `classes` (files are found at any depth below it).

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
                       if has_image_extension(p) and p.is_file()
                       and not p.name.startswith("."))
        if not found and every_class:
            raise DatasetError(f"class folder {folder / name} has no images "
                               f"({', '.join(IMAGE_EXTENSIONS)})")
        files += found
        labels += [label] * len(found)
    if not files:
        raise DatasetError(f"{folder} has no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files, labels


def _read_images(folder: Path, classes: list[str], size: int, every_class: bool) -> Split:
    """Decode `folder`'s images (see `_list_images`), labelled by their class's index."""
    files, labels = _list_images(folder, classes, every_class)
    images = torch.empty((len(files), 3, size, size), dtype=torch.uint8)
    # Threads suffice: PIL releases the GIL while it decodes and resizes.
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        for index, image in enumerate(pool.map(partial(_decode, size=size), files)):
            images[index] = image
    return images, torch.tensor(labels, dtype=torch.int64)


def _decode(path: Path, size: int) -> Tensor:
    return decode_image(path, grayscale=False, size=size)


def decode_image(path: str | Path, grayscale: bool, size: int | None = None) -> Tensor:
    """One image file as uint8 [C, H, W]: C = 1 (PIL mode "L") when `grayscale`, else 3 (RGB),
    whatever its mode (see `objectives.image_decoding`); resized to size × size with PIL's
    bicubic filter when `size` is given, as an imagefolder's images are when they are loaded.
    DatasetError (one line, naming the file) when it cannot be decoded."""
    try:
        with Image.open(path) as image:
            decoded = to_8bit(image, "L" if grayscale else "RGB")
            if size is not None:
                decoded = decoded.resize((size, size), Image.Resampling.BICUBIC)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise DatasetError(f"cannot read image {path}: {_short(error)}") from None
    array = torch.from_numpy(np.array(decoded))
    return array.unsqueeze(0) if grayscale else array.permute(2, 0, 1)


def dataset_is_grayscale(name: str) -> bool:
    """Whether `load_splits` gives the dataset's images one channel rather than three."""
    return name in GRAYSCALE
