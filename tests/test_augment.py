"""Batched augmentation: each op against torchvision's, and the per-sample randomness."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from objectives import augment
from objectives.spec import AugmentSpec

OFF = AugmentSpec(hflip=0, crop_padding=0, color_jitter=(0, 0, 0, 0))
# Identity normalisation, so outputs are the augmented images in [0, 1].
RAW = AugmentSpec(mean=(0, 0, 0), std=(1, 1, 1))


def random_images(batch: int, size: int = 16, channels: int = 3, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(256, (batch, channels, size, size), generator=generator,
                         dtype=torch.uint8)


def random_floats(batch: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Float images in [0, 1] with some gray, black and saturated pixels mixed in."""
    images = random_images(batch, size, seed=seed).float() / 255
    images[:, :, 0, :4] = images[:, :1, 0, :4]  # gray
    images[:, :, 1, :2] = 0
    images[:, 0, 2, :2] = 1
    return images


def factors(batch: int, low: float, high: float, seed: int = 1) -> torch.Tensor:
    return torch.empty(batch).uniform_(low, high, generator=torch.Generator().manual_seed(seed))


def test_shape_dtype_and_normalisation() -> None:
    images = random_images(4, size=20)
    spec = AugmentSpec()
    generator = torch.Generator().manual_seed(0)
    for batch in (augment.eval_batch(images, spec, 32),
                  augment.train_batch(images, spec, 32, generator)):
        assert batch.shape == (4, 3, 32, 32) and batch.dtype == torch.float32
    constant = torch.full((2, 3, 8, 8), 51, dtype=torch.uint8)
    expected = (0.2 - torch.tensor(spec.mean)) / torch.tensor(spec.std)
    torch.testing.assert_close(augment.eval_batch(constant, spec, 8),
                               expected.view(1, 3, 1, 1).expand(2, 3, 8, 8))


def test_all_augmentations_off_is_eval_and_draws_nothing() -> None:
    images = random_images(8, size=12)
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    torch.testing.assert_close(augment.train_batch(images, OFF, 24, generator),
                               augment.eval_batch(images, OFF, 24), rtol=0, atol=0)
    assert torch.equal(generator.get_state(), state)


def test_resize_matches_torchvision_and_skips_same_size() -> None:
    images = random_floats(3, size=20)
    for size in (12, 48):
        expected = torch.stack([TF.resize(image, [size, size], antialias=True)
                                for image in images])
        torch.testing.assert_close(augment.resize(images, size), expected)
    assert augment.resize(images, 20) is images


def test_hflip_matches_torchvision_per_sample() -> None:
    images = random_floats(6)
    flip = torch.tensor([True, False, True, True, False, False])
    expected = torch.stack([TF.horizontal_flip(image) if f else image
                            for image, f in zip(images, flip, strict=True)])
    assert torch.equal(augment.hflip(images, flip), expected)


@pytest.mark.parametrize("padding", [1, 4, 20])  # 20 > image size: crops mostly padding
def test_padded_crop_matches_torchvision(padding: int) -> None:
    images = random_floats(16)
    generator = torch.Generator().manual_seed(padding)
    top, left = torch.randint(2 * padding + 1, (2, 16), generator=generator)
    top[:2], left[:2] = 0, 2 * padding  # both extremes
    expected = torch.stack([TF.crop(TF.pad(image, [padding]), int(i), int(j), 16, 16)
                            for image, i, j in zip(images, top, left, strict=True)])
    assert torch.equal(augment.padded_crop(images, top, left, padding), expected)


@pytest.mark.parametrize("ours, theirs, low, high", [
    (augment.adjust_brightness, TF.adjust_brightness, 0.0, 2.0),
    (augment.adjust_contrast, TF.adjust_contrast, 0.0, 2.0),
    (augment.adjust_saturation, TF.adjust_saturation, 0.0, 2.0),
    (augment.adjust_hue, TF.adjust_hue, -0.5, 0.5),
])
def test_colour_op_matches_torchvision_per_sample(ours, theirs, low, high) -> None:
    images = random_floats(12)
    values = factors(12, low, high)
    values[:2] = torch.tensor([low, high])
    expected = torch.stack([theirs(image, float(value))
                            for image, value in zip(images, values, strict=True)])
    torch.testing.assert_close(ours(images, values), expected, rtol=0, atol=2e-6)


def test_hsv_round_trip() -> None:
    images = random_floats(4)
    hsv = augment.rgb_to_hsv(images)
    assert hsv.min() >= 0 and hsv.max() <= 1
    torch.testing.assert_close(augment.hsv_to_rgb(hsv), images, rtol=0, atol=1e-6)


def position_image(size: int = 32) -> torch.Tensor:
    """uint8 [1, 3, size, size] whose red is 1 + 7·row and green 1 + 7·column (never 0)."""
    index = torch.arange(size, dtype=torch.uint8)
    red = (1 + 7 * index).view(size, 1).expand(size, size)
    green = (1 + 7 * index).view(1, size).expand(size, size)
    return torch.stack([red, green, torch.zeros_like(red)]).unsqueeze(0)


def recover_flip_and_offsets(batch: torch.Tensor, padding: int):
    """The flip and crop offsets that `train_batch` used, read back from position images."""
    pixels = (batch * 255).round().long()
    centre = batch.shape[-1] // 2  # inside the image for any offset when padding <= centre
    row = (pixels[:, 0, centre, centre] - 1) // 7
    col = (pixels[:, 1, centre, centre] - 1) // 7
    flipped = pixels[:, 1, centre, centre + 1] < pixels[:, 1, centre, centre]
    col = torch.where(flipped, batch.shape[-1] - 1 - col, col)
    return flipped, row - centre + padding, col - centre + padding


def chi_square(values: torch.Tensor, bins: int) -> float:
    counts = torch.bincount(values, minlength=bins).double()
    expected = len(values) / bins
    return float(((counts - expected) ** 2 / expected).sum())


def test_flip_and_crop_are_drawn_per_sample() -> None:
    spec = AugmentSpec(hflip=0.5, crop_padding=4, color_jitter=(0, 0, 0, 0), mean=(0, 0, 0),
                       std=(1, 1, 1))
    images = position_image().expand(2048, -1, -1, -1)
    generator = torch.Generator().manual_seed(0)
    flipped, top, left = recover_flip_and_offsets(
        augment.train_batch(images, spec, 32, generator), padding=4)
    assert 0.45 < flipped.float().mean() < 0.55
    for offsets in (top, left):
        assert offsets.min() == 0 and offsets.max() == 8
        # 8 degrees of freedom: P(chi² > 30) ≈ 2e-4, and the seed fixes the draw anyway.
        assert chi_square(offsets, 9) < 30
    # Every (top, left) pair occurs: the two offsets are drawn independently.
    assert len(set(zip(top.tolist(), left.tolist(), strict=True))) == 81
    # Flip and offsets come from independent draws.
    assert 0.4 < flipped[top < 4].float().mean() < 0.6


def test_colour_jitter_is_drawn_per_sample_within_range() -> None:
    gray = torch.full((1024, 3, 4, 4), 102, dtype=torch.uint8)  # 0.4
    spec = AugmentSpec(hflip=0, crop_padding=0, color_jitter=(0.3, 0, 0, 0), mean=(0, 0, 0),
                       std=(1, 1, 1))
    out = augment.train_batch(gray, spec, 4, torch.Generator().manual_seed(0))
    assert torch.equal(out, out[:, :1, :1, :1].expand_as(out))  # one factor per image
    factor = out[:, 0, 0, 0] / (102 / 255)
    assert 0.7 <= factor.min() < 0.72 and 1.28 < factor.max() <= 1.3
    assert len(factor.unique()) > 1000
    colourful = random_images(1, size=8).expand(256, -1, -1, -1)
    spec = AugmentSpec(hflip=0, crop_padding=0, color_jitter=(0, 0, 0, 0.1), mean=(0, 0, 0),
                       std=(1, 1, 1))
    shifted = augment.train_batch(colourful, spec, 8, torch.Generator().manual_seed(0))
    assert len(shifted.flatten(1).unique(dim=0)) == 256


def test_same_seed_same_batch() -> None:
    images = random_images(8)
    first = augment.train_batch(images, AugmentSpec(), 16, torch.Generator().manual_seed(3))
    again = augment.train_batch(images, AugmentSpec(), 16, torch.Generator().manual_seed(3))
    other = augment.train_batch(images, AugmentSpec(), 16, torch.Generator().manual_seed(4))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_grayscale_gives_three_identical_channels() -> None:
    gray = random_images(64, size=12, channels=1)
    out = augment.train_batch(gray, RAW, 24, torch.Generator().manual_seed(0))
    assert out.shape == (64, 3, 24, 24)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])
    assert out.std() > 0
    torch.testing.assert_close(augment.eval_batch(gray, AugmentSpec(), 24),
                               augment.eval_batch(gray.expand(-1, 3, -1, -1), AugmentSpec(), 24),
                               rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_runs_with_a_cuda_generator() -> None:
    images = random_images(32, size=32)
    generator = torch.Generator("cuda").manual_seed(0)
    out = augment.train_batch(images.cuda(), AugmentSpec(), 64, generator)
    assert out.device.type == "cuda" and out.shape == (32, 3, 64, 64)
    torch.testing.assert_close(augment.eval_batch(images.cuda(), AugmentSpec(), 64).cpu(),
                               augment.eval_batch(images, AugmentSpec(), 64),
                               rtol=0, atol=1e-4)


def test_affine_matches_torchvision_per_sample() -> None:
    images = random_floats(8, size=20)
    angle = torch.tensor([0.0, 10.0, -25.0, 90.0, 3.3, -7.0, 45.0, 0.0])
    shift_x = torch.tensor([0.0, 2.0, -3.0, 0.0, 1.0, 5.0, -1.0, 4.0])
    shift_y = torch.tensor([0.0, -1.0, 2.0, 3.0, 0.0, -4.0, 1.0, 0.0])
    scale = torch.tensor([1.0, 1.1, 0.9, 1.0, 1.25, 0.8, 1.0, 1.05])
    expected = torch.stack([
        TF.affine(image, angle=float(a), translate=[float(x), float(y)], scale=float(s),
                  shear=[0.0, 0.0], interpolation=TF.InterpolationMode.BILINEAR)
        for image, a, x, y, s in zip(images, angle, shift_x, shift_y, scale, strict=True)])
    torch.testing.assert_close(augment.affine(images, angle, shift_x, shift_y, scale),
                               expected, rtol=0, atol=1e-5)


def test_affine_parameters_follow_random_affine_per_sample() -> None:
    from scipy.stats import ks_2samp
    from torchvision.transforms import RandomAffine

    spec = AugmentSpec(affine_degrees=15, affine_translate=0.1, affine_scale=(0.9, 1.1))
    ours = augment.draw_affine(spec, 4000, 32, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    theirs = [RandomAffine.get_params([-15.0, 15.0], [0.1, 0.1], [0.9, 1.1], None, [32, 32])
              for _ in range(4000)]
    reference = (torch.tensor([t[0] for t in theirs]), torch.tensor([t[1][0] for t in theirs]),
                 torch.tensor([t[1][1] for t in theirs]), torch.tensor([t[2] for t in theirs]))
    for mine, other in zip(ours, reference, strict=True):
        assert ks_2samp(mine.numpy(), other.numpy()).pvalue > 1e-3
    # Shifts are whole pixels within ±3.2 and drawn independently of each other per sample.
    assert set(ours[1].unique().tolist()) == {-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0}
    assert abs(torch.corrcoef(torch.stack([ours[1], ours[2]]))[0, 1]) < 0.06


def test_flip_and_crop_have_the_reference_transforms_distribution() -> None:
    """Our batched flip + padded crop against torchvision's per-image transforms, 2,048 draws."""
    from scipy.stats import chi2_contingency
    from torchvision.transforms import v2

    spec = AugmentSpec(hflip=0.5, crop_padding=4, color_jitter=(0, 0, 0, 0), mean=(0, 0, 0),
                       std=(1, 1, 1))
    image = position_image()
    ours = recover_flip_and_offsets(
        augment.train_batch(image.expand(2048, -1, -1, -1), spec, 32,
                            torch.Generator().manual_seed(0)), padding=4)
    reference = v2.Compose([v2.RandomHorizontalFlip(0.5), v2.RandomCrop(32, padding=4)])
    torch.manual_seed(0)
    theirs = recover_flip_and_offsets(
        torch.stack([reference(image[0]) for _ in range(2048)]).float() / 255, padding=4)
    for mine, other, bins in zip(ours, theirs, (2, 9, 9), strict=True):
        mine, other = mine.long(), other.long()
        table = torch.stack([torch.bincount(mine, minlength=bins),
                             torch.bincount(other, minlength=bins)])
        assert chi2_contingency(table.numpy()).pvalue > 1e-3


def test_whole_pipeline_matches_the_reference_transforms_in_mean_and_spread() -> None:
    """Every op at once (ColorJitter's random order included) against torchvision, per image:
    the per-pixel mean and standard deviation over 4,096 draws agree within sampling noise."""
    from torchvision.transforms import v2

    spec = AugmentSpec(hflip=0.5, crop_padding=2, affine_degrees=10, affine_translate=0.1,
                       affine_scale=(0.9, 1.1), color_jitter=(0.3, 0.3, 0.3, 0.05),
                       mean=(0, 0, 0), std=(1, 1, 1))
    image = random_images(1, size=12)
    ours = augment.train_batch(image.expand(4096, -1, -1, -1), spec, 12,
                               torch.Generator().manual_seed(0))
    reference = v2.Compose([
        v2.ToDtype(torch.float32, scale=True), v2.RandomHorizontalFlip(0.5),
        v2.RandomCrop(12, padding=2),
        # fill=None: plain zeros outside, as ours. With fill=0 torchvision multiplies the
        # bilinear border once more by a resampled mask, darkening border pixels (~0.03 here).
        v2.RandomAffine(10, translate=(0.1, 0.1), scale=(0.9, 1.1),
                        interpolation=v2.InterpolationMode.BILINEAR, fill=None),
        v2.ColorJitter(0.3, 0.3, 0.3, 0.05)])
    torch.manual_seed(0)
    theirs = torch.stack([reference(image[0]) for _ in range(4096)])
    # Standard errors over 4,096 draws are about 0.005; the largest of 432 pixels' differences
    # is 0.013 here, and leaving out the affine op alone moves the means by 0.12.
    torch.testing.assert_close(ours.mean(0), theirs.mean(0), rtol=0, atol=0.03)
    torch.testing.assert_close(ours.std(0), theirs.std(0), rtol=0, atol=0.03)
