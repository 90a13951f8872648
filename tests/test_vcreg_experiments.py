"""VCReg's long-tail (Table 3, Appendix C.3) and hierarchical (Table 5, Appendix C.2) experiments: the
long-tailed data sets, the ImageNet hierarchy subsets, the Fashion-MNIST groups, the subclass probe and short
runs of their configs through vcreg/train.py on data in the real formats, written here."""

from __future__ import annotations

import importlib.util
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from timm.data import ImageNetInfo

from common import sweep
from common.config import load_config
from common.data import DataConfig, build_dataset, dataset_info, imagenet_hierarchy, longtail_indices
from common.data.hierarchy import FASHION_MNIST_COARSE, IMAGENET_HIERARCHIES
from common.data.longtail import longtail_counts
from common.errors import ConfigError, DataError
from evaluation.linear import LinearProbeConfig, linear_probe, probe_optimizer
from tests.chance import accuracy_beyond_chance
from tests.eval_data import colour_image
from tests.trainer_runs import ROOT
from vcreg import train as vcreg_train

CIFAR10_LT_COUNTS = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]  # Cao et al.'s CIFAR-10-LT, ratio 100


def reference_selection(labels: np.ndarray, counts: list[int], seed: int) -> np.ndarray:
    """Cao et al.'s selection, as their CIFAR code does it: seed NumPy's global generator once, then for each
    class in label order shuffle its indices and keep the first ``counts[class]``."""
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        kept = []
        for c, count in zip(np.unique(labels), counts):
            indices = np.where(labels == c)[0]
            np.random.shuffle(indices)
            kept.append(indices[:count])
        return np.concatenate(kept)
    finally:
        np.random.set_state(state)


def balanced_labels(classes: int, per_class: int, seed: int = 0) -> np.ndarray:
    """``per_class`` labels of each class in a shuffled file order."""
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(classes), per_class))


# ------------------------------------------------------------------------------------------------ long tail


def test_longtail_profiles_match_cifar_lt():
    assert longtail_counts(5000, 10, 100) == CIFAR10_LT_COUNTS and sum(CIFAR10_LT_COUNTS) == 12406
    cifar100 = longtail_counts(500, 100, 100)
    assert cifar100[0] == 500 and cifar100[-1] == 5 and sum(cifar100) == 10847  # CIFAR-100-LT
    assert longtail_counts(500, 10, 10, profile="step") == [500] * 5 + [50] * 5
    with pytest.raises(ValueError, match="imbalance_ratio"):
        longtail_counts(500, 10, 0.5)


def test_cifar10_lt_selection_is_cao_et_al_and_seeded():
    labels = balanced_labels(10, 5000)  # CIFAR-10's training labels: 5000 per class
    indices = longtail_indices(torch.from_numpy(labels), 100).numpy()
    assert len(indices) == 12406
    assert np.bincount(labels[indices]).tolist() == CIFAR10_LT_COUNTS
    assert np.array_equal(indices, reference_selection(labels, CIFAR10_LT_COUNTS, seed=0))
    assert np.array_equal(longtail_indices(labels, 100, seed=0).numpy(), indices)  # same seed, same images
    other = longtail_indices(labels, 100, seed=1).numpy()
    assert np.bincount(labels[other]).tolist() == CIFAR10_LT_COUNTS
    assert np.array_equal(other, reference_selection(labels, CIFAR10_LT_COUNTS, seed=1))
    # another seed keeps other images of every class but the head, which keeps all of its 5000
    for c in range(1, 10):
        assert set(indices[labels[indices] == c]) != set(other[labels[other] == c])


def write_cifar(root: Path, name: str, per_class: int, test_per_class: int, seed: int = 0) -> np.ndarray:
    """CIFAR-10 (``cifar-10-batches-py``: five training batches and a test batch, 'labels') or CIFAR-100
    (``cifar-100-python``: train and test, 'fine_labels' and 'coarse_labels' = fine // 5) python pickles of
    random images, protocol 2 as the real files; returns the training labels in file order."""
    rng = np.random.default_rng(seed)
    classes = 10 if name == "cifar10" else 100
    train_labels = balanced_labels(classes, per_class, seed)
    test_labels = balanced_labels(classes, test_per_class, seed + 1)
    folder = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True)

    def dump(file: str, labels: np.ndarray) -> None:
        keys = ({"labels": labels.tolist()} if name == "cifar10"
                else {"fine_labels": labels.tolist(), "coarse_labels": (labels // 5).tolist()})
        data = rng.integers(0, 256, (len(labels), 3 * 32 * 32), dtype=np.uint8)
        with open(folder / file, "wb") as f:
            pickle.dump({"data": data, **keys}, f, protocol=2)

    if name == "cifar10":
        for i, part in enumerate(np.array_split(train_labels, 5), start=1):
            dump(f"data_batch_{i}", part)
        dump("test_batch", test_labels)
    else:
        dump("train", train_labels)
        dump("test", test_labels)
    return train_labels


def test_cifar_lt_data_sets_on_the_pickles(tmp_path):
    labels = write_cifar(tmp_path, "cifar10", per_class=60, test_per_class=3)
    cfg = DataConfig(name="cifar10_lt", root=str(tmp_path), download=False, imbalance_ratio=10)
    counts = longtail_counts(60, 10, 10)
    train = build_dataset(cfg, "train")
    assert torch.bincount(train.targets).tolist() == counts == [60, 46, 35, 27, 21, 16, 12, 10, 7, 6]
    balanced = build_dataset(DataConfig(name="cifar10", root=str(tmp_path), download=False), "train")
    reference = torch.from_numpy(reference_selection(labels, counts, seed=0))
    assert torch.equal(train.images, balanced.images[reference])  # Cao et al.'s images, in their order
    test = build_dataset(cfg, "test")
    assert torch.bincount(test.targets).tolist() == [3] * 10  # the test set stays balanced
    assert dataset_info(cfg).num_classes == 10
    step = build_dataset(DataConfig(name="cifar10_lt", root=str(tmp_path), download=False, imbalance_ratio=10,
                                    imbalance_profile="step"), "train")
    assert torch.bincount(step.targets).tolist() == [60] * 5 + [6] * 5

    write_cifar(tmp_path, "cifar100", per_class=10, test_per_class=1)
    cfg100 = DataConfig(name="cifar100_lt", root=str(tmp_path), download=False, imbalance_ratio=10)
    assert torch.bincount(build_dataset(cfg100, "train").targets).tolist() == longtail_counts(10, 100, 10)
    assert dataset_info(cfg100).num_classes == 100
    with pytest.raises(ConfigError, match="coarse"):  # the long tail is a profile over the 100 classes
        build_dataset(DataConfig(name="cifar100_lt", root=str(tmp_path), labels="coarse"), "train")
    with pytest.raises(ConfigError, match="coarse"):
        dataset_info(DataConfig(name="cifar10", labels="coarse"))


def write_balanced_fashion_mnist(root: Path, per_class: int) -> np.ndarray:
    """Fashion-MNIST IDX files (uncompressed) with ``per_class`` random images of each class; the labels."""
    labels = balanced_labels(10, per_class).astype(np.uint8)
    images = np.random.default_rng(2).integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "t10k"):
        (root / f"{split}-images-idx3-ubyte").write_bytes(
            bytes([0, 0, 8, 3]) + np.array([len(labels), 28, 28], ">u4").tobytes() + images.tobytes())
        (root / f"{split}-labels-idx1-ubyte").write_bytes(
            bytes([0, 0, 8, 1]) + np.array([len(labels)], ">u4").tobytes() + labels.tobytes())
    return labels


def test_fashion_mnist_long_tail_and_groups(tmp_path):
    labels = write_balanced_fashion_mnist(tmp_path, per_class=30)
    lt = DataConfig(name="fashion_mnist_lt", root=str(tmp_path), download=False, imbalance_ratio=10)
    train = build_dataset(lt, "train")
    assert torch.bincount(train.targets).tolist() == longtail_counts(30, 10, 10)
    assert torch.bincount(build_dataset(lt, "test").targets).tolist() == [30] * 10
    # the groups: tops {T-shirt/top 0, Pullover 2, Coat 4, Shirt 6, Dress 3}, footwear {Sandal 5, Sneaker 7,
    # Ankle boot 9}, {Trouser 1}, {Bag 8}
    assert FASHION_MNIST_COARSE.tolist() == [0, 2, 0, 0, 0, 1, 0, 1, 3, 1]
    coarse_cfg = DataConfig(name="fashion_mnist", root=str(tmp_path), download=False, labels="coarse")
    fine = build_dataset(DataConfig(name="fashion_mnist", root=str(tmp_path), download=False), "train")
    coarse = build_dataset(coarse_cfg, "train")
    assert fine.targets.tolist() == labels.tolist()
    assert torch.equal(coarse.images, fine.images)
    assert torch.equal(coarse.targets, FASHION_MNIST_COARSE[fine.targets])
    assert torch.bincount(coarse.targets).tolist() == [150, 90, 30, 30]
    assert dataset_info(coarse_cfg).num_classes == 4
    with pytest.raises(ConfigError, match="coarse"):
        build_dataset(DataConfig(name="fashion_mnist_lt", root=str(tmp_path), labels="coarse"), "train")


# ------------------------------------------------------------------------------------------------ hierarchy

# Table 5: superclasses / subclasses of each ImageNet subset
PUBLISHED_SIZES = {"living_9": (9, 72), "mixed_10": (10, 60), "mixed_13": (13, 78), "geirhos_16": (16, 32),
                   "big_12": (12, 240)}


def test_imagenet_subsets_have_the_published_sizes():
    imagenet = set(ImageNetInfo().label_names())  # the 1000 ImageNet-1k WordNet ids
    assert tuple(PUBLISHED_SIZES) == IMAGENET_HIERARCHIES
    for name, (superclasses, subclasses) in PUBLISHED_SIZES.items():
        hierarchy = imagenet_hierarchy(name)
        assert len(hierarchy.superclasses) == superclasses and len(hierarchy.fine_classes) == subclasses
        assert len(set(hierarchy.fine_classes)) == subclasses and set(hierarchy.fine_classes) <= imagenet
        assert {len(group) for group in hierarchy.subclasses} == {subclasses // superclasses}  # balanced
        assert not set(hierarchy.superclasses) & imagenet  # superclasses are inner WordNet nodes
        assert all(list(group) == sorted(group) for group in hierarchy.subclasses)
        for labels, expected in (("coarse", superclasses), ("fine", subclasses)):
            assert dataset_info(DataConfig(name="imagenet_hierarchy", hierarchy=name, labels=labels)).num_classes \
                == expected
    assert imagenet_hierarchy("living_9").names[0].startswith("dog")


def load_derivation_script():
    path = ROOT / "scripts" / "derive_imagenet_hierarchies.py"
    spec = importlib.util.spec_from_file_location("derive_imagenet_hierarchies", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_derivation_keeps_the_last_parent_and_class_order(tmp_path):
    script = load_derivation_script()
    assert script.SUPERCLASSES.keys() == set(IMAGENET_HIERARCHIES)
    for name, superclasses in script.SUPERCLASSES.items():
        assert list(imagenet_hierarchy(name).superclasses) == superclasses
    # "a" is listed under "x" first and under "y" last: the tree keeps "y", as the robustness library does
    is_a = tmp_path / "is_a.txt"
    is_a.write_text("root x\nroot y\nx a\ny b\ny a\nx c\n")
    parents = script.read_parents(is_a)
    assert parents == {"x": "root", "y": "root", "a": "y", "b": "y", "c": "x"}
    assert script.classes_below(parents, ["a", "b", "c"]) == {"y": ["a", "b"], "root": ["a", "b", "c"], "x": ["c"]}


def write_imagenet_folder(root: Path, wnids: list[str], per_class: dict[str, int]) -> None:
    """root/<split>/<wnid>/<wnid>_<i>.JPEG, ImageNet's layout, with class-coded images."""
    rng = np.random.default_rng(3)
    for split, count in per_class.items():
        for c, wnid in enumerate(wnids):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(count):
                colour_image(c, rng, size=(24, 24)).save(folder / f"{wnid}_{i}.JPEG")


def test_imagenet_hierarchy_relabels_an_imagenet_folder(tmp_path):
    hierarchy = imagenet_hierarchy("geirhos_16")
    others = ["n01440764", "n15075141"]  # ImageNet classes outside the subset (tench, toilet tissue)
    write_imagenet_folder(tmp_path, hierarchy.fine_classes + others, {"train": 2, "val": 1})
    superclass_of = {wnid: s for s, group in enumerate(hierarchy.subclasses) for wnid in group}
    for split, per_class in (("train", 2), ("test", 1)):
        fine = build_dataset(DataConfig(name="imagenet_hierarchy", root=str(tmp_path), hierarchy="geirhos_16"),
                             split)
        coarse = build_dataset(DataConfig(name="imagenet_hierarchy", root=str(tmp_path), hierarchy="geirhos_16",
                                          labels="coarse"), split)
        assert len(fine) == len(coarse) == 32 * per_class and fine.files == coarse.files
        for path, fine_label, coarse_label in zip(fine.files, fine.targets.tolist(), coarse.targets.tolist()):
            wnid = path.parent.name
            assert wnid not in others and path.name.startswith(wnid)
            assert fine_label == hierarchy.fine_classes.index(wnid)
            assert coarse_label == superclass_of[wnid]
        assert torch.bincount(coarse.targets).tolist() == [2 * per_class] * 16
    missing = tmp_path / "missing"
    write_imagenet_folder(missing, hierarchy.fine_classes[:-3], {"train": 1, "val": 1})
    with pytest.raises(DataError, match="lacks 3 of the 32 imagenet_hierarchy class folders"):
        build_dataset(DataConfig(name="imagenet_hierarchy", root=str(missing), hierarchy="geirhos_16"), "train")


# ------------------------------------------------------------------------------------------------ the probe


def test_subclass_probe_is_appendix_c2_adamw_and_learns():
    probe = vcreg_train.SubclassProbeConfig(enabled=True)
    cfg = LinearProbeConfig(epochs=probe.epochs, batch_size=probe.batch_size, optimizer=probe.optimizer,
                            lr=probe.lr, weight_decay=probe.weight_decay, standardize=probe.standardize)
    optimizer = probe_optimizer(torch.nn.Linear(8, 4), cfg)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [(g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == [(0.016, 0.05), (0.016, 0.0)]
    assert (cfg.epochs, cfg.batch_size, cfg.schedule) == (100, 256, "cosine")
    # four Gaussian classes 8 standard deviations apart along their own axes: linearly separable in practice
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(1200) % 4
    features = torch.randn(1200, 16, generator=generator) + 8 * torch.eye(16)[labels]
    cfg.epochs = 10
    accuracy = linear_probe(features[:800], labels[:800], features[800:], labels[800:], cfg)["top1"]
    assert accuracy >= accuracy_beyond_chance(400, 4)


# ------------------------------------------------------------------------------------------------ configs

CONFIGS = ROOT / "vcreg" / "configs"


@pytest.mark.parametrize("name", ["cifar10_lt", "cifar100_lt"])
@pytest.mark.parametrize("variant", ["supervised", "vcreg"])
def test_long_tail_configs_follow_appendix_c3(name, variant):
    cfg = load_config(vcreg_train.VCRegTrainConfig, ["--config", str(CONFIGS / f"{name}_resnet32_{variant}.yaml")])
    assert (cfg.data.name, cfg.data.imbalance_ratio, cfg.data.imbalance_profile) == (name, 100, "exp")
    assert (cfg.backbone.name, cfg.epochs, cfg.batch_size, cfg.method.name) == ("resnet32", 100, 256, "supervised")
    optim = cfg.optim
    assert (optim.name, optim.lr, optim.lr_scaling, optim.warmup_epochs, optim.schedule) == \
        ("adam", 0.016, "none", 10, "warmup_cosine")
    assert (optim.weight_decay, optim.exclude_bias_and_norm) == (0.05, True)
    assert cfg.vcreg.enabled == (variant == "vcreg")
    expanded = sweep.expand(CONFIGS / f"{name}_resnet32_vcreg_sweep.yaml")
    assert len(expanded.runs) == 2 * 4 * 5  # C.3: lr {0.016, 0.008} x alpha x beta
    assert expanded.runs[-1].name == "lr0.008_a0.16_b0.01"
    sweep.validate(expanded)


@pytest.mark.parametrize("name", IMAGENET_HIERARCHIES)
@pytest.mark.parametrize("variant", ["supervised", "vcreg"])
def test_hierarchy_configs_follow_appendix_c2(name, variant):
    cfg = load_config(vcreg_train.VCRegTrainConfig,
                      ["--config", str(CONFIGS / f"imagenet_{name}_convnext_atto_{variant}.yaml")])
    assert (cfg.data.name, cfg.data.hierarchy, cfg.data.labels) == ("imagenet_hierarchy", name, "coarse")
    assert (cfg.backbone.name, cfg.epochs, cfg.batch_size, cfg.optim.name, cfg.optim.lr) == \
        ("timm:convnext_atto", 200, 4096, "adamw", 0.016)
    assert cfg.subclass_probe == vcreg_train.SubclassProbeConfig(enabled=True)  # C.2's probe
    assert cfg.vcreg.enabled == (variant == "vcreg")


# ------------------------------------------------------------------------------------------------ runs

RUN_SETTINGS = ["max_steps=2", "batch_size=32", "progress_bar=false", "tracker=none", "data.num_workers=0",
                "eval.max_train_images=64", "eval.batch_size=64", "eval.linear_epochs=1", "eval.knn_k=[5]"]


def run_config(config: str, out: Path, *overrides: str) -> dict:
    code = vcreg_train.main(["--config", f"vcreg/configs/{config}", f"output_dir={out}", *RUN_SETTINGS,
                             *overrides])
    assert code == 0
    saved = (out / "config.yaml").read_text()
    assert "resnet32" in saved or "convnext_atto" in saved
    return json.loads((out / "results.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("config", ["cifar10_lt_resnet32_vcreg.yaml", "cifar100_lt_resnet32_supervised.yaml"])
def test_long_tail_configs_run(tmp_path, config):
    write_cifar(tmp_path / "data", config.split("_")[0], per_class=100, test_per_class=2)
    results = run_config(config, tmp_path / "run", f"data.root={tmp_path / 'data'}", "data.download=false")
    assert 0.0 <= results["test_top1"] <= 1.0 and math.isfinite(results["cdnv"])


@pytest.mark.slow
def test_hierarchy_config_runs_and_probes_the_subclasses(tmp_path, monkeypatch):
    hierarchy = imagenet_hierarchy("geirhos_16")
    write_imagenet_folder(tmp_path / "imagenet", hierarchy.fine_classes + ["n01440764"], {"train": 2, "val": 1})
    probes = []

    def recording_probe(train_x, train_y, test_x, test_y, cfg, **kwargs):
        probes.append((train_y, test_y, cfg, kwargs["num_classes"]))
        return linear_probe(train_x, train_y, test_x, test_y, cfg, **kwargs)

    monkeypatch.setattr(vcreg_train, "linear_probe", recording_probe)
    results = run_config("imagenet_geirhos_16_convnext_atto_vcreg.yaml", tmp_path / "run",
                         f"data.root={tmp_path / 'imagenet'}", "mixed_precision=no", "augment.image_size=32",
                         "subclass_probe.epochs=2")
    assert 0.0 <= results["subclass_linear_top1"] <= 1.0 and 0.0 <= results["test_top1"] <= 1.0
    (train_y, test_y, cfg, num_classes), = probes  # the subclass probe, once, on the 32 fine labels
    assert num_classes == 32 and sorted(set(test_y.tolist())) == list(range(32))
    assert torch.bincount(train_y).tolist() == [2] * 32
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.schedule) == ("adamw", 0.016, 0.05, 256,
                                                                                        "cosine")


def test_subclass_probe_and_imbalance_ratio_input_errors(tmp_path, capsys):
    write_cifar(tmp_path / "data", "cifar10", per_class=10, test_per_class=1)
    common = ["--config", "vcreg/configs/cifar10_lt_resnet32_supervised.yaml", f"output_dir={tmp_path / 'run'}",
              f"data.root={tmp_path / 'data'}", "data.download=false", "tracker=none", "progress_bar=false"]
    assert vcreg_train.main([*common, "subclass_probe.enabled=true"]) == 2
    assert "subclass_probe.enabled needs data.labels=coarse" in capsys.readouterr().err
    assert vcreg_train.main([*common, "data.imbalance_ratio=0.5"]) == 2
    assert "data.imbalance_ratio" in capsys.readouterr().err
