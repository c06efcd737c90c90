"""Each image mode PIL opens decodes to the pixels of a hand-made 8-bit twin (issue 26).

The twins are gradients with a distinct level per pixel, so a mode decoded with the wrong
scale, a dropped alpha channel or PIL's clipping (a 16-bit PNG read as all 255) shows.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from objectives import image_decoding
from objectives.data import DatasetError, check_dataset, decode_image, load_splits
from objectives.image_decoding import to_8bit
from objectives.inference import read_image
from objectives.spec import TrainSpec

# 0..255, one level per pixel.
GRAY = np.arange(256, dtype=np.uint8).reshape(16, 16)
# Three different gradients, so swapped or merged channels show.
COLOUR = np.stack([GRAY, 255 - GRAY, (GRAY.astype(np.int32) * 7 % 256).astype(np.uint8)], -1)


def decoded(path: Path, grayscale: bool = False) -> np.ndarray:
    """decode_image's pixels as [H, W] (grayscale) or [H, W, 3], signed so they subtract."""
    image = decode_image(path, grayscale=grayscale)
    return (image[0] if grayscale else image.permute(1, 2, 0)).numpy().astype(np.int32)


def gray_as_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


def write_png(path: Path, samples: np.ndarray, colour_type: int) -> None:
    """A 16-bit PNG written byte by byte, as a scanner's software would, not by PIL."""
    height, width = samples.shape[:2]
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in samples)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def sixteen_bit_png(path: Path) -> Path:
    Image.fromarray(GRAY.astype(np.uint16) * 257).save(path)  # v * 257: 0..255 -> 0..65535
    return path


# Grayscale twins in the modes PIL opens wider-than-8-bit files in.
@pytest.mark.parametrize("name, save, mode", [
    ("g16.png", lambda p: sixteen_bit_png(p), "I;16"),
    ("g16.png", lambda p: write_png(p, GRAY.astype(np.uint16) * 257, colour_type=0), "I;16"),
    ("g16b.tif", lambda p: Image.frombytes(
        "I;16B", (16, 16), (GRAY.astype(">u2") * 257).tobytes()).save(p), "I;16B"),
    ("g16.pgm", lambda p: p.write_bytes(
        b"P5 16 16 65535\n" + (GRAY.astype(">u2") * 257).tobytes()), "I"),
    ("i32.tif", lambda p: Image.fromarray(GRAY.astype(np.int32) * 257).save(p), "I"),
    ("f32.tif", lambda p: Image.fromarray(GRAY.astype(np.float32) / 255).save(p), "F"),
])
def test_high_bit_depth_grayscale_scales_by_the_full_range(tmp_path, name, save, mode):
    path = tmp_path / name
    save(path)
    with Image.open(path) as image:
        assert image.mode == mode  # the mode this test is about is the one PIL opens
    assert np.array_equal(decoded(path, grayscale=True), GRAY)
    assert np.array_equal(decoded(path), gray_as_rgb(GRAY))


def test_sixteen_bit_levels_round_to_the_nearest_8_bit_level(tmp_path):
    # Not each image's own min/max: a dark scan stays as dark as its 8-bit export.
    levels = np.array([[0, 128, 129, 385, 386, 1000, 65407, 65535]], dtype=np.uint16)
    Image.fromarray(levels).save(tmp_path / "dark.png")
    expected = np.rint(levels / 65535 * 255)
    assert np.array_equal(decoded(tmp_path / "dark.png", grayscale=True), expected)


def test_sixteen_bit_colour_png_is_within_one_level(tmp_path):
    samples = np.random.default_rng(0).integers(0, 65536, (16, 16, 3), dtype=np.uint16)
    write_png(tmp_path / "rgb16.png", samples, colour_type=2)
    expected = np.rint(samples / 65535 * 255)
    assert np.abs(decoded(tmp_path / "rgb16.png") - expected).max() <= 1
    write_png(tmp_path / "twin16.png", COLOUR.astype(np.uint16) * 257, colour_type=2)
    assert np.array_equal(decoded(tmp_path / "twin16.png"), COLOUR)


def test_palette_png(tmp_path):
    # GRAY as palette indices into COLOUR's 256 colours: the twin is COLOUR itself.
    image = Image.fromarray(GRAY, mode="P")
    image.putpalette(COLOUR.reshape(-1, 3).tobytes())
    image.save(tmp_path / "p.png")
    assert np.array_equal(decoded(tmp_path / "p.png"), COLOUR)


def test_cmyk_tiff(tmp_path):
    # Without black ink, C, M and Y are exactly 255 minus R, G and B.
    cmyk = np.concatenate([255 - COLOUR, np.zeros((16, 16, 1), np.uint8)], axis=-1)
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "cmyk.tif")
    assert np.array_equal(decoded(tmp_path / "cmyk.tif"), COLOUR)


def test_ycbcr_tiff_of_grays(tmp_path):
    neutral = np.full((16, 16), 128, np.uint8)
    ycbcr = np.stack([GRAY, neutral, neutral], axis=-1)
    Image.fromarray(ycbcr, mode="YCbCr").save(tmp_path / "ycc.tif")
    with Image.open(tmp_path / "ycc.tif") as image:
        assert image.mode == "YCbCr"
    assert np.array_equal(decoded(tmp_path / "ycc.tif", grayscale=True), GRAY)


def test_bilevel_png(tmp_path):
    Image.fromarray(GRAY > 127).save(tmp_path / "bw.png")
    with Image.open(tmp_path / "bw.png") as image:
        assert image.mode == "1"
    assert np.array_equal(decoded(tmp_path / "bw.png", grayscale=True), (GRAY > 127) * 255)


def black_with_alpha(alpha: np.ndarray, channels: int) -> np.ndarray:
    """Black where alpha > 0, junk colour where it is 0: on white, the twin is 255 - alpha."""
    junk = np.random.default_rng(1).integers(0, 256, (*alpha.shape, channels), dtype=np.uint8)
    colour = np.where(alpha[..., None] == 0, junk, 0).astype(np.uint8)
    return np.concatenate([colour, alpha[..., None]], axis=-1)


@pytest.mark.parametrize("mode, channels", [("RGBA", 3), ("LA", 1)])
def test_alpha_is_composited_on_white(tmp_path, mode, channels):
    Image.fromarray(black_with_alpha(GRAY, channels), mode=mode).save(tmp_path / "a.png")
    assert np.array_equal(decoded(tmp_path / "a.png", grayscale=True), 255 - GRAY)
    assert np.array_equal(decoded(tmp_path / "a.png"), gray_as_rgb(255 - GRAY))


def test_opaque_rgba_is_its_colour(tmp_path):
    opaque = np.concatenate([COLOUR, np.full((16, 16, 1), 255, np.uint8)], axis=-1)
    Image.fromarray(opaque, mode="RGBA").save(tmp_path / "opaque.png")
    assert np.array_equal(decoded(tmp_path / "opaque.png"), COLOUR)


def test_palette_transparency_is_composited_on_white(tmp_path):
    # Palette entry i is black with alpha i (PNG's tRNS chunk): on white, 255 - i.
    image = Image.fromarray(GRAY, mode="P")
    image.putpalette(bytes(3 * 256))
    image.save(tmp_path / "pt.png", transparency=bytes(range(256)))
    with Image.open(tmp_path / "pt.png") as reopened:
        assert reopened.mode == "P" and "transparency" in reopened.info
    assert np.array_equal(decoded(tmp_path / "pt.png", grayscale=True), 255 - GRAY)


def test_a_transparent_sixteen_bit_level_is_white(tmp_path):
    Image.fromarray(GRAY.astype(np.uint16) * 257).save(tmp_path / "t16.png", transparency=0)
    expected = GRAY.copy()
    expected[0, 0] = 255  # the one pixel at level 0
    assert np.array_equal(decoded(tmp_path / "t16.png", grayscale=True), expected)


OPAQUE = np.full((16, 16), 255, np.uint8)


@pytest.mark.parametrize("mode, pixels, twin", [
    ("RGBa", np.dstack([COLOUR, OPAQUE]), COLOUR),  # premultiplied alpha
    ("La", np.dstack([GRAY, OPAQUE]), gray_as_rgb(GRAY)),
    ("RGBX", np.dstack([COLOUR, GRAY]), COLOUR),  # X is padding, not alpha
    ("HSV", np.dstack([COLOUR[..., 0], np.zeros_like(GRAY), GRAY]), gray_as_rgb(GRAY)),
])
def test_modes_pil_has_but_does_not_write_as_files(mode, pixels, twin):
    image = Image.fromarray(pixels, mode=mode)
    assert np.array_equal(np.asarray(to_8bit(image, "RGB")), twin)


def test_lab_tiff_white_and_black(tmp_path):
    lab = np.zeros((1, 2, 3), np.uint8)
    lab[0, 0] = (255, 0, 0)  # white and black: PIL stores a* and b* as signed bytes
    Image.fromarray(lab, mode="LAB").save(tmp_path / "lab.tif")
    with Image.open(tmp_path / "lab.tif") as image:
        assert image.mode == "LAB"
    expected = np.array([[[255] * 3, [0] * 3]])
    assert np.abs(decoded(tmp_path / "lab.tif") - expected).max() <= 1
    assert np.abs(decoded(tmp_path / "lab.tif", grayscale=True) - expected[..., 0]).max() <= 1


@pytest.mark.parametrize("name, values, message", [
    ("f255.tif", GRAY.astype(np.float32), "float image (mode F) has values 0..255, outside 0..1"),
    ("nan.tif", np.full((2, 2), np.nan, np.float32), "(mode F) has values nan..nan"),
    ("neg.tif", GRAY.astype(np.int32) - 5, "(mode I) has values -5..250, outside 0..65535"),
])
def test_values_out_of_range_are_refused_with_the_file_and_mode(tmp_path, name, values,
                                                                 message):
    Image.fromarray(values).save(tmp_path / name)
    with pytest.raises(DatasetError) as error:
        decode_image(tmp_path / name, grayscale=False)
    prefix = f"cannot read image {tmp_path / name}: "
    assert str(error.value).startswith(prefix) and message in str(error.value)


def test_a_mode_it_cannot_handle_is_refused_by_name(tmp_path, monkeypatch):
    # Every mode this Pillow opens is handled; one it may add later is refused like CMYK here.
    Image.new("CMYK", (2, 2)).save(tmp_path / "cmyk.tif")
    monkeypatch.delitem(image_decoding._CONVERTED, "CMYK")
    with pytest.raises(DatasetError, match=r"cmyk\.tif: unsupported image mode 'CMYK'$"):
        decode_image(tmp_path / "cmyk.tif", grayscale=False)


def twin_folders(root: Path) -> tuple[Path, Path]:
    """Two image folders of the same pictures: 8-bit PNGs and their 16-bit copies."""
    for name, scale in (("eight", 1), ("sixteen", 257)):
        for label, picture in (("dark", GRAY // 4), ("light", 255 - GRAY // 4)):
            for index in range(3):
                samples = np.roll(picture, index, axis=0).astype(np.uint16) * scale
                folder = root / name / label
                folder.mkdir(parents=True, exist_ok=True)
                image = Image.fromarray(samples if scale > 1 else samples.astype(np.uint8))
                image.save(folder / f"{index}.png")
    return root / "eight", root / "sixteen"


def test_an_image_folder_of_16_bit_scans_trains_on_its_8_bit_twin(tmp_path):
    eight, sixteen = twin_folders(tmp_path)
    splits = [load_splits(TrainSpec(dataset=f"imagefolder:{folder}", image_size=24,
                                    val_fraction=0.0, test_fraction=0.0))
              for folder in (eight, sixteen)]
    assert torch.equal(splits[0].train_images, splits[1].train_images)
    assert torch.equal(splits[0].train_labels, splits[1].train_labels)
    assert splits[1].train_images.float().std() > 0  # not the all-white images of PIL's clip


@pytest.mark.parametrize("dataset", ["digits", "cifar10", "imagefolder:{folder}"])
def test_predict_reads_a_16_bit_image_as_its_8_bit_twin(tmp_path, dataset):
    # `search predict` classifies read_image's tensor: equal tensors, equal predictions.
    Image.fromarray(GRAY).save(tmp_path / "eight.png")
    sixteen_bit_png(tmp_path / "sixteen.png")
    spec = TrainSpec(dataset=dataset.format(folder=tmp_path), image_size=32)
    assert torch.equal(read_image(tmp_path / "sixteen.png", spec),
                       read_image(tmp_path / "eight.png", spec))


def test_check_dataset_names_a_refused_image_before_training(tmp_path):
    eight, _ = twin_folders(tmp_path)
    Image.fromarray(GRAY.astype(np.float32)).save(eight / "light" / "float.tif")
    spec = TrainSpec(dataset=f"imagefolder:{eight}", image_size=8)
    with pytest.raises(DatasetError, match=r"1 unreadable image in .*: light/float\.tif "
                                           r"\(float image \(mode F\) has values 0\.\.255"):
        check_dataset(spec)
