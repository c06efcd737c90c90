"""Batched image augmentation on the trial's device, with independent randomness per sample.

`train_batch` follows the torchvision pipeline

    Resize(image_size) -> RandomHorizontalFlip(hflip) -> RandomCrop(image_size, crop_padding)
    -> RandomAffine(affine_degrees, (affine_translate,) * 2, affine_scale)
    -> ColorJitter(*color_jitter) -> Normalize(mean, std)

on a whole uint8 batch at once: every random parameter is drawn as a [B] tensor from the
caller's generator and applied with broadcasting or index arithmetic, never a per-image Python
loop. What the tests measure against torchvision: each op, given the same parameters, matches
its `torchvision.transforms.v2.functional` counterpart per sample (resize, flip, crop, affine,
the four colour ops); the affine parameters pass a two-sample KS test against
`RandomAffine.get_params`, and the flip and crop offsets a chi-square test against
`RandomHorizontalFlip` + `RandomCrop`; for the whole pipeline only the per-pixel mean and
standard deviation over 4,096 draws of one image are compared, and agree within 0.03. ColorJitter
runs in one fixed order here (see `train_batch`). `eval_batch` only resizes and normalises.

Images are resized to image_size × image_size. For the square images the datasets hold this is
`Resize(image_size)`; a non-square image is stretched rather than resized on its short edge, so
that every batch, train or eval, comes out square.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from objectives.spec import AugmentSpec

# torchvision's rgb_to_grayscale weights (ITU-R 601-2, with 0.2989 where PIL has 0.299).
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


def eval_batch(images: Tensor, spec: AugmentSpec, image_size: int) -> Tensor:
    """uint8 [B, 1 or 3, h, w] -> normalised float32 [B, 3, image_size, image_size]."""
    return normalize(resize(to_float_rgb(images), image_size), spec)


def train_batch(images: Tensor, spec: AugmentSpec, image_size: int,
                generator: torch.Generator) -> Tensor:
    """`eval_batch` plus the random flip, padded crop, affine and colour jitter of `spec`.

    `generator` must live on `images`' device; operations whose strength is 0 draw nothing.
    """
    batch = resize(to_float_rgb(images), image_size)
    size, device = len(batch), batch.device
    uniform = functools.partial(draw_uniform, size, generator)
    if spec.hflip > 0:
        batch = hflip(batch, uniform(0, 1) < spec.hflip)
    if spec.crop_padding > 0:
        top, left = torch.randint(2 * spec.crop_padding + 1, (2, size), device=device,
                                  generator=generator)
        batch = padded_crop(batch, top, left, spec.crop_padding)
    if spec.affine_degrees > 0 or spec.affine_translate > 0 or spec.affine_scale != (1, 1):
        batch = affine(batch, *draw_affine(spec, size, image_size, generator))
    # torchvision's ColorJitter applies the four ops in a random order per call; we use one
    # fixed order. Brightness, contrast and saturation are linear blends that commute with each
    # other except for the clamps (which rarely engage at strengths of a few tenths) and the
    # luma weights summing to 0.9999; only the small hue rotation really depends on its place.
    # A per-sample order would cost every op evaluated under masks in each of four positions.
    brightness, contrast, saturation, hue = spec.color_jitter
    if brightness > 0:
        batch = adjust_brightness(batch, uniform(max(0, 1 - brightness), 1 + brightness))
    if contrast > 0:
        batch = adjust_contrast(batch, uniform(max(0, 1 - contrast), 1 + contrast))
    if saturation > 0:
        batch = adjust_saturation(batch, uniform(max(0, 1 - saturation), 1 + saturation))
    if hue > 0:
        batch = adjust_hue(batch, uniform(-hue, hue))
    return normalize(batch, spec)


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


def adjust_contrast(images: Tensor, factor: Tensor) -> Tensor:
    """Per-sample `factor` [B]: blend with the mean of the grayscale image (TF.adjust_contrast)."""
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
