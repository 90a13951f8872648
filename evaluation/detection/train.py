"""Fine-tune a converted backbone with Detectron2 and report detection (and mask) AP, AP50, AP75.

    python -m evaluation.detection.train --config-file evaluation/detection/configs/voc0712_faster_rcnn_R50_C4_24k.yaml \
        --weights r50.pkl --num-gpus 8 [OUTPUT_DIR runs/det KEY VALUE ...]

``--weights`` is a pickle from ``python -m evaluation.detection.convert``. Datasets are read under
``$DETECTRON2_DATASETS`` (see ``evaluation.detection.datasets``). The final evaluation is written to
``OUTPUT_DIR/results.json`` (or ``--results``) as ``{"results": {dataset: {"box": {"AP", "AP50", "AP75"},
"mask": {...}}}, ...}``. Needs Detectron2: ``scripts/install_detectron2.sh``.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator
from detectron2.layers import get_norm
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads
from detectron2.utils import comm

from common.entry import run_command
from common.errors import ConfigError, RunFolderError
from evaluation.detection.datasets import register_datasets

# Detectron2's evaluator task names -> the names in our results JSON.
TASKS = {"bbox": "box", "segm": "mask"}
METRICS = ("AP", "AP50", "AP75")


@ROI_HEADS_REGISTRY.register()
class Res5ROIHeadsExtraNorm(Res5ROIHeads):
    """The C4 res5 box head with one more ``MODEL.RESNETS.NORM`` layer after its last block.

    A bottleneck block ends with the residual sum, so res5's output reaches the new box predictor unnormalised.
    The MoCo detection protocol (He et al. 2020, Sec. 4.2) fine-tunes with trained SyncBN everywhere because
    self-supervised features are scaled differently from supervised ones, and normalises the new head's input too.
    """

    @classmethod
    def _build_res5_block(cls, cfg: CfgNode):
        res5, out_channels = super()._build_res5_block(cfg)
        res5.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, out_channels))
        return res5, out_channels


class TransferTrainer(DefaultTrainer):
    """Detectron2's default training loop with the evaluator each dataset's metadata asks for."""

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None):
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type")
        if evaluator_type == "pascal_voc":
            return PascalVOCDetectionEvaluator(dataset_name)
        if evaluator_type == "coco":
            # Without Detectron2's compiled extension this falls back to pycocotools' official COCOeval.
            return COCOEvaluator(dataset_name, output_dir=output_folder or str(Path(cfg.OUTPUT_DIR) / "inference"))
        raise ConfigError(f"no evaluator for dataset '{dataset_name}' (evaluator_type {evaluator_type!r})")

    def train(self):
        """Train, then return the evaluation that ``DefaultTrainer``'s final evaluation hook ran."""
        super().train()
        return self._last_eval_results


def summarise(results: Mapping, test_datasets: tuple[str, ...]) -> dict[str, dict[str, dict[str, float | None]]]:
    """``{dataset: {"box"|"mask": {"AP", "AP50", "AP75"}}}`` from Detectron2's evaluation results.

    Detectron2 unwraps the per-dataset level when there is a single test set; NaN (no ground truth) becomes None
    so the JSON stays standard.
    """
    if len(test_datasets) == 1 and test_datasets[0] not in results:
        results = {test_datasets[0]: results}
    summary: dict[str, dict[str, dict[str, float | None]]] = {}
    for dataset, tasks in results.items():
        summary[dataset] = {
            TASKS[task]: {m: (None if math.isnan(v := float(metrics[m])) else v) for m in METRICS}
            for task, metrics in tasks.items() if task in TASKS
        }
    return summary


def setup(args) -> CfgNode:
    cfg = get_cfg()
    try:
        cfg.merge_from_file(args.config_file)
        if args.weights:
            if not Path(args.weights).is_file():
                raise RunFolderError(f"--weights: {args.weights} not found")
            cfg.MODEL.WEIGHTS = args.weights
        cfg.merge_from_list(args.opts)
    except KeyError as error:  # yacs reports an unknown config key as KeyError
        raise ConfigError(f"Detectron2 config: {str(error).strip(chr(39))}") from None
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def run(args) -> dict:
    """Train and evaluate (or only evaluate) in this process; the main process writes the results JSON."""
    cfg = setup(args)
    register_datasets(tuple(cfg.DATASETS.TRAIN) + tuple(cfg.DATASETS.TEST))
    if args.eval_only:
        model = TransferTrainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = TransferTrainer.test(cfg, model)
    else:
        trainer = TransferTrainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        results = trainer.train()
    if not comm.is_main_process():  # evaluators gather to the main process; the others hold no results
        return {}
    summary = summarise(results, tuple(cfg.DATASETS.TEST))
    path = Path(args.results or Path(cfg.OUTPUT_DIR) / "results.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"config_file": args.config_file, "weights": cfg.MODEL.WEIGHTS, "max_iter": cfg.SOLVER.MAX_ITER,
              "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH, "base_lr": cfg.SOLVER.BASE_LR, "results": summary}
    path.write_text(json.dumps(record, indent=2) + "\n")
    return summary


def build_parser():
    parser = default_argument_parser(epilog=__doc__)
    parser.prog = "python -m evaluation.detection.train"
    parser.add_argument("--weights", default="",
                        help="Detectron2 weights (.pkl from evaluation.detection.convert); sets MODEL.WEIGHTS")
    parser.add_argument("--results", default="", help="results JSON (default: OUTPUT_DIR/results.json)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.config_file:
        parser.error("--config-file is required (see evaluation/detection/configs/)")
    if not Path(args.config_file).is_file():
        parser.error(f"--config-file: {args.config_file} not found")
    return run_command(lambda: launch(run, args.num_gpus, num_machines=args.num_machines,
                                      machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,)))


if __name__ == "__main__":
    sys.exit(main())
