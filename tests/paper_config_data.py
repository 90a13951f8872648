"""Small synthetic data sets in each loader's real on-disk format, for running a paper config end to end.

Every image is noise with a bright square whose position and colour depend on its class, so that features of
different classes differ and a classifier or k-NN has something to find. ``write_dataset(name, root, ...)``
writes what ``common.data``'s loader for ``data.name == name`` reads from ``data.root == root``:

- cifar10: ``cifar-10-batches-py/data_batch_{1..5}``, ``test_batch`` (python pickles, 'data' uint8 [N, 3072]
  R, G, B planes, 'labels');
- cifar100: ``cifar-100-python/train``, ``test`` ('fine_labels' and 'coarse_labels', coarse = fine // 5);
- stl10: ``stl10_binary/{train,test,unlabeled}_X.bin`` (uint8 [N, 3, 96, 96], each channel column-major) and
  ``{train,test}_y.bin`` (labels 1..10);
- fashion_mnist: IDX files (``tests/trainer_runs.write_idx_fashion_mnist``);
- imagenet, imagenet100: ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``; the class folders are real WordNet
  ids (imagenet100's full list of 100 folders, ``common/data/imagenet100_classes.txt``; imagenet takes its
  first classes); only the first ``num_classes`` folders hold images (the loader accepts empty class folders);
- image_folder: the same layout with five folders ``class_0`` .. ``class_4``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from common.data import imagenet100_classes
from common.data.hierarchy import imagenet_hierarchy
from tests.trainer_runs import write_idx_fashion_mnist


def class_images(n: int, size: int, channels: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8 [n, channels, size, size], int labels [n])``: balanced labels in turn, noise in [0, 60) and a
    square of side size/4 at a class position, in a class colour."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    images = rng.integers(0, 60, (n, channels, size, size), dtype=np.uint8)
    side = max(2, size // 4)
    cells = max(1, (size - side) // side)
    for i, label in enumerate(labels):
        row, col = (label // cells) % cells * side, label % cells * side
        colour = 120 + 135 * ((label >> np.arange(channels)) & 1)
        images[i, :, row:row + side, col:col + side] = colour[:, None, None].astype(np.uint8)
    return images, labels


def write_cifar10(root: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = class_images(n_train, 32, 3, 10, seed)
    for batch, rows in enumerate(np.array_split(np.arange(n_train), 5), start=1):
        _pickle(folder / f"data_batch_{batch}", {"data": images[rows].reshape(len(rows), -1),
                                                 "labels": labels[rows].tolist()})
    images, labels = class_images(n_test, 32, 3, 10, seed + 1)
    _pickle(folder / "test_batch", {"data": images.reshape(n_test, -1), "labels": labels.tolist()})


def write_cifar100(root: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, offset in (("train", n_train, 0), ("test", n_test, 1)):
        images, labels = class_images(n, 32, 3, 100, seed + offset)
        _pickle(folder / split, {"data": images.reshape(n, -1), "fine_labels": labels.tolist(),
                                 "coarse_labels": (labels // 5).tolist()})


def write_stl10(root: Path, n_train: int, n_test: int, n_unlabeled: int, seed: int = 0) -> None:
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, offset in (("train", n_train, 0), ("test", n_test, 1), ("unlabeled", n_unlabeled, 2)):
        images, labels = class_images(n, 96, 3, 10, seed + offset)
        # the files store each channel column-major: [N, 3, W, H]
        (folder / f"{split}_X.bin").write_bytes(np.ascontiguousarray(images.transpose(0, 1, 3, 2)).tobytes())
        if split != "unlabeled":
            (folder / f"{split}_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())


def write_imagenet_folder(root: Path, classes: list[str], num_classes: int, per_class_train: int,
                          per_class_test: int, size: int, seed: int = 0) -> None:
    """``root/train/<class>/*.JPEG`` and ``root/val/<class>/*.JPEG`` for every class of ``classes``; the first
    ``num_classes`` of them hold images."""
    for split, per_class, offset in (("train", per_class_train, 0), ("val", per_class_test, 1)):
        images, labels = class_images(per_class * num_classes, size, 3, num_classes, seed + offset)
        for name in classes:
            (root / split / name).mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(zip(images, labels)):
            path = root / split / classes[label] / f"{classes[label]}_{i:05d}.JPEG"
            Image.fromarray(image.transpose(1, 2, 0)).save(path, quality=90)


def write_dataset(data, root: Path, n_train: int, n_test: int, image_size: int = 64) -> Path:
    """Write the synthetic data set ``data`` (a ``DataConfig``) names under ``root`` (the ``data.root`` to use)
    with at least ``n_train`` training and ``n_test`` test images; folder data sets get ``image_size`` px JPEGs.
    A long-tailed set gets 100 images in every class of its balanced source, so that its tail class (1/100 of
    the head at ratio 100) keeps an image."""
    root.mkdir(parents=True, exist_ok=True)
    name = data.name
    if name.endswith("_lt"):
        name = name.removesuffix("_lt")
        n_train = max(n_train, int(data.imbalance_ratio) * (100 if name == "cifar100" else 10))
    if name == "cifar10":
        write_cifar10(root, n_train, n_test)
    elif name == "cifar100":
        write_cifar100(root, n_train, n_test)
    elif name == "stl10":
        write_stl10(root, n_train, n_test, n_unlabeled=n_train)
    elif name == "fashion_mnist":
        write_idx_fashion_mnist(root, n_train=n_train, n_test=n_test)
    elif name in ("imagenet", "imagenet100"):
        wnids = imagenet100_classes()
        classes = wnids if name == "imagenet100" else sorted(wnids)[:10]
        num_classes = 10
        write_imagenet_folder(root, classes, num_classes, -(-n_train // num_classes), -(-n_test // num_classes),
                              image_size)
    elif name == "image_folder":  # any folder of class subfolders: five classes, as VCReg's Table 2 split
        classes = [f"class_{i}" for i in range(5)]
        write_imagenet_folder(root, classes, len(classes), -(-n_train // len(classes)), -(-n_test // len(classes)),
                              image_size)
    elif name == "imagenet_hierarchy":  # every class of the subset holds images (its superclasses need them all)
        classes = imagenet_hierarchy(data.hierarchy).fine_classes
        write_imagenet_folder(root, classes, len(classes), max(1, -(-n_train // len(classes))),
                              max(1, -(-n_test // len(classes))), image_size)
    else:
        raise ValueError(f"no synthetic writer for data.name='{data.name}': add one to tests/paper_config_data.py")
    return root


def _pickle(path: Path, content: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(content, f)
