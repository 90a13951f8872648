"""Folders of image files (ImageNet layout, ImageNet-100, flat folders, corrupt files) and Hugging Face datasets."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from common.augment import build_eval_transform
from common.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CorruptImageError,
    DataConfig,
    MultiViewDataset,
    build_dataset,
    dataset_info,
    imagenet100_classes,
    skipped_files,
)
from common.errors import ConfigError, DataError

# ---------------------------------------------------------------------------------------------- image folders


def write_png(path: Path, color, size=(12, 10), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_image_folder_labelled_and_test_split(tmp_path):
    for cls, color in (("cat", (255, 0, 0)), ("dog", (0, 255, 0))):
        for i in range(3):
            write_png(tmp_path / "train" / cls / f"{i}.png", color)
        write_png(tmp_path / "val" / cls / "x.jpg", color)
    write_png(tmp_path / "train" / "dog" / "nested" / "deep.png", (0, 255, 0))
    (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image")
    write_png(tmp_path / "train" / "cat" / "gray.png", 128, mode="L")
    cfg = DataConfig(name="image_folder", root=str(tmp_path))

    train = build_dataset(cfg, "train")
    assert train.classes == ["cat", "dog"]
    assert train.targets.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    image, label = train[4]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and label == 1
    assert image.getpixel((0, 0)) == (0, 255, 0)
    assert train[3][0].mode == "RGB"  # a grayscale file is converted to RGB
    assert build_dataset(cfg, "test").targets.tolist() == [0, 1]
    # Small (12x10) colour images: their own shorter side and the statistics of their pixels, each image a
    # single colour: cat 3 x red + 1 x gray 128, dog 4 x green (the same pixel count each).
    info = dataset_info(cfg)
    assert (info.num_classes, info.channels, info.image_size) == (2, 3, 10)
    colors = np.array([(1, 0, 0)] * 3 + [(128 / 255,) * 3] + [(0, 1, 0)] * 4)
    mean = colors.mean(axis=0)
    std = np.sqrt((colors**2).mean(axis=0) - mean**2)
    # Both sides are float64 sums of the same 8 x 120 values in another order: n = 960 additions err by at
    # most n x 2^-53 ~ 1e-13 relative, on the mean and the variance (~0.2); the std (>= 0.17) moves by less.
    assert info.mean == pytest.approx(mean, abs=1e-12) and info.std == pytest.approx(std, abs=1e-12)


def test_flat_image_folder_is_unlabelled(tmp_path):
    for i in range(3):
        write_png(tmp_path / f"img{i}.jpeg", (i, i, i))
    ds = build_dataset(DataConfig(name="image_folder", root=str(tmp_path)), "train")
    assert len(ds) == 3 and ds.targets.tolist() == [-1, -1, -1]
    assert ds[0][1] == -1
    assert dataset_info(DataConfig(name="image_folder", root=str(tmp_path))).num_classes == 0


def test_imagenet100_uses_the_standard_class_list(tmp_path):
    classes = imagenet100_classes()
    assert len(classes) == 100 and len(set(classes)) == 100
    assert all(len(c) == 9 and c[0] == "n" and c[1:].isdigit() for c in classes)
    assert classes[0] == "n02869837" and classes[-1] == "n02090622"  # CMC's file order
    write_png(tmp_path / "train" / "n01440764" / "a.png", (1, 2, 3))  # an ImageNet class not in the 100
    for c in classes[:60]:
        write_png(tmp_path / "train" / c / "a.png", (1, 2, 3))
    cfg = DataConfig(name="imagenet100", root=str(tmp_path))
    with pytest.raises(DataError, match="lacks 40 of the 100 imagenet100 class folders"):
        build_dataset(cfg, "train")
    for c in classes[60:]:
        write_png(tmp_path / "train" / c / "a.png", (1, 2, 3))
    ds = build_dataset(cfg, "train")
    assert len(ds) == 100 and ds.targets.tolist() == list(range(100)) and ds.classes == classes
    assert dataset_info(cfg).num_classes == 100


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="missing-folder"):
        build_dataset(DataConfig(name="imagenet", root=str(tmp_path / "missing-folder")), "train")
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match=r"no images found in .*train"):
        build_dataset(DataConfig(name="imagenet", root=str(tmp_path)), "train")
    with pytest.raises(DataError, match=r"val not found"):
        build_dataset(DataConfig(name="imagenet", root=str(tmp_path)), "test")


def test_corrupt_jpeg_error_names_the_file_and_skip_counts_it(tmp_path):
    write_png(tmp_path / "train" / "a" / "good0.jpg", (10, 20, 30), size=(64, 64))
    write_png(tmp_path / "train" / "a" / "good2.jpg", (10, 20, 30), size=(64, 64))
    good = (tmp_path / "train" / "a" / "good0.jpg").read_bytes()
    bad = tmp_path / "train" / "a" / "good1_truncated.jpg"
    bad.write_bytes(good[: len(good) // 2])  # a truncated JPEG: opens, fails to decode
    (tmp_path / "train" / "a" / "junk.jpg").write_bytes(b"not a jpeg at all")

    strict = build_dataset(DataConfig(name="image_folder", root=str(tmp_path)), "train")
    assert strict[0][0].size == (64, 64)
    with pytest.raises(CorruptImageError, match="good1_truncated.jpg"):
        strict[1]
    with pytest.raises(CorruptImageError, match="junk.jpg"):
        strict[3]

    lenient = build_dataset(DataConfig(name="image_folder", root=str(tmp_path), skip_corrupt=True), "train")
    images = [lenient[i][0] for i in range(len(lenient))]
    assert all(im.size == (64, 64) for im in images)
    assert lenient.num_skipped == 2
    assert any("good1_truncated.jpg" in s for s in lenient.skipped)


# ---------------------------------------------------------------------------------------------- Hugging Face


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """Send the builders' cache (parquet, imagefolder) to tmp_path instead of ~/.cache."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def hf_table(n_per_class=2):
    import datasets

    features = datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=["a", "b", "c"])})
    rows = {"img": [], "y": []}
    for label in range(3):
        for _ in range(n_per_class):
            rows["img"].append(Image.new("RGB", (8, 8), (label * 100, 0, 0)))
            rows["y"].append(label)
    return datasets.Dataset.from_dict(rows, features=features)


def test_hf_save_to_disk_dataset_dict(tmp_path):
    import datasets

    datasets.DatasetDict({"train": hf_table(), "test": hf_table(1)}).save_to_disk(str(tmp_path / "saved"))
    cfg = DataConfig(name="hf", root=str(tmp_path / "saved"), image_column="img", label_column="y",
                     test_split="test")
    train = build_dataset(cfg, "train")
    assert len(train) == 6 and train.targets.tolist() == [0, 0, 1, 1, 2, 2]
    image, label = train[2]
    assert isinstance(image, Image.Image) and image.getpixel((0, 0)) == (100, 0, 0) and label == 1
    assert len(build_dataset(cfg, "test")) == 3
    assert dataset_info(cfg).num_classes == 3
    sub = build_dataset(DataConfig(**{**cfg.__dict__, "subset": 3}), "train")
    assert sub.targets.tolist() == [0, 1, 2] and sub[1][0].getpixel((0, 0)) == (100, 0, 0)


def test_hf_parquet_file_and_errors(tmp_path, hf_cache):
    hf_table().to_parquet(str(tmp_path / "train.parquet"))
    cfg = DataConfig(name="hf", root=str(tmp_path / "train.parquet"), image_column="img", label_column="y")
    ds = build_dataset(cfg, "train")
    assert ds.targets.tolist() == [0, 0, 1, 1, 2, 2] and ds[5][0].getpixel((0, 0)) == (200, 0, 0)
    assert ds.classes == ["a", "b", "c"]  # the ClassLabel survives the parquet round trip
    unlabelled = build_dataset(DataConfig(**{**cfg.__dict__, "label_column": ""}), "train")
    assert unlabelled.targets.tolist() == [-1] * 6

    with pytest.raises(ValueError, match="data.label_column='label' is not a column"):
        build_dataset(DataConfig(**{**cfg.__dict__, "label_column": "label"}), "train")
    with pytest.raises(ValueError, match="data.image_column='image' is not a column"):
        build_dataset(DataConfig(**{**cfg.__dict__, "image_column": "image"}), "train")
    with pytest.raises(ValueError, match="no split 'val'"):
        build_dataset(cfg, "test")
    with pytest.raises(DataError, match="nothing-here"):
        build_dataset(DataConfig(name="hf", root=str(tmp_path / "nothing-here")), "train")


def test_hf_imagefolder(tmp_path, hf_cache):
    for path, color in (("train/cat/a.png", 1), ("train/dog/b.png", 2), ("train/dog/c.png", 3), ("test/cat/d.png", 4)):
        write_png(tmp_path / "images" / path, (color, 0, 0))
    cfg = DataConfig(name="hf", root=str(tmp_path / "images"), test_split="test")
    train = build_dataset(cfg, "train")
    assert train.classes == ["cat", "dog"] and sorted(train.targets.tolist()) == [0, 1, 1]
    colors = {train[i][0].getpixel((0, 0))[0]: train[i][1] for i in range(3)}
    assert colors == {1: 0, 2: 1, 3: 1}
    assert build_dataset(cfg, "test").targets.tolist() == [0]


# ---------------------------------------------------------------------------------------------- corrupt files in workers


def to_tensor(image):
    return torch.from_numpy(np.asarray(image).copy())


def corrupt_folder(root: Path) -> list[str]:
    """Six 16x16 images in one class, the second and fifth corrupt (a truncated PNG, bytes that are no image)."""
    for i in range(6):
        write_png(root / "train" / "a" / f"{i}.png", (i, 0, 0), size=(16, 16))
    good = (root / "train" / "a" / "0.png").read_bytes()
    (root / "train" / "a" / "1.png").write_bytes(good[: len(good) // 2])
    (root / "train" / "a" / "4.png").write_bytes(b"not an image")
    return [str(root / "train" / "a" / name) for name in ("1.png", "4.png")]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_image_in_a_worker_is_the_main_process_line(tmp_path, num_workers):
    corrupt_folder(tmp_path)
    dataset = build_dataset(DataConfig(name="image_folder", root=str(tmp_path)), "train")
    with pytest.raises(CorruptImageError) as in_main:
        dataset[1]
    loader = DataLoader(MultiViewDataset(dataset, [to_tensor], seed=0), batch_size=2, num_workers=num_workers)
    with pytest.raises(CorruptImageError) as from_loader:
        list(loader)
    assert str(from_loader.value) == str(in_main.value)
    assert "\n" not in str(in_main.value) and "1.png" in str(in_main.value)
    assert isinstance(from_loader.value, DataError)
    assert ("Traceback" in from_loader.value.worker_traceback) == (num_workers > 0)


def test_skipped_corrupt_files_are_reported_once_per_run_across_epochs_and_workers(tmp_path, capfd):
    bad = corrupt_folder(tmp_path)
    dataset = build_dataset(DataConfig(name="image_folder", root=str(tmp_path), skip_corrupt=True), "train")
    views = MultiViewDataset(dataset, [to_tensor], seed=0)
    for epoch in range(3):  # new worker processes every epoch, as in the trainer
        views.set_epoch(epoch)
        images = torch.cat([batch[0][0] for batch in DataLoader(views, batch_size=1, num_workers=2)])
        # Sample 1 is replaced by sample 2, sample 4 by sample 5: the red channel holds the file's number.
        assert images[:, 0, 0, 0].tolist() == [0, 2, 2, 3, 5, 5]
    assert sorted(skipped_files(views)) == [f"file {path}" for path in bad]
    assert dataset.num_skipped == 2
    reports = capfd.readouterr().err
    assert [reports.count(f"skipping corrupt image file {path}") for path in bad] == [1, 1]


# ---------------------------------------------------------------------------------------------- measured size and statistics


def test_folder_of_small_grayscale_images_is_measured_and_evaluated_at_its_size(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, size=(20, 28, 28), dtype=np.uint8)
    for i, image in enumerate(pixels):
        path = tmp_path / "train" / f"class{i % 2}" / f"{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(path)
    cfg = DataConfig(name="image_folder", root=str(tmp_path))
    info = dataset_info(cfg)
    assert (info.channels, info.image_size, info.num_classes) == (1, 28, 2)
    values = pixels.astype(np.float64) / 255  # all 20 images are read (fewer than STATS_SAMPLE)
    # The same float64 values summed in another order: n = 15,680 additions err by at most n x 2^-53 ~ 2e-12
    # relative, so the mean (~0.5) by 1e-12 and the std (~0.29, from a variance off by ~2e-12) by ~4e-12.
    assert info.mean == pytest.approx((values.mean(),), abs=1e-10)
    assert info.std == pytest.approx((values.std(),), abs=1e-10)

    train = build_dataset(cfg, "train")
    image, label = train[0]
    assert image.mode == "L" and np.array_equal(np.asarray(image), pixels[0]) and label == 0
    evaluation = build_eval_transform(info, info.channels)(image)
    assert evaluation.shape == (1, 28, 28)  # no resize to 224
    expected = (torch.from_numpy(pixels[0]).double() / 255 - info.mean[0]) / info.std[0]
    # Three float32 operations (scale, subtract, divide), each off by at most 2^-24 relative, on values below
    # 1/std ~ 3.5 in size: the error is under 3 x 3.5 x 2^-24 ~ 6e-7; 1e-6 bounds it.
    assert torch.allclose(evaluation[0].double(), expected, atol=1e-6, rtol=0)


def test_large_or_mixed_size_colour_images_keep_224_and_imagenet_statistics(tmp_path):
    write_png(tmp_path / "large" / "a" / "0.png", (1, 2, 3), size=(300, 256))
    write_png(tmp_path / "large" / "a" / "1.png", (1, 2, 3), size=(300, 256))
    write_png(tmp_path / "mixed" / "a" / "0.png", (1, 2, 3), size=(32, 32))
    write_png(tmp_path / "mixed" / "a" / "1.png", (1, 2, 3), size=(40, 30))
    for folder in ("large", "mixed"):
        info = dataset_info(DataConfig(name="image_folder", root=str(tmp_path / folder)))
        assert (info.channels, info.image_size, info.mean, info.std) == (3, 224, IMAGENET_MEAN, IMAGENET_STD)
    declared = dataset_info(DataConfig(name="image_folder", root=str(tmp_path / "mixed"), image_size=36))
    assert declared.image_size == 36  # small: its own statistics, of one colour (1, 2, 3) / 255 ...
    # 2,224 pixels summed in float64: at most 2224 x 2^-53 ~ 2.5e-13 relative of 3/255, ~3e-15.
    assert declared.mean == pytest.approx((1 / 255, 2 / 255, 3 / 255), abs=1e-14)
    assert declared.std == (1 / 255,) * 3  # ... whose zero spread is floored at one grey level
    assert dataset_info(DataConfig(name="imagenet", root=str(tmp_path / "nowhere"))).image_size == 224
    with pytest.raises(ConfigError, match="data.image_size"):
        dataset_info(DataConfig(name="image_folder", root=str(tmp_path / "mixed"), image_size=0))
