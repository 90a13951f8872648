"""The in-memory formats (CIFAR pickles, STL-10 binaries, Fashion-MNIST IDX) on files written here."""

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from common.data import (
    DataConfig,
    build_dataset,
    dataset_info,
    fashion_mnist,
)
from common.errors import DataError

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def no_system_fashion_mnist(monkeypatch):
    """Tests see only the files they write, never Debian's copy (except the test that asks for it)."""
    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_SYSTEM_DIRS", ())


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
    with pytest.raises(DataError, match="cifar-10-batches-py.*data_batch_1"):
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
    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_SYSTEM_DIRS", (system,))
    ds = build_dataset(DataConfig(name="fashion_mnist", root=str(tmp_path / "empty"), download=False), "test")
    assert ds.targets.tolist() == [5, 6]


def test_fashion_mnist_errors(tmp_path):
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        build_dataset(DataConfig(name="fashion_mnist", root=str(tmp_path), download=False), "test")
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x0d\x03" + bytes(12))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + struct.pack(">I", 0))
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte is not an IDX file"):
        build_dataset(DataConfig(name="fashion_mnist", root=str(tmp_path), download=False), "test")


def test_real_debian_fashion_mnist(monkeypatch):
    system = Path("/usr/share/datasets/fashion-mnist")
    if not (system / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_SYSTEM_DIRS", (system,))
    cfg = DataConfig(name="fashion_mnist", root="/nonexistent", download=False)
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.targets).tolist() == [6000] * 10
    assert torch.bincount(test.targets).tolist() == [1000] * 10
    info = dataset_info(cfg)
    # Exact integer sums; the constants are rounded to 4 decimals, so they are within 5e-5 of the truth.
    pixels = train.images.numpy().astype(np.int64)
    mean = pixels.sum() / pixels.size / 255
    std = np.sqrt((pixels * pixels).sum() / pixels.size / 255**2 - mean**2)
    assert mean == pytest.approx(info.mean[0], abs=5e-5) and std == pytest.approx(info.std[0], abs=5e-5)



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
