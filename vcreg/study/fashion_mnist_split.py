"""VCReg Table 2 at CPU scale: Fashion-MNIST written as two image folders, classes 0-4 to pre-train on and
classes 5-9 to transfer to, so that ``data.name=image_folder`` trains and ``python -m evaluation transfer
dataset=image_folder`` probes them with no change to either command.

    python -m vcreg.study.fashion_mnist_split --out DIR --per-class 4000 1000 2000 1000 [--data-root IDX_DIR]

writes ``DIR/classes_0-4/{train,val}/<class>/<index>.png`` and ``DIR/classes_5-9/...`` (the first N images of
each class, in file order, from Fashion-MNIST's training and test files), then ``DIR/split.json``. Images are
saved as RGB (three equal channels): the transfer protocol of Kornblith et al. reads RGB images, and a backbone
trained on the folder then takes the three channels it will see there.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from common.data import DataConfig
from common.data.fashion_mnist import load_fashion_mnist

FASHION_MNIST_CLASSES = ("t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
                         "bag", "ankle_boot")
GROUPS = {"classes_0-4": range(5), "classes_5-9": range(5, 10)}


def write_split(out: Path, per_class: list[int], data_root: str | None) -> dict:
    """Write both folders; ``per_class`` = (train, val) images per class of the first group, then the second's."""
    cfg = DataConfig(name="fashion_mnist", root=data_root or "data", download=False)
    counts = {}
    for split, source in (("train", "train"), ("val", "test")):
        dataset = load_fashion_mnist(cfg, source)
        images = dataset.images.squeeze(1).numpy()
        labels = dataset.targets.numpy()
        for g, (group, classes) in enumerate(GROUPS.items()):
            limit = per_class[2 * g + (split == "val")]
            for label in classes:
                folder = out / group / split / f"{label}_{FASHION_MNIST_CLASSES[label]}"
                folder.mkdir(parents=True, exist_ok=True)
                chosen = np.flatnonzero(labels == label)[:limit]
                for index in chosen:
                    Image.fromarray(images[index]).convert("RGB").save(folder / f"{index:05d}.png")
                counts[f"{group}/{split}/{label}"] = len(chosen)
    record = {"images": counts, "per_class": per_class}
    (out / "split.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--per-class", type=int, nargs=4, required=True, metavar=("TRAIN_0_4", "VAL_0_4",
                                                                                    "TRAIN_5_9", "VAL_5_9"))
    parser.add_argument("--data-root", default=None, help="Fashion-MNIST's IDX files (default: the loader's search)")
    args = parser.parse_args(argv)
    record = write_split(args.out, args.per_class, args.data_root)
    print(f"wrote {sum(record['images'].values())} images under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
