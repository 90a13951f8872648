"""Methods trained with VCReg layers in the backbone: supervised (plain, DeCov, WLD-Reg), SimCLR and VICReg.

The VCReg layers themselves live in the backbone (``vcreg.placement.apply_vcreg``) and act in backward,
so the methods below only compute their own objective; with ``vcreg.enabled=false`` the same methods are
the baselines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from common.distributed import gather_with_grad
from common.errors import ConfigError
from common.heads import mlp
from common.method import Method
from stochcon.losses import info_nce
from vcreg.losses import VARIANCE_COMBINES, WLDREG_VARIANTS, decov_loss, vicreg_loss, wldreg_loss

METHODS = ("supervised", "decov", "wldreg", "simclr", "vicreg")


@dataclass
class VCRegLayerConfig:
    """The regulariser's settings (Sections 3.2-3.3). The paper reports the grid, not one choice: alpha in
    {1.28, 0.64, 0.32, 0.16}, beta in {0.16, 0.08, 0.04, 0.02, 0.01} (sweep files in vcreg/configs/);
    the defaults are the grid's mildest corner."""

    enabled: bool = True
    placement: str = "blocks"          # final | blocks (the paper's) | downsample | blocks+downsample (App. A)
    alpha: float = 0.16
    beta: float = 0.01
    eps: float = 1e-5
    delta: float | None = None      # smooth-L1 covariance threshold (eq. 7); None: squared, as Algorithm 1
    all_reduce: bool = False           # statistics over all ranks instead of per rank (strength unchanged)
    normalization: str = "algorithm1"  # algorithm1 (paper's; beta grows with rows/device) | batch_mean
    overrides: dict[str, dict[str, float]] = field(default_factory=dict)  # {"stages.3.*": {"alpha": 1.28}}


@dataclass
class VCRegMethodConfig:
    name: str = "supervised"           # supervised | decov | wldreg | simclr | vicreg
    label_smoothing: float = 0.0       # supervised / decov / wldreg cross-entropy
    decov_weight: float = 0.1          # DeCov baseline: weight of Cogswell et al.'s loss on pooled features
    wldreg_weight: float = 1e-3        # WLD-Reg baseline (Laakom et al., 2023): weight on pooled features
    wldreg_gamma: float = 10.0         # WLD-Reg's Gaussian-kernel width gamma
    wldreg_variant: str = "direct"     # WLD-Reg's redundancy measure: direct | det | logdet
    temperature: float = 0.1           # SimCLR InfoNCE tau (Chen et al., 2020: 0.1 at batch 4096)
    simclr_projector: list[int] = field(default_factory=lambda: [2048, 256])  # hidden..., output (App. C.4)
    vicreg_projector: list[int] = field(default_factory=lambda: [8192, 8192])  # C.4; Bardes et al.: 8192 x 3
    vicreg_projector_last_norm: bool = True  # C.4: BatchNorm after every layer; false: Bardes et al.'s output
    vicreg_invariance: float = 25.0
    vicreg_variance: float = 25.0
    vicreg_covariance: float = 1.0
    vicreg_eps: float = 1e-4
    vicreg_variance_combine: str = "mean"  # mean: (v(Z)+v(Z'))/2 as Bardes et al.'s code | sum: their eq. 6


class SupervisedClassifier(Method):
    """Backbone + linear classifier with cross-entropy. ``penalty = (name, weight, loss)`` adds
    ``weight * loss(features)`` on the pooled features, logged under ``name`` (Table 2's DeCov, WLD-Reg)."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, label_smoothing: float = 0.0,
                 penalty: tuple[str, float, Callable[[torch.Tensor], torch.Tensor]] | None = None):
        super().__init__(backbone, feature_dim)
        if num_classes < 2:
            raise ValueError(f"supervised training needs a labelled dataset, got {num_classes} classes")
        self.classifier = nn.Linear(feature_dim, num_classes)
        self.label_smoothing, self.penalty = label_smoothing, penalty

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if bool((labels < 0).any()):
            raise ValueError("supervised training got unlabelled images (label -1): use a labelled split")
        features = self.backbone(views[0])
        logits = self.classifier(features)
        cross_entropy = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        out = {"features": features.detach(), "cross_entropy": cross_entropy.detach(),
               "train_top1": (logits.argmax(1) == labels).float().mean()}
        loss = cross_entropy
        if self.penalty is not None:
            name, weight, penalty_loss = self.penalty
            value = penalty_loss(features.float())
            loss = loss + weight * value
            out[name] = value.detach()
        out["loss"] = loss
        return out


class JointEmbedding(Method):
    """SimCLR (InfoNCE on a projector's outputs) or VICReg (Bardes et al.) between two views (App. C.4)."""

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg: VCRegMethodConfig):
        super().__init__(backbone, feature_dim)
        self.cfg = cfg
        if cfg.name == "simclr":
            # SimCLR per Appendix C.4: BatchNorm after every layer, so the output layer gets one too
            *hidden, out = cfg.simclr_projector
            self.projector = mlp(feature_dim, hidden, out, norm="bn", last_norm=True)
        else:
            if cfg.vicreg_variance_combine not in VARIANCE_COMBINES:
                raise ConfigError(f"method.vicreg_variance_combine must be one of "
                                  f"{', '.join(VARIANCE_COMBINES)}, not {cfg.vicreg_variance_combine!r}")
            # No bias on the output layer: Bardes et al.'s has none, and a BatchNorm after it cancels one.
            # That BatchNorm keeps its affine scale (C.4 says just "batch normalization"): without it every
            # embedding dimension has unit variance and the variance hinge could never act.
            *hidden, out = cfg.vicreg_projector
            self.projector = mlp(feature_dim, hidden, out, norm="bn", last_bias=False)
            if cfg.vicreg_projector_last_norm:
                self.projector.append(nn.BatchNorm1d(out))

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if len(views) != 2:
            raise ValueError(f"{self.cfg.name} takes exactly 2 views (augment.num_views=2), got {len(views)}")
        features = self.backbone(torch.cat(views))
        z1, z2 = self.projector(features).float().chunk(2)
        if self.cfg.name == "simclr":
            return {"loss": info_nce(z1, z2, self.cfg.temperature), "features": features.chunk(2)[0].detach()}
        # variance and covariance are statistics of the global batch: gather the embeddings of every rank
        z1, z2 = gather_with_grad(z1), gather_with_grad(z2)
        terms = vicreg_loss(z1, z2, self.cfg.vicreg_invariance, self.cfg.vicreg_variance,
                            self.cfg.vicreg_covariance, self.cfg.vicreg_eps, self.cfg.vicreg_variance_combine)
        return {"loss": terms["loss"], "features": features.chunk(2)[0].detach(),
                **{k: v.detach() for k, v in terms.items() if k != "loss"}}


def build_vcreg_method(cfg: VCRegMethodConfig, backbone: nn.Module, feature_dim: int, num_classes: int) -> Method:
    if cfg.name == "supervised":
        return SupervisedClassifier(backbone, feature_dim, num_classes, cfg.label_smoothing)
    if cfg.name == "decov":
        return SupervisedClassifier(backbone, feature_dim, num_classes, cfg.label_smoothing,
                                    ("decov", cfg.decov_weight, decov_loss))
    if cfg.name == "wldreg":
        if cfg.wldreg_variant not in WLDREG_VARIANTS:
            raise ConfigError(f"method.wldreg_variant must be one of {', '.join(WLDREG_VARIANTS)}, "
                             f"not {cfg.wldreg_variant!r}")
        wldreg = partial(wldreg_loss, gamma=cfg.wldreg_gamma, variant=cfg.wldreg_variant)
        return SupervisedClassifier(backbone, feature_dim, num_classes, cfg.label_smoothing,
                                    ("wldreg", cfg.wldreg_weight, wldreg))
    if cfg.name in ("simclr", "vicreg"):
        return JointEmbedding(backbone, feature_dim, cfg)
    raise ConfigError(f"method.name must be one of {', '.join(METHODS)}, not '{cfg.name}'")
