"""``python -m common.data.make_shards SRC DEST [--shard-size N]``: write a dataset's train and test splits as
WebDataset tar shards plus the ``shards.json`` that ``data.name=webdataset`` reads (format in
``common.data.shards``).

SRC is anything ``common.data`` loads: a folder of class subfolders (``image_folder``, the default), a Hugging
Face dataset (``--name hf``, the default when SRC is a ``save_to_disk`` folder or a parquet file) or an
in-memory dataset's root. Files are stored as they are (no re-encoding, so decoded pixels are unchanged);
in-memory images are written as PNG. Samples are written in a seeded random order so that every shard mixes
the classes: reading whole shards in sequence then gives mixed batches. The channels, size and statistics
that ``dataset_info`` finds for SRC go into ``shards.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from common.data import DataConfig, build_dataset, dataset_info
from common.data.datasets import InMemoryImageDataset
from common.data.shards import INDEX_FILE, INDEX_FORMAT
from common.errors import EXIT_BAD_INPUT, InputError


def _png(image) -> bytes:
    array = image.permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(buffer, format="PNG")
    return buffer.getvalue()


def encoded_sample(dataset, index: int) -> tuple[bytes, str, int]:
    """``(image file bytes, extension, label)`` of sample ``index`` of a ``common.data`` dataset."""
    label = int(dataset.targets[index])
    if isinstance(dataset, InMemoryImageDataset):
        return _png(dataset.images[index]), "png", label
    data, extension = dataset.encoded(index)
    return data, extension, label


def write_split(dataset, dest: Path, split: str, shard_size: int, seed: int) -> dict:
    """Write ``dataset`` as ``DEST/{split}-NNNNNN.tar`` shards of ``shard_size`` samples (the last may be
    shorter) in a seeded random order; returns the split's ``shards.json`` entry."""
    from webdataset import TarWriter

    order = np.random.Generator(np.random.PCG64(seed)).permutation(len(dataset))
    num_shards = -(-len(order) // shard_size)
    counts, labels, sizes = [], [], []
    for shard in range(num_shards):
        chunk = order[shard * shard_size:(shard + 1) * shard_size]
        path = dest / f"{split}-{shard:06d}.tar"
        with TarWriter(str(path), encoder=False) as writer:
            for index in chunk.tolist():
                data, extension, label = encoded_sample(dataset, index)
                sample = {"__key__": f"{index:09d}", extension: data}
                if label >= 0:
                    sample["cls"] = str(label).encode()
                writer.write(sample)
                labels.append(label)
        counts.append(len(chunk))
        sizes.append(path.stat().st_size)  # lets a run find a shard cut short by its size alone
    pattern = f"{split}-{{000000..{num_shards - 1:06d}}}.tar" if num_shards > 1 else f"{split}-000000.tar"
    return {"shards": pattern, "counts": counts, "labels": labels, "bytes": sizes}


def make_shards(cfg: DataConfig, dest: Path, shard_size: int, seed: int = 0) -> dict:
    """Write the train and test splits of ``cfg`` as shards in ``dest``; returns the ``shards.json`` written."""
    if shard_size < 1:
        raise InputError(f"--shard-size must be at least 1, got {shard_size}")
    info = dataset_info(cfg)
    dest.mkdir(parents=True, exist_ok=True)
    train = build_dataset(cfg, "train")
    classes = list(getattr(train, "classes", [str(c) for c in range(info.num_classes)]))
    splits = {split: write_split(build_dataset(cfg, split), dest, split, shard_size, seed + number)
              for number, split in enumerate(("train", "test"))}
    index = {"format": INDEX_FORMAT, "classes": classes,
             "info": {"channels": info.channels, "image_size": info.image_size, "mean": list(info.mean),
                      "std": list(info.std)},
             "splits": splits}
    (dest / INDEX_FILE).write_text(json.dumps(index))
    return index


def _guess_name(src: Path) -> str:
    is_hf = (src / "dataset_dict.json").is_file() or (src / "state.json").is_file() or src.suffix == ".parquet"
    return "hf" if is_hf else "image_folder"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.data.make_shards", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="the dataset's data.root")
    parser.add_argument("dest", type=Path, help="folder for the shards and shards.json")
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    parser.add_argument("--name", default=None, help="data.name of SRC (default: hf for a saved HF dataset or "
                                                     "parquet file, else image_folder)")
    parser.add_argument("--test-split", default=None, help="data.test_split of SRC (default: val; hf: test)")
    parser.add_argument("--image-column", default="image", help="hf: data.image_column")
    parser.add_argument("--label-column", default="label", help="hf: data.label_column ('' for none)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the order the samples are written in")
    args = parser.parse_args(argv)
    name = args.name or _guess_name(args.src)
    test_split = args.test_split or ("test" if name == "hf" else "val")
    cfg = DataConfig(name=name, root=str(args.src), download=False, test_split=test_split,
                     image_column=args.image_column, label_column=args.label_column)
    try:
        index = make_shards(cfg, args.dest, args.shard_size, args.seed)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for split, entry in index["splits"].items():
        print(f"{split}: {sum(entry['counts'])} samples in {len(entry['counts'])} shards ({entry['shards']})")
    print(f"wrote {args.dest / INDEX_FILE}; train with data.name=webdataset data.root={args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
