"""Per-image view pipelines: shapes, channels, per-view blur/solarize, bicubic crops, eval transform, presets,
errors.

Views are normalised float32 images of uint8 pixels; ``to_uint8`` recovers the pixels exactly (the float32 error
of normalising and back, a few 2^-24 relative on values of at most 1/std ~ 4, is far below half a grey level),
so most comparisons below are exact."""

import dataclasses
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from common.augment import (
    AugmentConfig,
    build_crop_transforms,
    build_eval_transform,
    build_supervised_transform,
    build_view_transforms,
    channel_stats,
    dino_multicrop,
    main,
    per_view,
    random_resized_crop,
    simclr_augment,
)
from common.blur import SeparableGaussianBlur, blur_kernel_size, gaussian_blur
from common.config import ConfigError, load_config
from common.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DatasetInfo,
    InMemoryImageDataset,
    MultiViewDataset,
    dataset_info,
)
from msbreg.train import msbreg_augment

FMNIST = dataset_info("fashion_mnist")
CIFAR = dataset_info("cifar10")
IMAGENET = DatasetInfo(3, 224, 1000, IMAGENET_MEAN, IMAGENET_STD)
RNG = np.random.default_rng(0)


def uint8_image(channels, size):
    return torch.from_numpy(RNG.integers(0, 256, size=(channels, size, size), dtype=np.uint8))


def pil_image(width=300, height=200):
    return Image.fromarray(RNG.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


def denormalize(x, info, out_channels):
    mean, std = channel_stats(info, out_channels)
    return x * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)


def to_uint8(x, info, out_channels):
    return (denormalize(x, info, out_channels) * 255).round().to(torch.uint8)


def only(**changes):
    """A config with every random photometric op off, so a test isolates the one it turns on."""
    base = AugmentConfig(flip_prob=0.0, jitter_prob=0.0, grayscale_prob=0.0, blur_prob=[0.0], solarize_prob=[0.0])
    return dataclasses.replace(base, **changes)


def total_variation(x):
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def test_view_shapes_dtypes_and_channels_with_local_crops():
    cfg = dataclasses.replace(simclr_augment(), num_views=3, local_crops=2, local_size=12)
    views = build_view_transforms(cfg, FMNIST, out_channels=3)
    assert len(views) == 5
    image = uint8_image(1, 28)
    outputs = [t(image) for t in views]
    assert [tuple(o.shape) for o in outputs] == [(3, 28, 28)] * 3 + [(3, 12, 12)] * 2
    assert all(o.dtype == torch.float32 for o in outputs)
    # Grayscale data repeated to 3 channels stays gray through jitter and grayscale: the same operations on the
    # same values, so the channels are equal.
    for o in outputs:
        assert torch.equal(o[0], o[1]) and torch.equal(o[1], o[2])

    one_channel = [t(image) for t in build_view_transforms(simclr_augment(), FMNIST, out_channels=1)]
    assert [tuple(o.shape) for o in one_channel] == [(1, 28, 28)] * 2

    resized = build_view_transforms(dataclasses.replace(simclr_augment(), image_size=20), CIFAR, 3)
    assert tuple(resized[0](uint8_image(3, 32)).shape) == (3, 20, 20)
    assert tuple(resized[0](pil_image(32, 32)).shape) == (3, 20, 20)  # PIL input too


def test_dino_multicrop_on_a_pil_image():
    views = build_view_transforms(dino_multicrop(local_crops=4), IMAGENET, out_channels=3)
    shapes = [tuple(t(pil_image()).shape) for t in views]
    assert shapes == [(3, 224, 224)] * 2 + [(3, 96, 96)] * 4


def test_blur_probability_takes_effect_per_view():
    views = build_view_transforms(only(blur_prob=[1.0, 0.0], blur_sigma=[1.0, 1.0], image_size=64), IMAGENET, 3)
    image = uint8_image(3, 96)
    torch.manual_seed(0)
    blurred = to_uint8(views[0](image), IMAGENET, 3)
    torch.manual_seed(0)
    sharp = to_uint8(views[1](image), IMAGENET, 3)  # same seed: same crop, only the blur differs
    expected = gaussian_blur(sharp[None].float(), torch.ones(1), blur_kernel_size(64)).round().to(torch.uint8)[0]
    assert torch.equal(blurred, expected) and not torch.equal(blurred, sharp)


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_separable_blur_equals_torchvision_blur(dtype):
    """Same random sigma (same RNG draw), same kernel and reflect padding as v2.GaussianBlur's k x k convolution."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    image = tv_tensors.Image(uint8_image(3, 64) if dtype == torch.uint8 else torch.rand(3, 64, 64))
    torch.manual_seed(3)
    ours = SeparableGaussianBlur(7, sigma=(1.0, 2.0))(image)
    torch.manual_seed(3)
    reference = v2.GaussianBlur(7, sigma=(1.0, 2.0))(image)
    assert isinstance(ours, tv_tensors.Image) and ours.dtype == dtype
    difference = (ours.float() - reference.float()).abs().max()
    # Float32 sums of 2k (ours) and k^2 (torchvision) products of pixels <= 1 with weights summing to 1, the 2-D
    # kernel being the outer product of the 1-D one: at most (k^2 + 2k) 2^-24 = 63 x 6e-8 < 1e-5 apart; uint8
    # images are rounded after that, so a pixel moves by one grey level at most.
    assert difference <= (1.0 if dtype == torch.uint8 else 1e-5)
    assert not torch.equal(ours, image)
    pil = Image.fromarray(uint8_image(3, 16).permute(1, 2, 0).numpy())
    assert isinstance(SeparableGaussianBlur(3)(pil), Image.Image)  # PIL images go to torchvision's kernel


def test_solarize_probability_takes_effect_per_view():
    views = build_view_transforms(only(solarize_prob=[0.0, 1.0]), CIFAR, 3)
    image = uint8_image(3, 32)
    torch.manual_seed(1)
    plain = to_uint8(views[0](image), CIFAR, 3)
    torch.manual_seed(1)
    solarized = to_uint8(views[1](image), CIFAR, 3)
    # Solarization inverts the pixels at or above 128 (of 255) and keeps the others.
    assert torch.equal(solarized, torch.where(plain >= 128, 255 - plain, plain))
    assert not torch.equal(solarized, plain)


def test_per_view_lists_cycle_over_global_then_local_views():
    assert [per_view([1.0, 0.1], v) for v in range(5)] == [1.0, 0.1, 1.0, 0.1, 1.0]
    # View 2 is the first local crop: with solarize [0, 0, 1] only it is solarized.
    cfg = only(solarize_prob=[0.0, 0.0, 1.0], local_crops=1, local_size=32, local_crop_scale=[1.0, 1.0])
    views = build_view_transforms(dataclasses.replace(cfg, crop_scale=[1.0, 1.0]), CIFAR, 3)
    flat = torch.full((3, 32, 32), 200, dtype=torch.uint8)  # solarized to 55
    values = [round(float(denormalize(t(flat), CIFAR, 3).mean()) * 255) for t in views]
    assert values == [200, 200, 55]


def test_eval_transform_small_dataset_is_exact_and_deterministic():
    transform = build_eval_transform(CIFAR, out_channels=3)
    image = uint8_image(3, 32)
    out = transform(image)
    expected = (image.float() / 255 - torch.tensor(CIFAR.mean).view(3, 1, 1)) / torch.tensor(CIFAR.std).view(3, 1, 1)
    # The same affine map evaluated in another order in float32: 3 roundings of at most 2^-24 on values <= 1
    # before the division by std >= 0.24, so at most 7.5e-7 per side.
    assert torch.allclose(out, expected, rtol=0, atol=1.5e-6)
    assert torch.equal(transform(image), out)
    gray = build_eval_transform(FMNIST, out_channels=3)(uint8_image(1, 28))
    assert tuple(gray.shape) == (3, 28, 28) and torch.equal(gray[0], gray[2])
    assert tuple(build_eval_transform(CIFAR, 3, image_size=64)(image).shape) == (3, 64, 64)


def test_eval_transform_imagenet_resizes_then_centre_crops():
    transform = build_eval_transform(IMAGENET, out_channels=3)
    image = pil_image(400, 300)
    out = transform(image)
    assert tuple(out.shape) == (3, 224, 224) and torch.equal(out, transform(image))
    # Short side 300 -> 256, long side 400 -> 341; the centre 224 crop starts at (16, 58).
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    resized = v2.functional.resize(pixels, [256, 341], antialias=True)
    assert torch.equal(to_uint8(out, IMAGENET, 3), resized[:, 16:240, 58:282])
    assert tuple(build_eval_transform(IMAGENET, 3, image_size=160)(image).shape) == (3, 160, 160)


def test_supervised_and_none_pipelines():
    supervised = build_supervised_transform(AugmentConfig(name="supervised"), CIFAR, 3)
    assert tuple(supervised(uint8_image(3, 32)).shape) == (3, 32, 32)
    views = build_view_transforms(AugmentConfig(name="none", num_views=2), CIFAR, 3)
    image = uint8_image(3, 32)
    assert len(views) == 2 and torch.equal(views[0](image), build_eval_transform(CIFAR, 3)(image))
    assert len(build_view_transforms(AugmentConfig(name="supervised", num_views=1), CIFAR, 3)) == 1


def test_views_through_the_multiview_dataset_and_a_dataloader():
    base = InMemoryImageDataset(torch.from_numpy(RNG.integers(0, 256, (8, 1, 28, 28), dtype=np.uint8)), torch.arange(8))
    byol = AugmentConfig(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, blur_prob=[1.0, 0.1],
                         solarize_prob=[0.0, 0.2])  # BYOL's two views (Grill et al. 2020, Table 6)
    dataset = MultiViewDataset(base, build_view_transforms(byol, FMNIST, 3), seed=0)
    views, labels = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    assert len(views) == 2 and tuple(views[0].shape) == (4, 3, 28, 28) and labels.tolist() == [0, 1, 2, 3]
    assert torch.equal(dataset[1][0][0], views[0][1])


def test_presets_match_the_papers():
    simclr = simclr_augment(strength=0.5)
    assert (simclr.brightness, simclr.contrast, simclr.saturation, simclr.hue) == (0.4, 0.4, 0.4, 0.1)
    assert simclr.crop_scale == [0.08, 1.0] and simclr.blur_prob == [0.5] and simclr.grayscale_prob == 0.2

    # MSBReg supplementary, table 1.
    ms = msbreg_augment()
    assert ms.num_views == 4 and ms.flip_prob == 0.5 and ms.jitter_prob == 0.8
    assert (ms.brightness, ms.contrast, ms.saturation, ms.hue) == (0.4, 0.4, 0.2, 0.1)
    assert ms.grayscale_prob == 0.2 and ms.blur_prob == [1.0] and ms.solarize_prob == [0.2]
    assert msbreg_augment(views=8).num_views == 8

    dino = dino_multicrop()
    assert dino.num_views == 2 and dino.local_crops == 8 and (dino.image_size, dino.local_size) == (224, 96)
    assert dino.crop_scale == [0.4, 1.0] and dino.local_crop_scale == [0.05, 0.4]
    assert dino.blur_prob == [1.0, 0.1] + [0.5] * 8 and dino.solarize_prob == [0.0, 0.2] + [0.0] * 8


def test_crops_are_resized_bicubically_by_default():
    """SimCLR, BYOL and DINO resize their random crops bicubically; ``augment.interpolation`` switches."""
    assert AugmentConfig().interpolation == "bicubic"
    image = uint8_image(3, 64)
    for name, mode in (("bicubic", v2.InterpolationMode.BICUBIC), ("bilinear", v2.InterpolationMode.BILINEAR)):
        cfg = only(interpolation=name, image_size=24)
        torch.manual_seed(0)
        box = random_resized_crop(cfg, 24, cfg.crop_scale).make_params([image])
        torch.manual_seed(0)
        view = to_uint8(build_view_transforms(cfg, IMAGENET, 3)[0](image), IMAGENET, 3)
        expected = v2.functional.resized_crop(image, **box, size=[24, 24], interpolation=mode, antialias=True)
        assert torch.equal(view, expected)
    bilinear = v2.functional.resized_crop(image, **box, size=[24, 24], antialias=True)
    bicubic = v2.functional.resized_crop(image, **box, size=[24, 24], interpolation=v2.InterpolationMode.BICUBIC,
                                         antialias=True)
    assert not torch.equal(bilinear, bicubic)


def test_crop_transforms_cut_the_boxes_of_the_view_pipelines():
    """The loader half of augment.on=device: the same crop (box and resampling) as a view's first step."""
    cfg = dataclasses.replace(dino_multicrop(local_crops=2), image_size=32, local_size=16, on="device")
    to_uint8_image, crops = build_crop_transforms(cfg, IMAGENET, 3)
    assert [c.size for c in crops] == [(32, 32)] * 2 + [(16, 16)] * 2
    assert [c.scale for c in crops] == [(0.4, 1.0)] * 2 + [(0.05, 0.4)] * 2
    image = pil_image(60, 40)
    pixels = to_uint8_image(image)
    assert pixels.dtype == torch.uint8 and tuple(pixels.shape) == (3, 40, 60)
    torch.manual_seed(5)
    crop = crops[0](pixels)
    torch.manual_seed(5)
    view = build_view_transforms(dataclasses.replace(cfg, flip_prob=0.0, jitter_prob=0.0, grayscale_prob=0.0,
                                                     blur_prob=[0.0], solarize_prob=[0.0]), IMAGENET, 3)[0](image)
    assert torch.equal(crop, to_uint8(view, IMAGENET, 3))
    gray_to_uint8, _ = build_crop_transforms(cfg, IMAGENET, 1)  # a 1-channel model: gray crops
    assert tuple(gray_to_uint8(image).shape) == (1, 40, 60)
    with pytest.raises(ConfigError, match="augment.name"):
        build_crop_transforms(AugmentConfig(name="none"), IMAGENET, 3)


def test_blur_kernel_is_odd_and_about_ten_percent():
    assert [blur_kernel_size(s) for s in (224, 96, 64, 32)] == [23, 9, 7, 3]


def test_bad_configs_name_the_key():
    """Types and bounds are the config loader's (a one-line error naming the key); what needs several keys or a
    list's order, the augmentation's own check."""

    @dataclasses.dataclass
    class Run:
        augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)

    for override in ("augment.name=fancy", "augment.on=gpu", "augment.blur_prob=[1.5]", "augment.num_views=0",
                     "augment.hue=0.7", "augment.interpolation=nearest", "augment.decode=nvjpeg"):
        with pytest.raises(ConfigError, match=re.escape(f"'{override.split('=')[0]}") + r"['\[]"):  # a list's item: key[i]
            load_config(Run, [override])
    cases = [
        (AugmentConfig(solarize_prob=[]), "augment.solarize_prob"),
        (AugmentConfig(crop_scale=[1.0, 0.2]), "augment.crop_scale"),
        (AugmentConfig(decode="gpu"), "augment.decode=gpu needs augment.on=device"),
    ]
    for cfg, key in cases:
        with pytest.raises(ConfigError, match=key):
            build_view_transforms(cfg, CIFAR, 3)
    with pytest.raises(ValueError, match="cannot turn 3-channel images into 2 channels"):
        build_view_transforms(AugmentConfig(), CIFAR, 2)


def test_preview_command_writes_the_grid_and_its_numbers(tmp_path, capsys):
    for label, name in enumerate(("a", "b", "c")):
        for i in range(2):
            folder = tmp_path / "images" / name
            folder.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40, 30), (80 * label, 40 * i, 0)).save(folder / f"{i}.png")
    out = tmp_path / "preview"
    argv = [f"data.root={tmp_path / 'images'}", "data.name=image_folder", "augment.image_size=32",
            "augment.local_crops=1", "augment.local_size=16", "num_images=3", f"output_dir={out}"]
    assert main(argv) == 0
    assert Image.open(out / "views.png").size[0] > 0
    summary = json.loads((out / "views.json").read_text())
    assert summary["indices"] == [0, 2, 4] and summary["labels"] == [0, 1, 2]
    assert [v["shape"] for v in summary["views"]] == [[3, 32, 32], [3, 32, 32], [3, 16, 16]]
    assert summary["augment"]["local_crops"] == 1
    assert main(["augment.blur_prob=[2.0]", f"output_dir={out}"]) == 2
    assert "augment.blur_prob" in capsys.readouterr().err
