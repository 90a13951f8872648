"""Throughput of the whole trainer (data loading and augmentation included) against the step alone.

The trainer of a config (``common.trainer.Trainer``, as ``stochcon/train.py`` builds it: method, online probe,
LARS, the learning-rate schedule) is set up once per input pipeline, and three loops of ``--steps`` steps are
timed in interleaved rounds:

- ``trainer``: what a training run does, ``BatchStream.epoch`` (read, augment, move to the device) feeding
  ``Trainer._train_step``; a fresh epoch each round, so loader workers start as they do every epoch;
- ``step``: ``Trainer._train_step`` alone on one batch drawn beforehand;
- ``data``: the batch stream alone (the input pipeline's images/s; per worker for ``augment.on=loader``).

``trainer / step`` near 1 means the input pipeline is not the bottleneck. Pipelines: batched augmentation on
the training device (``augment.on=device``, the default of the Fashion-MNIST configs) and per-image torchvision
transforms in loader workers (``augment.on=loader``, ``data.num_workers`` 0, 1, 2).

``--jpeg N`` trains on N synthetic 500 x 375 px JPEG files instead (``data.name=image_folder``, two classes,
written to a temporary folder as ``bench/augment.py`` writes them), as on ImageNet. Its pipelines: ``loader_*``
(decode and the whole per-image pipeline in the workers), ``device_*`` (workers decode and crop, the device does
the rest: ``augment.on=device``) and, on a GPU, ``gpu_decode_*`` (workers read the files, nvJPEG decodes on the
device: ``augment.decode=gpu``). The trainer runs where accelerate puts it; ``--device cuda`` insists on a GPU
and synchronises it before reading the clock, ``--device cpu`` hides any GPU.

    python bench/trainer_throughput.py                    # the quickstart's SimCLR on Fashion-MNIST
    python bench/trainer_throughput.py --config stochcon/configs/fashion_mnist_bernoulli.yaml --workers 2
    python bench/trainer_throughput.py --jpeg 256 --workers 1 2 augment.image_size=64 batch_size=32
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench.augment import write_jpegs
from bench.timing import fmt, interleaved, machine, quartiles, ratios, set_threads, write_json
from common.config import load_config
from common.trainer import Trainer
from stochcon.train import StochConTrainConfig, build_method

ROOT = Path(__file__).resolve().parent.parent


class Loops:
    """The three timed loops over one trainer; each call runs ``steps`` steps."""

    def __init__(self, trainer: Trainer, steps: int):
        if steps > trainer.steps_per_epoch:
            raise ValueError(f"--steps {steps} is more than the {trainer.steps_per_epoch} steps of an epoch")
        self.trainer, self.steps, self.epoch, self.step_index = trainer, steps, 0, 0
        _, self.views, self.labels = next(trainer.stream.epoch(0))

    def _epoch_batches(self):
        self.epoch += 1
        batches = self.trainer.stream.epoch(self.epoch)
        for _ in range(self.steps):
            yield next(batches)

    def _step(self, views, labels) -> None:
        self.trainer._train_step(self.step_index, views, labels)
        self.trainer.method.on_step_end(self.step_index, self.trainer.total_steps)
        self.step_index += 1

    def full(self) -> None:
        for _, views, labels in self._epoch_batches():
            self._step(views, labels)

    def step_only(self) -> None:
        for _ in range(self.steps):
            self._step(self.views, self.labels)

    def data_only(self) -> None:
        sum(1 for _ in self._epoch_batches())  # draw every batch (read, augment, move) and drop it


def pipelines(workers: list[int], files: bool, gpu: bool) -> dict[str, list[str]]:
    """Overrides of each input pipeline; with image files the device pipelines have loader workers too."""
    out = {}
    if not files:
        out["device"] = ["augment.on=device", "augment.decode=cpu", "data.num_workers=0"]
    out.update({f"loader_{n}workers": ["augment.on=loader", "augment.decode=cpu", f"data.num_workers={n}"]
                for n in workers})
    if files:
        out.update({f"device_{n}workers": ["augment.on=device", "augment.decode=cpu", f"data.num_workers={n}"]
                    for n in workers})
    if files and gpu:
        out.update({f"gpu_decode_{n}workers": ["augment.on=device", "augment.decode=gpu", f"data.num_workers={n}"]
                    for n in workers})
    return out


def image_folder(root: Path, count: int, size: tuple[int, int]) -> list[str]:
    """``count`` synthetic JPEG files in two class folders under ``root``; the overrides that train on them."""
    for label in range(2):
        (root / "train" / f"class{label}").mkdir(parents=True)
        files = write_jpegs(root / "train" / f"class{label}", count // 2, size)
        for file in files:  # write_jpegs numbers from 0 in each folder: keep the names apart
            file.rename(file.with_name(f"{label}_{file.name}"))
    return ["data.name=image_folder", f"data.root={root}"]


def build_trainer(args, overrides: list[str], folder: Path) -> Trainer:
    cfg = load_config(StochConTrainConfig, ["--config", str(ROOT / args.config), f"output_dir={folder}",
                                            "tracker=none", "progress_bar=false", *args.overrides, *overrides])
    trainer = Trainer(cfg, build_method)
    trainer._setup()
    trainer.module.train()
    return trainer


def run(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        loops, cfgs = {}, {}
        data = image_folder(Path(tmp) / "images", args.jpeg, args.jpeg_size) if args.jpeg else []
        for name, overrides in pipelines(args.workers, bool(args.jpeg), args.device == "cuda").items():
            trainer = build_trainer(args, data + overrides, Path(tmp) / name)
            loops[name] = Loops(trainer, args.steps)
            cfgs[name] = {"overrides": overrides, "batch_size": trainer.cfg.batch_size,
                          "views": trainer.cfg.augment.num_views + trainer.cfg.augment.local_crops,
                          "num_workers": trainer.cfg.data.num_workers,
                          "trainer_device": str(trainer.accelerator.device)}
        fns = {}
        for name, loop in loops.items():
            fns[f"{name}:trainer"], fns[f"{name}:step"], fns[f"{name}:data"] = loop.full, loop.step_only, loop.data_only
        seconds = interleaved(fns, args.rounds, args.warmup, device=args.device)
    rows = {}
    for name, info in cfgs.items():
        images = info["batch_size"] * args.steps
        row = {**info}
        for part in ("trainer", "step", "data"):
            q = quartiles(seconds[f"{name}:{part}"])
            row[f"{part}_seconds"] = q
            row[f"{part}_images_per_second"] = images / q["median"]
        row["trainer_over_step"] = quartiles(ratios(seconds, f"{name}:trainer", f"{name}:step"))
        if info["num_workers"]:
            row["data_images_per_second_per_worker"] = row["data_images_per_second"] / info["num_workers"]
        rows[name] = row
    return {"config": args.config, "overrides": args.overrides, "steps": args.steps, "jpeg_images": args.jpeg,
            "jpeg_size": list(args.jpeg_size) if args.jpeg else None, "device": args.device, "pipelines": rows}


def print_table(result: dict) -> None:
    print(f"{result['config']} {' '.join(result['overrides'])}: {result['steps']} steps per measurement; "
          "images/s count images (each with its views); median [q25-q75] over rounds")
    print(f"{'pipeline':<18}{'trainer img/s':>14}{'step img/s':>12}{'data img/s':>12}  {'trainer / step':<22}")
    for name, row in result["pipelines"].items():
        print(f"{name:<18}{row['trainer_images_per_second']:>14.0f}{row['step_images_per_second']:>12.0f}"
              f"{row['data_images_per_second']:>12.0f}  {fmt(row['trainer_over_step']):<22}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="stochcon/configs/fashion_mnist_simclr.yaml",
                        help="a stochcon/train.py config (relative to the repository root)")
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 1, 2],
                        help="data.num_workers of the augment.on=loader pipelines")
    parser.add_argument("--steps", type=int, default=20, help="steps per measurement")
    parser.add_argument("--jpeg", type=int, default=0,
                        help="train on this many synthetic JPEG files (0: the config's data)")
    parser.add_argument("--jpeg-size", type=int, nargs=2, default=(500, 375), help="their width and height")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="a 1024-image subset, 2 steps, 2 rounds (the test)")
    parser.add_argument("--output", default="bench/results/trainer_throughput.json")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value for every pipeline")
    args = parser.parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before anything initialises CUDA: accelerate picks the CPU
    elif not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    if args.quick:
        args.steps, args.rounds, args.warmup, args.workers = 2, 2, 0, [0, 1]
        shrink = ["augment.image_size=32", "augment.local_size=16"] if args.jpeg else ["data.subset=1024"]
        args.overrides = [*shrink, "batch_size=32", "backbone.width=4", *args.overrides]
        args.jpeg_size = (64, 48) if args.jpeg else args.jpeg_size
    args.threads = set_threads(args.threads, args.quick)
    setup = machine(args.device) | {"rounds": args.rounds, "warmup": args.warmup, "quick": args.quick}
    result = run(args)
    print_table(result)
    write_json(args.output, setup, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
