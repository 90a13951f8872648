"""GPU check of each paper's main config: the largest batch that fits, images/s, peak memory, finite losses.

Rows (``CHECKS``): StochCon ``stochcon/configs/imagenet_resnet50_bernoulli.yaml`` (Table 1's ResNet-50, 2 global
224 px + 8 local 96 px views), MSBReg ``msbreg/configs/imagenet_resnet50_msbreg.yaml`` (K = 4 views of 224 px),
VCReg ``vcreg/configs/imagenet_resnet50_vcreg.yaml`` (supervised, a VCReg layer after every block), each under
bf16 autocast as the configs say, and the VCReg config once more under ``mixed_precision=fp16`` (a grad scaler
whose scale the VCReg layers divide out, attached by ``common.backward_scale`` as the trainer does) at the
batch found for bf16.

Each row builds the run as its trainer does (``CONFIG_SCHEMA`` and ``build_method`` of the paper's ``train.py``,
the online probe, the optimiser with its learning-rate scaling at the batch tried, channels-last if the config
says so) and times what ``common.trainer.Trainer`` does per optimiser step: the forward pass under autocast, the
backward pass, the optimiser step, the method's step hooks, the learning rate of the run's first steps
(warm-up; an epoch taken as ImageNet's 1,281,167 images). The data are synthetic and ImageNet-shaped: random
uint8 images of 224 px held in GPU memory (an in-memory data set, no JPEG decoding), turned into the config's
views once per batch by the on-device augmentation (``common.batch_augment``), so the figures are the model's
step alone; the input pipeline is benchmarked on its own.

The batch (global, one GPU, no accumulation) doubles from ``--start-batch`` until a step runs out of memory,
passes ``--max-batch``, or the next trial and its measured steps would overrun the row's equal share of
``--budget-seconds``; the last that fitted then runs ``--steps`` steps, the first ``--warmup-steps`` untimed.
images/s counts samples (each with all its views). The JSON is rewritten after every row.

Each measured row is set beside ``common.plan``'s figures for it (one GPU, the row's batch, counted on the same
device): FLOPs per image, the TFLOP/s the measured images/s mean and their share of ``--peak-tflops``, the images/s
the plan predicts at ``--peak-tflops`` x ``common.plan.DEFAULT_UTILISATION``, and the plan's memory bound against
the measured peak (the plan counts float32 activations: under bf16/fp16 autocast the bound lies above the peak).

    python bench/gpu_check.py --device cuda --out bench/results/gpu      # scripts/gpu_check.sh runs this
    python bench/gpu_check.py --quick                                    # the same code on the CPU, tiny sizes
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench.timing import machine, set_threads, synchronize
from common.backbones import build_backbone
from common.backward_scale import BackwardScale, attach_backward_scale
from common.batch_augment import BatchAugment
from common.config import load_config
from common.data import dataset_info
from common.optim import build_optimizer, param_groups, scaled_lr
from common.plan import DEFAULT_TFLOPS, DEFAULT_UTILISATION, plan_config
from common.probe import OnlineProbe
from common.trainer import TrainingModule, learning_rate

ROOT = Path(__file__).resolve().parent.parent
IMAGENET_TRAIN_IMAGES = 1_281_167  # an epoch of the real run: sets the warm-up's length in steps
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Check:
    name: str
    trainer: str  # the paper's train module
    config: str  # relative to the repository root
    mixed_precision: str  # bf16 | fp16
    batch_from: str | None = None  # run at the batch another row found instead of searching


CHECKS = (
    Check("stochcon", "stochcon.train", "stochcon/configs/imagenet_resnet50_bernoulli.yaml", "bf16"),
    Check("msbreg", "msbreg.train", "msbreg/configs/imagenet_resnet50_msbreg.yaml", "bf16"),
    Check("vcreg", "vcreg.train", "vcreg/configs/imagenet_resnet50_vcreg.yaml", "bf16"),
    Check("vcreg_fp16", "vcreg.train", "vcreg/configs/imagenet_resnet50_vcreg.yaml", "fp16", batch_from="vcreg"),
)
# --quick: the same code on a CPU in seconds (ResNet-18 on 64 px crops; local crops of 32 px). Not smaller: a
# 16 px crop reaches ResNet-18's last stage at 1 x 1, where the CPU's bfloat16 backward of the stride-2 3 x 3
# convolution (oneDNN, AVX-512/AMX kernels) returns NaN weight gradients for some inputs and not for others from
# one run to the next (uninitialised memory; reproduced with torch 2.14.1 on its own, and gone under
# ONEDNN_MAX_CPU_ISA=AVX2). A 2 x 2 input never did in our trials; ImageNet's 96 px local crops reach it at 3 x 3.
QUICK_OVERRIDES = ("backbone.name=resnet18", "augment.image_size=64", "augment.local_size=32")


class TrainStep:
    """One optimiser step of a config's run, as ``common.trainer.Trainer._train_step`` takes it on one process."""

    def __init__(self, check: Check, overrides: tuple[str, ...], batch: int, device: torch.device):
        module = importlib.import_module(check.trainer)
        cfg = load_config(module.CONFIG_SCHEMA, ["--config", str(ROOT / check.config),
                                                 f"mixed_precision={check.mixed_precision}", f"batch_size={batch}",
                                                 *overrides])
        self.cfg, self.batch, self.device = cfg, batch, device
        torch.manual_seed(cfg.seed)
        info = dataset_info(cfg.data)
        in_chans = cfg.backbone.in_chans or info.channels
        backbone, feature_dim = build_backbone(cfg.backbone, in_chans)
        self.method = module.build_method(cfg, backbone, feature_dim)
        probe = OnlineProbe(feature_dim, info.num_classes) if cfg.online_probe and info.num_classes else None
        self.module = TrainingModule(self.method, probe).to(device)
        if cfg.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        groups = param_groups(self.method, scaled_lr(cfg.optim, batch, cfg.augment.num_views), cfg.optim.weight_decay,
                              cfg.optim.exclude_bias_and_norm, cfg.optim.bias_and_norm_lr_scale)
        if probe is not None:
            groups.append({"params": list(probe.parameters()), "weight_decay": 0.0, "lars_exclude": True,
                           "base_lr": cfg.probe_lr})
        self.optimizer = build_optimizer(cfg.optim, groups)
        self.autocast = AUTOCAST[cfg.mixed_precision]
        self.scaler = torch.amp.GradScaler(device.type) if cfg.mixed_precision == "fp16" else None
        attach_backward_scale(self.module, BackwardScale(self.scaler, 1, 1))
        self.steps_per_epoch = max(1, IMAGENET_TRAIN_IMAGES // batch)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.views, self.labels = self._synthetic_views(info, in_chans)
        self.step = 0

    def _synthetic_views(self, info, in_chans: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The config's views of random uint8 ImageNet-sized images, made on the device."""
        generator = torch.Generator(device=self.device).manual_seed(self.cfg.seed)
        images = torch.randint(0, 256, (self.batch, info.channels, info.image_size, info.image_size),
                               dtype=torch.uint8, device=self.device, generator=generator)
        labels = torch.randint(0, info.num_classes, (self.batch,), device=self.device, generator=generator)
        views = BatchAugment(self.cfg.augment, info, in_chans)(images, generator, 0, 1)
        if self.cfg.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        return views, labels

    def __call__(self) -> torch.Tensor:
        for group in self.optimizer.param_groups:
            if not group.get("fixed_lr"):
                group["lr"] = learning_rate(self.cfg.optim, self.step, self.total_steps, self.steps_per_epoch,
                                            group["base_lr"])
        self.method.on_step_start(self.step, self.total_steps)
        with torch.autocast(self.device.type, dtype=self.autocast):
            out = self.module(self.views, self.labels)
        loss = out["loss"] + out.get("probe_loss", 0.0)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.method.on_step_end(self.step, self.total_steps)
        self.step += 1
        return out["loss"].detach().float()


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def try_batch(check: Check, overrides: tuple[str, ...], batch: int, device: torch.device, steps: int) -> dict:
    """Build the run at ``batch`` and take ``steps`` steps: whether it fits, seconds per step (the first steps,
    with cuDNN's autotuning: an overestimate) and of the whole trial, peak memory."""
    free_memory()
    reset_peak(device)
    start_trial = time.perf_counter()
    try:
        step = TrainStep(check, overrides, batch, device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(str(device))
        seconds = (time.perf_counter() - start) / steps
    except torch.OutOfMemoryError:
        return {"batch": batch, "fits": False}
    finally:
        step = None
        free_memory()
    return {"batch": batch, "fits": True, "seconds_per_step": seconds,
            "trial_seconds": time.perf_counter() - start_trial, "peak_gib": peak_memory_gib(device)}


def largest_batch(check: Check, overrides: tuple[str, ...], device: torch.device, start: int, limit: int,
                  deadline: float, trial_steps: int, measured_steps: int) -> tuple[int | None, list[dict], str]:
    """Double the batch from ``start`` until it no longer fits or passes ``limit``, or until trying the next one
    and then measuring ``measured_steps`` steps at it would end after ``deadline`` (a doubled batch takes about
    twice the time). Returns the last batch that fitted, the trials and why the search stopped."""
    tried, best, batch = [], None, start
    while batch <= limit:
        trial = try_batch(check, overrides, batch, device, trial_steps)
        tried.append(trial)
        if not trial["fits"]:
            return best, tried, "out of memory"
        best = batch
        still_needed = 2 * trial["trial_seconds"] + measured_steps * 2 * trial["seconds_per_step"]
        if batch * 2 <= limit and time.monotonic() + still_needed > deadline:
            return best, tried, "time"
        batch *= 2
    return best, tried, "max batch"


def measure(check: Check, overrides: tuple[str, ...], batch: int, device: torch.device, steps: int,
            warmup_steps: int) -> dict:
    """``steps`` steps at ``batch``: images/s over the steps after ``warmup_steps``, peak memory, losses."""
    free_memory()
    reset_peak(device)
    step = TrainStep(check, overrides, batch, device)
    losses = [step() for _ in range(warmup_steps)]
    synchronize(str(device))
    start = time.perf_counter()
    losses += [step() for _ in range(steps - warmup_steps)]
    synchronize(str(device))
    seconds = time.perf_counter() - start
    losses = torch.stack(losses).cpu()
    result = {"images_per_second": batch * (steps - warmup_steps) / seconds,
              "seconds_per_step": seconds / (steps - warmup_steps), "peak_gib": peak_memory_gib(device),
              "finite_loss": bool(torch.isfinite(losses).all()), "first_loss": float(losses[0]),
              "last_loss": float(losses[-1]), "views": [list(v.shape[1:]) for v in step.views],
              "optimizer": step.cfg.optim.name}
    if step.scaler is not None:  # fp16: the scale after the steps (it halves at every step with inf/nan gradients)
        result["final_grad_scale"] = step.scaler.get_scale()
    del step
    free_memory()
    return result


def planned(check: Check, overrides: tuple[str, ...], batch: int, device: torch.device, images_per_second: float,
            peak_tflops: float) -> dict:
    """``common.plan``'s figures for a measured row, and what the measured images/s mean in TFLOP/s."""
    plan = plan_config(ROOT / check.config, check.trainer, gpus=1, tflops=peak_tflops,
                       overrides=(f"mixed_precision={check.mixed_precision}", f"batch_size={batch}", *overrides),
                       device=str(device))
    achieved = images_per_second * plan.flops_per_image / 1e12
    return {"plan": {"gflop_per_image": plan.flops_per_image / 1e9, "counted_on": plan.counted_on,
                     "images_per_second": plan.images_per_second_per_gpu, "utilisation": DEFAULT_UTILISATION,
                     "peak_tflops": peak_tflops, "peak_gib": plan.peak_gib},
            "achieved_tflops": achieved, "achieved_share_of_peak": achieved / peak_tflops}


def run(args, save) -> list[dict]:
    """Every row of ``CHECKS``; ``save(rows)`` after each (a time limit that stops the script keeps them)."""
    device = torch.device(args.device)
    overrides = QUICK_OVERRIDES if args.quick else ()
    deadline_all = time.monotonic() + args.budget_seconds
    found: dict[str, int | None] = {}
    rows = []
    for index, check in enumerate(CHECKS):
        row: dict = {"check": check.name, "config": check.config, "mixed_precision": check.mixed_precision}
        deadline = time.monotonic() + (deadline_all - time.monotonic()) / (len(CHECKS) - index)  # an equal share
        if check.batch_from is not None:
            batch = found.get(check.batch_from)
            row["search"], row["stopped"] = f"the batch of {check.batch_from}", None
        else:
            batch, row["search"], row["stopped"] = largest_batch(check, overrides, device, args.start_batch,
                                                                 args.max_batch, deadline, args.trial_steps,
                                                                 args.steps)
            found[check.name] = batch
        row["batch"] = batch
        if batch is None:
            row["error"] = "no batch fitted"
        else:
            try:
                row |= measure(check, overrides, batch, device, args.steps, args.warmup_steps)
                row |= planned(check, overrides, batch, device, row["images_per_second"], args.peak_tflops)
            except torch.OutOfMemoryError as error:
                row["error"] = f"out of memory at batch {batch}: {str(error).splitlines()[0]}"
                free_memory()
        rows.append(row)
        print_row(row, flush=True)
        save(rows)
    return rows


def search_text(row: dict) -> str:
    if isinstance(row["search"], str):
        return row["search"]
    tried = " ".join(f"{t['batch']}{'' if t['fits'] else ':OOM'}" for t in row["search"])
    return f"{tried}; stopped: {row['stopped']}"


def print_row(row: dict, flush: bool = False) -> None:
    if "error" in row:
        print(f"  {row['check']:<11} {row['mixed_precision']:<5} {row['batch']!s:>6}  ERROR {row['error']}",
              flush=flush)
        return
    peak = f"{row['peak_gib']:.1f}" if row["peak_gib"] is not None else "-"
    print(f"  {row['check']:<11} {row['mixed_precision']:<5} {row['batch']:>6} {row['images_per_second']:>10.1f} "
          f"{peak:>9} {row['finite_loss']!s:>6}  {row['first_loss']:.3f} -> {row['last_loss']:.3f}   "
          f"[{search_text(row)}]" + (f" grad scale {row['final_grad_scale']:g}" if "final_grad_scale" in row else ""),
          flush=flush)
    if "plan" in row:
        plan, peak = row["plan"], f"{row['peak_gib']:.1f} GiB" if row["peak_gib"] is not None else "not measured"
        print(f"  {'':<11} plan: {plan['gflop_per_image']:.2f} GFLOP/image, {plan['images_per_second']:.0f} "
              f"images/s at {plan['peak_tflops']:g} TFLOP/s x {plan['utilisation']:g}; measured "
              f"{row['achieved_tflops']:.1f} TFLOP/s ({row['achieved_share_of_peak']:.0%} of peak); memory: "
              f"planned <= {plan['peak_gib']:.1f} GiB (float32 activations), measured {peak}", flush=flush)


def print_header(device: str, args) -> None:
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    print(f"Part 1: paper main configs, {args.steps} steps each, on {name}")
    print(f"  {'check':<11} {'amp':<5} {'batch':>6} {'images/s':>10} {'peak GiB':>9} {'finite':>6}  loss "
          "first -> last   [batches tried]", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda[:N] (or cpu with --quick)")
    parser.add_argument("--quick", action="store_true", help="CPU, ResNet-18 on 64 px, batches 2-4, 2 steps (the test)")
    parser.add_argument("--start-batch", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=4096)
    parser.add_argument("--trial-steps", type=int, default=2, help="steps of each batch-size trial")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup-steps", type=int, default=5, help="steps not timed (cuDNN autotuning, caches)")
    parser.add_argument("--budget-seconds", type=float, default=240.0, help="time for all rows together")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--peak-tflops", type=float, default=DEFAULT_TFLOPS,
                        help=f"the GPU's peak TFLOP/s, for the plan comparison (default {DEFAULT_TFLOPS:g}: H100/H200 "
                             "SXM dense bf16)")
    parser.add_argument("--out", default="bench/results/gpu", help="folder of gpu_check.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.device, args.start_batch, args.max_batch, args.steps, args.warmup_steps = "cpu", 2, 4, 2, 1
        args.trial_steps, args.budget_seconds = 1, math.inf  # the batches tried must not depend on the load
    if args.steps <= args.warmup_steps:
        parser.error("--steps must exceed --warmup-steps")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA device (use --quick for the CPU version)", file=sys.stderr)
        return 2
    set_threads(args.threads, args.quick)
    print_header(args.device, args)
    setup = machine(args.device) | {"quick": args.quick, "steps": args.steps, "warmup_steps": args.warmup_steps,
                                    "budget_seconds": args.budget_seconds}
    output = Path(args.out) / "gpu_check.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    rows = run(args, lambda rows: output.write_text(json.dumps({"setup": setup, "results": rows}, indent=2) + "\n"))
    print(f"wrote {output}")
    failed = [f"{row['check']}: {row['error']}" if "error" in row
              else f"{row['check']}: a non-finite loss ({row['first_loss']:.3f} -> {row['last_loss']:.3f})"
              for row in rows if "error" in row or not row["finite_loss"]]
    if failed:
        print(f"error: {'; '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
