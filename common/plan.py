"""Plan a run before renting GPUs: ``python -m common.plan --config <paper config> [--gpus N] [--gpu-memory GiB]
[--tflops X] [--utilisation U]``, or ``python -m common.plan --all --markdown docs/compute.md`` for every paper config.

What it prints, for the config's method built the way the trainer builds it (``build_initial_method`` with the
trainer's ``build_method``, plus the online probe):

- parameters (trainable and all, an EMA target included);
- FLOPs per image and per optimiser step: PyTorch's FLOP counter (``torch.utils.flop_counter.FlopCounterMode``)
  over one forward and backward pass of the method on every view and crop the augmentation makes (global views
  at ``augment.image_size``, local crops at ``augment.local_size``), the loss and the online probe included. It
  counts matrix products and convolutions (a multiply-add is 2 FLOPs); element-wise work, normalisation and the
  optimiser's update are not counted (on a GPU they are bound by memory traffic, not by FLOPs);
- activation memory per device: the bytes of every tensor autograd keeps for the backward pass (one count per
  storage, parameters excluded) at the per-device micro-batch;
- the largest per-device micro-batch that fits ``--gpu-memory`` with the weights, their gradients and the
  optimiser's state, and the gradient accumulation the config's global batch then needs. A method whose loss
  couples the samples of a batch (``Method.couples_batch``) accumulates by gradient caching (``grad_cache``,
  ``common/grad_cache.py``): its step then costs one more forward pass per micro-batch, which the FLOPs per step
  count, and the whole batch's loss, counted per micro-batch (a small share of a step);
- total PFLOP over the run (steps x FLOPs per step) and GPU-hours at ``--tflops`` x ``--utilisation``.

How it counts: ``common/pass_count.py``.

The trainer of a config is the ``train.py`` of the package the config lives in (``<package>/configs/X.yaml`` ->
``<package>/train.py``), imported by name as ``common.sweep`` does (``common`` imports no paper package
statically); ``--train`` names another one.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from common.config import load_config
from common.data import DataConfig, dataset_info
from common.data.longtail import longtail_counts
from common.entry import input_error_line, run_command
from common.errors import ConfigError, DataError
from common.pass_count import measure, view_shapes
from common.sweep import load_trainer

REPO_ROOT = Path(__file__).resolve().parent.parent
GIB = 2**30
# Defaults of the command line: an 80 GiB accelerator (A100 80GB, H100) and the dense bf16 peak of an H100 SXM
# (989 TFLOP/s, NVIDIA's data sheet); the utilisation of 0.35 is an assumption, not a measurement: pass the share
# of peak that bench/gpu_check.py measures on your cards (its achieved_share_of_peak).
DEFAULT_GPUS = 8
DEFAULT_GPU_MEMORY_GIB = 80.0
DEFAULT_TFLOPS = 989.0
DEFAULT_UTILISATION = 0.35
# Optimiser state per trainable parameter, in copies of the parameter: momentum (SGD, LARS) or Adam's two moments.
OPTIMISER_STATES = {"sgd": 1, "lars": 1, "adam": 2, "adamw": 2}
# Training images of the data sets the paper configs name, as their publications state them (ImageNet-100: the
# count usually reported for the CMC subset of common/data/imagenet100_classes.txt, not checked against files
# here). Image folders, Hugging Face sets and ImageNet hierarchies have no published count: n/a.
TRAIN_IMAGES = {"cifar10": 50_000, "cifar100": 50_000, "fashion_mnist": 60_000, "imagenet": 1_281_167,
                "imagenet100": 126_689, "stl10:train": 5_000, "stl10:unlabeled": 100_000,
                "stl10:train+unlabeled": 105_000}
IMAGES_PER_CLASS = {"cifar10_lt": (5_000, 10), "cifar100_lt": (500, 100), "fashion_mnist_lt": (6_000, 10)}


def trainer_of(config: Path) -> str:
    """The train script of the package a config lives in: ``<package>/configs/X.yaml`` -> ``<package>/train.py``
    (relative to the repository root)."""
    for folder in config.resolve().parents:
        script = folder / "train.py"
        if script.is_file() and REPO_ROOT in script.parents:
            return script.relative_to(REPO_ROOT).as_posix()
    raise ConfigError(f"{config}: no train.py in the folders above it; name the trainer with --train")


def train_images(data: DataConfig, split: str) -> int | None:
    """Training images of the run, without reading them where the data set's size is published; ``None`` where
    it depends on files that are not here (image folders, Hugging Face, ImageNet hierarchies)."""
    if data.name in IMAGES_PER_CLASS:
        per_class, classes = IMAGES_PER_CLASS[data.name]
        total = sum(longtail_counts(per_class, classes, data.imbalance_ratio, data.imbalance_profile))
    else:
        total = TRAIN_IMAGES.get(f"{data.name}:{split}", TRAIN_IMAGES.get(data.name))
    if total is None:
        return data.subset
    return min(total, data.subset) if data.subset else total


def divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


@dataclass
class Plan:
    config: str
    trainer: str
    method: str
    backbone: str
    views: str  # e.g. 2x224 + 8x96
    counted_on: str
    parameters: int
    trainable: int
    gpus: int
    batch_size: int
    per_device_batch: int
    flops_per_image: float  # forward + backward, at the configured per-device batch
    flops_per_step: float
    activation_gib: float  # per device, at the configured per-device batch (no accumulation)
    static_gib: float  # weights, gradients, optimiser state
    peak_gib: float  # the memory bound at the per-device batch: static, activations, the backward's transient
    max_micro_batch: int  # the largest per-device micro-batch that fits the GPU memory
    accumulation: int  # micro-batches per step each device needs to reach the config's batch
    gradient_caching: bool  # that accumulation runs gradient caching (a batch-coupled loss, grad_cache=true)
    steps: int | None
    total_pflop: float | None
    gpu_hours: float | None
    images_per_second_per_gpu: float  # at --tflops x --utilisation


def plan_config(path: str | Path, train: str | None = None, gpus: int = DEFAULT_GPUS,
                gpu_memory_gib: float = DEFAULT_GPU_MEMORY_GIB, tflops: float = DEFAULT_TFLOPS,
                utilisation: float = DEFAULT_UTILISATION, overrides: tuple[str, ...] = (),
                device: str = "cpu") -> Plan:
    """The plan of the config at ``path`` (with ``key=value`` overrides), counted on the meta device or on
    ``device``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config not found: {path}")
    script = train or trainer_of(path)
    trainer = load_trainer(script, path)
    build_method = importlib.import_module(trainer.module).build_method
    cfg = load_config(trainer.schema, ["--config", str(path), *overrides])
    if cfg.batch_size % gpus:
        raise ConfigError(f"{path}: batch_size {cfg.batch_size} is not divisible by --gpus {gpus}")
    info = dataset_info(cfg.data)
    channels = cfg.backbone.in_chans or info.channels
    counts = measure(cfg, build_method, channels, info.image_size, info.num_classes, device)
    element = 8 if cfg.dtype == "float64" else 4
    per_device = cfg.batch_size // gpus
    static = element * (counts.parameters + counts.trainable * (1 + OPTIMISER_STATES[cfg.optim.name]))
    budget = gpu_memory_gib * GIB - static

    def needed(batch: int) -> int:
        # while one layer's backward runs, its output's gradient and its input's gradient exist beside the saved
        # activations: two of the largest saved tensors bound that transient
        return counts.activation_bytes(batch) + 2 * counts.largest_activation_bytes(batch)

    def fits(batch: int) -> bool:
        return needed(batch) <= budget

    low, high = 0, per_device  # the largest fitting micro-batch up to the per-device batch (counts grow with B)
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    accumulation = next((k for k in divisors(per_device) if per_device // k <= low), 0)
    micro = per_device // accumulation if accumulation else per_device
    caching = accumulation > 1 and counts.couples_batch and cfg.grad_cache
    per_micro = counts.flops(micro) + (counts.forward_flops(micro) if caching else 0)  # pass 1 of the cache
    flops_per_step = per_micro * (accumulation or 1) * gpus
    images = train_images(cfg.data, cfg.train_split)
    steps = cfg.epochs * (images // cfg.batch_size) if images else None
    if cfg.max_steps is not None:
        steps = min(steps, cfg.max_steps) if steps is not None else cfg.max_steps
    total = steps * flops_per_step if steps is not None else None
    rate = tflops * 1e12 * utilisation
    shapes = view_shapes(cfg, channels, info.image_size)
    views = " + ".join(f"{shapes.count(s)}x{s[1]}" for s in dict.fromkeys(shapes))
    return Plan(
        config=path.as_posix(), trainer=script, method=cfg.method.name, backbone=cfg.backbone.name, views=views,
        counted_on=counts.device, parameters=counts.parameters, trainable=counts.trainable, gpus=gpus,
        batch_size=cfg.batch_size, per_device_batch=per_device, flops_per_image=flops_per_step / cfg.batch_size,
        flops_per_step=flops_per_step, activation_gib=counts.activation_bytes(per_device) / GIB,
        static_gib=static / GIB, peak_gib=(static + needed(per_device)) / GIB, max_micro_batch=low,
        accumulation=accumulation, gradient_caching=caching, steps=steps,
        total_pflop=total / 1e15 if total is not None else None,
        gpu_hours=total / rate / 3600 if total is not None else None,
        images_per_second_per_gpu=rate / (flops_per_step / cfg.batch_size))


def paper_configs() -> list[Path]:
    """Every training config of the repository: the YAML files under a ``configs`` folder of a package whose
    ``train.py`` runs ``common.trainer`` (it defines ``CONFIG_SCHEMA``; examples and study recipes included);
    sweep files are not configs."""
    def trained_here(path: Path) -> bool:
        try:
            script = REPO_ROOT / trainer_of(path)
        except ConfigError:
            return False
        return "CONFIG_SCHEMA" in script.read_text()

    found = [path for path in REPO_ROOT.glob("**/configs/**/*.yaml")
             if not path.name.endswith("_sweep.yaml") and ".venv" not in path.parts and trained_here(path)]
    return sorted(found)


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


def format_plan(plan: Plan, gpu_memory_gib: float, tflops: float, utilisation: float) -> str:
    fit = (f"the per-device batch {plan.per_device_batch} fits" if plan.accumulation == 1 else
           f"accumulate {plan.accumulation} micro-batches of {plan.per_device_batch // plan.accumulation}"
           if plan.accumulation else "not even one image per device fits")
    return "\n".join([
        f"config            {plan.config} (trainer {plan.trainer}, method {plan.method}, backbone {plan.backbone})",
        f"views per image   {plan.views}",
        f"parameters        {plan.parameters:,} ({plan.trainable:,} trainable, the online probe included)",
        (f"FLOPs per image   {plan.flops_per_image / 1e9:.3f} GFLOP (forward + backward, every view; counted "
        f"on {plan.counted_on})"),
        f"FLOPs per step    {plan.flops_per_step / 1e12:.3f} TFLOP (batch {plan.batch_size} on {plan.gpus} GPUs)",
        (f"memory per GPU    {plan.peak_gib:.2f} GiB at most at the per-device batch {plan.per_device_batch}: "
        f"{plan.activation_gib:.2f} GiB of activations, {plan.static_gib:.2f} GiB of weights, gradients and "
        "optimiser state, and the backward pass's transient"),
        f"largest micro-batch that fits {gpu_memory_gib:g} GiB: {plan.max_micro_batch} per GPU; {fit}"
        + ((" by gradient caching (the loss couples the batch; one more forward per micro-batch, counted)"
            if plan.gradient_caching else " (plain accumulation)") if plan.accumulation > 1 else ""),
        f"steps             {plan.steps if plan.steps is not None else 'n/a (the training set is not here)'}",
        (f"total             {_number(plan.total_pflop)} PFLOP, {_number(plan.gpu_hours)} GPU-hours at "
        f"{tflops:g} TFLOP/s x {utilisation:g} utilisation ({plan.images_per_second_per_gpu:,.0f} images/s per GPU)"),
    ])


def markdown_table(plans: list[Plan], unplanned: list[tuple[str, str]], command: str, gpus: int,
                   gpu_memory_gib: float, tflops: float, utilisation: float) -> str:
    head = [
        "# Compute of every paper config",
        "",
        (f"Generated by `{command}` (do not edit by hand): {gpus} GPUs of {gpu_memory_gib:g} GiB, "
        f"{tflops:g} TFLOP/s at {utilisation:g} utilisation. How each figure is counted: the docstring of "
        "`common/plan.py` (FLOPs: PyTorch's FLOP counter over forward and backward of every view; activations: "
        "the tensors autograd saves, float32; both exact polynomials in the batch fitted at micro-batches 2, 3, 4). "
        "`accum`: micro-batches per step each GPU needs for the config's batch (0: one image does not fit; "
        "cached: by gradient caching, whose extra forward pass the FLOPs count); "
        "`n/a`: the training set's size is not known without its files; `counted on`: meta (the method ran on "
        "the meta device) or cpu."),
        "",
        ("| config | method | backbone | views | params (M) | GFLOP/image | TFLOP/step | act. GiB/GPU | "
        "max micro-batch | accum | steps | PFLOP | GPU-hours | counted on |"),
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    rows = [f"| {p.config} | {p.method} | {p.backbone} | {p.views} | {p.parameters / 1e6:.2f} | "
            f"{p.flops_per_image / 1e9:.3g} | {p.flops_per_step / 1e12:.3g} | {p.activation_gib:.3g} | "
            f"{p.max_micro_batch} | {p.accumulation}{' (cached)' if p.gradient_caching else ''} | "
            f"{p.steps if p.steps is not None else 'n/a'} | {_number(p.total_pflop)} | {_number(p.gpu_hours)} | "
            f"{p.counted_on} |" for p in plans]
    if unplanned:
        rows += ["", "Not planned (the config's data must be on disk to know its images' size and channels):", ""]
        rows += [f"- {config}: {reason}" for config, reason in unplanned]
    return "\n".join(head + rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.plan", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="a training config (YAML)")
    source.add_argument("--all", action="store_true", help="every config under */configs/ (sweep files excluded)")
    parser.add_argument("--train", help="the trainer (script or module); default: the config's package's train.py")
    parser.add_argument("--gpus", type=int, default=DEFAULT_GPUS, help=f"GPUs (default {DEFAULT_GPUS})")
    parser.add_argument("--gpu-memory", type=float, default=DEFAULT_GPU_MEMORY_GIB,
                        help=f"GiB per GPU (default {DEFAULT_GPU_MEMORY_GIB:g})")
    parser.add_argument("--tflops", type=float, default=DEFAULT_TFLOPS,
                        help=f"peak TFLOP/s per GPU (default {DEFAULT_TFLOPS:g}: H100 SXM dense bf16)")
    parser.add_argument("--utilisation", type=float, default=DEFAULT_UTILISATION,
                        help=f"share of the peak a run reaches (default {DEFAULT_UTILISATION:g})")
    parser.add_argument("--markdown", help="with --all: write the table to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the CPU passes are tiny (batch 2-4); one thread keeps a shared machine usable

    def body() -> int:
        if args.gpus < 1 or args.gpu_memory <= 0 or args.tflops <= 0 or not 0 < args.utilisation <= 1:
            raise ConfigError("--gpus, --gpu-memory and --tflops must be positive, --utilisation in (0, 1]")
        settings = (args.gpu_memory, args.tflops, args.utilisation)
        if args.config:
            plan = plan_config(args.config, args.train, args.gpus, *settings)
            print(format_plan(plan, *settings))
            return 0
        plans, unplanned = [], []
        for path in paper_configs():
            config = path.relative_to(REPO_ROOT).as_posix()
            try:
                plan = plan_config(config, None, args.gpus, *settings)
            except DataError as error:  # an image folder that is not here: a row that says so
                unplanned.append((config, input_error_line(error)))
                print(f"{config}: not planned: {input_error_line(error)}", flush=True)
                continue
            print(f"{plan.config}: {plan.flops_per_image / 1e9:.3g} GFLOP/image, {_number(plan.gpu_hours)} "
                  "GPU-hours", flush=True)
            plans.append(plan)
        if args.markdown:
            command = "python -m common.plan --all" + "".join(
                f" --{name.replace('_', '-')} {value:g}" for name, value in
                (("gpus", args.gpus), ("gpu_memory", args.gpu_memory), ("tflops", args.tflops),
                 ("utilisation", args.utilisation))) + f" --markdown {args.markdown}"
            Path(args.markdown).write_text(markdown_table(plans, unplanned, command, args.gpus, *settings))
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
