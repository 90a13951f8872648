"""Augmentation throughput: batched on-device views (``common/batch_augment.py``) vs per-image pipelines.

Images per second of one process (one DataLoader worker's worth of CPU) for three recipes:

- ``simclr_28px_gray``: SimCLR's augmentation (``common.augment.simclr_augment``) of 28 px grayscale
  images (Fashion-MNIST statistics), 2 views;
- ``simclr_32px_rgb``: the same on 32 px RGB images (CIFAR-10 statistics), 2 views;
- ``dino_multicrop``: DINO's multi-crop (``common.augment.dino_multicrop``): 2 global 224 px and 8 local
  96 px crops of 256 px RGB images (ImageNet statistics; JPEG decoding not included).

The loader path of image folders also decodes a JPEG per image: ``jpeg`` times ``common.data.ImageFileDataset``
on 500 x 375 px JPEG files (ImageNet's typical size, quality 90, smooth random content) written to a temporary
folder: decoding only; decoding followed by the SimCLR (2 x 224 px) and DINO multi-crop per-image pipelines
(``augment.on=loader``: the decode + augment rate of one loader worker); and decoding followed by the crops alone
(``augment.on=device``: what a worker does there, ``common.decode.crop_views``; the rest runs batched on the
training device). ``crop_over_full`` is the ratio of a worker's images/s with crops alone to that with the whole
per-image pipeline, taken within each round. ``device_half`` times that rest on this CPU
(``BatchAugment.augment_crops`` on a batch of crops, one process), for a machine without an accelerator.

``per_image`` runs the ``torchvision.transforms.v2`` pipelines of ``common.augment.build_view_transforms``
through ``common.data.MultiViewDataset`` (with its per-sample seeding) on uint8 tensors, as a loader worker
does; ``batched`` calls ``common.batch_augment.BatchAugment`` on a uint8 batch. The two run in interleaved
rounds; the figure is source images (not views) per second, with the median and interquartile range.

    python bench/augment.py
    python bench/augment.py --recipes dino_multicrop --rounds 5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
from PIL import Image, ImageFilter

from bench.timing import fmt, interleaved, machine, quartiles, ratios, set_threads, write_json
from common.augment import build_crop_transforms, build_view_transforms, dino_multicrop, simclr_augment
from common.batch_augment import BatchAugment
from common.data import ImageFileDataset, MultiViewDataset, dataset_info
from common.decode import crop_views

# name: (augment config, dataset whose statistics and channels apply, source image side,
#        images per batched call, images per per-image measurement)
RECIPES = {
    "simclr_28px_gray": (simclr_augment, "fashion_mnist", 28, 256, 256),
    "simclr_32px_rgb": (simclr_augment, "cifar10", 32, 256, 256),
    "dino_multicrop": (dino_multicrop, "imagenet", 256, 32, 16),
}


class Images:
    """A dataset of fixed random uint8 images, as the in-memory datasets hand them to the loader."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], 0


def bench_recipe(name: str, args) -> dict:
    make_cfg, dataset, side, batch, per_image_count = RECIPES[name]
    if args.quick:
        batch, per_image_count = 8, 4
    cfg = make_cfg()
    info = dataset_info(dataset)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, info.channels, side, side), dtype=torch.uint8, generator=generator)
    batched = BatchAugment(cfg, info, info.channels)
    views = MultiViewDataset(Images(images[:per_image_count]), build_view_transforms(cfg, info, info.channels),
                             seed=0)
    step = torch.Generator().manual_seed(1)

    def run_batched():
        return batched(images, step)

    def run_per_image():
        return [views[i] for i in range(per_image_count)]

    seconds = interleaved({"batched": run_batched, "per_image": run_per_image}, args.rounds, args.warmup)
    per_second = {"batched": [batch / s for s in seconds["batched"]],
                  "per_image": [per_image_count / s for s in seconds["per_image"]]}
    num_views = cfg.num_views + cfg.local_crops
    speedup = [b / p for b, p in zip(per_second["batched"], per_second["per_image"])]
    return {"recipe": name, "dataset_stats": dataset, "channels": info.channels, "source_size": side,
            "views": num_views, "view_sizes": [cfg.image_size or info.image_size] * cfg.num_views
            + [cfg.local_size] * cfg.local_crops, "batched_batch": batch, "per_image_images": per_image_count,
            "images_per_second": {k: quartiles(v) for k, v in per_second.items()},
            "batched_over_per_image": quartiles(speedup), "augment": asdict(cfg)}


def write_jpegs(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    """``count`` JPEG files of ``size`` (width, height): blurred random colour fields, which compress like photos
    rather than like noise."""
    rng = np.random.default_rng(0)
    files = []
    for i in range(count):
        coarse = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize(size, Image.BILINEAR).filter(ImageFilter.GaussianBlur(2))
        noisy = np.clip(np.asarray(image, dtype=np.int16) + rng.integers(-12, 13, (size[1], size[0], 3)), 0, 255)
        files.append(folder / f"{i:04d}.jpg")
        Image.fromarray(noisy.astype(np.uint8)).save(files[-1], quality=90)
    return files


def bench_jpeg(args) -> dict:
    """Images/s of one process for decoding JPEG files, then each per-image pipeline or the crops alone."""
    count, size = (4, (64, 48)) if args.quick else (32, (500, 375))
    info = dataset_info("imagenet")
    recipes = {"simclr": simclr_augment(), "dino_multicrop": dino_multicrop()}
    with tempfile.TemporaryDirectory() as tmp:
        files = write_jpegs(Path(tmp), count, size)
        decoded = ImageFileDataset(files, torch.zeros(count, dtype=torch.int64), ["synthetic"], skip_corrupt=False)
        readers = {"decode": decoded}
        for name, cfg in recipes.items():
            readers[f"decode_{name}"] = MultiViewDataset(decoded, build_view_transforms(cfg, info, info.channels),
                                                         seed=0)
            readers[f"decode_crop_{name}"] = crop_views(decoded, *build_crop_transforms(cfg, info, info.channels),
                                                        seed=0)
        crops = {name: [torch.stack(v) for v in zip(*(readers[f"decode_crop_{name}"][i][0] for i in range(count)))]
                 for name in recipes}
        device_half = {name: BatchAugment(cfg, info, info.channels) for name, cfg in recipes.items()}
        generator = torch.Generator().manual_seed(0)
        fns = {name: (lambda r=reader: [r[i] for i in range(count)]) for name, reader in readers.items()}
        fns.update({f"device_half_{name}": (lambda a=augment, c=crops[name]: a.augment_crops(c, generator))
                    for name, augment in device_half.items()})
        seconds = interleaved(fns, args.rounds, args.warmup)
    return {"source_size": list(size), "images": count, "quality": 90,
            "images_per_second": {name: quartiles([count / t for t in s]) for name, s in seconds.items()},
            "crop_over_full": {name: quartiles(ratios(seconds, f"decode_{name}", f"decode_crop_{name}"))
                               for name in recipes}}


def print_table(results: list[dict]) -> None:
    print("images/s of one process, median [q25-q75] over rounds")
    print(f"{'recipe':<20}{'views':>6}{'batched img/s':>30}{'per-image img/s':>30}{'batched/per-image':>28}")
    for r in results:
        ips = r["images_per_second"]
        print(f"{r['recipe']:<20}{r['views']:>6}{fmt(ips['batched'], 0):>30}{fmt(ips['per_image'], 0):>30}"
              f"{fmt(r['batched_over_per_image'], 2):>28}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice; a loader worker has 1)")
    parser.add_argument("--quick", action="store_true", help="tiny batches, 2 rounds (the test)")
    parser.add_argument("--output", default="bench/results/augment.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.warmup = 2, 0
    args.threads = set_threads(args.threads, args.quick)
    setup = machine() | {"rounds": args.rounds, "warmup": args.warmup, "quick": args.quick}
    results = [bench_recipe(name, args) for name in args.recipes]
    jpeg = bench_jpeg(args)
    print_table(results)
    print(f"JPEG {jpeg['source_size'][0]} x {jpeg['source_size'][1]} px, images/s of one process: "
          + ", ".join(f"{name} {fmt(q, 0)}" for name, q in jpeg["images_per_second"].items()))
    print("a worker's images/s, crops alone over the whole per-image pipeline: "
          + ", ".join(f"{name} {fmt(q, 2)}" for name, q in jpeg["crop_over_full"].items()))
    write_json(args.output, setup, {"recipes": results, "jpeg": jpeg})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
