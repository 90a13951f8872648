"""Transfer probes on frozen features (VCReg Appendix C.1, MSBReg supplement 2.4).

Two protocols, both on features extracted once without augmentation:

- ``lbfgs`` (Kornblith et al., 2019/2021; SimCLR): bicubic resize of the short side to 224, 224 centre
  crop; L2-regularised multinomial logistic regression fitted with L-BFGS (``evaluation.logistic``); the
  strength chosen among 45 log-spaced values in [1e-5, 1e5] by the validation score, refitted on
  train + validation, reported on test. The score is the one those papers report for the data set
  (``evaluation.transfer_datasets``): mean per-class accuracy for FGVC Aircraft, Oxford-IIIT Pets,
  Caltech-101 and Flowers-102, top-1 for the others; the results name it (``metric`` and a key of that
  name; ``top1`` is always there too). The validation split is the dataset's own where it has one
  (FGVC Aircraft, Flowers-102, DTD), else a stratified ``val_fraction`` of the training split.
- ``sgd`` (Places205 and iNaturalist 2018, after Zbontar et al. / Goyal et al.): a linear classifier
  trained with SGD, batch 256, lr 0.2, momentum 0.9, weight decay 1e-4, lr x0.1 twice at equal
  intervals, 28 epochs (Places205) or 84 (iNaturalist 2018). The reference protocol augments the
  training images (random crops and flips); here the classifier trains on cached centre-crop features.

Datasets: Kornblith et al.'s list as torchvision provides it (``evaluation.transfer_datasets``: food101,
cifar10, cifar100, sun397, stanford_cars, fgvc_aircraft, dtd, oxford_pets, caltech101, flowers102; files
under ``root``, ``download=true`` fetches them where that is possible), and through ``common.data``:
``image_folder`` / ``hf`` (``data.*``, top-1), ``places205`` and ``inat18`` (image folders with
``data.train_split`` / ``data.test_split`` subfolders of class folders).

Command line: ``python -m evaluation.transfer --checkpoint PATH dataset=dtd root=/data``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor
from torchvision.transforms import v2

from common.config_types import NonNegativeInt, PositiveInt
from common.data import IMAGENET_MEAN, IMAGENET_STD, DataConfig, build_dataset
from common.errors import ConfigError
from common.plots import new_figure, save_figure
from evaluation.cli import load_eval_backbone, resolve_device, run_protocol
from evaluation.features import extract_features
from evaluation.labelled import check_classes
from evaluation.linear import LinearProbeConfig, linear_probe
from evaluation.logistic import default_l2_grid, select_and_refit
from evaluation.metrics import METRICS, TOP1
from evaluation.splits import stratified_fraction
from evaluation.transfer_datasets import TRANSFER_DATASETS, SplitRequest

SGD_EPOCHS = {"places205": 28, "inat18": 84}
FOLDER_DATASETS = ("image_folder", "hf", *SGD_EPOCHS)


def sgd_protocol() -> LinearProbeConfig:
    """The Places205 / iNaturalist 2018 linear protocol (epochs set per dataset)."""
    return LinearProbeConfig(epochs=28, batch_size=256, optimizer="sgd", lr=0.2, momentum=0.9, weight_decay=1e-4,
                             schedule="step", milestones=[1 / 3, 2 / 3], gamma=0.1, standardize=False)


@dataclass
class TransferConfig:
    checkpoint: str = ""  # required: a run folder, backbone.safetensors, checkpoint folder or model name (resnet50)
    dataset: str = "dtd"           # a name of evaluation.transfer_datasets, image_folder, hf, places205 or inat18
    root: str = "data"             # where the Kornblith data sets are (torchvision's layout)
    download: bool = False         # fetch a missing Kornblith data set into root (torchvision)
    split_seed: int = 0            # caltech101: which 30 images per class train (no published list)
    data: DataConfig = field(default_factory=lambda: DataConfig(name="image_folder"))  # folder datasets
    protocol: Literal["auto", "lbfgs", "sgd"] = "auto"         # auto (sgd for places205 / inat18, else lbfgs) | lbfgs | sgd
    image_size: int = 224          # bicubic resize of the short side, then a centre crop of this size
    val_fraction: float = 0.2      # held out of train when the dataset has no validation split
    l2_grid: list[float] | None = None  # None: 45 log-spaced values in [1e-5, 1e5]
    max_iter: PositiveInt = 1000   # L-BFGS iterations per fit
    sgd: LinearProbeConfig = field(default_factory=sgd_protocol)
    sgd_epochs: PositiveInt | None = None  # None: 28 for places205, 84 for inat18, else sgd.epochs
    batch_size: PositiveInt = 256  # feature extraction batch
    num_workers: NonNegativeInt = 8  # DataLoader worker processes (0: load in this process)
    seed: int = 0                  # the validation hold-out and the SGD protocol's data order
    device: str = "auto"  # auto: cuda when available, else cpu | cpu | cuda | cuda:N
    output: str | None = None  # the JSON result; None: eval_<protocol>[_<dataset>].json by the checkpoint
    overwrite: bool = False  # replace the result file at output if it exists
    progress_bar: bool = True      # tqdm bars for the extraction and the fits (like the trainer's)


def kornblith_transform(size: int = 224) -> v2.Compose:
    """Bicubic resize of the short side to ``size``, centre crop, RGB in [0, 1] normalised with ImageNet stats."""
    return v2.Compose([v2.ToImage(), v2.RGB(), v2.Resize(size, interpolation=v2.InterpolationMode.BICUBIC,
                                                         antialias=True),
                       v2.CenterCrop(size), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def _splits(cfg: TransferConfig) -> tuple[object, object | None, object]:
    """(train, validation or None, test) datasets of ``(image, label)``."""
    if cfg.dataset in TRANSFER_DATASETS:
        return TRANSFER_DATASETS[cfg.dataset].load(SplitRequest(cfg.root, cfg.download, cfg.split_seed))
    data = cfg.data if cfg.dataset in ("image_folder", "hf") else DataConfig(
        **{**cfg.data.__dict__, "name": "image_folder"})
    return build_dataset(data, "train"), None, build_dataset(data, "test")


def _hold_out(x: Tensor, y: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    val = stratified_fraction(y, fraction, seed)
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[val] = False
    return x[keep], y[keep], x[val], y[val]


def transfer(cfg: TransferConfig) -> dict:
    protocol = cfg.protocol if cfg.protocol != "auto" else ("sgd" if cfg.dataset in SGD_EPOCHS else "lbfgs")
    if cfg.dataset not in TRANSFER_DATASETS and cfg.dataset not in FOLDER_DATASETS:
        raise ConfigError(f"unknown transfer dataset '{cfg.dataset}' (valid: "
                          f"{', '.join([*TRANSFER_DATASETS, *FOLDER_DATASETS])})")
    metric = TRANSFER_DATASETS[cfg.dataset].metric if cfg.dataset in TRANSFER_DATASETS else TOP1
    device = resolve_device(cfg.device)
    backbone, _, in_chans = load_eval_backbone(cfg.checkpoint)
    if in_chans != 3:
        raise ConfigError(f"transfer datasets are RGB but the backbone takes {in_chans} input channels")
    backbone.to(device)
    transform = kornblith_transform(cfg.image_size)
    train_set, val_set, test_set = _splits(cfg)

    def features(dataset):
        return extract_features(backbone, dataset, transform, cfg.batch_size, device, cfg.num_workers,
                                progress=cfg.progress_bar)

    train_x, train_y = features(train_set)
    check_classes(train_y, cfg.dataset)
    test_x, test_y = features(test_set)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    if protocol == "sgd":
        probe = LinearProbeConfig(**{**cfg.sgd.__dict__,
                                     "epochs": cfg.sgd_epochs or SGD_EPOCHS.get(cfg.dataset, cfg.sgd.epochs)})
        accuracy = linear_probe(train_x, train_y, test_x, test_y, probe, num_classes, device, cfg.seed,
                                cfg.progress_bar)
        return {"protocol": "sgd", "metric": TOP1, "top1": accuracy["top1"], "top5": accuracy["top5"],
                "epochs": probe.epochs}
    if val_set is not None:
        val_x, val_y = features(val_set)
    else:
        train_x, train_y, val_x, val_y = _hold_out(train_x, train_y, cfg.val_fraction, cfg.seed)
    grid = cfg.l2_grid if cfg.l2_grid is not None else default_l2_grid()
    selection = select_and_refit(*(t.to(device) for t in (train_x, train_y, val_x, val_y)), num_classes,
                                 grid, cfg.max_iter, METRICS[metric], cfg.progress_bar)
    predictions = selection.model.predict(test_x.to(device))
    scores = {name: METRICS[name](predictions, test_y) for name in dict.fromkeys([metric, TOP1])}
    return {"protocol": "lbfgs", "metric": metric, **scores, "l2": selection.l2,
            f"best_val_{metric}": max(selection.val_scores),
            f"val_{metric}_by_l2": dict(zip(map(str, selection.grid), selection.val_scores)),
            "num_train": len(train_y), "num_val": len(val_y), "num_test": len(test_y)}


def plot_l2_selection(results: dict, path: Path) -> None:
    """The validation score against the L2 strength (log scale), the chosen strength marked (L-BFGS)."""
    if results.get("protocol") != "lbfgs":
        return
    metric = results["metric"]
    strengths = sorted((float(k), v) for k, v in results[f"val_{metric}_by_l2"].items())
    figure, axis = new_figure(figsize=(5, 3.2))
    axis.semilogx([s for s, _ in strengths], [v for _, v in strengths], marker=".")
    axis.axvline(results["l2"], color="tab:red", linestyle="--", label=f"chosen l2={results['l2']:.3g}")
    axis.set_xlabel("L2 strength (lambda)")
    axis.set_ylabel(f"validation {metric}")
    axis.set_title(f"L-BFGS probe: test {metric} {results[metric]:.3f}")
    axis.legend()
    save_figure(figure, path)


def main(argv: list[str] | None = None) -> int:
    return run_protocol(TransferConfig, transfer, argv, protocol="transfer", plot=plot_l2_selection)


if __name__ == "__main__":
    sys.exit(main())
