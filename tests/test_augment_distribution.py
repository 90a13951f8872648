"""The device path draws its views from the per-image pipelines' distribution.

The per-image pipelines (``common.augment.build_view_transforms``) are run with torchvision's transforms
instrumented to record the parameters they draw (which operation ran, its factor, sigma, crop box); the device
path's per-sample parameters (``draw_view_params``, ``draw_crop_boxes``) are drawn for as many samples. That each
parameter is applied as torchvision applies it is tested in ``tests/test_batch_augment.py``; together they say
that the two paths give the same distribution of views.

Bounds. Frequencies of an operation with probability p over n samples: |p_hat - p| <= 5 sqrt(p (1 - p) / n)
(a 5-sigma binomial bound: a false alarm has probability below 6e-7 per comparison), and exact for p = 0 or 1.
Continuous parameters: the two-sample Kolmogorov-Smirnov distance D <= c sqrt((n + m) / (n m)) with
c = sqrt(-ln(alpha / 2) / 2) = 2.69 for alpha = 1e-6. Every seed is fixed, so the test is deterministic; the
bounds say how far apart two samples of one distribution can be, not a tuning.
"""

import math
from pathlib import Path

import pytest
import torch
import yaml
from torchvision.transforms import v2

from common.augment import AugmentConfig, build_view_transforms, per_view
from common.batch_augment import (
    JITTER_OPS,
    BatchAugment,
    SampleDraws,
    draw_crop_boxes,
    draw_view_params,
    jitter_ranges,
)
from common.data import dataset_info

ROOT = Path(__file__).resolve().parent.parent
CIFAR = dataset_info("cifar10")
KS_C = math.sqrt(-math.log(1e-6 / 2) / 2)
N_IMAGES = 400


def cifar_multicrop() -> AugmentConfig:
    """The augment section of StochCon's CIFAR-10 configs: DINO multi-crop, 2 x 32 px and 8 x 16 px views."""
    block = yaml.safe_load((ROOT / "stochcon/configs/cifar10_resnet50_bernoulli.yaml").read_text())["augment"]
    return AugmentConfig(**block)


def assert_frequency(flags: torch.Tensor, p: float) -> None:
    rate = flags.double().mean().item()
    if p in (0.0, 1.0):
        assert rate == p
    else:
        assert abs(rate - p) <= 5 * math.sqrt(p * (1 - p) / len(flags)), (rate, p, len(flags))


def assert_same_distribution(a: torch.Tensor, b: torch.Tensor) -> None:
    """Two-sample Kolmogorov-Smirnov test (see the module's docstring)."""
    a, b = a.double().sort().values, b.double().sort().values
    grid = torch.cat([a, b])
    cdf_a = torch.searchsorted(a, grid, right=True) / len(a)
    cdf_b = torch.searchsorted(b, grid, right=True) / len(b)
    distance = (cdf_a - cdf_b).abs().max().item()
    assert distance <= KS_C * math.sqrt((len(a) + len(b)) / (len(a) * len(b))), distance


@pytest.fixture(scope="module")
def per_image_params():
    """The per-image views of ``cifar_multicrop`` run on ``N_IMAGES`` CIFAR-size images, recording torchvision's
    draws: ``[view] -> {name: tensor over images}``."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield run_per_image(cifar_multicrop(), monkeypatch)


def run_per_image(cfg: AugmentConfig, monkeypatch) -> list[dict[str, torch.Tensor]]:
    log: list[tuple[str, object]] = []

    def record(cls, method, kind, value):
        original = getattr(cls, method)

        def recording(self, *args, **kwargs):
            result = original(self, *args, **kwargs)
            log.append((kind, value(result)))
            return result

        monkeypatch.setattr(cls, method, recording)

    record(v2.RandomResizedCrop, "make_params", "box", lambda r: [r["top"], r["left"], r["height"], r["width"]])
    record(v2.RandomHorizontalFlip, "transform", "flip", lambda r: True)
    record(v2.ColorJitter, "make_params", "jitter", lambda r: r)
    record(v2.RandomGrayscale, "transform", "gray", lambda r: True)
    record(v2.GaussianBlur, "make_params", "blur", lambda r: r["sigma"][0])
    record(v2.RandomSolarize, "transform", "solarize", lambda r: True)

    views = build_view_transforms(cfg, CIFAR, 3)
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    rows = [[] for _ in views]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for _ in range(N_IMAGES):
            for view, transform in enumerate(views):
                log.clear()
                transform(image)
                rows[view].append(dict(log))
    out = []
    for records in rows:
        jitters = [r["jitter"] for r in records if "jitter" in r]
        params = {name: torch.tensor([name in r for r in records]) for name in ("flip", "jitter", "gray", "blur",
                                                                                 "solarize")}
        params["box"] = torch.tensor([r["box"] for r in records])
        params["sigma"] = torch.tensor([r["blur"] for r in records if "blur" in r])
        params["order"] = torch.stack([j["fn_idx"] for j in jitters])
        for name in JITTER_OPS:
            params[name] = torch.tensor([j[f"{name}_factor"] for j in jitters])
        out.append(params)
    return out


def device_params(cfg: AugmentConfig, n: int) -> list[dict[str, torch.Tensor]]:
    """The device path's draws for ``n`` samples of 32 px RGB images, in the same layout."""
    draws = SampleDraws(torch.Generator().manual_seed(1), n)
    size = cfg.image_size or CIFAR.image_size
    out = []
    for view in range(cfg.num_views + cfg.local_crops):
        scale = cfg.crop_scale if view < cfg.num_views else cfg.local_crop_scale
        boxes = draw_crop_boxes(size, size, (scale[0], scale[1]), draws)
        p = draw_view_params(cfg, view, 3, draws)
        params = {"box": boxes, "flip": p.flip, "jitter": p.jitter, "gray": p.gray, "blur": p.blur,
                  "solarize": p.solarize if p.solarize is not None else torch.zeros(n, dtype=torch.bool),
                  "sigma": p.sigma[p.blur], "order": p.order[p.jitter]}
        params.update({name: p.factors[name][p.jitter] for name in JITTER_OPS})
        out.append(params)
    return out


def test_cifar_multicrop_blurs_at_32_and_16_px_with_the_listed_probabilities(per_image_params):
    """The CIFAR configs list blur [1.0, 0.1, 0.5 x 8]: every view blurs with its probability at its size (the
    per-image pipeline used to skip the blur below 64 px), in both paths."""
    cfg = cifar_multicrop()
    assert (cfg.image_size, cfg.local_size) == (32, 16) and cfg.blur_prob == [1.0, 0.1] + [0.5] * 8
    for view, params in enumerate(per_image_params):
        assert_frequency(params["blur"], per_view(cfg.blur_prob, view))
    # The device path, end to end on crops of the views' sizes with every other operation off: a view is blurred
    # exactly when it differs from its input (sigma >= 1 moves every pixel of random noise).
    sharp = AugmentConfig(**{**cfg.__dict__, "flip_prob": 0.0, "jitter_prob": 0.0, "grayscale_prob": 0.0,
                             "solarize_prob": [0.0], "blur_sigma": [1.0, 2.0]})
    augment = BatchAugment(sharp, CIFAR, 3)
    generator = torch.Generator().manual_seed(2)
    crops = [torch.randint(0, 256, (N_IMAGES, 3, s, s), dtype=torch.uint8, generator=generator)
             for s in [32] * 2 + [16] * 8]
    views = augment.augment_crops(crops, torch.Generator().manual_seed(3))
    plain = BatchAugment(AugmentConfig(**{**sharp.__dict__, "blur_prob": [0.0]}), CIFAR, 3).augment_crops(
        crops, torch.Generator().manual_seed(3))
    for view, (out, reference) in enumerate(zip(views, plain)):
        assert out.shape[-1] == (32 if view < 2 else 16)
        assert_frequency((out != reference).flatten(1).any(dim=1), per_view(cfg.blur_prob, view))


def test_device_parameters_follow_the_per_image_distribution(per_image_params):
    cfg = cifar_multicrop()
    per_image = per_image_params
    device = device_params(cfg, N_IMAGES)
    for view, (ours, theirs) in enumerate(zip(device, per_image)):
        for name, p in (("flip", cfg.flip_prob), ("jitter", cfg.jitter_prob), ("gray", cfg.grayscale_prob),
                        ("blur", per_view(cfg.blur_prob, view)), ("solarize", per_view(cfg.solarize_prob, view))):
            assert_frequency(ours[name], p)
            assert_frequency(theirs[name], p)
        # Crop boxes: top, left, height and width, each against torchvision's RandomResizedCrop.
        for column in range(4):
            assert_same_distribution(ours["box"][:, column], theirs["box"][:, column])
    pooled = {name: [torch.cat([params[name] for params in side]) for side in (device, per_image)]
              for name in ("sigma", "order", *JITTER_OPS)}
    for name, (low, high) in jitter_ranges(cfg, 3).items():
        ours, theirs = pooled[name]
        assert low <= ours.min() and ours.max() <= high
        assert_same_distribution(ours, theirs)
    ours, theirs = pooled["sigma"]
    assert cfg.blur_sigma[0] <= ours.min() and ours.max() <= cfg.blur_sigma[1]
    assert_same_distribution(ours, theirs)
    # The jitter order: each operation at each of the four positions with probability 1/4.
    for order in pooled["order"]:
        for position in range(4):
            for op in range(4):
                assert_frequency(order[:, position] == op, 0.25)


def test_crop_boxes_of_odd_shapes_follow_random_resized_crop():
    """Tall and wide images, where the ten tries can all fail and the centre crop takes over."""
    n = 2000
    for height, width, scale in ((40, 12, (0.5, 1.0)), (9, 70, (0.9, 1.0)), (30, 30, (1.0, 1.0))):
        crop = v2.RandomResizedCrop(8, scale=scale)
        image = torch.zeros(1, height, width)
        torch.manual_seed(0)
        theirs = torch.tensor([list(crop.make_params([image]).values()) for _ in range(n)])
        ours = draw_crop_boxes(height, width, scale, SampleDraws(torch.Generator().manual_seed(0), n))
        assert (ours[:, 0] + ours[:, 2] <= height).all() and (ours[:, 1] + ours[:, 3] <= width).all()
        assert (ours >= 0).all() and (ours[:, 2:] > 0).all()
        for column in range(4):
            assert_same_distribution(ours[:, column], theirs[:, column])
