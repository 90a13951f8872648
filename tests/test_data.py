"""Dataset loaders on files written here in the real on-disk formats; subsets; errors; multi-view seeding."""

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common import data
from common.data import (
    CorruptImageError,
    DataConfig,
    MultiViewDataset,
    build_dataset,
    dataset_info,
    imagenet100_classes,
    stratified_subset,
)

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def no_system_fashion_mnist(monkeypatch):
    """Tests see only the files they write, never Debian's copy (except the test that asks for it)."""
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIRS", ())


def random_images(n, channels, size):
    return RNG.integers(0, 256, size=(n, channels, size, size), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------- CIFAR


def write_cifar_pickle(path: Path, images: np.ndarray, labels: dict[str, list[int]]):
    # The real files are protocol-2 pickles of dicts whose 'data' rows hold the R, G and B planes.
    entry = {"data": images.reshape(len(images), -1), **labels}
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


def test_cifar10_reads_all_training_batches_and_the_test_batch(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = [random_images(4, 3, 32) for _ in range(5)]
    for i, images in enumerate(batches, start=1):
        write_cifar_pickle(folder / f"data_batch_{i}", images, {"labels": [i, i, 0, 9]})
    test_images = random_images(3, 3, 32)
    write_cifar_pickle(folder / "test_batch", test_images, {"labels": [7, 8, 9]})
    cfg = DataConfig(name="cifar10", root=str(tmp_path), download=False)

    train = build_dataset(cfg, "train")
    assert train.images.dtype == torch.uint8 and train.images.shape == (20, 3, 32, 32)
    assert train.images.is_contiguous()
    assert torch.equal(train.images, torch.from_numpy(np.concatenate(batches)))
    assert train.targets.dtype == torch.int64
    assert train.targets[:8].tolist() == [1, 1, 0, 9, 2, 2, 0, 9]
    image, label = train[5]
    assert torch.equal(image, torch.from_numpy(batches[1][1])) and label == 2
    # The channel planes are in R, G, B order: pixel (y=1, x=2) of channel c is data[c*1024 + 1*32 + 2].
    row = batches[0][0].reshape(-1)
    assert [int(train.images[0, c, 1, 2]) for c in range(3)] == [int(row[c * 1024 + 34]) for c in range(3)]

    test = build_dataset(cfg, "test")
    assert torch.equal(test.images, torch.from_numpy(test_images)) and test.targets.tolist() == [7, 8, 9]
    assert dataset_info(cfg).num_classes == 10 and dataset_info(cfg).image_size == 32


def test_cifar100_fine_and_coarse_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    images = random_images(4, 3, 32)
    labels = {"fine_labels": [4, 30, 55, 99], "coarse_labels": [0, 0, 19, 13]}
    write_cifar_pickle(folder / "train", images, labels)
    write_cifar_pickle(folder / "test", images[:2], {"fine_labels": [4, 30], "coarse_labels": [0, 0]})

    fine = build_dataset(DataConfig(name="cifar100", root=str(tmp_path), download=False), "train")
    coarse_cfg = DataConfig(name="cifar100", root=str(tmp_path), download=False, labels="coarse")
    coarse = build_dataset(coarse_cfg, "train")
    assert fine.targets.tolist() == [4, 30, 55, 99]
    assert coarse.targets.tolist() == [0, 0, 19, 13]
    assert torch.equal(fine.images, coarse.images)
    assert len(build_dataset(coarse_cfg, "test")) == 2
    assert dataset_info(coarse_cfg).num_classes == 20
    assert dataset_info(DataConfig(name="cifar100")).num_classes == 100
    with pytest.raises(ValueError, match="data.labels"):
        dataset_info(DataConfig(name="cifar100", labels="superclass"))


def test_cifar_missing_files_without_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py.*data_batch_1"):
        build_dataset(DataConfig(name="cifar10", root=str(tmp_path), download=False), "train")


def test_corrupt_cifar_pickle_names_the_file(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "test").write_bytes(b"this is not a pickle")
    with pytest.raises(ValueError, match="cifar-100-python/test"):
        build_dataset(DataConfig(name="cifar100", root=str(tmp_path), download=False), "test")


# ---------------------------------------------------------------------------------------------- STL-10


def write_stl10(folder: Path, part: str, images: np.ndarray, labels=None):
    # Real STL-10 binaries store each 96x96 channel column-major (Fortran order).
    folder.mkdir(exist_ok=True)
    images.transpose(0, 1, 3, 2).tofile(folder / f"{part}_X.bin")
    if labels is not None:
        np.asarray(labels, dtype=np.uint8).tofile(folder / f"{part}_y.bin")


def test_stl10_binaries_column_major_and_unlabeled(tmp_path):
    folder = tmp_path / "stl10_binary"
    train, test, unlabeled = random_images(3, 3, 96), random_images(2, 3, 96), random_images(4, 3, 96)
    write_stl10(folder, "train", train, [1, 10, 5])
    write_stl10(folder, "test", test, [2, 3])
    write_stl10(folder, "unlabeled", unlabeled)
    cfg = DataConfig(name="stl10", root=str(tmp_path), download=False)

    ds = build_dataset(cfg, "train")
    assert ds.images.shape == (3, 3, 96, 96) and torch.equal(ds.images, torch.from_numpy(train))
    assert ds.targets.tolist() == [0, 9, 4]  # files hold 1..10
    # The first bytes of the file are column 0 of the red channel: pixels (y=0..95, x=0).
    raw = np.fromfile(folder / "train_X.bin", dtype=np.uint8)
    assert torch.equal(ds.images[0, 0, :, 0], torch.from_numpy(raw[:96].copy()))

    assert build_dataset(cfg, "test").targets.tolist() == [1, 2]
    unl = build_dataset(cfg, "unlabeled")
    assert torch.equal(unl.images, torch.from_numpy(unlabeled)) and unl.targets.tolist() == [-1] * 4
    both = build_dataset(cfg, "train+unlabeled")
    assert len(both) == 7 and both.targets.tolist() == [0, 9, 4, -1, -1, -1, -1]
    assert torch.equal(both.images[3:], torch.from_numpy(unlabeled))
    assert dataset_info(cfg).image_size == 96


def test_stl10_truncated_binary(tmp_path):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    (folder / "test_X.bin").write_bytes(bytes(1000))
    (folder / "test_y.bin").write_bytes(bytes([1]))
    with pytest.raises(ValueError, match="test_X.bin"):
        build_dataset(DataConfig(name="stl10", root=str(tmp_path), download=False), "test")


# ---------------------------------------------------------------------------------------------- Fashion-MNIST


def write_idx(path: Path, array: np.ndarray, compress: bool):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def write_fashion_mnist(folder: Path, prefix: str, images, labels, compress=True):
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)


def test_fashion_mnist_idx_gz_in_root_and_torchvision_layout(tmp_path):
    images = RNG.integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    labels = np.array([0, 1, 2, 9, 9, 3], dtype=np.uint8)
    write_fashion_mnist(tmp_path / "a", "train", images, labels)
    ds = build_dataset(DataConfig(name="fashion_mnist", root=str(tmp_path / "a"), download=False), "train")
    assert ds.images.shape == (6, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert torch.equal(ds.images[:, 0], torch.from_numpy(images))
    assert ds.targets.tolist() == [0, 1, 2, 9, 9, 3]

    # torchvision's layout (root/FashionMNIST/raw), uncompressed files.
    write_fashion_mnist(tmp_path / "b" / "FashionMNIST" / "raw", "t10k", images[:2], labels[:2], compress=False)
    test = build_dataset(DataConfig(name="fashion_mnist", root=str(tmp_path / "b"), download=False), "test")
    assert torch.equal(test.images[:, 0], torch.from_numpy(images[:2]))


def test_fashion_mnist_found_in_the_system_folder(tmp_path, monkeypatch):
    system = tmp_path / "usr-share"
    write_fashion_mnist(system, "t10k", np.zeros((2, 28, 28), np.uint8), np.array([5, 6], np.uint8))
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIRS", (system,))
    ds = build_dataset(DataConfig(name="fashion_mnist", root=str(tmp_path / "empty"), download=False), "test")
    assert ds.targets.tolist() == [5, 6]


def test_fashion_mnist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        build_dataset(DataConfig(name="fashion_mnist", root=str(tmp_path), download=False), "test")
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x0d\x03" + bytes(12))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + struct.pack(">I", 0))
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte is not an IDX file"):
        build_dataset(DataConfig(name="fashion_mnist", root=str(tmp_path), download=False), "test")


def test_real_debian_fashion_mnist(monkeypatch):
    system = Path("/usr/share/datasets/fashion-mnist")
    if not (system / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIRS", (system,))
    cfg = DataConfig(name="fashion_mnist", root="/nonexistent", download=False)
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.targets).tolist() == [6000] * 10
    assert torch.bincount(test.targets).tolist() == [1000] * 10
    info = dataset_info(cfg)
    pixels = train.images.float() / 255
    assert pixels.mean().item() == pytest.approx(info.mean[0], abs=1e-3)
    assert pixels.std().item() == pytest.approx(info.std[0], abs=1e-3)


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
    info = dataset_info(cfg)
    assert (info.num_classes, info.channels, info.mean) == (2, 3, data.IMAGENET_MEAN)


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
    with pytest.raises(FileNotFoundError, match="lacks 40 of the 100 imagenet100 class folders"):
        build_dataset(cfg, "train")
    for c in classes[60:]:
        write_png(tmp_path / "train" / c / "a.png", (1, 2, 3))
    ds = build_dataset(cfg, "train")
    assert len(ds) == 100 and ds.targets.tolist() == list(range(100)) and ds.classes == classes
    assert dataset_info(cfg).num_classes == 100


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing-folder"):
        build_dataset(DataConfig(name="imagenet", root=str(tmp_path / "missing-folder")), "train")
    (tmp_path / "train").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no images found in .*train"):
        build_dataset(DataConfig(name="imagenet", root=str(tmp_path)), "train")
    with pytest.raises(FileNotFoundError, match=r"val not found"):
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
    with pytest.raises(FileNotFoundError, match="nothing-here"):
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


# ---------------------------------------------------------------------------------------------- registry


def test_unknown_dataset_and_split():
    with pytest.raises(ValueError, match=r"unknown dataset data.name='mnist' \(valid: cifar10, cifar100"):
        build_dataset(DataConfig(name="mnist"), "train")
    with pytest.raises(ValueError, match=r"unknown dataset"):
        dataset_info("mnist")
    with pytest.raises(ValueError, match="dataset 'cifar10' has no split 'unlabeled'"):
        build_dataset(DataConfig(name="cifar10"), "unlabeled")
    assert dataset_info("stl10").channels == 3 and dataset_info("fashion_mnist").channels == 1


# ---------------------------------------------------------------------------------------------- subsets


def test_stratified_subset_is_round_robin_over_classes():
    targets = [2, 0, 0, 1, 0, 2, 0, 0, 1, 0]  # class 0: 6 images, class 1: 2, class 2: 2
    assert stratified_subset(targets, 3) == [0, 1, 3]  # first image of each class
    assert stratified_subset(targets, 6) == [0, 1, 2, 3, 5, 8]  # two of each
    # Classes 1 and 2 run out; the rest of the budget goes to class 0, in file order.
    assert stratified_subset(targets, 8) == [0, 1, 2, 3, 4, 5, 6, 8]
    assert stratified_subset(torch.tensor(targets), 8) == stratified_subset(np.array(targets), 8)
    with pytest.raises(ValueError, match="data.subset=11"):
        stratified_subset(targets, 11)
    with pytest.raises(ValueError, match="data.subset=0"):
        stratified_subset(targets, 0)


def test_subset_of_an_in_memory_dataset_keeps_train_and_not_test(tmp_path):
    labels = np.repeat(np.arange(10), 5).astype(np.uint8)
    images = RNG.integers(0, 256, size=(50, 28, 28), dtype=np.uint8)
    write_fashion_mnist(tmp_path, "train", images, labels)
    write_fashion_mnist(tmp_path, "t10k", images, labels)
    cfg = DataConfig(name="fashion_mnist", root=str(tmp_path), subset=20, download=False)
    sub = build_dataset(cfg, "train")
    assert len(sub) == 20 and torch.bincount(sub.targets).tolist() == [2] * 10
    expected = [i for i in range(50) if i % 5 < 2]
    assert torch.equal(sub.images[:, 0], torch.from_numpy(images[expected]))
    assert sub.images.is_contiguous()
    assert len(build_dataset(cfg, "test")) == 50


# ---------------------------------------------------------------------------------------------- multi-view


def noisy_views(image):
    return image.float() + torch.rand(image.shape)


def test_multiview_seeding_is_per_sample_epoch_and_order_independent():
    base = data.InMemoryImageDataset(torch.zeros(5, 1, 4, 4, dtype=torch.uint8), torch.arange(5))
    ds = MultiViewDataset(base, [noisy_views, noisy_views], seed=3)
    forward = [ds[i] for i in range(5)]
    backward = {i: ds[i] for i in reversed(range(5))}
    for i, (views, label) in enumerate(forward):
        assert label == i and len(views) == 2
        assert all(torch.equal(a, b) for a, b in zip(views, backward[i][0]))
        assert not torch.equal(views[0], views[1])  # each view draws its own randomness
    assert not torch.equal(forward[0][0][0], forward[1][0][0])

    other_seed = MultiViewDataset(base, [noisy_views], seed=4)
    assert not torch.equal(other_seed[0][0][0], forward[0][0][0])
    ds.set_epoch(1)
    assert not torch.equal(ds[0][0][0], forward[0][0][0])
    ds.set_epoch(0)
    assert torch.equal(ds[0][0][0], forward[0][0][0])


def test_multiview_leaves_the_global_rng_alone_and_works_with_workers():
    base = data.InMemoryImageDataset(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.arange(4))
    ds = MultiViewDataset(base, [noisy_views], seed=0)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ds[0]
    assert torch.equal(torch.rand(3), expected)

    in_process = torch.cat([b[0][0] for b in torch.utils.data.DataLoader(ds, batch_size=2)])
    with_workers = torch.cat([b[0][0] for b in torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2)])
    assert torch.equal(in_process, with_workers)
