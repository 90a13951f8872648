"""BYOL (Grill et al. 2020): online encoder + projector + predictor regressing an EMA target's projections."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.config_types import Fraction, Widths
from common.errors import ConfigError
from common.heads import head, widths_from_old_keys
from common.method import Method, ParameterGroup
from common.schedules import ema_momentum
from msbreg.ema import ema_update, frozen_copy
from msbreg.losses import byol_loss


@dataclass
class BYOLConfig:
    name: Literal["byol"] = "byol"  # BYOL (Grill et al. 2020), the baseline MSBReg builds on: 2 views
    # Heads: 2-layer MLPs with ReLU (supplement 1.2). ResNet-18: 512 hidden / 128 out; ResNet-50: 4096 / 256.
    projector: Widths = field(default_factory=lambda: [512, 128])  # hidden widths..., output
    predictor: Widths = field(default_factory=lambda: [512, 128])  # hidden widths..., output (= the projector's)
    head_norm: Literal["bn", "ln", "none"] = "bn"  # normalisation in the heads (supplementary Table 4)
    weight_standardization: bool = False   # weight-standardised linear layers in the heads (supplement 1.2)
    base_momentum: Fraction = 0.99         # target EMA momentum, cosine from this to 1 per step (0.996 on ImageNet)
    # The predictor's learning rate stays at the peak (no warm-up, no decay) while the rest follows the schedule,
    # as SimSiam's (Chen & He 2021); not in BYOL's or MSBReg's recipe, hence false
    predictor_fixed_lr: bool = False

    @staticmethod
    def keys_added(values: dict) -> dict:
        """Before the key existed the predictor followed the schedule (``common.config_upgrade.values_before_added_keys``)."""
        return {"predictor_fixed_lr": False}

    @staticmethod
    def upgrade_keys(values: dict) -> dict:
        """A section written before the one head vocabulary (an older run's config.yaml or YAML file):
        proj_hidden_dim and proj_output_dim become ``projector``, pred_hidden_dim ``predictor`` (ending in the
        projector's output width, as it did)."""
        output = values.get("proj_output_dim", 128)
        values = widths_from_old_keys(values, ("proj_hidden_dim", "proj_output_dim", None), "projector", (512, 128, 1))
        if "pred_hidden_dim" in values:
            values = {**{k: v for k, v in values.items() if k != "pred_hidden_dim"},
                      "predictor": [values["pred_hidden_dim"], output]}
        return values


class BYOL(Method):
    """Online network (backbone, projector, predictor) and a target network (backbone, projector) moved by EMA.

    Loss: the symmetrised ``byol_loss``, the mean of both directions. Logged metrics: ``proj_std``, the
    collapse monitor (mean per-dimension std of the L2-normalised online projections; about 1/sqrt(d) for
    embeddings spread over the sphere, 0 when collapsed), and the current ``ema_momentum``.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg: BYOLConfig):
        super().__init__(backbone, feature_dim)
        self.cfg = cfg
        if cfg.projector and cfg.predictor and cfg.predictor[-1] != cfg.projector[-1]:
            raise ConfigError(f"method.predictor must end in the projector's output width {cfg.projector[-1]} "
                              f"(it regresses the target's projections), got {cfg.predictor}")
        options = {"norm": cfg.head_norm, "weight_standardization": cfg.weight_standardization}
        self.projector = head(feature_dim, cfg.projector, "method.projector", **options)
        self.predictor = head(cfg.projector[-1], cfg.predictor, "method.predictor", **options)
        self.target_backbone = frozen_copy(backbone)
        self.target_projector = frozen_copy(self.projector)
        self.momentum = cfg.base_momentum

    def embed(self, views: list[Tensor], labels: Tensor | None = None) -> dict[str, Tensor]:
        """Every view through both networks, one view per forward pass (batch-norm statistics per view); the
        target without gradient.

        Returns ``predictions``, ``projections`` (online) and ``targets`` as [N, K, D] tensors (K views), and the
        detached backbone ``features`` of views[0].
        """
        features, projections, predictions, targets = [], [], [], []
        for view in views:
            feature = self.backbone(view)
            projection = self.projector(feature)
            features.append(feature)
            projections.append(projection)
            predictions.append(self.predictor(projection))
            with torch.no_grad():
                targets.append(self.target_projector(self.target_backbone(view)))
        return {"predictions": torch.stack(predictions, dim=1), "projections": torch.stack(projections, dim=1),
                "targets": torch.stack(targets, dim=1), "features": features[0].detach()}

    def collapse_monitor(self, projections: Tensor) -> Tensor:
        """Mean over dimensions of the batch std of the L2-normalised online projections [N, K, D]."""
        normalised = F.normalize(projections.detach().flatten(0, 1).float(), dim=-1)
        return normalised.std(dim=0).mean()

    def loss_from_embeddings(self, embeddings: dict[str, Tensor], labels: Tensor | None) -> dict[str, Tensor]:
        if embeddings["predictions"].shape[1] != 2:
            raise ValueError(f"BYOL takes exactly 2 views, got {embeddings['predictions'].shape[1]}")
        p, z = embeddings["predictions"].unbind(1), embeddings["targets"].unbind(1)
        loss = 0.5 * (byol_loss(p[0], z[1]) + byol_loss(p[1], z[0]))
        return {"loss": loss, "features": embeddings["features"],
                "proj_std": self.collapse_monitor(embeddings["projections"]),
                "ema_momentum": torch.tensor(self.momentum)}

    def parameter_groups(self) -> list[ParameterGroup]:
        """With ``predictor_fixed_lr`` the predictor is a group of its own at a fixed learning rate."""
        if not self.cfg.predictor_fixed_lr:
            return super().parameter_groups()
        predictor = list(self.predictor.parameters())
        in_predictor = {id(p) for p in predictor}
        online = [p for p in self.parameters() if p.requires_grad and id(p) not in in_predictor]
        return [ParameterGroup("backbone_and_projector", online), ParameterGroup("predictor", predictor, fixed_lr=True)]

    def on_step_start(self, step: int, total_steps: int) -> None:
        self.momentum = ema_momentum(step, total_steps, self.cfg.base_momentum)

    def on_step_end(self, step: int, total_steps: int) -> None:
        ema_update(self.target_backbone, self.backbone, self.momentum)
        ema_update(self.target_projector, self.projector, self.momentum)
