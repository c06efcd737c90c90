"""Batched augmentation: each op against torchvision's, and the per-sample randomness."""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch
import torch.nn.functional as F
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


@contextlib.contextmanager
def one_thread():
    """Run torch single-threaded: in per-image loops of tiny ops a second intra-op thread only
    adds handoffs, and on a busy machine waiting for it makes the loop some 20 times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def smooth_images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    """uint8 [batch, 3, size, size]: random 4 × 4 colour fields, bicubically enlarged."""
    coarse = torch.rand(batch, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    fine = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return (fine.clamp(0, 1) * 255).round().to(torch.uint8)


def digit_images(batch: int) -> torch.Tensor:
    """uint8 [batch, 1, 8, 8]: the first of scikit-learn's handwritten digits, 0-16 scaled."""
    from sklearn.datasets import load_digits

    pixels = torch.from_numpy(load_digits().images[:batch]).float()
    return (pixels * (255 / 16)).round().to(torch.uint8).unsqueeze(1)


def full_size_order(images: torch.Tensor, spec: AugmentSpec, image_size: int,
                    generator: torch.Generator) -> torch.Tensor:
    """`train_batch` as it was before the native-size order, affine left out: resize first,
    then each op, drawing its parameters as it goes, at image_size."""
    batch = augment.resize(augment.to_float_rgb(images), image_size)
    uniform = functools.partial(augment.draw_uniform, len(batch), generator)
    if spec.hflip > 0:
        batch = augment.hflip(batch, uniform(0, 1) < spec.hflip)
    if spec.crop_padding > 0:
        top, left = torch.randint(2 * spec.crop_padding + 1, (2, len(batch)),
                                  generator=generator)
        batch = augment.padded_crop(batch, top, left, spec.crop_padding)
    brightness, contrast, saturation, hue = spec.color_jitter
    if brightness > 0:
        batch = augment.adjust_brightness(batch, uniform(max(0, 1 - brightness), 1 + brightness))
    if contrast > 0:
        batch = augment.adjust_contrast(batch, uniform(max(0, 1 - contrast), 1 + contrast))
    if saturation > 0:
        batch = augment.adjust_saturation(batch, uniform(max(0, 1 - saturation), 1 + saturation))
    if hue > 0:
        batch = augment.adjust_hue(batch, uniform(-hue, hue))
    return augment.normalize(batch, spec)


def both_orders(images: torch.Tensor, spec: AugmentSpec, image_size: int, seed: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """`full_size_order` and `train_batch` from the same seed, both back in [0, 1] units."""
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    old = full_size_order(images, spec, image_size, torch.Generator().manual_seed(seed))
    new = augment.train_batch(images, spec, image_size, torch.Generator().manual_seed(seed))
    return old * std + mean, new * std + mean


def padding_mask(spec: AugmentSpec, batch: int, image_size: int, seed: int = 0
                 ) -> torch.Tensor:
    """bool [batch, 3, S, S]: the pixels that `train_batch` with `seed` fills from padding."""
    draws = augment.draw_train(spec, batch, image_size, torch.device("cpu"),
                               torch.Generator().manual_seed(seed))
    rows, cols = augment.crop_positions(draws.flip, draws.top, draws.left, spec.crop_padding,
                                        image_size)
    inside = ((rows >= 0) & (rows < image_size)).unsqueeze(2) & \
        ((cols >= 0) & (cols < image_size)).unsqueeze(1)
    return ~inside.unsqueeze(1).expand(-1, 3, -1, -1)


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


def recover_flip_and_offsets(batch: torch.Tensor, padding: int, native: int = 32):
    """The flip and crop offsets that `train_batch` used, read back from position images of
    size `native`. Bilinear upsampling keeps red and green linear in the position, except
    within half a native pixel of the edges, which the centre never comes near."""
    scale = batch.shape[-1] / native
    pixels = batch * 255
    centre = batch.shape[-1] // 2  # inside the image for any offset when padding <= centre
    # Native position (value - 1) / 7 is read at resized pixel (position + 0.5)·scale - 0.5.
    row = (((pixels[:, 0, centre, centre] - 1) / 7 + 0.5) * scale - 0.5).round().long()
    col = (((pixels[:, 1, centre, centre] - 1) / 7 + 0.5) * scale - 0.5).round().long()
    flipped = pixels[:, 1, centre, centre + 1] < pixels[:, 1, centre, centre]
    col = torch.where(flipped, batch.shape[-1] - 1 - col, col)
    return flipped, row - centre + padding, col - centre + padding


def chi_square(values: torch.Tensor, bins: int) -> float:
    counts = torch.bincount(values, minlength=bins).double()
    expected = len(values) / bins
    return float(((counts - expected) ** 2 / expected).sum())


# 32 -> 32 takes the full-size order, 32 -> 64 the native-size one (see augment's docstring).
@pytest.mark.parametrize("image_size", [32, 64])
def test_flip_and_crop_are_drawn_per_sample(image_size: int) -> None:
    spec = AugmentSpec(hflip=0.5, crop_padding=4, color_jitter=(0, 0, 0, 0), mean=(0, 0, 0),
                       std=(1, 1, 1))
    images = position_image().expand(2048, -1, -1, -1)
    generator = torch.Generator().manual_seed(0)
    flipped, top, left = recover_flip_and_offsets(
        augment.train_batch(images, spec, image_size, generator), padding=4)
    assert 0.45 < flipped.float().mean() < 0.55
    for offsets in (top, left):
        assert offsets.min() == 0 and offsets.max() == 8
        # 8 degrees of freedom: P(chi² > 30) ≈ 2e-4, and the seed fixes the draw anyway.
        assert chi_square(offsets, 9) < 30
    # Every (top, left) pair occurs: the two offsets are drawn independently.
    assert len(set(zip(top.tolist(), left.tolist(), strict=True))) == 81
    # Flip and offsets come from independent draws.
    assert 0.4 < flipped[top < 4].float().mean() < 0.6


@pytest.mark.parametrize("upsample", [1, 2])  # 2: colour jitter at native size
def test_colour_jitter_is_drawn_per_sample_within_range(upsample: int) -> None:
    gray = torch.full((1024, 3, 4, 4), 102, dtype=torch.uint8)  # 0.4
    spec = AugmentSpec(hflip=0, crop_padding=0, color_jitter=(0.3, 0, 0, 0), mean=(0, 0, 0),
                       std=(1, 1, 1))
    out = augment.train_batch(gray, spec, 4 * upsample, torch.Generator().manual_seed(0))
    assert torch.equal(out, out[:, :1, :1, :1].expand_as(out))  # one factor per image
    factor = out[:, 0, 0, 0] / (102 / 255)
    assert 0.7 <= factor.min() < 0.72 and 1.28 < factor.max() <= 1.3
    assert len(factor.unique()) > 1000
    colourful = random_images(1, size=8).expand(256, -1, -1, -1)
    spec = AugmentSpec(hflip=0, crop_padding=0, color_jitter=(0, 0, 0, 0.1), mean=(0, 0, 0),
                       std=(1, 1, 1))
    shifted = augment.train_batch(colourful, spec, 8 * upsample,
                                  torch.Generator().manual_seed(0))
    assert len(shifted.flatten(1).unique(dim=0)) == 256


@pytest.mark.parametrize("image_size", [16, 32])
def test_same_seed_same_batch(image_size: int) -> None:
    images = random_images(8)
    spec = AugmentSpec(crop_padding=4)
    first = augment.train_batch(images, spec, image_size, torch.Generator().manual_seed(3))
    again = augment.train_batch(images, spec, image_size, torch.Generator().manual_seed(3))
    other = augment.train_batch(images, spec, image_size, torch.Generator().manual_seed(4))
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


@pytest.mark.parametrize("image_size", [32, 64])
def test_flip_and_crop_have_the_reference_transforms_distribution(image_size: int) -> None:
    """Our batched flip + padded crop against torchvision's per-image transforms, 2,048 draws;
    the crop's offsets are in output pixels on either path."""
    from scipy.stats import chi2_contingency
    from torchvision.transforms import v2

    spec = AugmentSpec(hflip=0.5, crop_padding=4, color_jitter=(0, 0, 0, 0), mean=(0, 0, 0),
                       std=(1, 1, 1))
    image = position_image()
    ours = recover_flip_and_offsets(
        augment.train_batch(image.expand(2048, -1, -1, -1), spec, image_size,
                            torch.Generator().manual_seed(0)), padding=4)
    reference = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Resize(image_size),
                            v2.RandomHorizontalFlip(0.5), v2.RandomCrop(image_size, padding=4)])
    torch.manual_seed(0)
    with one_thread():
        theirs = torch.stack([reference(image[0]) for _ in range(2048)])
    theirs = recover_flip_and_offsets(theirs, padding=4)
    for mine, other, bins in zip(ours, theirs, (2, 9, 9), strict=True):
        mine, other = mine.long(), other.long()
        table = torch.stack([torch.bincount(mine, minlength=bins),
                             torch.bincount(other, minlength=bins)])
        assert chi2_contingency(table.numpy()).pvalue > 1e-3


@pytest.mark.parametrize("native_order", [False, True], ids=["full-size", "native-size"])
def test_whole_pipeline_matches_the_reference_transforms_in_mean_and_spread(
        native_order: bool) -> None:
    """Every op at once (ColorJitter's random order included) against torchvision, per image:
    the per-pixel mean and standard deviation over 4,096 draws agree within sampling noise.
    With affine, a noise image stays 12 × 12 (the full-size order); without, a smooth one is
    upsampled to 24 × 24 and takes the native-size order."""
    from torchvision.transforms import v2

    image = smooth_images(1, 12) if native_order else random_images(1, size=12)
    if native_order:
        spec = AugmentSpec(hflip=0.5, crop_padding=3, color_jitter=(0.3, 0.3, 0.3, 0.05),
                           mean=(0, 0, 0), std=(1, 1, 1))
        geometry = [v2.Resize(24), v2.RandomHorizontalFlip(0.5), v2.RandomCrop(24, padding=3)]
    else:
        spec = AugmentSpec(hflip=0.5, crop_padding=2, affine_degrees=10, affine_translate=0.1,
                           affine_scale=(0.9, 1.1), color_jitter=(0.3, 0.3, 0.3, 0.05),
                           mean=(0, 0, 0), std=(1, 1, 1))
        geometry = [
            v2.RandomHorizontalFlip(0.5), v2.RandomCrop(12, padding=2),
            # fill=None: plain zeros outside, as ours. With fill=0 torchvision multiplies the
            # bilinear border once more by a resampled mask, darkening border pixels (~0.03).
            v2.RandomAffine(10, translate=(0.1, 0.1), scale=(0.9, 1.1),
                            interpolation=v2.InterpolationMode.BILINEAR, fill=None)]
    size = 24 if native_order else 12
    ours = augment.train_batch(image.expand(4096, -1, -1, -1), spec, size,
                               torch.Generator().manual_seed(0))
    reference = v2.Compose([v2.ToDtype(torch.float32, scale=True), *geometry,
                            v2.ColorJitter(0.3, 0.3, 0.3, 0.05)])
    torch.manual_seed(0)
    with one_thread():
        theirs = torch.stack([reference(image[0]) for _ in range(4096)])
    # Standard errors over 4,096 draws are about 0.005. With affine the largest of 432 pixels'
    # differences is 0.013, and leaving out the affine op alone moves the means by 0.12.
    # Without, the largest of 1,728 is 0.023 in the mean and 0.017 in the spread (the
    # full-size order: 0.020 and 0.013); on the noise image, all edges, the native order's
    # interpolation error takes them to 0.027 (full-size order: 0.017 and 0.012).
    torch.testing.assert_close(ours.mean(0), theirs.mean(0), rtol=0, atol=0.03)
    torch.testing.assert_close(ours.std(0), theirs.std(0), rtol=0, atol=0.03)


def test_antialias_changes_nothing_when_upsampling() -> None:
    """Why the native-size order may resample with grid_sample, which has no antialiasing:
    upsampling never engages it, while downsampling (kept in the full-size order) does."""
    images = random_floats(4, size=12)
    for size in (13, 24, 32, 224):
        plain = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        torch.testing.assert_close(augment.resize(images, size), plain, rtol=0, atol=1e-6)
    plain = F.interpolate(images, size=(8, 8), mode="bilinear", align_corners=False)
    assert (augment.resize(images, 8) - plain).abs().max() > 0.05


@pytest.mark.parametrize("make_images, image_size, padding", [
    (lambda: digit_images(256), 32, 4),
    (lambda: random_images(64, size=10)[..., 2:8, :], 32, 3),  # 6 × 10: stretched by resize
    (lambda: random_images(64, size=8), 16, 20),  # crops mostly padding, both extremes occur
    (lambda: smooth_images(16, 32), 224, 28),
], ids=["digits-8-32", "non-square-32", "padding-20", "32-224"])
def test_native_order_without_colour_jitter_equals_the_full_size_order(
        make_images, image_size: int, padding: int) -> None:
    """With colour jitter off the fused grid_sample is resize, flip and crop exactly, edges
    (where interpolate clamps its source points) and padding included, in normalised units;
    the largest difference measured is 1.4e-6."""
    images = make_images()
    spec = AugmentSpec(hflip=0.5, crop_padding=padding, color_jitter=(0, 0, 0, 0))
    old = full_size_order(images, spec, image_size, torch.Generator().manual_seed(0))
    new = augment.train_batch(images, spec, image_size, torch.Generator().manual_seed(0))
    torch.testing.assert_close(new, old, rtol=0, atol=1e-5)


@pytest.mark.parametrize("make_images, image_size, mean_limit, p99_limit, max_limit", [
    # Measured: mean 0.0106, 99th percentile 0.126, max 0.323; another seed: mean 0.22.
    (lambda: digit_images(512), 32, 0.015, 0.15, 0.4),
    # Measured: mean 0.0049, 99th percentile 0.049, max 0.266; another seed: mean 0.25.
    (lambda: smooth_images(512, 12), 32, 0.007, 0.07, 0.35),
], ids=["digits-8-32", "smooth-12-32"])
def test_native_order_matches_the_full_size_order_within_interpolation_error(
        make_images, image_size: int, mean_limit: float, p99_limit: float,
        max_limit: float) -> None:
    """Jittering colour before upsampling instead of after, with every op on, in [0, 1] units.

    The ops don't commute with bilinear interpolation exactly: the clamps of brightness and
    contrast (the digits' strokes are saturated white), hue's piecewise-linear sectors, and
    contrast's mean taken at native size. So the two orders differ on edges, by up to 0.3 on
    a few pixels, and agree elsewhere: a mean of about 0.01 for digits and 0.005 for smooth
    colour images, against 0.2 between two seeds of either order.
    """
    images = make_images()
    spec = AugmentSpec(hflip=0.5, crop_padding=4, color_jitter=(0.3, 0.3, 0.3, 0.05))
    old, new = both_orders(images, spec, image_size)
    difference = (new - old).abs()
    assert difference.mean() < mean_limit
    assert difference.flatten().kthvalue(int(0.99 * difference.numel())).values < p99_limit
    assert difference.max() < max_limit
    _, other_seed = both_orders(images, spec, image_size, seed=1)
    assert (new - other_seed).abs().mean() > 10 * mean_limit


@pytest.mark.parametrize("make_images, tolerance", [
    (lambda: digit_images(512), 0.01),  # measured 0.0077: the window's edge cuts sharp strokes
    (lambda: smooth_images(512, 12), 0.002),  # measured 0.0009
], ids=["digits", "smooth"])
def test_padding_gets_the_full_size_orders_colour(make_images, tolerance: float) -> None:
    """The crop's padding, zeros that the full-size order's colour jitter turns into
    clamp((1 - contrast)·mean), comes out of the native-size order in the same colour, up to
    the difference between the two orders' contrast means."""
    images = make_images()
    spec = AugmentSpec(hflip=0.5, crop_padding=12, color_jitter=(0.3, 0.3, 0.3, 0.05))
    old, new = both_orders(images, spec, 32)
    padded = padding_mask(spec, len(images), 32)
    assert 0.3 < padded.float().mean() < 0.4
    torch.testing.assert_close(new[padded], old[padded], rtol=0, atol=tolerance)
    # Contrast lifted the padding of about half the samples (factor < 1) off black.
    assert 0.4 < (old[padded] > 0.01).float().mean() < 0.6


@pytest.mark.parametrize("size, image_size, padding, tolerance", [
    (12, 32, 12, 2e-3),  # measured 1.3e-3
    (32, 224, 28, 2e-4),  # measured 7e-5
])
def test_window_mean_is_the_resized_crops_mean(size: int, image_size: int, padding: int,
                                               tolerance: float) -> None:
    """The area-weighted native-size mean against the grayscale mean of the resized, flipped,
    padded crop, which the full-size order's contrast blends with."""
    images = augment.to_float_rgb(smooth_images(256, size))
    generator = torch.Generator().manual_seed(0)
    flip = torch.rand(256, generator=generator) < 0.5
    top, left = torch.randint(2 * padding + 1, (2, 256), generator=generator)
    crop = augment.padded_crop(augment.hflip(augment.resize(images, image_size), flip), top,
                               left, padding)
    expected = augment.grayscale(crop).mean(dim=(1, 2, 3), keepdim=True)
    ours = augment.window_mean(augment.grayscale(images), flip, top, left, padding, image_size)
    torch.testing.assert_close(ours, expected, rtol=0, atol=tolerance)
    whole = augment.window_mean(augment.grayscale(images), flip, top * 0 + padding,
                                left * 0 + padding, padding, image_size)
    torch.testing.assert_close(whole, augment.grayscale(images).mean(dim=(1, 2, 3),
                                                                     keepdim=True))
