"""Detection transfer: backbone conversion to Detectron2 and two training iterations of each config on CPU.

Skipped unless Detectron2 imports (install it with ``scripts/install_detectron2.sh .venv``); the conversion's
pure renaming is tested regardless.
"""

from __future__ import annotations

import json
import math
import pickle
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image, ImageDraw

from evaluation.detection.convert import main as convert_main
from evaluation.detection.convert import torchvision_to_detectron2

CONFIGS = Path(__file__).resolve().parents[1] / "evaluation" / "detection" / "configs"
VOC_CONFIG = CONFIGS / "voc0712_faster_rcnn_R50_C4_24k.yaml"
COCO_CONFIG = CONFIGS / "coco_mask_rcnn_R50_FPN_90k.yaml"


def _resnet50_state_dict() -> dict[str, torch.Tensor]:
    """A ResNet-50 whose every tensor, BN statistics included, differs from Detectron2's initialisation."""
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None)
    model.fc = torch.nn.Identity()
    for name, buffer in model.named_buffers():
        if name.endswith("running_mean"):
            buffer.normal_()
        elif name.endswith("running_var"):
            buffer.uniform_(0.5, 2.0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".bn" in name or name.startswith("bn1") or "downsample.1" in name:
                param.normal_()
    return model.state_dict()


# ---------------------------------------------------------------- conversion (no Detectron2 needed)

def test_conversion_renames_every_resnet50_tensor_bit_exactly():
    state = _resnet50_state_dict()
    weights = torchvision_to_detectron2(state)
    expected_pairs = {
        "conv1.weight": "stem.conv1.weight",
        "bn1.running_var": "stem.conv1.norm.running_var",
        "layer1.0.conv3.weight": "res2.0.conv3.weight",
        "layer1.0.bn3.bias": "res2.0.conv3.norm.bias",
        "layer2.3.bn2.running_mean": "res3.3.conv2.norm.running_mean",
        "layer3.0.downsample.0.weight": "res4.0.shortcut.weight",
        "layer3.0.downsample.1.running_var": "res4.0.shortcut.norm.running_var",
        "layer4.2.conv1.weight": "res5.2.conv1.weight",
    }
    for source, target in expected_pairs.items():
        assert np.array_equal(weights[target], state[source].numpy())
    # every tensor but the 53 BN step counters is carried over (fc is Identity, so absent)
    counters = [k for k in state if k.endswith("num_batches_tracked")]
    assert len(counters) == 53 and len(weights) == len(state) - 53 == 265
    assert not any("num_batches_tracked" in k or k.startswith("layer") for k in weights)


def test_conversion_strips_wrapper_prefix_and_drops_fc():
    state = torchvision.models.resnet18(weights=None).state_dict()
    wrapped = {f"backbone.{k}": v for k, v in state.items()} | {"projector.0.weight": torch.zeros(2, 2)}
    weights = torchvision_to_detectron2(wrapped)
    assert "stem.conv1.weight" in weights and "res5.1.conv2.norm.weight" in weights
    assert not any(k.startswith(("fc", "projector")) for k in weights)


def test_conversion_refuses_cifar_stem_and_non_resnets():
    state = torchvision.models.resnet18(weights=None).state_dict()
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    with pytest.raises(ValueError, match="conv1.weight has shape"):
        torchvision_to_detectron2(state)
    with pytest.raises(ValueError, match="not a torchvision ResNet"):
        torchvision_to_detectron2({"features.0.weight": torch.zeros(1)})


def test_convert_cli_writes_detectron2_pickle_from_safetensors(tmp_path):
    from common.backbones import BackboneConfig, build_backbone, save_backbone

    backbone, _ = build_backbone(BackboneConfig(name="resnet18"), 3)
    save_backbone(backbone, BackboneConfig(name="resnet18"), 3, tmp_path / "backbone.safetensors")
    out = tmp_path / "r18.pkl"
    assert convert_main(["--checkpoint", str(tmp_path), "--output", str(out)]) == 0
    with open(out, "rb") as handle:
        payload = pickle.load(handle)
    assert payload["matching_heuristics"] is True and payload["__author__"] == "ssl-repro"
    reference = torchvision_to_detectron2(backbone.state_dict())
    assert payload["model"].keys() == reference.keys()
    assert all(np.array_equal(payload["model"][k], v) for k, v in reference.items())
    assert convert_main(["--checkpoint", str(tmp_path / "missing.safetensors"), "--output", str(out)]) == 2


# ---------------------------------------------------------------- Detectron2

def _detectron2_importable() -> bool:
    try:
        import detectron2.engine  # noqa: F401
    except ImportError:
        return False
    return True


needs_detectron2 = pytest.mark.skipif(not _detectron2_importable(),
                                      reason="Detectron2 not installed (scripts/install_detectron2.sh .venv)")


def _cfg(config_file: Path, *opts: str):
    from detectron2.config import get_cfg

    import evaluation.detection.train  # noqa: F401  registers Res5ROIHeadsExtraNorm

    cfg = get_cfg()
    cfg.merge_from_file(str(config_file))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    return cfg


# where the ResNet's modules live in each model: {key prefix: the part of it that is not the converted name}
@needs_detectron2
@pytest.mark.parametrize("config_file, resnet_prefixes", [
    (VOC_CONFIG, {"backbone.": "backbone.", "roi_heads.res5.": "roi_heads."}),  # C4: res5 is the box head
    (COCO_CONFIG, {"backbone.bottom_up.": "backbone.bottom_up."}),              # FPN: the ResNet is bottom_up
])
def test_converted_weights_load_into_detectron2_models(tmp_path, config_file, resnet_prefixes):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from evaluation.detection.convert import save_detectron2_pickle

    weights = torchvision_to_detectron2(_resnet50_state_dict())
    path = tmp_path / "r50.pkl"
    save_detectron2_pickle(weights, path)
    model = build_model(_cfg(config_file))
    checkpointer = DetectionCheckpointer(model)
    # Detectron2's own load report (what it logs as missing / unexpected)
    report = checkpointer._load_model(checkpointer._load_file(str(path)))
    assert report.unexpected_keys == [] and report.incorrect_shapes == []
    # the extra res5 head norm and the FPN layers are new, not ResNet weights
    new_layers = ("roi_heads.res5.norm.", "backbone.fpn_", "backbone.top_block")
    model_state = model.state_dict()
    resnet_keys = [k for k in model_state if k.startswith(tuple(resnet_prefixes)) and not k.startswith(new_layers)
                   and "num_batches_tracked" not in k]
    assert not [k for k in report.missing_keys if k in resnet_keys]
    # the ResNet part of the model is exactly the converted tensors, each used once
    loaded = {}
    for key in resnet_keys:
        strip = next(strip for prefix, strip in resnet_prefixes.items() if key.startswith(prefix))
        loaded[key.removeprefix(strip)] = model_state[key]
    assert loaded.keys() == weights.keys()
    assert all(torch.equal(loaded[k], torch.from_numpy(v)) for k, v in weights.items())


VOC_CLASSES = ("cat", "dog")


def _draw_image(path: Path, size: tuple[int, int], boxes: list[tuple[int, int, int, int]], seed: int) -> None:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 60, (size[1], size[0], 3), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    for i, box in enumerate(boxes):
        draw.rectangle(box, fill=(220, 40, 40) if i % 2 == 0 else (40, 40, 220))
    image.save(path, quality=95)


def _write_voc(root: Path) -> None:
    """VOC2007 (trainval + test) and VOC2012 (trainval) folders: JPEGs, XML annotations, image-set lists."""
    for year, splits in (("2007", {"trainval": 2, "test": 2}), ("2012", {"trainval": 2})):
        base = root / f"VOC{year}"
        for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        for split, count in splits.items():
            ids = [f"{year}_{split}_{i:03d}" for i in range(count)]
            (base / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
            for i, image_id in enumerate(ids):
                width, height = 96, 80
                boxes = [(8, 10, 40, 50), (50, 20, 88, 70)]
                _draw_image(base / "JPEGImages" / f"{image_id}.jpg", (width, height), boxes, seed=i)
                annotation = ET.Element("annotation")
                ET.SubElement(annotation, "filename").text = f"{image_id}.jpg"
                size = ET.SubElement(annotation, "size")
                for tag, value in (("width", width), ("height", height), ("depth", 3)):
                    ET.SubElement(size, tag).text = str(value)
                for j, (x0, y0, x1, y1) in enumerate(boxes):
                    obj = ET.SubElement(annotation, "object")
                    for tag, value in (("name", VOC_CLASSES[j % 2]), ("pose", "Unspecified"), ("truncated", "0"),
                                       ("difficult", "0")):
                        ET.SubElement(obj, tag).text = value
                    box = ET.SubElement(obj, "bndbox")
                    for tag, value in (("xmin", x0), ("ymin", y0), ("xmax", x1), ("ymax", y1)):
                        ET.SubElement(box, tag).text = str(value)
                ET.ElementTree(annotation).write(base / "Annotations" / f"{image_id}.xml")


def _write_coco(root: Path) -> None:
    """coco/{train2017,val2017} JPEGs and instances_*.json with boxes and polygon masks, two categories."""
    categories = [{"id": 3, "name": "car", "supercategory": "vehicle"},
                  {"id": 18, "name": "dog", "supercategory": "animal"}]
    (root / "coco" / "annotations").mkdir(parents=True)
    for split in ("train2017", "val2017"):
        (root / "coco" / split).mkdir()
        images, annotations = [], []
        for i in range(2):
            width, height = 96, 80
            boxes = [(8, 10, 40, 50), (50, 20, 88, 70)]
            file_name = f"{split}_{i:03d}.jpg"
            _draw_image(root / "coco" / split / file_name, (width, height), boxes, seed=10 + i)
            images.append({"id": i + 1, "file_name": file_name, "width": width, "height": height})
            for j, (x0, y0, x1, y1) in enumerate(boxes):
                polygon = [x0, y0, x1, y0, x1, y1, x0, y1]
                annotations.append({
                    "id": len(annotations) + 1, "image_id": i + 1, "category_id": categories[j]["id"],
                    "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0,
                    "segmentation": [polygon],
                })
        document = {"images": images, "annotations": annotations, "categories": categories}
        (root / "coco" / "annotations" / f"instances_{split}.json").write_text(json.dumps(document))


# Tiny images, few proposals and RoIs, no workers: two iterations on two CPU cores in seconds, same model.
# SyncBN stays: on a single process without torch.distributed it normalises like BatchNorm.
SMALL_RUN = [
    "MODEL.DEVICE", "cpu", "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.CHECKPOINT_PERIOD", "1000",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96", "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "96", "DATALOADER.NUM_WORKERS", "0", "TEST.PRECISE_BN.NUM_ITER", "1",
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "32", "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "64", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "32",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "64", "MODEL.RPN.POST_NMS_TOPK_TEST", "16",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
]


@needs_detectron2
@pytest.mark.slow
@pytest.mark.parametrize("config_file, writer, extra, tasks", [
    (VOC_CONFIG, _write_voc, [], {"box"}),
    (COCO_CONFIG, _write_coco, ["MODEL.ROI_HEADS.NUM_CLASSES", "2"], {"box", "mask"}),
])
def test_two_training_iterations_and_evaluation(tmp_path, monkeypatch, config_file, writer, extra, tasks):
    from evaluation.detection.convert import save_detectron2_pickle
    from evaluation.detection.train import main as train_main

    data = tmp_path / "datasets"
    writer(data)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(data))
    weights = tmp_path / "r50.pkl"
    save_detectron2_pickle(torchvision_to_detectron2(torchvision.models.resnet50(weights=None).state_dict()), weights)
    out = tmp_path / "run"
    code = train_main(["--config-file", str(config_file), "--weights", str(weights),
                       *SMALL_RUN, *extra, "OUTPUT_DIR", str(out)])
    assert code == 0
    logged = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    training = [record for record in logged if "total_loss" in record]
    assert training[-1]["iteration"] == 1 and math.isfinite(training[-1]["total_loss"])
    record = json.loads((out / "results.json").read_text())
    assert record["weights"] == str(weights)
    test_set = "voc_2007_test" if config_file == VOC_CONFIG else "coco_2017_val"
    results = record["results"][test_set]
    assert set(results) == tasks
    for task in tasks:
        for metric in ("AP", "AP50", "AP75"):
            assert 0.0 <= results[task][metric] <= 100.0
    # --eval-only on the saved final model (BN statistics after precise BN) reproduces the final evaluation
    rerun = tmp_path / "eval_only.json"
    assert train_main(["--config-file", str(config_file), "--eval-only", "--weights", str(out / "model_final.pth"),
                       "--results", str(rerun), *SMALL_RUN, *extra, "OUTPUT_DIR", str(tmp_path / "eval")]) == 0
    assert json.loads(rerun.read_text())["results"] == record["results"]


@needs_detectron2
def test_train_reports_missing_dataset_by_name(tmp_path, monkeypatch, capsys):
    from evaluation.detection.train import main as train_main

    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    code = train_main(["--config-file", str(VOC_CONFIG), *SMALL_RUN, "OUTPUT_DIR", str(tmp_path / "run")])
    assert code == 2
    assert "voc_2007_trainval" in capsys.readouterr().err
