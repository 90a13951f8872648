"""The batch stream with augment.on=device on image files: workers decode and crop, the device does the rest.

Exact comparisons (``torch.equal``) are between computations that do the same arithmetic on the same numbers.
The JPEG decoders compared (PIL's and ``torchvision.io.decode_jpeg``) are both libjpeg-turbo with its default
integer IDCT and upsampling, integer arithmetic that its SIMD paths reproduce bit for bit.
"""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import v2

import common.batches
from common.augment import AugmentConfig, build_crop_transforms, dino_multicrop, simclr_augment
from common.batches import BatchStream
from common.data import IMAGENET_MEAN, IMAGENET_STD, CorruptImageError, DatasetInfo, ImageFileDataset
from common.decode import EncodedCrops, crop_views, decode_and_crop, encoded_jpeg
from common.errors import ConfigError

INFO = DatasetInfo(3, 224, 2, IMAGENET_MEAN, IMAGENET_STD)
CPU = torch.device("cpu")


def write_images(folder, count=12, png_every=4):
    """JPEG files of assorted sizes, every ``png_every``-th a PNG (decoded in the worker)."""
    rng = np.random.default_rng(0)
    files = []
    for i in range(count):
        pixels = rng.integers(0, 256, (30 + 3 * i, 44 - i, 3), dtype=np.uint8)
        files.append(folder / f"{i:02d}.{'png' if i % png_every == 0 else 'jpg'}")
        Image.fromarray(pixels).save(files[-1])
    return files


def folder_dataset(tmp_path, **kwargs):
    files = write_images(tmp_path, **kwargs)
    return ImageFileDataset(files, torch.arange(len(files)) % 2, ["a", "b"], skip_corrupt=False)


def multicrop() -> AugmentConfig:
    return dataclasses.replace(dino_multicrop(local_crops=2), image_size=24, local_size=12, on="device")


def stream(dataset, cfg, batch=4, rank=0, world=1, workers=0, accumulation=1):
    return BatchStream(dataset, cfg, INFO, 3, batch, accumulation, rank, world, seed=3, device=CPU,
                       num_workers=workers)


def batches(s, epoch=1, start=0):
    return [(step, views, labels) for step, views, labels in s.epoch(epoch, start)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for (step_a, views_a, labels_a), (step_b, views_b, labels_b) in zip(a, b):
        assert step_a == step_b
        assert all(torch.equal(x, y) for x, y in zip(labels_a, labels_b))
        assert all(torch.equal(x, y) for micro_a, micro_b in zip(views_a, views_b) for x, y in zip(micro_a, micro_b))


def test_workers_crop_and_the_device_augments(tmp_path):
    dataset = folder_dataset(tmp_path)
    s = stream(dataset, multicrop())
    assert s.steps_per_epoch == 3
    out = batches(s)
    _, views, labels = out[0]
    assert [tuple(v.shape) for v in views[0]] == [(4, 3, 24, 24)] * 2 + [(4, 3, 12, 12)] * 2
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in views[0])
    assert not torch.equal(views[0][0], views[0][1])
    order = common.batches.epoch_order(len(dataset), 3, 1)
    assert torch.equal(labels[0], dataset.targets[order[:4]])
    # Two workers hand over the same crops as the main process.
    assert_same_batches(batches(stream(dataset, multicrop(), workers=2)), out)


def test_resumed_stream_yields_the_same_batches(tmp_path):
    s = stream(folder_dataset(tmp_path), multicrop(), accumulation=2, batch=4)
    whole = batches(s)
    assert_same_batches(batches(s, start=1), whole[1:])


def test_two_processes_see_the_single_process_global_batch(tmp_path):
    """Crops are seeded per image and the device parameters per global-batch row, so rank r's micro-batch is rows
    r of the single process's. Float64: only the order of per-sample float sums may differ (see
    tests/test_batch_augment.py), well below 1e-10."""
    dataset = folder_dataset(tmp_path)
    single = stream(dataset, multicrop(), batch=4)
    ranks = [stream(dataset, multicrop(), batch=4, rank=r, world=2, workers=r) for r in range(2)]
    for s in [single, *ranks]:
        s.batch_augment.dtype = torch.float64
    whole = batches(single)
    parts = [batches(s) for s in ranks]
    for (step, views, labels), (_, views0, labels0), (_, views1, labels1) in zip(whole, *parts):
        assert torch.equal(torch.cat([labels0[0], labels1[0]]), labels[0])
        for view, view0, view1 in zip(views[0], views0[0], views1[0]):
            assert torch.allclose(torch.cat([view0, view1]), view, rtol=0, atol=1e-10)


def test_gpu_decoding_path_cuts_the_same_crops(tmp_path, monkeypatch):
    """augment.decode=gpu's path (JPEG bytes to the main process, boxes drawn from the header, decoded and cropped
    there), run with torchvision's CPU decoder: the same batches as decoding and cropping in the workers."""
    dataset = folder_dataset(tmp_path)
    cfg = multicrop()
    to_uint8, crops = build_crop_transforms(cfg, INFO, 3)
    encoded = EncodedCrops(dataset, to_uint8, crops, seed=3)
    in_workers = crop_views(dataset, to_uint8, crops, seed=3)
    encoded.set_epoch(2)
    in_workers.set_epoch(2)
    samples = [encoded[i][0] for i in range(len(dataset))]
    assert [s.payload.ndim for s in samples[:4]] == [3, 1, 1, 1]  # the PNG is decoded in the worker
    views = decode_and_crop(samples, encoded, 3, CPU)
    for i, sample in enumerate(samples):
        image = decode_jpeg(sample.payload, mode=ImageReadMode.RGB) if sample.payload.ndim == 1 else sample.payload
        worker_views, _ = in_workers[i]
        for view, (crop, box) in enumerate(zip(crops, sample.boxes.tolist())):
            expected = v2.functional.resized_crop(image, *box, size=list(crop.size),
                                                  interpolation=crop.interpolation, antialias=True)
            assert torch.equal(views[view][i], expected) and torch.equal(worker_views[view], expected)

    monkeypatch.setattr(common.batches, "check_gpu_decoding", lambda in_memory, device: None)
    gpu_path = stream(dataset, dataclasses.replace(cfg, decode="gpu"), workers=1)
    assert isinstance(gpu_path.views, EncodedCrops)
    assert_same_batches(batches(gpu_path), batches(stream(dataset, cfg)))


def test_a_jpeg_that_does_not_decode_is_reported_by_the_dataset(tmp_path, capfd):
    dataset = folder_dataset(tmp_path, count=4)
    data = dataset.files[1].read_bytes()
    dataset.files[1].write_bytes(data[:len(data) // 2])  # the header reads, the pixels do not
    to_uint8, crops = build_crop_transforms(multicrop(), INFO, 3)
    encoded = EncodedCrops(dataset, to_uint8, crops, seed=0)
    samples = [encoded[i][0] for i in range(4)]
    assert samples[1].payload.ndim == 1
    with pytest.raises(CorruptImageError, match="01.jpg"):
        decode_and_crop(samples, encoded, 3, CPU)
    dataset.skip_corrupt = True  # the data set's own policy: the next readable image, its own boxes
    views = decode_and_crop(samples, encoded, 3, CPU)
    assert capfd.readouterr().err.count("skipping corrupt image file") == 1
    assert [tuple(v.shape) for v in views] == [(4, 3, 24, 24)] * 2 + [(4, 3, 12, 12)] * 2


def test_other_datasets_are_decoded_in_the_workers(tmp_path):
    """Any data set of (PIL image or uint8 tensor, label) with ``targets``: crops in the workers; no JPEG bytes to
    hand over, so the gpu path decodes there too."""

    class Generated(torch.utils.data.Dataset):
        targets = torch.zeros(8, dtype=torch.int64)

        def __len__(self):
            return 8

        def __getitem__(self, index):
            pixels = torch.full((3, 20 + index, 30), 10 * index, dtype=torch.uint8)
            return (Image.fromarray(pixels.permute(1, 2, 0).numpy()) if index % 2 else pixels), 0

    dataset = Generated()
    assert encoded_jpeg(dataset, 0) is None
    cfg = dataclasses.replace(simclr_augment(), image_size=16, on="device")
    _, views, _ = batches(stream(dataset, cfg))[0]
    assert [tuple(v.shape) for v in views[0]] == [(4, 3, 16, 16)] * 2
    to_uint8, crops = build_crop_transforms(cfg, INFO, 3)
    encoded = EncodedCrops(dataset, to_uint8, crops, seed=0)
    assert all(encoded[i][0].payload.ndim == 3 for i in range(8))


def test_bad_settings_are_config_errors(tmp_path):
    dataset = folder_dataset(tmp_path, count=4)
    with pytest.raises(ConfigError, match="augment.decode=gpu .* CUDA device, but this run's device is cpu"):
        stream(dataset, dataclasses.replace(multicrop(), decode="gpu"))
    memory = common.data.InMemoryImageDataset(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4))
    with pytest.raises(ConfigError, match="in memory already"):
        stream(memory, dataclasses.replace(multicrop(), decode="gpu"))
    with pytest.raises(ConfigError, match="augment.name"):
        stream(dataset, AugmentConfig(name="none", on="device"))
    with pytest.raises(ConfigError, match="augment.decode=gpu needs augment.on=device"):
        stream(dataset, AugmentConfig(decode="gpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (nvJPEG)")
def test_nvjpeg_decodes_as_the_cpu_does_and_the_stream_runs_on_cuda(tmp_path):
    """nvJPEG's IDCT is not libjpeg-turbo's. Both conform to IEEE 1180 (at most 1 grey level from the exact inverse
    DCT per Y, Cb, Cr sample), and with 4:4:4 files (no chroma upsampling to differ) the YCbCr -> RGB map
    (B = Y + 1.772 Cb, the largest coefficient) and its rounding keep them within 1 + 1.772 + 0.5 < 4 levels."""
    rng = np.random.default_rng(1)
    files = []
    for i in range(6):
        files.append(tmp_path / f"{i}.jpg")
        Image.fromarray(rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8)).save(files[-1], quality=95,
                                                                                    subsampling=0)
    dataset = ImageFileDataset(files, torch.zeros(6, dtype=torch.int64), ["a"], skip_corrupt=False)
    for file in files:
        data = torch.frombuffer(bytearray(file.read_bytes()), dtype=torch.uint8)
        on_gpu = decode_jpeg(data, mode=ImageReadMode.RGB, device="cuda").cpu()
        on_cpu = decode_jpeg(data, mode=ImageReadMode.RGB)
        assert (on_gpu.int() - on_cpu.int()).abs().max() < 4
    cuda = torch.device("cuda")
    cfg = dataclasses.replace(multicrop(), decode="gpu")
    s = BatchStream(dataset, cfg, INFO, 3, 2, 1, 0, 1, seed=3, device=cuda, num_workers=1)
    for _, views, labels in s.epoch(0):
        assert [tuple(v.shape) for v in views[0]] == [(2, 3, 24, 24)] * 2 + [(2, 3, 12, 12)] * 2
        assert all(v.is_cuda and torch.isfinite(v).all() for v in views[0])
