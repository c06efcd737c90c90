"""Every image mode PIL opens, as the 8-bit "L" or "RGB" pixels the models are trained on.

PIL's own `convert("L")` / `convert("RGB")` clips wider samples to 0..255, so a 16-bit scan
turns white, and drops alpha, revealing whatever colour the transparent pixels happen to hold.
`to_8bit` decodes instead:

- 16-bit grayscale ("I;16", "I;16B", "I;16L", "I;16N") and 32-bit integer "I" (PIL's mode for
  16-bit PGMs and for signed or 32-bit integer TIFFs) are taken as 0..65535 and scaled by
  that full range, round(v * 255 / 65535), not by each image's own darkest and brightest
  pixel: the levels an 8-bit export of the same scan has. An "I" image with a value outside
  0..65535 is refused.
- 32-bit float "F" is taken as 0..1 and scaled by 255, rounded; one with a value outside 0..1
  (or NaN) is refused: its range cannot be told from the file, and clipping would hide that.
- Transparency (RGBA, LA, PA, the premultiplied RGBa and La, and the transparent colour or
  palette alpha a PNG may carry) is composited on white (`BACKGROUND`), as a page shows the
  image, not dropped.
- Bilevel "1" (0 / 255), palette "P", "CMYK", "YCbCr", "LAB", "HSV" and "RGBX": PIL's
  conversion (to L for "1", else to RGB); one channel is PIL's luma (ITU-R 601-2) of the RGB.
- 16-bit colour PNGs: PIL itself opens them as 8-bit RGB(A), keeping each sample's high
  byte (within one level of the full-range scale).

Any other mode is refused by name (`UnsupportedImage`) before any pixel is used.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# The level transparent pixels are composited on: white, as a browser shows an image on a page.
BACKGROUND = 255
FULL_RANGE = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535,
              "F": 1.0}
# Modes with an alpha channel -> the 8-bit mode that keeps it (PIL has no La -> RGBA).
_ALPHA = {"LA": "LA", "La": "LA", "PA": "RGBA", "RGBA": "RGBA", "RGBa": "RGBA"}
# Modes PIL converts to 8-bit faithfully -> the mode they become here.
_CONVERTED = {"1": "L", "L": "L", "P": "RGB", "RGB": "RGB", "RGBX": "RGB", "CMYK": "RGB",
              "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB"}


class UnsupportedImage(ValueError):
    """An image whose mode or values `to_8bit` cannot turn into 8-bit pixels."""


def to_8bit(image: Image.Image, mode: str) -> Image.Image:
    """A new image of `mode` ("L" or "RGB") with `image`'s pixels decoded as the module says."""
    if image.mode in ("L", "RGB") and "transparency" not in image.info:
        return image.convert(mode)  # the common case: one conversion, as PIL alone would do
    flat = _opaque(_eight_bit(image))
    return flat if flat.mode == mode else flat.convert(mode)


def _eight_bit(image: Image.Image) -> Image.Image:
    """`image` as a new image of mode L, RGB, LA or RGBA."""
    if image.mode in FULL_RANGE:
        return _scaled(image)
    if image.mode in _ALPHA:
        return image.convert(_ALPHA[image.mode])
    if image.mode in _CONVERTED:
        if "transparency" in image.info:
            # PIL turns a transparent colour (or a palette's alpha) into an alpha channel.
            return image.convert("LA" if _CONVERTED[image.mode] == "L" else "RGBA")
        return image.convert(_CONVERTED[image.mode])
    raise UnsupportedImage(f"unsupported image mode {image.mode!r}")


def _scaled(image: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float image as L (LA with a transparent level)."""
    values = np.asarray(image)
    full = FULL_RANGE[image.mode]
    low, high = (values.min(), values.max()) if values.size else (0, 0)
    if not 0 <= low <= high <= full:  # NaN fails every comparison, so it is refused too
        kind = "float" if image.mode == "F" else "16/32-bit integer"
        raise UnsupportedImage(f"{kind} image (mode {image.mode}) has values {low:g}..{high:g}, "
                               f"outside 0..{full:g}")
    if image.mode == "F":
        levels = np.rint(values.astype(np.float64) * 255)
    else:
        # round(v * 255 / 65535) = round(v / 257), never a tie for integer v.
        levels = (values.astype(np.uint32) + 128) // 257
    gray = Image.fromarray(levels.astype(np.uint8))
    transparent = image.info.get("transparency")
    if not isinstance(transparent, int):
        return gray
    alpha = Image.fromarray(np.where(values == transparent, 0, 255).astype(np.uint8))
    return Image.merge("LA", (gray, alpha))


def _opaque(image: Image.Image) -> Image.Image:
    """An LA or RGBA image composited on BACKGROUND as L or RGB; others unchanged."""
    if image.mode not in ("LA", "RGBA"):
        return image
    pixels = np.asarray(image).astype(np.uint16)
    colour, alpha = pixels[..., :-1], pixels[..., -1:]
    # Exact rounding of (c a + b (255 - a)) / 255: the division never ends in .5.
    flat = (colour * alpha + BACKGROUND * (255 - alpha) + 127) // 255
    flat = flat.astype(np.uint8)
    return Image.fromarray(flat[..., 0] if flat.shape[-1] == 1 else flat)
