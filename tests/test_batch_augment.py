import torch

from common.augment import AugmentConfig
from common.batch_augment import BatchAugment
from common.data import DatasetInfo

GRAY = DatasetInfo(channels=1, image_size=28, num_classes=10, mean=(0.5,), std=(0.25,))
RGB = DatasetInfo(channels=3, image_size=32, num_classes=10, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def images(n, info, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, info.channels, info.image_size, info.image_size), generator=g,
                         dtype=torch.uint8)


def test_views_shapes_channels_and_local_crops():
    cfg = AugmentConfig(on="device", num_views=2, local_crops=3, local_size=12, blur_prob=[1.0], blur_min_size=8)
    views = BatchAugment(cfg, GRAY, out_channels=3)(images(5, GRAY), torch.Generator().manual_seed(0))
    assert [tuple(v.shape) for v in views] == [(5, 3, 28, 28)] * 2 + [(5, 3, 12, 12)] * 3
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in views)


def test_same_seed_same_views_and_views_differ():
    augment = BatchAugment(AugmentConfig(on="device"), RGB, 3)
    x = images(8, RGB)
    a = augment(x, torch.Generator().manual_seed(3))
    b = augment(x, torch.Generator().manual_seed(3))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], a[1])


def test_global_batch_sliced_by_rank_equals_single_process():
    augment = BatchAugment(AugmentConfig(on="device", blur_prob=[0.5], blur_min_size=8, solarize_prob=[0.3]), RGB, 3)
    x = images(8, RGB)
    whole = augment(x, torch.Generator().manual_seed(7))
    halves = [augment(x[r * 4:(r + 1) * 4], torch.Generator().manual_seed(7), rank=r, world=2) for r in range(2)]
    for view in range(2):
        assert torch.allclose(torch.cat([halves[0][view], halves[1][view]]), whole[view], atol=1e-6)


def test_solarize_and_grayscale_take_effect():
    x = torch.full((4, 3, 32, 32), 200, dtype=torch.uint8)
    x[:, 0] = 250
    base = {"on": "device", "crop_scale": [1.0, 1.0], "flip_prob": 0.0, "jitter_prob": 0.0}
    plain = BatchAugment(AugmentConfig(**base, grayscale_prob=0.0), RGB, 3)(x, torch.Generator().manual_seed(0))[0]
    solar = BatchAugment(AugmentConfig(**base, grayscale_prob=0.0, solarize_prob=[1.0]), RGB, 3)(
        x, torch.Generator().manual_seed(0))[0]
    gray = BatchAugment(AugmentConfig(**base, grayscale_prob=1.0), RGB, 3)(x, torch.Generator().manual_seed(0))[0]
    assert torch.allclose((solar * 0.25 + 0.5), 1 - (plain * 0.25 + 0.5), atol=1e-5)  # every pixel >= 128
    assert torch.allclose(gray[:, 0], gray[:, 1]) and not torch.allclose(plain[:, 0], plain[:, 1])
