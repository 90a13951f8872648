"""Fine-tuning and frozen linear evaluation of a pre-trained StochCon (or SimCLR) run, Appendix A.3.

    python -m stochcon.finetune --checkpoint RUN --mode frozen|finetune [key=value ...]

Keeps the pre-trained backbone and latent and adds a linear head on the latent z (on the backbone features
for a SimCLR run). Adam, lr 3e-4, the learning rate times 0.1 at 80% of training; random resized crop and
flip. `frozen` trains only the head (backbone in eval mode), `finetune` the whole network. The Bernoulli
samples at temperature 0.1 throughout; the Gaussian uses its mean. Data and backbone settings default to
the pre-training run's; any key can be overridden. Writes a run folder like pre-training, with the test
top-1 of the fine-tuned classifier in `results.json`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from common.augment import AugmentConfig
from common.config import split_argv
from common.config_help import parse_command_line
from common.config_types import PositiveInt
from common.data import dataset_info
from common.entry import run_command, usage_text
from common.errors import ConfigError, DataError
from common.method import FeatureSplits, Method
from common.optim import OptimConfig
from common.train_config import TrainConfig
from common.trainer import Trainer
from evaluation.final import FinalEvalConfig, evaluate_method
from stochcon.analysis.runs import load_trained_method

MODES = ("frozen", "finetune")


@dataclass
class FinetuneConfig(TrainConfig):
    checkpoint: str = ""  # pre-training run folder or checkpoint folder (required)
    mode: Literal["frozen", "finetune"] = "finetune"  # frozen: train the linear head only | finetune: everything
    epochs: PositiveInt = 100
    online_probe: bool = False
    save_every_epochs: PositiveInt = 100
    # after fine-tuning: the classifier's test_top1, and a 20-NN of the fine-tuned backbone's features
    eval: FinalEvalConfig = field(
        default_factory=lambda: FinalEvalConfig(knn_k=[20], knn_at_init=False, linear=False))
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(name="supervised", num_views=1))
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            name="adam",
            lr=3e-4,
            lr_scaling="none",
            weight_decay=0.0,
            schedule="step",
            milestones=[0.8],
            gamma=0.1,
        )
    )


class Finetuned(Method):
    """Pre-trained backbone (and latent) plus a linear head, trained with cross-entropy."""

    def __init__(self, pretrained: Method, num_classes: int, mode: str):
        super().__init__(pretrained.backbone, pretrained.feature_dim)
        if mode not in MODES:
            raise ValueError(f"mode must be frozen or finetune, not '{mode}'")
        self.mode = mode
        self.branch = getattr(pretrained, "branch", None)
        width = self.feature_dim
        if self.branch is not None:
            self.branch.set_temperature(pretrained.cfg.stochcon.finetune_gumbel_temperature)
            width = self.branch.latent_dim
            # Unused here, so frozen (DDP requires every trainable parameter to get a gradient): the contrastive
            # decoder rho, and the Gaussian's scale head (fine-tuning uses its mean).
            self.branch.rho.requires_grad_(False)
            if self.branch.kind == "gaussian":
                self.branch.latent.requires_grad_(False)
        self.head = nn.Linear(width, num_classes)
        if mode == "frozen":
            self.backbone.requires_grad_(False)
            if self.branch is not None:
                self.branch.requires_grad_(False)

    def train(self, mode: bool = True) -> Finetuned:
        super().train(mode)
        if self.mode == "frozen":
            self.backbone.eval()  # frozen batch-norm statistics too
        if self.branch is not None and self.branch.kind == "gaussian":
            self.branch.latent.eval()  # the Gaussian's mean, in training as at inference (Appendix A.3)
        return self

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(backbone features h, the head's input z): a Bernoulli sample at the fine-tuning temperature (the
        noise-free bits in eval mode), the Gaussian's mean, or h itself for a run without a latent."""
        h = self.backbone(images)
        if self.branch is None:
            return h, h
        phi = self.branch.pi(h)
        return h, (self.branch.latent(phi) if self.branch.kind == "bernoulli" else phi)

    def forward(self, views: list[Tensor], labels: Tensor) -> dict[str, Tensor]:
        if bool((labels < 0).any()):
            raise DataError("fine-tuning needs labels for every training image (got label -1)")
        features, z = self.encode(views[0])
        logits = self.head(z)
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(1) == labels).float().mean()
        return {"loss": loss, "features": features.detach(), "train_top1": accuracy.detach()}

    def evaluate_features(self, features: FeatureSplits) -> dict[str, float]:
        """``test_top1``: the fine-tuned classifier on the test images (eval mode: the deterministic latent)."""
        h = features.test_x.to(self.head.weight.device, self.head.weight.dtype)
        z = h if self.branch is None else self.branch.pi(h)
        if self.branch is not None and self.branch.kind == "bernoulli":
            z = self.branch.latent(z)
        logits = self.head(z)
        return {"test_top1": float((logits.argmax(1).cpu() == features.test_y).float().mean())}


def _pretraining_overrides(checkpoint: str) -> list[str]:
    """`data.*`, `backbone.*` and `augment.image_size` of the pre-training run, as key=value overrides."""
    _, pre_cfg, _ = load_trained_method(checkpoint)
    overrides = []
    for section in ("data", "backbone"):
        sub = getattr(pre_cfg, section)
        for f in fields(sub):
            value = getattr(sub, f.name)
            if not isinstance(value, (list, dict)):
                overrides.append(f"{section}.{f.name}={'null' if value is None else value}")
    overrides.append(f"augment.image_size={pre_cfg.augment.image_size or 'null'}")
    return overrides


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        cfg = parse_command_line(FinetuneConfig, argv, usage_text("python -m stochcon.finetune", __doc__))
        if cfg is None:
            return 0
        if not cfg.checkpoint:
            raise ConfigError("checkpoint is required: --checkpoint RUN (a pre-training run or checkpoint folder)")
        # the pre-training run's data and backbone, under this command's own file and overrides
        line = split_argv(argv)
        line.overrides = _pretraining_overrides(cfg.checkpoint) + line.overrides
        cfg = parse_command_line(FinetuneConfig, (["--config", line.config_file] if line.config_file else [])
                                 + line.overrides, "")
        Trainer(cfg, build, evaluate).fit()
        return 0

    def build(cfg: FinetuneConfig, backbone: nn.Module, feature_dim: int) -> Method:
        pretrained, _, _ = load_trained_method(cfg.checkpoint)
        backbone.load_state_dict(pretrained.backbone.state_dict())
        pretrained.backbone = backbone
        return Finetuned(pretrained, dataset_info(cfg.data).num_classes, cfg.mode)

    def evaluate(method: Method, cfg: FinetuneConfig, accelerator, stage: str) -> dict:
        if stage != "final":
            return {}
        results = evaluate_method(method, cfg, accelerator, stage)
        return {**results, "mode": cfg.mode, "checkpoint": str(Path(cfg.checkpoint).resolve())}

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
