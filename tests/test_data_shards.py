"""Sharded streaming (data.name=webdataset): make_shards round trips, seeded per-epoch order, coverage over
ranks and workers, exact mid-epoch resume."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.data import (
    CorruptImageError,
    DataConfig,
    ShardedDataset,
    build_dataset,
    dataset_info,
    skipped_files,
)
from common.data.make_shards import main as make_shards_main
from common.data.make_shards import make_shards
from common.data.shard_plan import EpochPlan
from common.errors import ConfigError, DataError

NUM_TRAIN, NUM_TEST, SHARD_SIZE = 24, 5, 5  # train shards of 5, 5, 5, 5, 4 samples


def write_folder(root: Path) -> None:
    """8x8 grayscale images whose pixels hold the image's number (train 0..23, test 100..104), label number % 3."""
    for split, numbers in (("train", range(NUM_TRAIN)), ("val", range(100, 100 + NUM_TEST))):
        for number in numbers:
            path = root / split / f"class{number % 3}" / f"{number:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("L", (8, 8), number).save(path)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    write_folder(root / "src")
    assert make_shards_main([str(root / "src"), str(root / "out"), "--shard-size", str(SHARD_SIZE)]) == 0
    return root


def numbers(batches) -> list[list[int]]:
    """The image number of every sample of every batch (PIL images, or view tensors of the pixels)."""
    out = []
    for images, labels in batches:
        if isinstance(images, list) and isinstance(images[0], Image.Image):
            found = [image.getpixel((0, 0)) for image in images]
        else:
            found = images[0][:, 0, 0, 0].tolist()
        assert labels.tolist() == [n % 3 for n in found]
        out.append(found)
    return out


def stream(dataset: ShardedDataset, transforms=None, **plan) -> list[list[int]]:
    return numbers(dataset.epoch_loader(EpochPlan(**{"epoch": 0, "seed": 0, "batch_size": 4, **plan}), transforms))


def train_set(shards: Path) -> ShardedDataset:
    return build_dataset(DataConfig(name="webdataset", root=str(shards / "out")), "train")


# ---------------------------------------------------------------------------------------------- make_shards


def test_make_shards_round_trip_of_a_folder(shards):
    index = json.loads((shards / "out" / "shards.json").read_text())
    assert index["splits"]["train"]["shards"] == "train-{000000..000004}.tar"
    assert index["splits"]["train"]["counts"] == [5, 5, 5, 5, 4] and index["classes"] == ["class0", "class1", "class2"]
    source = DataConfig(name="image_folder", root=str(shards / "src"))
    cfg = DataConfig(name="webdataset", root=str(shards / "out"))
    assert dataset_info(cfg) == dataset_info(source)  # channels 1, 8 px, the same measured statistics
    for split, expected in (("train", range(NUM_TRAIN)), ("test", range(100, 100 + NUM_TEST))):
        dataset = build_dataset(cfg, split)
        read = [n for batch in stream(dataset, shuffle=False) for n in batch]
        assert sorted(read) == list(expected)
        assert dataset.targets.tolist() == [n % 3 for n in read]  # shards.json labels, in shard order
        first = next(iter(dataset.epoch_loader(EpochPlan(epoch=0, seed=0, batch_size=1, shuffle=False))))[0][0]
        assert first.mode == "L" and first.size == (8, 8)
    # Written in a seeded random order, not class by class.
    assert read != sorted(read)


def test_make_shards_of_a_hugging_face_dataset_keeps_the_bytes(tmp_path):
    import datasets

    colors = [(10, 20, 30), (40, 50, 60), (70, 80, 90)]
    table = datasets.Dataset.from_dict(
        {"image": [Image.new("RGB", (6, 6), c) for c in colors], "label": [0, 1, 0]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["x", "y"])}))
    datasets.DatasetDict({"train": table, "test": table.select([2])}).save_to_disk(str(tmp_path / "hf"))
    assert make_shards_main([str(tmp_path / "hf"), str(tmp_path / "out"), "--shard-size", "2"]) == 0
    dataset = build_dataset(DataConfig(name="webdataset", root=str(tmp_path / "out")), "train")
    images, labels = next(iter(dataset.epoch_loader(EpochPlan(epoch=0, seed=0, batch_size=3, shuffle=False))))
    assert sorted((image.getpixel((0, 0)), label) for image, label in zip(images, labels.tolist())) == [
        (colors[0], 0), (colors[1], 1), (colors[2], 0)]
    assert dataset.classes == ["x", "y"] and len(build_dataset(DataConfig(name="webdataset",
                                                                          root=str(tmp_path / "out")), "test")) == 1


def test_make_shards_of_an_in_memory_dataset_writes_png(tmp_path, monkeypatch):
    from common.data import fashion_mnist

    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_SYSTEM_DIRS", ())
    pixels = np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    for prefix in ("train", "t10k"):
        for kind, array in (("images-idx3", pixels), ("labels-idx1", np.arange(6, dtype=np.uint8))):
            header = bytes([0, 0, 8, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
            (tmp_path / f"{prefix}-{kind}-ubyte").write_bytes(header + array.tobytes())
    make_shards(DataConfig(name="fashion_mnist", root=str(tmp_path), download=False), tmp_path / "out", 4)
    dataset = build_dataset(DataConfig(name="webdataset", root=str(tmp_path / "out")), "train")
    images, labels = next(iter(dataset.epoch_loader(EpochPlan(epoch=0, seed=0, batch_size=6, shuffle=False))))
    for image, label in zip(images, labels.tolist()):
        assert image.mode == "L" and np.array_equal(np.asarray(image), pixels[label])  # lossless PNG


def test_make_shards_errors(tmp_path, capsys):
    assert make_shards_main([str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(DataError, match="shards.json"):
        build_dataset(DataConfig(name="webdataset", root=str(tmp_path)), "train")
    write_folder(tmp_path / "src")
    make_shards(DataConfig(name="image_folder", root=str(tmp_path / "src")), tmp_path / "out", shard_size=10)
    cfg = DataConfig(name="webdataset", root=str(tmp_path / "out"))
    with pytest.raises(ConfigError, match="data.subset"):
        build_dataset(DataConfig(name="webdataset", root=str(tmp_path / "out"), subset=4), "train")
    opened = build_dataset(cfg, "train")
    (tmp_path / "out" / "train-000001.tar").unlink()
    with pytest.raises(DataError, match="train-000001.tar not found"):  # found when the split is opened
        build_dataset(cfg, "train")
    with pytest.raises(DataError, match="cannot read shard .*train-000001.tar"):  # or read, if it vanished since
        stream(opened, shuffle=False)


# ---------------------------------------------------------------------------------------------- order


def test_order_is_seeded_whole_shards_and_new_every_epoch(shards):
    dataset = train_set(shards)
    first = stream(dataset, epoch=0, seed=0)
    assert stream(dataset, epoch=0, seed=0) == first  # deterministic
    assert stream(dataset, epoch=1, seed=0) != first and stream(dataset, epoch=0, seed=1) != first
    shard_of = {n: position // SHARD_SIZE for position, n in enumerate(
        n for batch in stream(dataset, shuffle=False, batch_size=1) for n in batch)}

    def shard_runs(batches):
        """The shards in the order the sequence visits them; each shard's samples must be one run."""
        runs = []
        for n in (n for batch in batches for n in batch):
            if not runs or runs[-1] != shard_of[n]:
                runs.append(shard_of[n])
        assert sorted(runs) == list(range(5))
        return runs

    orders = [shard_runs(stream(dataset, epoch=e, seed=0)) for e in range(4)]
    assert len({tuple(o) for o in orders}) > 1  # the shard order is drawn anew each epoch
    # ...and so is the order inside each shard: epoch 0 and 1 differ within some shard.
    within = [[n for batch in stream(dataset, epoch=e, seed=0) for n in batch if shard_of[n] == 0] for e in (0, 1)]
    assert sorted(within[0]) == sorted(within[1]) and within[0] != within[1]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_every_sample_once_per_epoch_across_two_ranks(shards, num_workers):
    dataset = train_set(shards)
    for epoch in (0, 1):
        # Training: equal whole batches on every rank (2 ranks x 3 batches x 4 = all 24 samples).
        ranks = [stream(dataset, epoch=epoch, rank=r, world=2, num_batches=3, num_workers=num_workers)
                 for r in (0, 1)]
        assert [len(batches) for batches in ranks] == [3, 3]
        assert all(len(batch) == 4 for batches in ranks for batch in batches)
        assert sorted(n for batches in ranks for batch in batches for n in batch) == list(range(NUM_TRAIN))
        # Evaluation (no num_batches): the ranks split every sample, the last batch of a rank may be short.
        ranks = [stream(dataset, epoch=epoch, rank=r, world=2, batch_size=5, num_workers=num_workers)
                 for r in (0, 1)]
        assert sorted(n for batches in ranks for batch in batches for n in batch) == list(range(NUM_TRAIN))
    with pytest.raises(ValueError, match="more than the 24 samples"):
        stream(dataset, world=2, num_batches=4)


def noisy(image):
    return torch.from_numpy(np.asarray(image).copy()).unsqueeze(0).float() + torch.rand(1, 8, 8) / 2


@pytest.mark.parametrize("num_workers", [0, 2, 3])
def test_resume_in_the_middle_of_an_epoch_continues_at_the_right_sample(shards, num_workers):
    dataset = train_set(shards)
    plan = {"epoch": 2, "seed": 5, "rank": 1, "world": 2, "num_batches": 6, "batch_size": 2,
            "num_workers": num_workers}
    full = list(dataset.epoch_loader(EpochPlan(**plan), [noisy]))
    for start in (1, 2, 3, 5, 6):
        tail = list(dataset.epoch_loader(EpochPlan(**plan, start_batch=start), [noisy]))
        assert len(tail) == len(full) - start
        for (views, labels), (expected_views, expected_labels) in zip(tail, full[start:]):
            assert torch.equal(labels, expected_labels) and torch.equal(views[0], expected_views[0])
    # The views of a sample depend on (seed, epoch, sample) only, not on the workers that load it.
    in_process = list(dataset.epoch_loader(EpochPlan(**{**plan, "num_workers": 0}), [noisy]))
    by_number = {int(v[0, 0, 0]): v for views, _ in in_process for v in views[0]}
    assert all(torch.equal(v, by_number[int(v[0, 0, 0])]) for views, _ in full for v in views[0])


def test_shards_behind_a_url(shards):
    dataset = build_dataset(DataConfig(name="webdataset", root=(shards / "out").as_uri()), "train")
    assert dataset.urls[0].startswith("file://")
    assert stream(dataset, epoch=3) == stream(train_set(shards), epoch=3)


def test_corrupt_sample_in_a_shard(tmp_path, capfd):
    write_folder(tmp_path / "src")
    (tmp_path / "src" / "train" / "class1" / "007.png").write_bytes(b"not an image")
    make_shards(DataConfig(name="image_folder", root=str(tmp_path / "src")), tmp_path / "out", shard_size=5)
    strict = build_dataset(DataConfig(name="webdataset", root=str(tmp_path / "out")), "train")
    with pytest.raises(CorruptImageError) as error:
        stream(strict, num_workers=2)
    assert "\n" not in str(error.value) and "of shard" in str(error.value)
    lenient = build_dataset(DataConfig(name="webdataset", root=str(tmp_path / "out"), skip_corrupt=True), "train")
    for epoch in range(3):
        read = [n for batch in stream(lenient, epoch=epoch, num_workers=2) for n in batch]
        assert len(read) == NUM_TRAIN and 7 not in read
    assert len(skipped_files(lenient)) == 1 and capfd.readouterr().err.count("skipping corrupt image") == 1


def test_the_trainer_streams_shards_resumes_at_the_right_sample_and_evaluates_them(shards, tmp_path):
    """BatchStream over shards, loader and device augmentation: a stream restarted at step s yields what the
    uninterrupted one yields from s on; then a whole run of stochcon/train.py on data.name=webdataset."""
    import dataclasses

    from trainer_runs import run

    from common.augment import AugmentConfig
    from common.batches import BatchStream

    dataset = build_dataset(DataConfig(name="webdataset", root=str(shards / "out")), "train")
    info = dataset_info(DataConfig(name="webdataset", root=str(shards / "out")))
    for on in ("loader", "device"):
        cfg = AugmentConfig(on=on, image_size=8, blur_prob=[0.0])

        def steps(start, cfg=cfg):
            stream = BatchStream(dataset, cfg, info, 1, 4, 2, 0, 1, 0, torch.device("cpu"), num_workers=0)
            return list(stream.epoch(1, start))

        whole, resumed = steps(0), steps(2)
        assert len(whole) == NUM_TRAIN // 4 and [s for s, _, _ in resumed] == [2, 3, 4, 5]
        for (_, views_a, labels_a), (_, views_b, labels_b) in zip(whole[2:], resumed):
            assert all(torch.equal(a, b) for va, vb in zip(views_a, views_b) for a, b in zip(va, vb))
            assert all(torch.equal(a, b) for a, b in zip(labels_a, labels_b))
        assert all(v.shape == (2, 1, 8, 8) and v.dtype == torch.float32 for v in whole[0][1][0])
        with pytest.raises(ConfigError, match="augment.decode=gpu"):  # nvJPEG: image files on a CUDA device
            BatchStream(dataset, dataclasses.replace(cfg, on="device", decode="gpu"), info, 1, 4, 1, 0, 1, 0,
                        torch.device("cpu"))
    out = tmp_path / "run"
    done = run("stochcon/train.py", [f"output_dir={out}", "data.name=webdataset", f"data.root={shards / 'out'}",
                                     "data.num_workers=0", "augment.on=device", "augment.blur_prob=[0.0]", "epochs=2",
                                     "batch_size=8", "backbone.width=4", "method.projector=[16,8]",
                                     "progress_bar=false", "tracker=none",
                                     "eval.knn_k=[3]", "eval.linear_epochs=2"])
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 2 * (NUM_TRAIN // 8) and "knn_top1_k3" in results and "linear_top1" in results
