"""Methods trained with VCReg layers in the backbone: supervised (plain, DeCov, WLD-Reg), SimCLR and VICReg.

The VCReg layers themselves live in the backbone (``vcreg.placement.apply_vcreg``) and act in backward,
so the methods below only compute their own objective; with ``vcreg.enabled=false`` the same methods are
the baselines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from common.config_types import NonNegativeFloat, PositiveFloat, Widths
from common.distributed import gather_with_grad
from common.dtypes import at_least_float32
from common.errors import ConfigError, DataError
from common.heads import head
from common.info_nce import info_nce
from common.method import FeatureSplits, Method
from evaluation.neural_collapse import collapse_metrics
from vcreg.losses import decov_loss, vicreg_loss, wldreg_loss


@dataclass
class SupervisedConfig:
    name: Literal["supervised"] = "supervised"  # cross-entropy on a linear classifier over the pooled features
    label_smoothing: NonNegativeFloat = 0.0  # torchvision's recipes: 0.1 for ConvNeXt and ViT, 0 for ResNet-50


@dataclass
class DeCovConfig:
    name: Literal["decov"] = "decov"  # Table 2 baseline: supervised + DeCov (Cogswell et al. 2016) on pooled features
    label_smoothing: NonNegativeFloat = 0.0  # cross-entropy's label smoothing, as method.name=supervised
    weight: NonNegativeFloat = 0.1  # DeCov's weight on the pooled features (see the configs for its source)


@dataclass
class WLDRegConfig:
    name: Literal["wldreg"] = "wldreg"  # Table 2 baseline: supervised + WLD-Reg (Laakom et al. 2023)
    label_smoothing: NonNegativeFloat = 0.0  # cross-entropy's label smoothing, as method.name=supervised
    weight: NonNegativeFloat = 1e-3  # WLD-Reg's weight on the pooled features (not checked against the paper)
    gamma: PositiveFloat = 10.0  # the Gaussian kernel's width gamma
    variant: Literal["direct", "det", "logdet"] = "direct"  # WLD-Reg's redundancy measure


@dataclass
class SimCLRConfig:
    name: Literal["simclr"] = "simclr"  # Table 4: SimCLR (Chen et al. 2020) as Appendix C.4 sets it up
    temperature: PositiveFloat = 0.1  # InfoNCE tau (Chen et al.: 0.1 at batch 4096)
    projector: Widths = field(default_factory=lambda: [2048, 256])  # hidden..., output (App. C.4)


@dataclass
class VICRegConfig:
    name: Literal["vicreg"] = "vicreg"  # Table 4: VICReg (Bardes et al. 2022) as Appendix C.4 sets it up
    projector: Widths = field(default_factory=lambda: [8192, 8192])  # C.4; Bardes et al.'s code: 8192 x 3
    projector_last_norm: bool = True  # C.4: batch norm after every layer; false: Bardes et al.'s plain output
    invariance: NonNegativeFloat = 25.0  # lambda (Bardes et al.)
    variance: NonNegativeFloat = 25.0  # mu
    covariance: NonNegativeFloat = 1.0  # nu
    eps: PositiveFloat = 1e-4  # inside the variance term's square root
    variance_combine: Literal["mean", "sum"] = "mean"  # mean: (v(Z)+v(Z'))/2 as Bardes et al.'s code | sum: eq. 6


VCRegMethodConfig = SupervisedConfig | DeCovConfig | WLDRegConfig | SimCLRConfig | VICRegConfig


def collapse_figures(features: FeatureSplits) -> dict[str, float]:
    """Table 6's neural-collapse measures of the final features: CDNV and NCC accuracy (train and test)."""
    return collapse_metrics((features.train_x, features.train_y), (features.test_x, features.test_y))


class SupervisedClassifier(Method):
    """Backbone + linear classifier with cross-entropy. ``penalty = (name, weight, loss)`` adds
    ``weight * loss(features)`` on the pooled features, logged under ``name`` (Table 2's DeCov, WLD-Reg)."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, label_smoothing: float = 0.0,
                 penalty: tuple[str, float, Callable[[torch.Tensor], torch.Tensor]] | None = None):
        super().__init__(backbone, feature_dim)
        if num_classes < 2:
            raise ConfigError(f"supervised training needs a labelled dataset, got {num_classes} classes")
        self.classifier = nn.Linear(feature_dim, num_classes)
        self.label_smoothing, self.penalty = label_smoothing, penalty

    @property
    def couples_batch(self) -> bool:
        """Cross-entropy is per image; DeCov's and WLD-Reg's penalties are statistics of the batch."""
        return self.penalty is not None

    def embed(self, views: list[torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The pooled features (``pooled``, with gradient), the classifier's ``logits`` and ``features``."""
        if bool((labels < 0).any()):
            raise DataError("supervised training got unlabelled images (label -1): use a labelled split")
        features = self.backbone(views[0])
        return {"pooled": features, "logits": self.classifier(features), "features": features.detach()}

    def loss_from_embeddings(self, embeddings: dict[str, torch.Tensor],
                             labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = embeddings["logits"]
        cross_entropy = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        out = {"features": embeddings["features"], "cross_entropy": cross_entropy.detach(),
               "train_top1": (logits.argmax(1) == labels).float().mean()}
        loss = cross_entropy
        if self.penalty is not None:
            name, weight, penalty_loss = self.penalty
            value = penalty_loss(at_least_float32(embeddings["pooled"]))
            loss = loss + weight * value
            out[name] = value.detach()
        out["loss"] = loss
        return out

    def evaluate_features(self, features: FeatureSplits) -> dict[str, float]:
        """``test_top1`` of the run's own classifier (Table 1's figure) and the neural-collapse measures."""
        weight = self.classifier.weight
        logits = self.classifier(features.test_x.to(weight.device, weight.dtype))
        test_top1 = float((logits.argmax(1).cpu() == features.test_y).float().mean())
        return {"test_top1": test_top1, **collapse_figures(features)}


class JointEmbedding(Method):
    """Two views through the backbone and a projector (Appendix C.4); subclasses give the loss."""

    def __init__(self, backbone: nn.Module, feature_dim: int, projector: nn.Module):
        super().__init__(backbone, feature_dim)
        self.projector = projector

    couples_batch = True  # InfoNCE's negatives, VICReg's variance and covariance: the batch

    def embed(self, views: list[torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """``z`` [N, 2, D], the projections of both views, and the detached backbone ``features`` of view 0."""
        if len(views) != 2:
            raise ConfigError(f"{type(self).__name__} takes exactly 2 views (augment.num_views=2), got {len(views)}")
        features = self.backbone(torch.cat(views))
        z = at_least_float32(self.projector(features))
        return {"z": torch.stack(z.chunk(2), dim=1), "features": features.chunk(2)[0].detach()}

    def evaluate_features(self, features: FeatureSplits) -> dict[str, float]:
        return collapse_figures(features)


class SimCLRBaseline(JointEmbedding):
    """SimCLR's InfoNCE on the projections; BatchNorm after every projector layer, the output one too (C.4)."""

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg: SimCLRConfig):
        super().__init__(backbone, feature_dim, head(feature_dim, cfg.projector, "method.projector", norm="bn",
                                                     last_norm=True))
        self.cfg = cfg

    def loss_from_embeddings(self, embeddings: dict[str, torch.Tensor],
                             labels: torch.Tensor) -> dict[str, torch.Tensor]:
        z1, z2 = embeddings["z"].unbind(1)
        return {"loss": info_nce(z1, z2, self.cfg.temperature), "features": embeddings["features"]}


class VICRegBaseline(JointEmbedding):
    """VICReg's invariance, variance and covariance terms on the projections of the global batch."""

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg: VICRegConfig):
        # No bias on the output layer: Bardes et al.'s has none, and a BatchNorm after it cancels one.
        # That BatchNorm keeps its affine scale (C.4 says just "batch normalization"): without it every
        # embedding dimension has unit variance and the variance hinge could never act.
        projector = head(feature_dim, cfg.projector, "method.projector", norm="bn", last_bias=False)
        if cfg.projector_last_norm:
            projector.append(nn.BatchNorm1d(cfg.projector[-1]))
        super().__init__(backbone, feature_dim, projector)
        self.cfg = cfg

    def loss_from_embeddings(self, embeddings: dict[str, torch.Tensor],
                             labels: torch.Tensor) -> dict[str, torch.Tensor]:
        # variance and covariance are statistics of the global batch: gather the embeddings of every rank
        z1, z2 = (gather_with_grad(z) for z in embeddings["z"].unbind(1))
        cfg = self.cfg
        terms = vicreg_loss(z1, z2, cfg.invariance, cfg.variance, cfg.covariance, cfg.eps, cfg.variance_combine)
        return {"loss": terms["loss"], "features": embeddings["features"],
                **{k: v.detach() for k, v in terms.items() if k != "loss"}}


def build_vcreg_method(cfg: VCRegMethodConfig, backbone: nn.Module, feature_dim: int, num_classes: int) -> Method:
    """The method ``cfg`` (its dataclass) describes."""
    if isinstance(cfg, SupervisedConfig):
        return SupervisedClassifier(backbone, feature_dim, num_classes, cfg.label_smoothing)
    if isinstance(cfg, DeCovConfig):
        return SupervisedClassifier(backbone, feature_dim, num_classes, cfg.label_smoothing,
                                    ("decov", cfg.weight, decov_loss))
    if isinstance(cfg, WLDRegConfig):
        wldreg = partial(wldreg_loss, gamma=cfg.gamma, variant=cfg.variant)
        return SupervisedClassifier(backbone, feature_dim, num_classes, cfg.label_smoothing,
                                    ("wldreg", cfg.weight, wldreg))
    if isinstance(cfg, SimCLRConfig):
        return SimCLRBaseline(backbone, feature_dim, cfg)
    return VICRegBaseline(backbone, feature_dim, cfg)
