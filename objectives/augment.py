"""Batched image augmentation on the trial's device, with independent randomness per sample.

`train_batch` follows the torchvision pipeline

    Resize(image_size) -> RandomHorizontalFlip(hflip) -> RandomCrop(image_size, crop_padding)
    -> RandomAffine(affine_degrees, (affine_translate,) * 2, affine_scale)
    -> ColorJitter(*color_jitter) -> Normalize(mean, std)

on a whole uint8 batch at once: every random parameter is drawn as a [B] tensor from the
caller's generator, all before the first op runs (`draw_train`), and applied with broadcasting
or index arithmetic, never a per-image Python loop. ColorJitter runs in one fixed order here
(see `colour_jitter`). `eval_batch` only resizes and normalises.

Two orders compute it from the same draws. The full-size order runs the ops as listed. It
serves images already image_size or larger, whose downsampling needs interpolate's
antialiasing, and batches with affine on. Smaller images, e.g. 32 × 32 for a 224 backbone,
take the native-size order. It applies colour jitter to the small images, normalises them
(per-channel affine, so it commutes with bilinear resampling), then resizes, flips and crops
in a single `grid_sample`. That is one resampling pass over the large images instead of some
forty. The crop's padding, zeros that the full-size order then jitters, gets the colour the
jitter gives a black pixel: brightness keeps it black, contrast lifts it to
clamp((1 - factor)·mean), and saturation and hue leave a gray pixel gray. Contrast's mean is
the crop's, taken at native size with each pixel weighted by the area of it the crop shows.
Colour ops and bilinear interpolation don't commute exactly (the clamps, hue's sectors, that
mean), so the orders differ on edges: on 8 × 8 digits upsampled to 32 by a mean of 0.01 of
the [0, 1] range and up to 0.3 on a few stroke edges.

What the tests measure. Against torchvision: each op, given the same parameters, matches its
`torchvision.transforms.v2.functional` counterpart per sample (resize, flip, crop, affine,
the four colour ops); the affine parameters pass a two-sample KS test against
`RandomAffine.get_params`, and the flip and crop offsets a chi-square test against
`RandomHorizontalFlip` + `RandomCrop` (+ `Resize` for the native-size order); for the whole
pipeline in either order only the per-pixel mean and standard deviation over 4,096 draws of
one image are compared, and agree within 0.03. Between the orders, against a copy of the
full-size order: with colour jitter off they agree within 1e-5 (resize, flip and crop are
exact in one pass); with every op on, within the interpolation error above; the padding's
colour within 0.008; the native-size contrast mean within 0.002 of the resized crop's on
smooth images.

Images are resized to image_size × image_size. For the square images the datasets hold this is
`Resize(image_size)`; a non-square image is stretched rather than resized on its short edge, so
that every batch, train or eval, comes out square.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from objectives.spec import AugmentSpec

# torchvision's rgb_to_grayscale weights (ITU-R 601-2, with 0.2989 where PIL has 0.299).
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


def eval_batch(images: Tensor, spec: AugmentSpec, image_size: int) -> Tensor:
    """uint8 [B, 1 or 3, h, w] -> normalised float32 [B, 3, image_size, image_size]."""
    return normalize(resize(to_float_rgb(images), image_size), spec)


class TrainDraws(NamedTuple):
    """One batch's random parameters, each [B] (`affine` a tuple of four), None where off."""

    flip: Tensor | None
    top: Tensor | None
    left: Tensor | None
    affine: tuple[Tensor, Tensor, Tensor, Tensor] | None
    brightness: Tensor | None
    contrast: Tensor | None
    saturation: Tensor | None
    hue: Tensor | None


def train_batch(images: Tensor, spec: AugmentSpec, image_size: int,
                generator: torch.Generator) -> Tensor:
    """`eval_batch` plus the random flip, padded crop, affine and colour jitter of `spec`.

    `generator` must live on `images`' device; operations whose strength is 0 draw nothing.
    Both orders (see the module docstring) take the same draws from the same generator.
    """
    images = to_float_rgb(images)
    draws = draw_train(spec, len(images), image_size, images.device, generator)
    # Upsampling without affine: jitter at native size, then one resampling pass. Downsampling
    # needs interpolate's antialiasing, which grid_sample lacks, and the full-size images are
    # then no larger than the input, so jittering first would save nothing. Affine resamples
    # the crop a second time and fills with zeros that the full-size order then jitters; after
    # a native-size jitter that fill would stay black, and two bilinear passes don't fuse into
    # one grid_sample.
    if draws.affine is None and max(images.shape[-2:]) < image_size:
        return train_upsampling(images, draws, spec, image_size)
    return normalize(colour_jitter(transform_full_size(images, draws, spec, image_size), draws),
                     spec)


def draw_train(spec: AugmentSpec, size: int, image_size: int, device: torch.device,
               generator: torch.Generator) -> TrainDraws:
    """All of a batch's random parameters, drawn in the order the ops run in the full-size
    order: flip, crop offsets (in output pixels, on `device`), affine, then the four colour
    factors; operations whose strength is 0 draw nothing."""
    uniform = functools.partial(draw_uniform, size, generator)
    flip = uniform(0, 1) < spec.hflip if spec.hflip > 0 else None
    top = left = None
    if spec.crop_padding > 0:
        top, left = torch.randint(2 * spec.crop_padding + 1, (2, size), device=device,
                                  generator=generator)
    affine_params = None
    if spec.affine_degrees > 0 or spec.affine_translate > 0 or spec.affine_scale != (1, 1):
        affine_params = draw_affine(spec, size, image_size, generator)
    brightness, contrast, saturation, hue = spec.color_jitter
    return TrainDraws(
        flip, top, left, affine_params,
        uniform(max(0, 1 - brightness), 1 + brightness) if brightness > 0 else None,
        uniform(max(0, 1 - contrast), 1 + contrast) if contrast > 0 else None,
        uniform(max(0, 1 - saturation), 1 + saturation) if saturation > 0 else None,
        uniform(-hue, hue) if hue > 0 else None)


def transform_full_size(images: Tensor, draws: TrainDraws, spec: AugmentSpec, image_size: int
                        ) -> Tensor:
    """Resize, flip, padded crop and affine of the full-size order, on float images."""
    batch = resize(images, image_size)
    if draws.flip is not None:
        batch = hflip(batch, draws.flip)
    if draws.top is not None:
        batch = padded_crop(batch, draws.top, draws.left, spec.crop_padding)
    if draws.affine is not None:
        batch = affine(batch, *draws.affine)
    return batch


def colour_jitter(images: Tensor, draws: TrainDraws, contrast_mean: Tensor | None = None
                  ) -> Tensor:
    """Brightness, contrast, saturation, hue with `draws`' factors, in this fixed order.

    `contrast_mean` [B, 1, 1, 1] is what contrast blends with; by default the mean of the
    grayscale image as it is after brightness, as TF.adjust_contrast.
    """
    # torchvision's ColorJitter applies the four ops in a random order per call; we use one
    # fixed order. Brightness, contrast and saturation are linear blends that commute with each
    # other except for the clamps (which rarely engage at strengths of a few tenths) and the
    # luma weights summing to 0.9999; only the small hue rotation really depends on its place.
    # A per-sample order would cost every op evaluated under masks in each of four positions.
    if draws.brightness is not None:
        images = adjust_brightness(images, draws.brightness)
    if draws.contrast is not None:
        images = adjust_contrast(images, draws.contrast, contrast_mean)
    if draws.saturation is not None:
        images = adjust_saturation(images, draws.saturation)
    if draws.hue is not None:
        images = adjust_hue(images, draws.hue)
    return images


def train_upsampling(images: Tensor, draws: TrainDraws, spec: AugmentSpec, image_size: int
                     ) -> Tensor:
    """The native-size order for float images smaller than image_size and no affine: colour
    jitter on the small images, then resize, flip and padded crop in one `grid_sample`.

    The crop's padding gets the colour that the full-size order's jitter gives its zeros: one
    per sample, found by jittering a black pixel with the same factors and contrast mean.
    """
    if draws.flip is None and draws.top is None:  # nothing to fuse: interpolate, as eval does
        return normalize(resize(colour_jitter(images, draws), image_size), spec)
    size, device = len(images), images.device
    flip = draws.flip if draws.flip is not None else torch.zeros(size, dtype=torch.bool,
                                                                 device=device)
    padding = spec.crop_padding if draws.top is not None else 0
    top = draws.top if draws.top is not None else torch.zeros(size, dtype=torch.long,
                                                              device=device)
    left = draws.left if draws.left is not None else top
    mean = None
    if draws.contrast is not None:
        brightened = (adjust_brightness(images, draws.brightness)
                      if draws.brightness is not None else images)
        mean = window_mean(grayscale(brightened), flip, top, left, padding, image_size)
    jittered = colour_jitter(images, draws, mean)
    fill = colour_jitter(images.new_zeros(size, 3, 1, 1), draws, mean)
    # Normalising is per channel and affine, and bilinear weights sum to 1, so it commutes with
    # the resampling: done here on the small images, it saves a pass over the large ones.
    return resample(normalize(jittered, spec), normalize(fill, spec), flip, top, left, padding,
                    image_size)


def resample(images: Tensor, fill: Tensor, flip: Tensor, top: Tensor, left: Tensor,
             padding: int, image_size: int) -> Tensor:
    """`padded_crop(hflip(resize(images, image_size), flip), top, left, padding)` in one
    bilinear `grid_sample`, with `fill` [B, C, 1, 1] where the crop shows its padding.

    For upsampling only, where antialiasing changes nothing: output pixels in the crop's window
    read the point F.interpolate reads, clamped as it clamps. `top`, `left` [B] index the
    padded image in output pixels. The images get a one-pixel ring of their fill colour, and
    padding pixels read beyond it, where border padding clamps them onto the ring: the fill,
    without a second pass over the output to paste it in.
    """
    batch, channels, height, width = images.shape
    ringed = fill.expand(batch, channels, height + 2, width + 2).clone()
    ringed[:, :, 1:-1, 1:-1] = images
    rows, cols = crop_positions(flip, top, left, padding, image_size)  # each [B, S]
    grid_y = ringed_coordinates(rows, height, image_size).unsqueeze(2)
    grid_x = ringed_coordinates(cols, width, image_size).unsqueeze(1)
    grid = torch.stack(torch.broadcast_tensors(grid_x, grid_y), dim=-1)  # [B, S, S, 2]
    return F.grid_sample(ringed, grid, mode="bilinear", padding_mode="border",
                         align_corners=False)


def ringed_coordinates(positions: Tensor, native: int, image_size: int) -> Tensor:
    """grid_sample coordinates in the ringed image (native + 2 pixels, align_corners=False) of
    resized pixels `positions`; those outside [0, image_size) get -2, beyond the ring."""
    # F.interpolate (align_corners=False) reads output pixel c at (c + 0.5)·n/S - 0.5 and
    # clamps that to [0, n - 1]; the ring shifts native pixels by one.
    source = ((positions + 0.5) * (native / image_size) - 0.5).clamp(0, native - 1) + 1
    coordinates = (2 * source + 1) / (native + 2) - 1
    padded = (positions < 0) | (positions >= image_size)
    return torch.where(padded, -2.0, coordinates)


def crop_positions(flip: Tensor, top: Tensor, left: Tensor, padding: int, image_size: int
                   ) -> tuple[Tensor, Tensor]:
    """Which row and column of the resized, unflipped image each output row and column shows,
    [B, image_size] each; those outside [0, image_size) show the crop's padding."""
    out = torch.arange(image_size, device=top.device)
    rows = top.view(-1, 1) - padding + out
    cols = left.view(-1, 1) - padding + out
    return rows, torch.where(flip.view(-1, 1), image_size - 1 - cols, cols)


def window_mean(gray: Tensor, flip: Tensor, top: Tensor, left: Tensor, padding: int,
                image_size: int) -> Tensor:
    """[B, 1, 1, 1]: the mean of the crop of the resized `gray` [B, 1, h, w], computed at
    native size, padding counting as 0, as the full-size order's contrast mean.

    Native pixel (k, l) covers output rows [k·S/h, (k+1)·S/h) and columns likewise; it weighs
    as much as the window of resized pixels the crop shows overlaps that extent, over S².
    This is the resized crop's mean up to interpolation error.
    """
    height, width = gray.shape[-2:]
    # The crop shows resized rows [top - padding, top - padding + S); a flip mirrors columns.
    row_start = top - padding
    col_start = torch.where(flip, padding - left, left - padding)
    row_weights = window_overlap(row_start, height, image_size)  # [B, h]
    col_weights = window_overlap(col_start, width, image_size)  # [B, w]
    total = torch.einsum("bhw,bh,bw->b", gray[:, 0], row_weights, col_weights)
    return (total / image_size ** 2).view(-1, 1, 1, 1)


def window_overlap(start: Tensor, native: int, image_size: int) -> Tensor:
    """[B, native]: the length of [start, start + S) ∩ [0, S), per sample of `start` [B],
    that falls into each native pixel's extent [k·S/native, (k+1)·S/native)."""
    edges = torch.arange(native + 1, device=start.device) * (image_size / native)
    low = start.clamp(min=0).view(-1, 1)
    high = (start + image_size).clamp(max=image_size).view(-1, 1)
    return (torch.minimum(edges[1:], high) - torch.maximum(edges[:-1], low)).clamp(min=0)


def to_float_rgb(images: Tensor) -> Tensor:
    """uint8 [B, 1 or 3, h, w] -> float32 in [0, 1] with 3 channels (grayscale repeated)."""
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return images.float().div_(255)


def resize(images: Tensor, image_size: int) -> Tensor:
    """Bilinear, antialiased resize to image_size × image_size; the identity when already so."""
    if images.shape[-2:] == (image_size, image_size):
        return images
    return F.interpolate(images, size=(image_size, image_size), mode="bilinear",
                         align_corners=False, antialias=True)


def normalize(images: Tensor, spec: AugmentSpec) -> Tensor:
    mean = channel_constant(spec.mean, images.device)
    std = channel_constant(spec.std, images.device)
    return (images - mean) / std


def hflip(images: Tensor, flip: Tensor) -> Tensor:
    """Mirror the images where the boolean `flip` [B] is true."""
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


def padded_crop(images: Tensor, top: Tensor, left: Tensor, padding: int) -> Tensor:
    """Crop each image of `images` [B, C, H, W], zero-padded by `padding`, at its own offset.

    `top`, `left` [B] index the padded image, as torchvision's RandomCrop offsets do, and each
    crop keeps the size H × W. The padded image is never built: rows and columns are gathered
    from the original and those falling into the padding are zeroed.
    """
    batch, channels, height, width = images.shape
    rows = top.view(-1, 1) - padding + torch.arange(height, device=images.device)  # [B, H]
    cols = left.view(-1, 1) - padding + torch.arange(width, device=images.device)  # [B, W]
    rows_inside = (rows >= 0) & (rows < height)
    cols_inside = (cols >= 0) & (cols < width)
    row_index = rows.clamp(0, height - 1).view(batch, 1, height, 1)
    col_index = cols.clamp(0, width - 1).view(batch, 1, 1, width)
    cropped = images.gather(2, row_index.expand(-1, channels, -1, width))
    cropped = cropped.gather(3, col_index.expand(-1, channels, height, -1))
    inside = rows_inside.view(batch, 1, height, 1) & cols_inside.view(batch, 1, 1, width)
    return cropped * inside


def draw_uniform(size: int, generator: torch.Generator, low: float, high: float) -> Tensor:
    """[size] values uniform in [low, high), on the generator's device."""
    return torch.rand(size, device=generator.device, generator=generator) * (high - low) + low


def draw_affine(spec: AugmentSpec, size: int, image_size: int, generator: torch.Generator
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-sample angle (degrees), whole-pixel shifts x and y, and scale, each [size], drawn as
    `torchvision.transforms.RandomAffine.get_params` draws one sample's."""
    uniform = functools.partial(draw_uniform, size, generator)
    angle = uniform(-spec.affine_degrees, spec.affine_degrees)
    max_shift = spec.affine_translate * image_size
    shift_x, shift_y = (uniform(-max_shift, max_shift).round() for _ in range(2))
    scale = uniform(*spec.affine_scale)
    return angle, shift_x, shift_y, scale


def affine(images: Tensor, angle: Tensor, shift_x: Tensor, shift_y: Tensor, scale: Tensor
           ) -> Tensor:
    """Rotate by `angle` degrees and scale about the centre, then shift by (shift_x, shift_y)
    pixels, each [B] per sample; bilinear with zeros outside, as `TF.affine` without shear.

    Builds torchvision's inverse matrix (output pixel -> input pixel, in pixel units about the
    centre) for the whole batch and samples once with `grid_sample`.
    """
    height, width = images.shape[-2:]
    radians = torch.deg2rad(angle)
    cos, sin = radians.cos() / scale, radians.sin() / scale
    # Rows of torchvision's inverse matrix, each divided by half the extent it maps to, since
    # grid_sample wants input coordinates in [-1, 1].
    theta = torch.stack([
        torch.stack([cos, sin, -(cos * shift_x + sin * shift_y)], dim=1) / (width / 2),
        torch.stack([-sin, cos, sin * shift_x - cos * shift_y], dim=1) / (height / 2),
    ], dim=1)  # [B, 2, 3]
    xs = torch.arange(width, device=images.device) - (width - 1) / 2
    ys = torch.arange(height, device=images.device) - (height - 1) / 2
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([grid_x, grid_y, torch.ones_like(grid_x)], dim=-1)  # [H, W, 3]
    grid = torch.einsum("hwk,bjk->bhwj", points, theta)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)


def adjust_brightness(images: Tensor, factor: Tensor) -> Tensor:
    """Per-sample `factor` [B]: blend with black, i.e. scale, as TF.adjust_brightness."""
    return (images * factor.view(-1, 1, 1, 1)).clamp_(0, 1)


def adjust_contrast(images: Tensor, factor: Tensor, mean: Tensor | None = None) -> Tensor:
    """Per-sample `factor` [B]: blend with the mean of the grayscale image (TF.adjust_contrast),
    or with `mean` [B, 1, 1, 1] where given."""
    if mean is None:
        mean = grayscale(images).mean(dim=(1, 2, 3), keepdim=True)
    return blend(images, mean, factor)


def adjust_saturation(images: Tensor, factor: Tensor) -> Tensor:
    """Per-sample `factor` [B]: blend with the grayscale image (TF.adjust_saturation)."""
    return blend(images, grayscale(images), factor)


def adjust_hue(images: Tensor, shift: Tensor) -> Tensor:
    """Per-sample `shift` [B] in [-0.5, 0.5]: rotate the hue in HSV space (TF.adjust_hue)."""
    hue, saturation, value = rgb_to_hsv(images).unbind(dim=1)
    hue = (hue + shift.view(-1, 1, 1)).remainder(1)
    return hsv_to_rgb(torch.stack((hue, saturation, value), dim=1)).clamp_(0, 1)


def grayscale(images: Tensor) -> Tensor:
    """[B, 3, H, W] -> [B, 1, H, W] luma."""
    return (images * channel_constant(GRAY_WEIGHTS, images.device)).sum(dim=1, keepdim=True)


@functools.cache
def channel_constant(values: tuple[float, ...], device: torch.device) -> Tensor:
    """float32 [1, 3, 1, 1] of `values` on `device`, made once per device.

    Cached because copying a host list to CUDA synchronises the stream, which would make the
    training loop wait for the GPU at every batch. Callers must not modify the result.
    """
    return torch.tensor(values, dtype=torch.float32, device=device).view(1, -1, 1, 1)


def blend(images: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """factor · images + (1 - factor) · other, per sample, clamped to [0, 1]."""
    factor = factor.view(-1, 1, 1, 1)
    return (images * factor + other * (1 - factor)).clamp_(0, 1)


def rgb_to_hsv(images: Tensor) -> Tensor:
    """RGB [B, 3, H, W] in [0, 1] -> HSV with every channel in [0, 1] (hue in turns)."""
    red, green, blue = images.unbind(dim=1)
    value, _ = images.max(dim=1)
    chroma = value - images.min(dim=1).values
    gray = chroma == 0
    # Gray pixels have no hue and no saturation; dividing by 1 there avoids 0/0.
    saturation = chroma / torch.where(gray, 1, value)
    safe_chroma = torch.where(gray, 1, chroma)
    # Hue in sixths of a turn, measured from whichever channel is largest (red wins ties, as in
    # PIL and torchvision; tied channels give the same hue anyway).
    hue = torch.where(
        value == red, (green - blue) / safe_chroma,
        torch.where(value == green, (blue - red) / safe_chroma + 2,
                    (red - green) / safe_chroma + 4))
    hue = torch.where(gray, 0, hue / 6).remainder(1)
    return torch.stack((hue, saturation, value), dim=1)


def hsv_to_rgb(images: Tensor) -> Tensor:
    """HSV [B, 3, H, W] with hue in turns -> RGB, the inverse of `rgb_to_hsv`.

    Uses the closed form channel_n = v - v·s·clamp(min(k, 4 - k), 0, 1) with
    k = (n + 6·h) mod 6 and n = 5, 3, 1 for red, green, blue, which is continuous in h, so
    rounding near a sector boundary cannot switch formulas.
    """
    hue, saturation, value = images.unsqueeze(2).unbind(dim=1)  # each [B, 1, H, W]
    k = (channel_constant((5, 3, 1), images.device) + 6 * hue).remainder(6)
    return value - value * saturation * torch.minimum(k, 4 - k).clamp(0, 1)
