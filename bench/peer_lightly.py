"""Our SimCLR and BYOL training step vs the same step built from lightly's building blocks.

Both sides use the same backbone (``common.backbones.build_backbone``, same initial weights), the same batch
of fixed random views, the same head sizes, temperature and EMA momentum (from the Fashion-MNIST configs
``stochcon/configs/fashion_mnist_simclr.yaml`` and ``msbreg/configs/fashion_mnist_byol.yaml``) and the same
optimiser (the config's, through ``common.optim``); a step is forward, backward, optimiser step and the
EMA update. Lightly's side follows its documented examples: ``SimCLRProjectionHead`` + ``NTXentLoss``,
each view through the model separately; ``BYOLProjectionHead``/``BYOLPredictionHead``, momentum copies made
with ``deactivate_requires_grad`` and moved by ``update_momentum`` at the start of the step (cosine momentum
schedule), ``NegativeCosineSimilarity`` symmetrised. Ours: ``build_method`` of the trainers (SimCLR encodes
both views in one backbone call, as SimCLR's code does; ``simclr_views_separately`` is ours with
``method.views_together=false``, one call per view like lightly's example; BYOL one view per call, like lightly). The variants run in interleaved
rounds; the table gives ``ours / lightly`` per round (median and interquartile range).

lightly is not a dependency of the project: it lives in a separate virtual environment, made once with
``bench/setup_peer_env.sh``:

    python3 -m venv .venv-bench
    .venv-bench/bin/pip install torch==2.14.1 torchvision==0.29.1 lightly
    .venv-bench/bin/pip install -e .

and the benchmark runs there:

    .venv-bench/bin/python bench/peer_lightly.py
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch import nn

from bench.method_overhead import ROOT, Stepper, add_model_args, backbone_overrides, trainer_module
from bench.timing import fmt, interleaved, machine, quartiles, ratios, set_threads, write_json
from common.backbones import build_backbone
from common.config import load_config
from common.method import Method
from common.optim import build_optimizer, param_groups

LR = 1e-3  # fixed so the weights stay finite on random data; the cost does not depend on it
# our method: (trainer, config, overrides, the lightly step it is compared with)
CONFIGS = {"simclr": ("stochcon", "stochcon/configs/fashion_mnist_simclr.yaml", (), "simclr"),
           "simclr_views_separately": ("stochcon", "stochcon/configs/fashion_mnist_simclr.yaml",
                                       ("method.views_together=false",), "simclr"),
           "byol": ("msbreg", "msbreg/configs/fashion_mnist_byol.yaml", (), "byol")}


class LightlySimCLR(Method):
    def __init__(self, backbone: nn.Module, feature_dim: int, cfg):
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead

        super().__init__(backbone, feature_dim)
        # lightly's head has one hidden layer: the widths of ours (one hidden layer in the compared configs)
        self.projection_head = SimCLRProjectionHead(feature_dim, cfg.method.projector[0], cfg.method.projector[-1])
        self.criterion = NTXentLoss(temperature=cfg.method.temperature)

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        z0 = self.projection_head(self.backbone(views[0]).flatten(start_dim=1))
        z1 = self.projection_head(self.backbone(views[1]).flatten(start_dim=1))
        return {"loss": self.criterion(z0, z1)}


class LightlyBYOL(Method):
    def __init__(self, backbone: nn.Module, feature_dim: int, cfg):
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        super().__init__(backbone, feature_dim)
        m = cfg.method
        self.projection_head = BYOLProjectionHead(feature_dim, m.projector[0], m.projector[-1])
        self.prediction_head = BYOLPredictionHead(m.projector[-1], m.predictor[0], m.projector[-1])
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = NegativeCosineSimilarity()
        self.base_momentum = m.base_momentum

    def online(self, x: torch.Tensor) -> torch.Tensor:
        return self.prediction_head(self.projection_head(self.backbone(x).flatten(start_dim=1)))

    def target(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1)).detach()

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        x0, x1 = views
        p0, z0 = self.online(x0), self.target(x0)
        p1, z1 = self.online(x1), self.target(x1)
        return {"loss": 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))}

    def on_step_start(self, step: int, total_steps: int) -> None:
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        momentum = cosine_schedule(step, total_steps, self.base_momentum, 1.0)
        update_momentum(self.backbone, self.backbone_momentum, m=momentum)
        update_momentum(self.projection_head, self.projection_head_momentum, m=momentum)


def build(method: str, side: str, args, views, labels) -> tuple[Stepper, int]:
    trainer, config, method_overrides, peer = CONFIGS[method]
    schema, build_method = trainer_module(trainer)
    cfg = load_config(schema, ["--config", str(ROOT / config), *backbone_overrides(args), *method_overrides])
    torch.manual_seed(0)
    backbone, feature_dim = build_backbone(cfg.backbone, args.channels)
    if side == "ours":
        module = build_method(cfg, backbone, feature_dim)
    else:
        module = (LightlySimCLR if peer == "simclr" else LightlyBYOL)(backbone, feature_dim, cfg)
    optimizer = build_optimizer(cfg.optim, param_groups(module, LR, cfg.optim.weight_decay,
                                                        cfg.optim.exclude_bias_and_norm))
    parameters = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return Stepper(module, optimizer, views, labels), parameters


def run(args) -> dict:
    import lightly

    generator = torch.Generator().manual_seed(0)
    views = [torch.randn(args.batch, args.channels, args.image_size, args.image_size, generator=generator)
             for _ in range(2)]
    labels = torch.randint(0, 10, (args.batch,), generator=generator)
    steppers, parameters = {}, {}
    for method in args.methods:
        steppers[f"{method}_ours"], parameters[f"{method}_ours"] = build(method, "ours", args, views, labels)
        peer = f"{CONFIGS[method][3]}_lightly"
        if peer not in steppers:
            steppers[peer], parameters[peer] = build(method, "lightly", args, views, labels)
    seconds = interleaved(steppers, args.rounds, args.warmup, args.repeat)
    rows = {}
    for method in args.methods:
        ours, peer = f"{method}_ours", f"{CONFIGS[method][3]}_lightly"
        rows[method] = {"seconds": {"ours": quartiles(seconds[ours]), "lightly": quartiles(seconds[peer])},
                        "ours_over_lightly": quartiles(ratios(seconds, ours, peer)),
                        "trainable_parameters": {"ours": parameters[ours], "lightly": parameters[peer]},
                        "final_loss": {"ours": steppers[ours].loss, "lightly": steppers[peer].loss}}
    return {"lightly": lightly.__version__, "backbone": args.backbone, "width": args.width,
            "image_size": args.image_size, "channels": args.channels, "batch": args.batch, "methods": rows}


def print_table(r: dict) -> None:
    print(f"lightly {r['lightly']}; {r['backbone']} (width {r['width']}), {r['image_size']} px x {r['channels']} "
          f"ch, batch {r['batch']}, 2 views; seconds per step, median [q25-q75] over rounds")
    print(f"{'method':<26}{'ours s':<26}{'lightly s':<26}{'ours/lightly':<24}")
    for name, row in r["methods"].items():
        s = row["seconds"]
        print(f"{name:<26}{fmt(s['ours'], 4):<26}{fmt(s['lightly'], 4):<26}{fmt(row['ours_over_lightly']):<24}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    add_model_args(parser)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="steps per measurement")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 rounds (the test)")
    parser.add_argument("--output", default="bench/results/peer_lightly.json")
    args = parser.parse_args(argv)
    try:
        import lightly  # noqa: F401
    except ImportError:
        print("lightly is not installed in this Python; make the benchmark's environment with "
              "bench/setup_peer_env.sh and run .venv-bench/bin/python bench/peer_lightly.py", file=sys.stderr)
        return 2
    if args.quick:
        args.batch, args.width, args.rounds, args.warmup = 16, 4, 2, 1
    args.threads = set_threads(args.threads, args.quick)
    result = run(args)
    print_table(result)
    write_json(args.output, machine() | {"rounds": args.rounds, "warmup": args.warmup, "repeat": args.repeat,
                                         "quick": args.quick, "lr": LR}, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
