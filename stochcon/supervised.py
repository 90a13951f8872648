"""The supervised runs of StochCon's paper: Table 1's supervised baseline and the Appendix A.2 control, a
supervised network whose pooled features pass through the same Gumbel-Bernoulli layer as StochCon's, bypassed
("dropped out") for each example with probability 0.5."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.config_types import Fraction
from common.distributed import per_sample_rand
from common.errors import ConfigError, DataError
from common.method import FeatureSplits, Method
from stochcon.latents import LatentConfig
from stochcon.stochcon import StochasticBranch


@dataclass
class SupervisedConfig:
    name: Literal["supervised"] = "supervised"  # cross-entropy on a classifier (Table 1's baseline, Appendix A.2)
    # P(an example skips the latent): 0.5 for Appendix A.2's Gumbel-Bernoulli control; 1.0 never uses the latent,
    # the plain supervised baseline of Table 1 (no latent is built then)
    bypass_prob: Fraction = 0.5
    stochcon: LatentConfig = field(default_factory=LatentConfig)  # the latent (a Gumbel-Bernoulli)


class SupervisedBernoulli(Method):
    """Appendix A.2: cross-entropy on a linear classifier over pooled features that pass through a
    Gumbel-Bernoulli layer, except for the examples that bypass it (each with probability ``bypass_prob``, 0.5
    in the paper) -- a proxy for StochCon's deterministic and stochastic branches. Evaluation goes through the
    deterministic (eval-mode) latent. With bypass probability 1 there is no latent: the plain supervised
    baseline of Table 1.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg: SupervisedConfig, num_classes: int):
        super().__init__(backbone, feature_dim)
        if cfg.bypass_prob < 1 and cfg.stochcon.latent != "bernoulli":
            raise ConfigError(
                "the supervised control uses a Gumbel-Bernoulli latent: set method.stochcon.latent=bernoulli"
            )
        if num_classes < 2:
            raise ConfigError(f"the supervised method needs a labelled dataset, got {num_classes} classes")
        self.cfg = cfg
        self.branch = StochasticBranch.from_config(feature_dim, cfg.stochcon) if cfg.bypass_prob < 1 else None
        self.classifier = nn.Linear(feature_dim, num_classes)

    def head_input(self, h: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(the classifier's input, the latent's sample, its logits) for backbone features ``h``: in training each
        example goes through the latent unless it bypasses it; in eval mode every example takes the
        deterministic latent (or none without a latent)."""
        if self.branch is None:
            return h, None, None
        h_stoch, z, phi = self.branch(h)
        if self.training:
            bypass = per_sample_rand(h.shape[0], 1, device=h.device) < self.cfg.bypass_prob
            h_stoch = torch.where(bypass, h, h_stoch)
        return h_stoch, z, phi

    def forward(self, views: list[Tensor], labels: Tensor) -> dict[str, Tensor]:
        if bool((labels < 0).any()):
            raise DataError("the supervised method needs labels for every training image (got label -1)")
        h = self.backbone(views[0])
        head_input, z, phi = self.head_input(h)
        logits = self.classifier(head_input)
        out = {"loss": F.cross_entropy(logits, labels), "features": h.detach(),
               "train_top1": (logits.argmax(1) == labels).float().mean()}
        if self.branch is not None:
            out |= self.branch.metrics([z], [phi], [None])
        return out

    def evaluate_features(self, features: FeatureSplits) -> dict[str, float]:
        """``test_top1``: the classifier on the test images (Table 1's Supervised row, Figure 5 right)."""
        weight = self.classifier.weight
        logits = self.classifier(self.head_input(features.test_x.to(weight.device, weight.dtype))[0])
        return {"test_top1": float((logits.argmax(1).cpu() == features.test_y).float().mean())}

    def on_step_start(self, step: int, total_steps: int) -> None:
        if self.branch is not None:
            self.branch.anneal_temperature(step, total_steps, self.cfg.stochcon)
