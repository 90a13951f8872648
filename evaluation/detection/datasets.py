"""Register the detection datasets the transfer configs name, under the root ``DETECTRON2_DATASETS``.

Detectron2 registers its built-in datasets once, when ``detectron2.data`` is first imported, with the root
``DETECTRON2_DATASETS`` had at that moment. We re-register the names our configs use at call time instead, so
the root can be set (or changed, as the tests do) later in the same process, and a missing file is reported
by name before training starts. The folder layouts are Detectron2's:
``VOC2007/{Annotations,ImageSets/Main,JPEGImages}``, ``VOC2012/...``, ``coco/{train2017,val2017}`` and
``coco/annotations/instances_{train,val}2017.json``.
"""

from __future__ import annotations

import os
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances, register_pascal_voc

from common.errors import ConfigError, DataError

# name: (folder under the root, image-set split, year)
VOC_SPLITS = {
    "voc_2007_trainval": ("VOC2007", "trainval", 2007),
    "voc_2007_test": ("VOC2007", "test", 2007),
    "voc_2012_trainval": ("VOC2012", "trainval", 2012),
}
# name: (image folder, annotation json), both under the root
COCO_SPLITS = {
    "coco_2017_train": ("coco/train2017", "coco/annotations/instances_train2017.json"),
    "coco_2017_val": ("coco/val2017", "coco/annotations/instances_val2017.json"),
}


def dataset_root() -> Path:
    """The datasets root as Detectron2 defines it: ``$DETECTRON2_DATASETS``, else ``./datasets``."""
    return Path(os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", "datasets")))


def _unregister(name: str) -> None:
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)


def _register_voc(name: str, root: Path) -> None:
    folder, split, year = VOC_SPLITS[name]
    dirname = root / folder
    image_set = dirname / "ImageSets" / "Main" / f"{split}.txt"
    if not image_set.is_file():
        raise DataError(f"dataset '{name}': {image_set} not found (set DETECTRON2_DATASETS to the folder "
                                f"holding {folder}/)")
    register_pascal_voc(name, str(dirname), split, year)
    MetadataCatalog.get(name).evaluator_type = "pascal_voc"


def _register_coco(name: str, root: Path) -> None:
    image_root, json_file = (root / part for part in COCO_SPLITS[name])
    if not json_file.is_file():
        raise DataError(f"dataset '{name}': {json_file} not found (set DETECTRON2_DATASETS to the folder "
                                "holding coco/)")
    # No preset metadata: class names and the category-id map are read from the json, which for COCO gives
    # Detectron2's built-in ones and for any other COCO-format file its own categories.
    register_coco_instances(name, {}, str(json_file), str(image_root))


def register_datasets(names: list[str] | tuple[str, ...], root: str | Path | None = None) -> None:
    """(Re-)register each named dataset under ``root`` (default: :func:`dataset_root`)."""
    root = Path(root) if root is not None else dataset_root()
    for name in names:
        if name in VOC_SPLITS:
            _unregister(name)
            _register_voc(name, root)
        elif name in COCO_SPLITS:
            _unregister(name)
            _register_coco(name, root)
        else:
            raise ConfigError(f"dataset '{name}' is not one of the detection transfer datasets: "
                             f"{sorted(VOC_SPLITS) + sorted(COCO_SPLITS)}")
