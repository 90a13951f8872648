"""Every run states what it trains on before its first step: the log and <output_dir>/data.json."""

import json

import numpy as np
import pytest
from trainer_runs import FMNIST, run, write_idx_fashion_mnist

from common.augment import AugmentConfig
from common.data import DataConfig, build_dataset, dataset_info
from common.data_summary import data_summary

SCRIPT = "stochcon/train.py"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_idx_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=512, n_test=128)


def train_labels(root) -> np.ndarray:
    return np.frombuffer((root / "train-labels-idx1-ubyte").read_bytes()[8:], dtype=np.uint8)


def one_step(root, out, *extra):
    return [f"output_dir={out}", f"data.root={root}", "data.num_workers=0", "max_steps=1", "batch_size=32",
            "backbone.width=4", "method.projector=[32,16]", "progress_bar=false", "tracker=none",
            "eval.linear=false", "eval.knn_k=[5]", *extra]


@pytest.mark.slow
def test_a_long_tailed_run_states_its_images_and_per_class_counts(data_root, tmp_path):
    out = tmp_path / "lt"
    done = run(SCRIPT, one_step(data_root, out, "data.name=fashion_mnist_lt", "data.imbalance_ratio=10"))
    assert done.returncode == 0, done.stderr[-2000:]
    # Cao et al.'s exponential profile: class i keeps int(n_min * (1/10) ** (i / 9)) images, n_min the smallest
    # class of the balanced set (the synthetic one has random labels)
    n_min = np.bincount(train_labels(data_root), minlength=10).min()
    expected = [int(n_min * 0.1 ** (i / 9)) for i in range(10)]
    summary = json.loads((out / "data.json").read_text())
    assert summary["dataset"] == "fashion_mnist_lt" and summary["root"] == str(data_root.resolve())
    assert summary["per_class_train_images"] == expected
    assert summary["images"] == {"train": sum(expected), "test": 128}
    assert summary["classes"] == 10 and summary["channels"] == 1 and summary["image_size"] == 28
    assert summary["mean"] == [0.2860] and summary["views"] == {"global": 2, "global_size": 28}
    assert "long tail: imbalance ratio 10" in summary["derived"][0]
    # the log says it before the first step's output, with the same numbers
    assert f"train {sum(expected)}, test 128 images" in done.stdout
    assert ", ".join(map(str, expected)) in done.stdout


@pytest.mark.slow
def test_a_subset_run_states_its_counts(data_root, tmp_path):
    out = tmp_path / "subset"
    done = run(SCRIPT, one_step(data_root, out, "data.subset=100"))
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "data.json").read_text())
    counts = summary["per_class_train_images"]
    assert summary["images"]["train"] == 100 == sum(counts)
    # stratified: round robin over the classes, every synthetic class has more than 10 images
    assert counts == [10] * 10
    assert summary["derived"] == ["stratified subset of the first 100 images"]


def test_coarse_labels_and_an_unchanged_set():
    # Fashion-MNIST's four coarse groups, from the Debian files: the summary counts the relabelled classes
    cfg = DataConfig(name="fashion_mnist", root=str(FMNIST), labels="coarse")
    summary = data_summary(cfg, "train", build_dataset(cfg, "train"), dataset_info(cfg), AugmentConfig(), 1)
    # tops (5 classes), footwear (3), trouser (1), bag (1): 6,000 images each in the balanced set
    assert summary["per_class_train_images"] == [30_000, 18_000, 6_000, 6_000]
    assert summary["derived"] == ["coarse labels (superclasses)"]
    plain = DataConfig(name="fashion_mnist", root=str(FMNIST))
    assert data_summary(plain, "train", build_dataset(plain, "train"), dataset_info(plain), AugmentConfig(),
                        1)["derived"] == []
