"""Speed switches of the trainer: bf16 autocast, channels_last, torch.compile, foreach/fused optimiser updates.

One SimCLR training step (``stochcon/configs/fashion_mnist_simclr.yaml`` built by ``stochcon/train.py``'s
``build_method``: forward, backward, optimiser step) with each switch as ``common.trainer`` applies it
(``mixed_precision=bf16``: CPU autocast to bfloat16 around the forward, as Accelerate does;
``channels_last=true``: module and views in channels-last memory format; ``compile=true``:
``method.backbone.compile()``; ``optim.foreach``: the multi-tensor update of ``torch.optim.SGD``), divided by
the default step's time in the same interleaved round. ``sgd_fused`` (``torch.optim.SGD(fused=True)``) has
no config key; it is measured to see whether one would pay. LARS, the config's optimiser, always uses
foreach kernels. Whether each switch computes the same losses is tested in ``tests/test_speed_switches.py``.

Every row also gives images/s (batch images, two views each) and the achieved TFLOP/s: the matmul and convolution FLOPs of one step
(forward and backward, counted once by ``torch.utils.flop_counter``) over its time; on a GPU whose bf16
dense tensor-core peak is known (``PEAK_BF16_TFLOPS``, or ``--peak-tflops``) also as a fraction of that peak.

    python bench/switches.py                      # small_convnet w16, 28 px, batch 256
    python bench/switches.py --no-compile         # without the inductor build (about a minute on a CPU)
    python bench/switches.py --device cuda --backbone resnet50 --image-size 224 --channels 3 --batch 256 \
        --output bench/results/switches_gpu.json  # the issue's GPU row: ResNet-50, 224 px, batch 256
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.method_overhead import ROOT, Stepper, add_model_args, backbone_overrides, trainer_module
from bench.timing import fmt, interleaved, machine, quartiles, ratios, set_threads, write_json
from common.backbones import build_backbone
from common.config import load_config
from common.optim import build_optimizer, param_groups

LR = 1e-3
CONFIG = "stochcon/configs/fashion_mnist_simclr.yaml"
# variant: (reference it is divided by, config overrides, bf16, channels_last, compile, fused)
VARIANTS = {
    "default": ("default", (), False, False, False, False),
    "bf16": ("default", (), True, False, False, False),
    "channels_last": ("default", (), False, True, False, False),
    "compile": ("default", (), False, False, True, False),
    "sgd_per_tensor": ("sgd_foreach", ("optim.name=sgd", "optim.foreach=false"), False, False, False, False),
    "sgd_foreach": ("sgd_foreach", ("optim.name=sgd", "optim.foreach=true"), False, False, False, False),
    "sgd_fused": ("sgd_foreach", ("optim.name=sgd",), False, False, False, True),
}
# bf16 dense tensor-core peak TFLOP/s by device name (vendor data sheets; SXM parts unless the name says PCIe).
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}


def peak_tflops(device: str, given: float | None) -> float | None:
    if given or not device.startswith("cuda"):
        return given
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def step_flops(stepper: Stepper) -> int:
    """Matmul and convolution FLOPs of one forward and backward (one extra step of ``stepper``)."""
    counter = FlopCounterMode(display=False)
    with counter:
        stepper()
    return counter.get_total_flops()


def build(name: str, args, views, labels) -> Stepper:
    _, overrides, bf16, channels_last, compile, fused = VARIANTS[name]
    schema, build_method = trainer_module("stochcon")
    cfg = load_config(schema, ["--config", str(ROOT / CONFIG), *backbone_overrides(args), *overrides])
    torch.manual_seed(0)
    backbone, feature_dim = build_backbone(cfg.backbone, args.channels)
    module = build_method(cfg, backbone, feature_dim).to(args.device)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    if compile:
        module.backbone.compile()
    groups = param_groups(module, LR, cfg.optim.weight_decay, cfg.optim.exclude_bias_and_norm)
    if fused:
        for group in groups:
            group.pop("lars_exclude", None)
        optimizer = torch.optim.SGD(groups, lr=LR, momentum=cfg.optim.momentum, fused=True)
    else:
        optimizer = build_optimizer(cfg.optim, groups)
    return Stepper(module, optimizer, views, labels, torch.bfloat16 if bf16 else None)


def run(args) -> dict:
    names = [n for n in VARIANTS if not (n == "compile" and args.no_compile)]
    generator = torch.Generator().manual_seed(0)
    views = [torch.randn(args.batch, args.channels, args.image_size, args.image_size, generator=generator)
             .to(args.device) for _ in range(2)]
    labels = torch.randint(0, 10, (args.batch,), generator=generator).to(args.device)
    steppers = {name: build(name, args, views, labels) for name in names}
    flops = step_flops(steppers["default"])
    peak = peak_tflops(args.device, args.peak_tflops)
    seconds = interleaved(steppers, args.rounds, args.warmup, args.repeat, args.device)
    rows = {}
    for name in names:
        median = quartiles(seconds[name])["median"]
        rows[name] = {"reference": VARIANTS[name][0], "seconds": quartiles(seconds[name]),
                      "ratio_to_reference": quartiles(ratios(seconds, name, VARIANTS[name][0])),
                      "images_per_second": args.batch / median, "tflops_per_second": flops / median / 1e12,
                      "fraction_of_peak": flops / median / 1e12 / peak if peak else None,
                      "final_loss": steppers[name].loss}
    return {"method": "simclr", "config": CONFIG, "backbone": args.backbone, "width": args.width,
            "image_size": args.image_size, "channels": args.channels, "batch": args.batch, "variants": rows,
            "step_flops": flops, "peak_bf16_tflops": peak, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def print_table(r: dict) -> None:
    print(f"SimCLR step, {r['backbone']} (width {r['width']}), {r['image_size']} px x {r['channels']} ch, "
          f"batch {r['batch']}, CPU {r['cpu_capability']}; median [q25-q75] over rounds")
    print(f"{'variant':<16}{'step s':<28}{'/ reference':<24}{'reference':<14}{'img/s':>8}{'TFLOP/s':>9}"
          f"{'of peak':>9}")
    for name, row in r["variants"].items():
        of_peak = f"{row['fraction_of_peak']:.3f}" if row["fraction_of_peak"] else "-"
        print(f"{name:<16}{fmt(row['seconds'], 4):<28}{fmt(row['ratio_to_reference']):<24}{row['reference']:<14}"
              f"{row['images_per_second']:>8.0f}{row['tflops_per_second']:>9.3f}{of_peak:>9}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(parser)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's peak TFLOP/s for the fraction (default: PEAK_BF16_TFLOPS by GPU name)")
    parser.add_argument("--no-compile", action="store_true", help="leave out torch.compile")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2, help="rounds not kept (compile happens in the first)")
    parser.add_argument("--repeat", type=int, default=1, help="steps per measurement")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 rounds, no compile (the test)")
    parser.add_argument("--output", default="bench/results/switches.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.width, args.rounds, args.warmup, args.no_compile = 16, 4, 2, 1, True
    args.threads = set_threads(args.threads, args.quick)
    result = run(args)
    print_table(result)
    write_json(args.output, machine(args.device) | {"rounds": args.rounds, "warmup": args.warmup, "repeat": args.repeat,
                                         "quick": args.quick, "lr": LR}, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
