"""Batched augmentation: each operation is torchvision's, applied with per-sample parameters; shapes, seeds, ranks.

Tolerances. Comparisons run in float64 wherever both sides can (then two evaluations of one formula in different
orders differ by a few 2^-53 per term summed: below 1e-12 for the few thousand terms here). torchvision's
``adjust_hue`` computes in float32 whatever the input: its ~30 roundings of values up to 6 (the hue ramp in
sixths of a turn) bound its error by 30 * 6 * 2^-24 = 1.1e-5.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from common.augment import AugmentConfig
from common.batch_augment import (
    JITTER_OPS,
    SOLARIZE_THRESHOLD,
    BatchAugment,
    SampleDraws,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    apply_view_params,
    draw_view_params,
    gray,
    resample_boxes,
)
from common.blur import blur_kernel_size, gaussian_blur
from common.data import DatasetInfo
from common.errors import ConfigError

GRAY = DatasetInfo(channels=1, image_size=28, num_classes=10, mean=(0.5,), std=(0.25,))
RGB = DatasetInfo(channels=3, image_size=32, num_classes=10, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
FLOAT64 = 1e-12  # see the module docstring
HUE_FLOAT32 = 30 * 6 * 2.0**-24


def images(n, info, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, info.channels, info.image_size, info.image_size), generator=g,
                         dtype=torch.uint8)


def unit_images(n, size=12, seed=0, dtype=torch.float64):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_views_shapes_channels_and_local_crops():
    cfg = AugmentConfig(on="device", num_views=2, local_crops=3, local_size=12, blur_prob=[1.0])
    views = BatchAugment(cfg, GRAY, out_channels=3)(images(5, GRAY), torch.Generator().manual_seed(0))
    assert [tuple(v.shape) for v in views] == [(5, 3, 28, 28)] * 2 + [(5, 3, 12, 12)] * 3
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in views)
    assert all(torch.equal(v[:, 0], v[:, 2]) for v in views)  # a gray image repeated to 3 channels
    one = BatchAugment(cfg, RGB, out_channels=1)(images(5, RGB), torch.Generator().manual_seed(0))
    assert [tuple(v.shape) for v in one] == [(5, 1, 32, 32)] * 2 + [(5, 1, 12, 12)] * 3
    supervised = BatchAugment(AugmentConfig(name="supervised", num_views=1), RGB, 3)
    assert [tuple(v.shape) for v in supervised(images(5, RGB), torch.Generator().manual_seed(0))] == [(5, 3, 32, 32)]
    with pytest.raises(ConfigError, match="augment.name"):
        BatchAugment(AugmentConfig(name="none"), RGB, 3)


def test_same_seed_same_views_and_views_differ():
    augment = BatchAugment(AugmentConfig(on="device"), RGB, 3)
    x = images(8, RGB)
    a = augment(x, torch.Generator().manual_seed(3))
    b = augment(x, torch.Generator().manual_seed(3))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], a[1])


def test_global_batch_sliced_by_rank_equals_single_process():
    """Rank r of 2 gets rows r of the global batch's draws; the per-sample arithmetic is the same but may sum in
    another order (batch-size dependent kernels): float64, and a value would have to fall within ~1e-12 of the
    solarisation threshold to flip, which random pixels do with probability ~1e-12."""
    cfg = AugmentConfig(on="device", blur_prob=[0.5], solarize_prob=[0.3], local_crops=2, local_size=12)
    augment = BatchAugment(cfg, RGB, 3, dtype=torch.float64)
    x = images(8, RGB)
    whole = augment(x, torch.Generator().manual_seed(7))
    halves = [augment(x[r * 4:(r + 1) * 4], torch.Generator().manual_seed(7), rank=r, world=2) for r in range(2)]
    for view in range(4):
        assert torch.allclose(torch.cat([halves[0][view], halves[1][view]]), whole[view], rtol=0, atol=1e-10)
    crops = [images(8, RGB, seed=v) for v in range(4)]
    whole = augment.augment_crops(crops, torch.Generator().manual_seed(7))
    halves = [augment.augment_crops([c[r * 4:(r + 1) * 4] for c in crops], torch.Generator().manual_seed(7), r, 2)
              for r in range(2)]
    for view in range(4):
        assert torch.allclose(torch.cat([halves[0][view], halves[1][view]]), whole[view], rtol=0, atol=1e-10)


def test_each_colour_operation_is_torchvisions_per_sample():
    x = unit_images(6)
    x[0, :, :3] = 0.5  # gray pixels: no hue
    x[1, 0] = x[1, 1]  # ties between the largest channels
    factors = torch.tensor([0.0, 0.3, 0.9, 1.0, 1.4, 2.0], dtype=torch.float64)
    for ours, theirs in ((adjust_brightness, TF.adjust_brightness), (adjust_contrast, TF.adjust_contrast),
                         (adjust_saturation, TF.adjust_saturation)):
        expected = torch.stack([theirs(x[i], float(factors[i])) for i in range(6)])
        assert torch.allclose(ours(x, factors), expected, rtol=0, atol=FLOAT64)
    shifts = torch.tensor([-0.5, -0.3, 0.0, 0.1, 0.25, 0.5])
    x32 = x.float()
    expected = torch.stack([TF.adjust_hue(x32[i], float(shifts[i])) for i in range(6)])
    assert torch.allclose(adjust_hue(x32, shifts), expected, rtol=0, atol=HUE_FLOAT32)
    assert torch.allclose(gray(x).expand_as(x), TF.rgb_to_grayscale(x, 3), rtol=0, atol=FLOAT64)
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0, 3.0], dtype=torch.float64)
    blurred = gaussian_blur(x, sigma, 5)
    expected = torch.stack([TF.gaussian_blur(x[i], [5, 5], [float(sigma[i])] * 2) for i in range(6)])
    assert torch.allclose(blurred, expected, rtol=0, atol=FLOAT64)


def test_apply_view_params_follows_each_samples_jitter_order():
    """Flip, colour jitter in the sample's own order, grayscale and blur, against torchvision's functions applied one
    sample at a time. Hue runs in float32 in torchvision (1.1e-5, see above); the operations after it multiply a
    difference by at most |f| + |1 - f| <= 1.8 each (factors in [0.6, 1.4]; three of them) and blur and gray by
    at most 1."""
    cfg = AugmentConfig(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, blur_prob=[0.5], solarize_prob=[0.0])
    n = 64
    x = unit_images(n, seed=1)
    params = draw_view_params(cfg, 0, 3, SampleDraws(torch.Generator().manual_seed(0), n))
    ours = apply_view_params(x, params)
    functions = {"brightness": TF.adjust_brightness, "contrast": TF.adjust_contrast,
                 "saturation": TF.adjust_saturation, "hue": TF.adjust_hue}
    kernel = blur_kernel_size(12)
    for i in range(n):
        image = TF.horizontal_flip(x[i]) if params.flip[i] else x[i]
        if params.jitter[i]:
            for op in params.order[i].tolist():
                name = JITTER_OPS[op]
                image = functions[name](image, float(params.factors[name][i]))
        if params.gray[i]:
            image = TF.rgb_to_grayscale(image, 3)
        if params.blur[i]:
            image = TF.gaussian_blur(image, [kernel, kernel], [float(params.sigma[i])] * 2)
        assert torch.allclose(ours[i], image, rtol=0, atol=HUE_FLOAT32 * 1.8**3), i
    assert 0 < params.jitter.sum() < n and len(set(map(tuple, params.order.tolist()))) > 6


def test_solarize_and_grayscale_take_effect():
    x = torch.full((4, 3, 32, 32), 200, dtype=torch.uint8)
    x[:, 0] = 250
    base = {"on": "device", "crop_scale": [1.0, 1.0], "flip_prob": 0.0, "jitter_prob": 0.0}

    def view(**changes):
        augment = BatchAugment(AugmentConfig(**base, **changes), RGB, 3, dtype=torch.float64)
        return augment(x, torch.Generator().manual_seed(0))[0] * 0.25 + 0.5

    plain, grayed = view(grayscale_prob=0.0), view(grayscale_prob=1.0)
    solar = view(grayscale_prob=0.0, solarize_prob=[1.0])
    assert (plain >= SOLARIZE_THRESHOLD).all()  # so every pixel is inverted
    assert torch.allclose(solar, 1 - plain, rtol=0, atol=FLOAT64)
    assert torch.equal(grayed[:, 0], grayed[:, 1]) and not torch.equal(plain[:, 0], plain[:, 1])


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
def test_resampling_a_box_is_interpolating_its_pixels(mode):
    """The whole image as the box: ``F.interpolate`` of the image (the crop's resize, ``augment.interpolation``);
    a box's output pixel centres land at ``top + (k + 0.5) * height / size - 0.5``."""
    x = unit_images(2, size=10)[:, :, :, :7]
    boxes = torch.tensor([[0, 0, 10, 7], [0, 0, 10, 7]])
    expected = F.interpolate(x, size=(16, 16), mode=mode, align_corners=False).clamp(0, 1)
    assert torch.allclose(resample_boxes(x, boxes, 16, mode), expected, rtol=0, atol=FLOAT64)
    # A box of 4 x 4 pixels resized to 4 x 4 is the box itself, wherever it lies.
    box = torch.tensor([[3, 2, 4, 4], [6, 3, 4, 4]])
    crops = resample_boxes(x, box, 4, mode)
    assert torch.allclose(crops[0], x[0, :, 3:7, 2:6], rtol=0, atol=FLOAT64)
    assert torch.allclose(crops[1], x[1, :, 6:10, 3:7], rtol=0, atol=FLOAT64)


def test_default_crops_are_bicubic():
    """The device crop follows ``augment.interpolation`` (bicubic by default, as the per-image crop)."""
    x = images(4, RGB)
    base = {"crop_scale": [0.3, 0.6], "flip_prob": 0.0, "jitter_prob": 0.0, "grayscale_prob": 0.0,
            "blur_prob": [0.0]}
    views = {mode: BatchAugment(AugmentConfig(**base, interpolation=mode), RGB, 3, dtype=torch.float64)(
        x, torch.Generator().manual_seed(0))[0] for mode in ("bicubic", "bilinear")}
    default = BatchAugment(AugmentConfig(**base), RGB, 3, dtype=torch.float64)(x, torch.Generator().manual_seed(0))[0]
    assert torch.equal(default, views["bicubic"]) and not torch.allclose(default, views["bilinear"], atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_applies_the_same_parameters_as_the_cpu():
    """On an accelerator the operations run on every sample and are selected (no host sync); on a CPU only on the
    chosen samples. Same parameters, float64: the same values."""
    cfg = AugmentConfig(blur_prob=[0.5], solarize_prob=[0.0])
    x = unit_images(32, size=16)
    params = draw_view_params(cfg, 0, 3, SampleDraws(torch.Generator().manual_seed(0), 32))
    on_cpu = apply_view_params(x, params)

    def cuda(value):
        if isinstance(value, dict):
            return {name: factor.cuda() for name, factor in value.items()}
        return value.cuda() if isinstance(value, torch.Tensor) else value

    moved = type(params)(**{name: cuda(value) for name, value in vars(params).items()})
    on_cuda = apply_view_params(x.cuda(), moved).cpu()
    assert torch.allclose(on_cuda, on_cpu, rtol=0, atol=FLOAT64)
    assert math.isfinite(float(on_cuda.sum()))
