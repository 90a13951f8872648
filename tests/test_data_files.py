"""Folders of image files (ImageNet layout, ImageNet-100, flat folders, corrupt files) and Hugging Face datasets."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.errors import ConfigError, DataError
from common.data import (
    IMAGENET_MEAN,
    CorruptImageError,
    DataConfig,
    build_dataset,
    dataset_info,
    imagenet100_classes,
)

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
    # Both sides are float64 sums of the same 8 x 120 values in another order: rounding differs by ~1e-16.
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
    with pytest.warns(UserWarning, match="skipping corrupt image"):
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
