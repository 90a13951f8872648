"""Run every paper config end to end on synthetic data and measure what ``tests/test_paper_configs.py`` asserts.

A run is the user's command, ``<pkg>/train.py --config FILE`` (a sweep file: its first run), called in-process
through the trainer's ``main`` with only the overrides of ``smoke_overrides``: synthetic data in the data set's
real format (``tests/paper_config_data.py``), images of at most ``MAX_IMAGE_SIZE`` px, a small global batch,
``max_steps=2``, a small end-of-run evaluation, no tracker, no progress bar, no DataLoader workers, a loss
logged at every step. Everything else (backbone, heads, method, latent, optimiser, augmentation and where it
runs, mixed precision, VCReg placement) is the file's.

    python tests/paper_config_smoke.py --out DIR CONFIG ...   # a worker: claims configs, writes DIR/<slug>.json

Workers claim configs in the order given (a claim file per config, created exclusively), so several workers
share one list; each run's record (``run_config``) holds its wall and CPU seconds, losses, how far the
parameters moved, the results keys and statistics of the features, latent code and classifier predictions.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import gc
import io
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: import the repository's packages
    sys.path.insert(0, str(ROOT))

import torch

MAX_IMAGE_SIZE = 64  # the largest crop a smoke run trains on (the configs' 224 px would take minutes per run)
EVAL_TRAIN_IMAGES = 40  # k-NN bank and linear-probe training set of the end-of-run evaluation
TEST_IMAGES = 20
TRAIN_IMAGES = 40
LINEAR_EPOCHS = 2
# Backbones whose input size is fixed by the architecture (timm ViTs: the position embeddings of 224 px):
# their runs keep the config's image size.
FIXED_INPUT_BACKBONES = ("timm:vit_",)
DETECTION_CONFIGS = "evaluation/detection/configs"
# Slowest first, so that two workers finish together: (substring of the backbone name, rank).
COST_RANK = (("resnet200", 0), ("vit_", 1), ("convnext_tiny", 2), ("resnet50", 3), ("convnext_atto", 4),
             ("resnet18", 5))


def paper_configs() -> list[str]:
    """Every ``configs/*.yaml`` of a package (``<pkg>/configs``, ``<pkg>/<sub>/configs``; relative paths), the
    Detectron2 configs excepted."""
    return [p for p in all_configs() if not p.startswith(DETECTION_CONFIGS)]


def all_configs() -> list[str]:
    found = {*ROOT.glob("*/configs/*.yaml"), *ROOT.glob("*/*/configs/*.yaml")}
    return sorted(p.relative_to(ROOT).as_posix() for p in found if not p.relative_to(ROOT).parts[0].startswith("."))


def run_spec(path: str) -> tuple[str, list[str]]:
    """``(trainer module, argv)`` of the user's command for config ``path``; a sweep file's first run."""
    if path.endswith("_sweep.yaml"):
        from common.sweep import expand

        sweep = expand(ROOT / path)
        return sweep.trainer.module, list(sweep.runs[0].argv)
    # the train.py beside the configs folder: <pkg>/configs/X.yaml -> pkg.train (examples/barlowtwins/configs too)
    return ".".join((*Path(path).parent.parent.parts, "train")), ["--config", str(ROOT / path)]


def resolved_config(path: str):
    """The config a run of ``path`` resolves to, through its trainer's ``CONFIG_SCHEMA``."""
    import importlib

    from common.config import load_config

    module, argv = run_spec(path)
    return load_config(importlib.import_module(module).CONFIG_SCHEMA, argv)


def cost_rank(path: str) -> int:
    name = resolved_config(path).backbone.name
    return next((rank for key, rank in COST_RANK if key in name), len(COST_RANK))


def smoke_overrides(cfg, data_root: Path, output_dir: Path) -> list[str]:
    """The only changes a smoke run makes to the config ``cfg``."""
    from common.data import dataset_info

    per_micro_batch = 4 if cfg.grad_accum_steps == 1 else 2  # batch norm needs at least 2 images
    overrides = [
        f"data.root={data_root}", "data.num_workers=0", f"output_dir={output_dir}", "max_steps=2",
        f"batch_size={per_micro_batch * cfg.grad_accum_steps}", "tracker=none", "progress_bar=false",
        "log_every_steps=1", f"eval.max_train_images={EVAL_TRAIN_IMAGES}", f"eval.linear_epochs={LINEAR_EPOCHS}",
    ]
    size = cfg.augment.image_size or dataset_info(cfg.data).image_size
    if size > MAX_IMAGE_SIZE and not cfg.backbone.name.startswith(FIXED_INPUT_BACKBONES):
        overrides.append(f"augment.image_size={MAX_IMAGE_SIZE}")
        if cfg.augment.local_crops:  # local crops keep their size relative to the global crops
            overrides.append(f"augment.local_size={max(8, round(cfg.augment.local_size * MAX_IMAGE_SIZE / size))}")
    return overrides


def slug(path: str) -> str:
    return path.removesuffix(".yaml").replace("/configs/", "__").replace("/", "_")


# ------------------------------------------------------------------------------------------------ measuring
def feature_stats(x: torch.Tensor) -> dict:
    """How the frozen features vary across images."""
    x = x.double()
    std = x.std(0)
    return {"rows": x.shape[0], "dims": x.shape[1], "varying_dims": int((std > 0).sum()),
            "distinct_rows": bool((x != x[0]).any()), "finite": bool(torch.isfinite(x).all()),
            "mean_std": float(std.mean()), "mean_abs": float(x.abs().mean())}


def code_stats(branch, x: torch.Tensor) -> dict:
    """The latent code ``branch.code`` of features ``x``: the share of units constant over the images."""
    weight = next(branch.parameters(), x)
    with torch.no_grad():
        code = branch.code(x.to(weight.device, weight.dtype)).double()
    constant = (code == code[0]).all(0)
    binary = bool(((code == 0) | (code == 1)).all())
    stats = {"units": code.shape[1], "constant_fraction": float(constant.float().mean()), "binary": binary}
    if binary:
        stats["ones_fraction"] = float(code.mean())
    return stats


def eval_test_images(method, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """The test images as the evaluation transforms them, and their labels."""
    from common.augment import build_eval_transform
    from common.data import build_dataset, dataset_info
    from evaluation.features import extract_inputs_and_features

    info = dataset_info(cfg.data)
    transform = build_eval_transform(info, cfg.backbone.in_chans or info.channels, cfg.augment.image_size)
    images, _, labels = extract_inputs_and_features(method.backbone, build_dataset(cfg.data, "test"), transform,
                                                    cfg.eval.batch_size)
    return images.to(next(method.parameters()).dtype), labels


def prediction_stats(method, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """The classes ``method.classifier`` predicts for ``images``, through the method's own forward pass (eval
    mode): how many distinct classes and the most frequent class's share; the same for the logits centred over
    the images (a shift of a class's logit shared by every image, as the first steps of training give the
    classes of the first batches, is taken out); and ``image_spread``, how much the logits depend on the image:
    the mean over classes of their standard deviation over images, over the standard deviation of all logits
    (0 when the classifier sees the same input for every image)."""
    outputs = []
    hook = method.classifier.register_forward_hook(lambda module, args, output: outputs.append(output.detach()))
    try:
        with torch.no_grad():
            method([images], labels)
    finally:
        hook.remove()
    logits = outputs[-1].double()
    counts = torch.bincount(logits.argmax(1))
    centred = torch.bincount((logits - logits.mean(0)).argmax(1))
    return {"distinct_classes": int((counts > 0).sum()), "top_class_share": float(counts.max() / len(logits)),
            "distinct_classes_centred": int((centred > 0).sum()), "images": len(logits),
            "image_spread": float(logits.std(0).mean() / logits.std().clamp_min(torch.finfo(torch.float64).tiny))}


class Recorder:
    """What a smoke run keeps of the method: its initial parameters and, from the final evaluation, the
    statistics of the features it read, of the latent code and of the classifier's predictions."""

    def __init__(self):
        self.initial: dict[str, torch.Tensor] = {}
        self.evaluated: dict = {}
        self.trainer = None

    def wrap_build(self, build_method):
        def build(cfg, backbone, feature_dim):
            method = build_method(cfg, backbone, feature_dim)
            self.initial = {name: p.detach().clone() for name, p in method.named_parameters()}
            own_figures = method.evaluate_features

            def evaluate_features(features):
                x = torch.cat([features.train_x, features.test_x])
                self.evaluated["features"] = feature_stats(x)
                branch = getattr(method, "branch", None)
                if callable(getattr(branch, "code", None)):
                    self.evaluated["code"] = code_stats(branch, x)
                if isinstance(getattr(method, "classifier", None), torch.nn.Module):
                    images, labels = eval_test_images(method, cfg)
                    self.evaluated["predictions"] = prediction_stats(method, images, labels)
                return own_figures(features)

            method.evaluate_features = evaluate_features
            return method

        return build


def moved(initial: dict[str, torch.Tensor], method) -> dict:
    """Which parameters changed between the build and the end of training."""
    final = dict(method.named_parameters())
    changed = [name for name in final if not torch.equal(initial[name], final[name].detach())]
    backbone_first = next(name for name in final if name.startswith("backbone."))
    return {"parameters": len(final), "changed": len(changed),
            "unchanged": sorted(set(final) - set(changed)),
            "backbone_first": backbone_first,
            "backbone_first_change": float((final[backbone_first].detach() - initial[backbone_first]).abs().max())}


def reset_accelerate() -> None:
    """Forget the previous run's Accelerate state (one process runs many trainers)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def run_config(path: str, workdir: Path) -> dict:
    """Run config ``path`` as a smoke run under ``workdir``; its record (see the module docstring)."""
    import importlib

    import common.entry
    from common.trainer import Trainer
    from tests.paper_config_data import write_dataset

    record: dict = {"config": path}
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    output_dir = workdir / "runs" / slug(path)
    try:
        cfg = resolved_config(path)
        subset = cfg.data.subset or 0
        data_root = workdir / "data" / f"{cfg.data.name}_{cfg.data.hierarchy}_{subset}"
        if not data_root.exists():
            write_dataset(cfg.data, data_root, max(TRAIN_IMAGES, subset), TEST_IMAGES)
        module_name, argv = run_spec(path)
        overrides = smoke_overrides(cfg, data_root, output_dir)
        record["overrides"] = [o for o in overrides if not o.startswith(("data.root=", "output_dir="))]
        recorder = Recorder()

        class RecordingTrainer(Trainer):
            def __init__(self, cfg, build_method, evaluate=None):
                super().__init__(cfg, recorder.wrap_build(build_method), evaluate)
                recorder.trainer = self

        common.entry.Trainer = RecordingTrainer
        reset_accelerate()
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            code = importlib.import_module(module_name).main([*argv, *overrides])
        if code != 0:
            raise RuntimeError(f"exit code {code}: {stderr.getvalue().strip()[-2000:]}")
        trainer = recorder.trainer
        logged = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
        record["losses"] = [entry.get("loss") for entry in logged]
        record["skipped_steps"] = logged[-1]["skipped_steps"]
        record["results"] = json.loads((output_dir / "results.json").read_text())
        record["moved"] = moved(recorder.initial, trainer.method)
        record["evaluated"] = recorder.evaluated
        record["eval_linear"] = cfg.eval.linear
        record["eval_knn_at_init"] = cfg.eval.knn_at_init
        record["supervised"] = isinstance(getattr(trainer.method, "classifier", None), torch.nn.Module)
        record["method"] = type(trainer.method).__name__
    except Exception:  # noqa: BLE001 (any failure goes into the record, for the test that reads it)
        record["error"] = traceback.format_exc()[-4000:]
    finally:
        reset_accelerate()
        shutil.rmtree(output_dir, ignore_errors=True)
    record["wall_seconds"] = time.perf_counter() - start_wall
    record["cpu_seconds"] = time.process_time() - start_cpu
    return record


def release_memory() -> None:
    """Free the finished run's objects and hand the freed heap back to the system. Without this a worker keeps
    what each run held (reference cycles wait for the collector; glibc keeps freed pages): over the costliest
    configs (ResNet-200, then ViT-B/32), the resident size after each run grew from 2.4 to 8.2 GB without it and
    stayed between 1.3 and 2.3 GB with it; a worker was killed for memory beside another on the 24 GB machine."""
    gc.collect()
    libc = ctypes.util.find_library("c")
    if libc is not None and hasattr(ctypes.CDLL(libc), "malloc_trim"):  # glibc only
        ctypes.CDLL(libc).malloc_trim(0)


def claim(out: Path, name: str) -> bool:
    try:
        os.close(os.open(out / f"{name}.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder of the claim and record files")
    parser.add_argument("configs", nargs="+", help="config paths relative to the repository root")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("SSL_REPRO_DEBUG", "1")  # an input error keeps its traceback in the record
    workdir = args.out / f"worker_{os.getpid()}"
    for path in args.configs:
        name = slug(path)
        if not claim(args.out, name):
            continue
        record = run_config(path, workdir)
        release_memory()
        partial = args.out / f"{name}.json.part"
        partial.write_text(json.dumps(record, indent=1))
        partial.rename(args.out / f"{name}.json")
        print(f"{path}: {record['wall_seconds']:.1f} s wall, {record['cpu_seconds']:.1f} s CPU"
              + (" ERROR" if "error" in record else ""), flush=True)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
