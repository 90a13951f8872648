"""The method's own share of a training step: SimCLR, StochCon, BYOL, MSBReg, VCReg vs the bare backbone.

One training step (forward, backward, optimiser step, the method's step hooks such as BYOL's EMA update) of
every method, built as its trainer builds it (``build_method`` of ``stochcon/train.py``, ``msbreg/train.py``,
``vcreg/train.py`` from the Fashion-MNIST CPU configs, with the batch and backbone overridden), against the
*bare* step: the same backbone on the same views with a trivial loss (``features.mean()``) and the same
optimiser, calling the backbone as the method does (SimCLR, StochCon: all views in one call; BYOL, MSBReg: one
call per view; on a CPU a 1024-image call is slower per image than four 256-image ones). BYOL and MSBReg are
also divided by a second floor, ``..._target``: the bare step plus a gradient-free forward pass of a copy of the
backbone over every view, which any method with an EMA target network must pay; their share beyond it is the
cost of the heads, losses and EMA update (``share_beyond_target``). All variants run in interleaved rounds on fixed random views (augmentation is not part of the
step; see ``bench/augment.py``); each round's method time is divided by the same round's bare time. The
method's share of its step is ``(method - bare) / method = 1 - bare / method``; the target is under 5%.

Rows: ``simclr``, ``stochcon_bernoulli`` (the config, both directions), ``stochcon_bernoulli_algorithm1`` (one view
through the latent), ``stochcon_gaussian`` (2 views), ``byol`` (2 views), ``msbreg_k4``
(4 views) and ``byol_4views`` (BYOL on the same 4 views, paired as ``[v0|v2, v1|v3]``: twice BYOL's views,
the fair reference for MSBReg), ``vcreg_blocks`` (supervised with a fast VCReg layer after every block; one
view) and ``supervised`` (the same without the VCReg layers). The online probe of the trainer is left out.
The learning rate is fixed at 1e-3 so the weights stay finite on random data; the cost does not depend on it.

    python bench/method_overhead.py                                # small_convnet w16, 28 px, batch 256
    python bench/method_overhead.py --backbone resnet18 --image-size 32 --channels 3 --batch 64 --rounds 5
"""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch import nn

from bench.timing import fmt, interleaved, machine, quartiles, ratios, set_threads, write_json
from common.backbones import build_backbone
from common.config import load_config
from common.method import Method
from common.optim import build_optimizer, param_groups

ROOT = Path(__file__).resolve().parent.parent
LR = 1e-3


@dataclass
class Spec:
    name: str
    trainer: str            # stochcon | msbreg | vcreg
    config: str             # YAML relative to the repository root
    views: int
    overrides: tuple[str, ...] = ()
    pair_views: bool = False  # BYOL on 4 views: [v0|v2, v1|v3]
    per_view: bool = False    # the method calls the backbone once per view (BYOL, MSBReg), so does its bare step
    ema_target: bool = False  # the method runs an EMA target backbone over every view (BYOL, MSBReg)
    reference: str | None = None  # another row to compare with besides the bare step


SPECS = (
    Spec("simclr", "stochcon", "stochcon/configs/fashion_mnist_simclr.yaml", 2),
    Spec("stochcon_bernoulli", "stochcon", "stochcon/configs/fashion_mnist_bernoulli.yaml", 2),
    Spec("stochcon_bernoulli_algorithm1", "stochcon", "stochcon/configs/fashion_mnist_bernoulli.yaml", 2,
         ("method.stochcon.both_directions=false",)),
    Spec("stochcon_gaussian", "stochcon", "stochcon/configs/fashion_mnist_gaussian.yaml", 2),
    Spec("byol", "msbreg", "msbreg/configs/fashion_mnist_byol.yaml", 2, per_view=True, ema_target=True),
    Spec("msbreg_k4", "msbreg", "msbreg/configs/fashion_mnist_msbreg.yaml", 4, per_view=True, ema_target=True,
         reference="byol_4views"),
    Spec("byol_4views", "msbreg", "msbreg/configs/fashion_mnist_byol.yaml", 4, pair_views=True, per_view=True,
         ema_target=True),
    Spec("vcreg_blocks", "vcreg", "vcreg/configs/fashion_mnist_vcreg.yaml", 1, reference="supervised"),
    Spec("supervised", "vcreg", "vcreg/configs/fashion_mnist_vcreg.yaml", 1, ("vcreg.enabled=false",)),
)


def trainer_module(trainer: str):
    """(config schema, build_method) of a trainer, as its ``main`` uses them."""
    if trainer == "stochcon":
        from stochcon import train
        return train.StochConTrainConfig, train.build_method
    if trainer == "msbreg":
        from msbreg import train
        return train.MSBRegTrainConfig, train.build_method
    if trainer == "vcreg":
        from vcreg import train
        return train.VCRegTrainConfig, train.build_method
    raise ValueError(trainer)


class Bare(Method):
    """The backbone alone with a trivial loss: the floor every method's step stands on. With ``target``, also a
    gradient-free forward pass of a frozen copy of the backbone over every view (the floor of EMA-target methods)."""

    def __init__(self, backbone: nn.Module, feature_dim: int, per_view: bool, target: bool = False):
        super().__init__(backbone, feature_dim)
        self.per_view = per_view
        self.target = copy.deepcopy(backbone).requires_grad_(False) if target else None

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.target is not None:
            with torch.no_grad():
                for view in views:
                    self.target(view)
        if self.per_view:  # one backbone call per view, as BYOL and MSBReg (batch-norm statistics per view)
            return {"loss": sum(self.backbone(view).mean() for view in views)}
        return {"loss": self.backbone(torch.cat(views)).mean()}  # all views in one call, as SimCLR


class Stepper:
    """One optimiser step of a module on fixed views, as ``common.trainer.Trainer._train_step`` does it."""

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, views: list[torch.Tensor],
                 labels: torch.Tensor, autocast_dtype: torch.dtype | None = None):
        self.module, self.optimizer, self.views, self.labels = module, optimizer, views, labels
        self.autocast_dtype = autocast_dtype  # bf16: what Accelerate's mixed_precision=bf16 does
        self.step = 0
        self.loss = float("nan")

    def __call__(self) -> None:
        self.module.on_step_start(self.step, 10_000)
        with torch.autocast(self.views[0].device.type, dtype=self.autocast_dtype or torch.bfloat16,
                            enabled=bool(self.autocast_dtype)):
            out = self.module(self.views, self.labels)
        out["loss"].float().backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.module.on_step_end(self.step, 10_000)
        self.loss = float(out["loss"].detach())
        self.step += 1


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The backbone, image and batch options shared by the step benchmarks (read by ``backbone_overrides``)."""
    parser.add_argument("--backbone", default="small_convnet", help="small_convnet, resnet18, ... (backbone.name)")
    parser.add_argument("--width", type=int, default=16, help="small_convnet width")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--batch", type=int, default=256)


def backbone_overrides(args) -> list[str]:
    """Config overrides for ``add_model_args``' options (a CIFAR stem for ResNets on images of 64 px or less)."""
    out = [f"batch_size={args.batch}", f"backbone.name={args.backbone}", f"backbone.width={args.width}",
           f"backbone.in_chans={args.channels}"]
    if args.backbone.startswith("resnet"):
        out.append(f"backbone.cifar_stem={str(args.image_size <= 64).lower()}")
    return out


def build_variants(args, specs) -> tuple[dict[str, Stepper], dict[str, str], dict[str, dict]]:
    """Steppers of every method and of the bare baselines they need; which bare each method divides by."""
    generator = torch.Generator().manual_seed(0)
    views = [torch.randn(args.batch, args.channels, args.image_size, args.image_size, generator=generator)
             for _ in range(max(s.views for s in specs))]
    labels = torch.randint(0, 10, (args.batch,), generator=generator)
    steppers: dict[str, Stepper] = {}
    bare_of: dict[str, str] = {}
    info: dict[str, dict] = {}
    for spec in specs:
        schema, build_method = trainer_module(spec.trainer)
        cfg = load_config(schema, ["--config", str(ROOT / spec.config), *spec.overrides, *backbone_overrides(args)])
        torch.manual_seed(0)
        backbone, feature_dim = build_backbone(cfg.backbone, args.channels)
        method = build_method(cfg, backbone, feature_dim)
        optimizer = build_optimizer(cfg.optim, param_groups(method, LR, cfg.optim.weight_decay,
                                                            cfg.optim.exclude_bias_and_norm))
        method_views = views[:spec.views]
        if spec.pair_views:
            method_views = [torch.cat([views[0], views[2]]), torch.cat([views[1], views[3]])]
        steppers[spec.name] = Stepper(method, optimizer, method_views, labels)
        bare = (f"bare_{spec.views}views_{cfg.optim.name}" + ("_per_view" if spec.per_view else "")
                + ("_paired" if spec.pair_views else ""))
        floors = [bare] + ([f"{bare}_target"] if spec.ema_target else [])
        bare_of[spec.name] = bare
        info[spec.name] = {"config": spec.config, "overrides": list(spec.overrides), "views": spec.views,
                           "optimizer": cfg.optim.name, "bare": bare, "reference": spec.reference,
                           "target_floor": floors[1] if spec.ema_target else None,
                           "parameters": sum(p.numel() for p in method.parameters() if p.requires_grad)}
        for floor in floors:
            if floor in steppers:
                continue
            torch.manual_seed(0)
            backbone, _ = build_backbone(cfg.backbone, args.channels)
            module = Bare(backbone, feature_dim, spec.per_view, target=floor.endswith("_target"))
            optimizer = build_optimizer(cfg.optim, param_groups(module, LR, cfg.optim.weight_decay,
                                                                cfg.optim.exclude_bias_and_norm))
            steppers[floor] = Stepper(module, optimizer, method_views, labels)
            info[floor] = {"views": spec.views, "optimizer": cfg.optim.name,
                           "parameters": sum(p.numel() for p in backbone.parameters())}
    return steppers, bare_of, info


def run(args) -> dict:
    specs = [s for s in SPECS if not args.methods or s.name in args.methods]
    steppers, bare_of, info = build_variants(args, specs)
    seconds = interleaved(steppers, args.rounds, args.warmup, args.repeat)
    rows = {}
    for name, stepper in steppers.items():
        row = {**info[name], "seconds": quartiles(seconds[name]), "final_loss": stepper.loss,
               "images_per_second": args.batch * info[name]["views"] / quartiles(seconds[name])["median"]}
        if name in bare_of:
            r = ratios(seconds, name, bare_of[name])
            row["ratio_to_bare"] = quartiles(r)
            row["method_share"] = quartiles([1 - 1 / x for x in r])  # (method - bare) / method
            floor = info[name]["target_floor"]
            if floor is not None:
                row["share_beyond_target"] = quartiles([1 - b / m for m, b in zip(seconds[name], seconds[floor])])
            reference = info[name]["reference"]
            if reference in seconds:
                row["ratio_to_reference"] = quartiles(ratios(seconds, name, reference))
        rows[name] = row
    return {"backbone": args.backbone, "width": args.width, "image_size": args.image_size, "channels": args.channels,
            "batch": args.batch, "variants": rows}


def print_table(result: dict) -> None:
    print(f"{result['backbone']} (width {result['width']}), {result['image_size']} px x {result['channels']} ch, "
          f"batch {result['batch']}; median [q25-q75] over rounds")
    print(f"{'variant':<34}{'views':>6}{'opt':>7}{'step s':>9}{'img/s':>8}  {'ratio to bare':<22}"
          f"{'method share':<24}{'vs reference':<28}")
    for name, row in result["variants"].items():
        ratio = fmt(row["ratio_to_bare"]) if "ratio_to_bare" in row else "-"
        share = fmt(row["method_share"]) if "method_share" in row else "-"
        ref = (f"{fmt(row['ratio_to_reference'])} ({row['reference']})" if "ratio_to_reference" in row else "")
        if "share_beyond_target" in row:
            ref = f"beyond target {fmt(row['share_beyond_target'])}  {ref}"
        print(f"{name:<34}{row['views']:>6}{row['optimizer']:>7}{row['seconds']['median']:>9.4f}"
              f"{row['images_per_second']:>8.0f}  {ratio:<22}{share:<24}{ref:<28}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(parser)
    parser.add_argument("--methods", nargs="*", default=None, help="subset of the rows (default: all)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="steps per measurement")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 3 rounds (the test)")
    parser.add_argument("--output", default="bench/results/method_overhead.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.width, args.rounds, args.warmup, args.repeat = 16, 4, 3, 1, 1
    args.threads = set_threads(args.threads, args.quick)
    setup = machine() | {"rounds": args.rounds, "warmup": args.warmup, "repeat": args.repeat, "quick": args.quick,
                         "lr": LR}
    result = run(args)
    print_table(result)
    write_json(args.output, setup, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
