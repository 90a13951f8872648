"""Forward + backward time with identity, naive VCReg, fast VCReg and BatchNorm layers at the same places.

Table 1's setup (VCReg paper, Section 3.3): one training step (forward, a loss, backward) of the whole
network with a layer after every block (placement ``blocks``: 18 in ConvNeXt-T, 12 in ViT-B/32). The four
variants run in interleaved rounds (``bench.timing.interleaved``) on one set of weights, so machine noise hits
them alike; each round's time is divided by the same round's identity time and the table shows the median
ratio and its interquartile range over rounds. The FLOP bound is ``1 + sum_layers 4 n d^2 / model FLOPs`` (forward +
backward of the identity model, counted by ``torch.utils.flop_counter``), with ``n`` the rows (samples x
locations) and ``d`` the channels at each layer: the fast layer's covariance and its one extra product.

    python bench/vcreg_overhead.py --models convnext_tiny:64:16 vit_base_patch32_224:224:4 --rounds 9
    python bench/vcreg_overhead.py --device cuda --models convnext_tiny:224:128 vit_base_patch32_224:224:128
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bench.timing import interleaved, machine, quartiles, ratios, set_threads, write_json
from vcreg.layer import VCReg
from vcreg.naive import NaiveVCReg, pop_naive_losses
from vcreg.placement import insert_layers, remove_layers

VARIANTS = ("identity", "naive", "fast", "batchnorm")
# Table 1 of the paper (A100, batch 128, 224 px): seconds per forward + backward.
PAPER_SECONDS = {"vit_base_patch32_224": {"identity": 0.223, "naive": 1.427, "fast": 0.245, "batchnorm": 0.247},
                 "convnext_tiny": {"identity": 0.442, "naive": 2.951, "fast": 0.471, "batchnorm": 0.468}}
ALPHA, BETA = 0.16, 0.01  # the smallest values of the paper's sweep; the cost does not depend on them


class FeatureBatchNorm(nn.Module):
    """BatchNorm over the channels of ``[N, C, H, W]`` or ``[N, L, C]`` features, built on first use."""

    def __init__(self) -> None:
        super().__init__()
        self.norm: nn.Module | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is None:
            channels = x.shape[1] if x.dim() == 4 else x.shape[-1]
            self.norm = (nn.BatchNorm2d(channels) if x.dim() == 4 else nn.BatchNorm1d(channels)).to(x.device)
        if x.dim() == 3:
            return self.norm(x.transpose(1, 2)).transpose(1, 2)
        return self.norm(x)


def make_variant_layers(variant: str):
    if variant == "identity":
        return lambda name: nn.Identity()
    if variant == "naive":
        return lambda name: NaiveVCReg(ALPHA, BETA)
    if variant == "fast":
        return lambda name: VCReg(ALPHA, BETA)
    return lambda name: FeatureBatchNorm()


def train_step(model: nn.Module, images: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    loss = model(images).float().square().mean() + pop_naive_losses(model)
    loss.backward()


def layer_shapes(model: nn.Module, images: torch.Tensor) -> list[tuple[int, int]]:
    """(n rows, d channels) at every inserted position, from one forward pass."""
    shapes: list[tuple[int, int]] = []

    def record(name: str) -> nn.Module:
        class Recorder(nn.Module):
            def forward(self, x):
                d = x.shape[1] if x.dim() == 4 else x.shape[-1]
                shapes.append((x.numel() // d, d))
                return x
        return Recorder()

    insert_layers(model, "blocks", record)
    with torch.no_grad():
        model(images)
    remove_layers(model)
    return shapes


def model_flops(model: nn.Module, images: torch.Tensor) -> int:
    insert_layers(model, "blocks", make_variant_layers("identity"))
    counter = FlopCounterMode(display=False)
    with counter:
        train_step(model, images)
    remove_layers(model)
    return counter.get_total_flops()


def bench_model(name: str, image_size: int, batch: int, rounds: int, warmup: int, device: str) -> dict:
    torch.manual_seed(0)
    kwargs = {"img_size": image_size} if name.startswith("vit") else {}
    model = timm.create_model(name, num_classes=1000, **kwargs).train().to(device)
    images = torch.randn(batch, 3, image_size, image_size).to(device)
    layers = {v: {} for v in VARIANTS}

    def step_with(variant: str):
        def step() -> None:
            remove_layers(model)
            make = make_variant_layers(variant)
            insert_layers(model, "blocks", lambda site: layers[variant].setdefault(site, make(site)))
            train_step(model, images)
        return step

    shapes = layer_shapes(model, images)
    flops = model_flops(model, images)
    regulariser_flops = sum(4 * n * d * d for n, d in shapes)
    seconds = interleaved({v: step_with(v) for v in VARIANTS}, rounds, warmup, device=device)
    remove_layers(model)
    ratio = {v: quartiles(ratios(seconds, v, "identity")) for v in VARIANTS}
    bound = 1 + regulariser_flops / flops
    result = {
        "model": name, "image_size": image_size, "batch": batch, "layers": len(shapes),
        "rows_and_channels": shapes, "seconds": {v: quartiles(s) for v, s in seconds.items()},
        "ratio_to_identity": ratio, "naive_over_fast": quartiles(ratios(seconds, "naive", "fast")),
        "model_flops_fwd_bwd": flops, "regulariser_flops": regulariser_flops, "flop_bound_fast_over_identity": bound,
        # 1.0: the fast layer costs exactly its FLOPs; above 1: overhead beyond the arithmetic
        "fast_overhead_over_flop_overhead": (ratio["fast"]["median"] - 1) / (bound - 1),
    }
    if name in PAPER_SECONDS:
        paper = PAPER_SECONDS[name]
        result["paper_ratio_to_identity"] = {v: paper[v] / paper["identity"] for v in VARIANTS}
    return result


def print_table(results: list[dict]) -> None:
    print("time / identity time of one forward + backward, median [q25-q75] over rounds")
    header = f"{'model':<24}{'px':>5}{'batch':>6}{'layers':>7}  " + "".join(f"{v + '/id':>20}" for v in VARIANTS[1:])
    print(header + f"{'naive/fast':>12}{'FLOP bound':>12}{'id s':>8}")
    for r in results:
        cells = "".join(f"{r['ratio_to_identity'][v]['median']:>8.3f} [{r['ratio_to_identity'][v]['q25']:.2f}-"
                        f"{r['ratio_to_identity'][v]['q75']:.2f}]" for v in VARIANTS[1:])
        print(f"{r['model']:<24}{r['image_size']:>5}{r['batch']:>6}{r['layers']:>7}  {cells}"
              f"{r['naive_over_fast']['median']:>12.2f}{r['flop_bound_fast_over_identity']:>12.3f}"
              f"{r['seconds']['identity']['median']:>8.3f}")
        if "paper_ratio_to_identity" in r:
            paper = r["paper_ratio_to_identity"]
            print(f"{'  paper (A100, b128)':<42}" + "".join(f"{paper[v]:>20.3f}" for v in VARIANTS[1:])
                  + f"{paper['naive'] / paper['fast']:>12.2f}")


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.5 * len(results), 3.6), squeeze=False)
    for ax, r in zip(axes[0], results):
        medians = [r["ratio_to_identity"][v]["median"] for v in VARIANTS]
        errors = [[m - r["ratio_to_identity"][v]["q25"] for v, m in zip(VARIANTS, medians)],
                  [r["ratio_to_identity"][v]["q75"] - m for v, m in zip(VARIANTS, medians)]]
        ax.bar(VARIANTS, medians, yerr=errors, color=["grey", "tab:red", "tab:green", "tab:blue"], capsize=3)
        if "paper_ratio_to_identity" in r:
            ax.scatter(VARIANTS, [r["paper_ratio_to_identity"][v] for v in VARIANTS], color="k", marker="x",
                       zorder=3, label="paper (A100)")
            ax.legend()
        ax.axhline(r["flop_bound_fast_over_identity"], color="tab:green", ls=":", lw=1)
        ax.set_title(f"{r['model']} {r['image_size']}px b{r['batch']}", fontsize=9)
        ax.set_ylabel("time / identity (fwd + bwd)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_model(spec: str) -> tuple[str, int, int]:
    try:
        name, size, batch = spec.split(":")
        return name, int(size), int(batch)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--models entries are name:image_size:batch, got {spec!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", type=parse_model,
                        default=[("convnext_tiny", 64, 16), ("vit_base_patch32_224", 224, 4)])
    parser.add_argument("--rounds", type=int, default=9, help="timed rounds of the four variants")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--quick", action="store_true", help="tiny images and batches, 2 rounds (the test)")
    parser.add_argument("--output", default="bench/results/vcreg_overhead.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.rounds, args.warmup = [("convnext_tiny", 32, 2), ("vit_base_patch32_224", 64, 2)], 2, 0
    set_threads(args.threads, args.quick)
    setup = machine(args.device) | {"rounds": args.rounds, "warmup": args.warmup, "quick": args.quick}
    results = [bench_model(name, size, batch, args.rounds, args.warmup, args.device)
               for name, size, batch in args.models]
    print_table(results)
    output = write_json(args.output, setup, results)
    plot(results, output.with_suffix(".png"))
    print(f"wrote {output.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
