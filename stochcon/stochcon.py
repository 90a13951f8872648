"""StochCon (Algorithm 1): SimCLR with one side of every contrasted pair forced through a latent variable.

h = f(x~), h' = f(x^'); phi' = pi(h'); z' ~ q(z | phi'); h'' = rho(z'); v = g(h), v' = g(h'');
minimise InfoNCE(v, v'). The whole stochastic view batch goes through the latent, so the negatives of the
stochastic branch are reparameterised the same way. pi and rho are Linear layers between the backbone width
and `latent_dim`; with `latent_dim` equal to the backbone width both are off.

Multi-crop (2 global + 8 local views): every global view i is contrasted with every later view j. The
`placement` picks the stochastic views: `top` the global views, `bottom` the local ones (Figure 4). In a
pair, the stochastic side is j when j is stochastic, else i when i is; with two global views and `top`
this is exactly Algorithm 1 (view 0 deterministic, view 1 stochastic); with `bottom` the global-global
pair is plain SimCLR. The Gaussian's scale comes from the opposing view (Section 4.2): the other global
view for a global view, global view (j mod #global) for local view j.

`SupervisedBernoulli` is the Appendix A.2 control: a supervised network whose pooled features pass
through the same Gumbel-Bernoulli layer, bypassed ("dropped out") for each example with probability 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.heads import mlp
from common.method import Method
from common.schedules import cosine_anneal
from stochcon.latents import GumbelBernoulli, IsotropicGaussian
from stochcon.losses import info_nce

LATENTS = ("bernoulli", "gaussian")


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"method.{key} must be one of {', '.join(choices)}, not '{value}'")


class StochasticBranch(nn.Module):
    """h' -> phi' = pi(h') -> z' ~ q(z | phi') -> h'' = rho(z'); the optional bottleneck and the latent."""

    def __init__(
        self, feature_dim: int, latent: str, latent_dim: int | None, variates: str, temperature: float
    ) -> None:
        super().__init__()
        _check_choice("latent", latent, LATENTS)
        _check_choice("variates", variates, ("hard", "soft"))
        self.latent_dim = latent_dim or feature_dim
        if self.latent_dim <= 0:
            raise ValueError(f"method.latent_dim must be positive, got {latent_dim}")
        bottleneck = self.latent_dim != feature_dim
        self.pi = nn.Linear(feature_dim, self.latent_dim) if bottleneck else nn.Identity()
        self.rho = nn.Linear(self.latent_dim, feature_dim) if bottleneck else nn.Identity()
        self.kind = latent
        self.latent = (
            GumbelBernoulli(hard=variates == "hard", temperature=temperature)
            if latent == "bernoulli"
            else IsotropicGaussian(self.latent_dim)
        )

    def forward(self, h: Tensor, h_var: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Returns (h'', z', phi'); `h_var` sets the Gaussian's scale (ignored by the Bernoulli)."""
        phi = self.pi(h)
        if self.kind == "bernoulli":
            z = self.latent(phi)
        else:
            z = self.latent(phi, self.pi(h_var) if self.training else None)
        return self.rho(z), z, phi

    def code(self, h: Tensor) -> Tensor:
        """The deterministic code of features h: hard bits 1[phi >= 0] (Bernoulli) or the mean phi (Gaussian)."""
        phi = self.pi(h)
        return (phi >= 0).to(phi.dtype) if self.kind == "bernoulli" else phi

    def scale(self, h_var: Tensor) -> Tensor:
        """The Gaussian's sigma predicted from features h_var."""
        if self.kind != "gaussian":
            raise ValueError("only the Gaussian latent has a scale")
        return self.latent.std(self.pi(h_var))

    def set_temperature(self, temperature: float) -> None:
        if self.kind == "bernoulli":
            self.latent.temperature = temperature

    def metrics(self, zs: list[Tensor], phis: list[Tensor], h_vars: list[Tensor | None]) -> dict[str, Tensor]:
        """Per-step monitors: active bits of the sampled code (Bernoulli) or the scale and spread (Gaussian)."""
        with torch.no_grad():
            phi = torch.cat(phis).float()
            if self.kind == "bernoulli":
                active = (
                    (torch.cat(zs) >= 0.5).float().sum(1)
                )  # exact for hard variates; rounded for soft ones
                return {
                    "active_bits": active.mean(),
                    "active_fraction": active.mean() / self.latent_dim,
                    "bit_probability": torch.sigmoid(phi).mean(),
                    "gumbel_temperature": torch.tensor(self.latent.temperature),
                }
            sigma = torch.cat([self.scale(h) for h in h_vars if h is not None]).float()
            return {"latent_std": sigma.mean(), "latent_mean_spread": phi.std(0).mean()}


@dataclass
class StochConConfig:
    # SimCLR part: projector g (2048-2048-128 in SimCLR v1 on ResNet-50) and the InfoNCE temperature.
    proj_hidden_dim: int = 2048
    proj_output_dim: int = 128
    head_norm: str = "bn"  # bn | ln | none
    temperature: float = 0.1  # InfoNCE temperature tau (Equation 1)
    # Latent variable (Section 3).
    latent: str = "bernoulli"  # bernoulli (Gumbel-Bernoulli) | gaussian (isotropic Gaussian)
    latent_dim: int | None = None  # bottleneck width; None or the backbone width turns pi and rho off
    variates: str = "hard"  # hard (straight-through 0/1, Appendix A.1) | soft (relaxed), Figure 4
    placement: str = "top"  # top: global views through the latent | bottom: local views (Figure 4)
    gumbel_temperature_start: float = 1.0  # single-cycle cosine 1.0 -> 0.1 over training (Section 4)
    gumbel_temperature_end: float = 0.1
    gaussian_variance: str = "opposing"  # opposing (Section 4.2) | own: the ablation whose scale collapses


class StochCon(Method):
    """SimCLR projector and InfoNCE with a `StochasticBranch` on the stochastic views; see the module doc."""

    def __init__(self, cfg: StochConConfig, backbone: nn.Module, feature_dim: int, num_global_views: int = 2):
        super().__init__(backbone, feature_dim)
        _check_choice("placement", cfg.placement, ("top", "bottom"))
        _check_choice("gaussian_variance", cfg.gaussian_variance, ("opposing", "own"))
        if num_global_views < 1:
            raise ValueError(f"StochCon needs at least one global view, got {num_global_views}")
        self.cfg = cfg
        self.num_global_views = num_global_views
        self.projector = mlp(feature_dim, [cfg.proj_hidden_dim], cfg.proj_output_dim, norm=cfg.head_norm)
        self.branch = StochasticBranch(
            feature_dim, cfg.latent, cfg.latent_dim, cfg.variates, cfg.gumbel_temperature_start
        )

    def stochastic_views(self, num_views: int) -> range:
        if self.cfg.placement == "top":
            return range(self.num_global_views)
        if num_views <= self.num_global_views:
            raise ValueError(
                "method.placement=bottom puts the local views through the latent, but there are none: "
                "set augment.local_crops > 0 or use placement=top"
            )
        return range(self.num_global_views, num_views)

    def opposing_view(self, k: int) -> int:
        """The view whose features set the Gaussian scale of stochastic view k."""
        if self.cfg.gaussian_variance == "own":
            return k
        if self.num_global_views < 2 and k < self.num_global_views:
            raise ValueError("gaussian_variance=opposing needs two global views (augment.num_views >= 2)")
        g = self.num_global_views
        return (k + 1) % g if k < g else (k - g) % g

    def encode_views(self, views: list[Tensor]) -> list[Tensor]:
        """Backbone features of every view; views of one resolution share a forward pass (as multi-crop does)."""
        features: list[Tensor | None] = [None] * len(views)
        by_size: dict[tuple[int, ...], list[int]] = {}
        for k, view in enumerate(views):
            by_size.setdefault(tuple(view.shape[1:]), []).append(k)
        for indices in by_size.values():
            chunks = self.backbone(torch.cat([views[k] for k in indices])).chunk(len(indices))
            for k, chunk in zip(indices, chunks):
                features[k] = chunk
        return features  # type: ignore[return-value]

    def forward(self, views: list[Tensor], labels: Tensor) -> dict[str, Tensor]:
        if len(views) < 2 or len(views) < self.num_global_views:
            raise ValueError(
                f"StochCon needs at least 2 views and {self.num_global_views} global ones, got {len(views)}"
            )
        h = self.encode_views(views)
        stochastic = set(self.stochastic_views(len(views)))
        deterministic: dict[int, Tensor] = {}
        sampled: dict[int, Tensor] = {}
        zs, phis, h_vars = [], [], []

        def embed(k: int, through_latent: bool) -> Tensor:
            cache = sampled if through_latent else deterministic
            if k not in cache:
                if through_latent:
                    h_var = h[self.opposing_view(k)] if self.branch.kind == "gaussian" else None
                    h_stoch, z, phi = self.branch(h[k], h_var)
                    zs.append(z)
                    phis.append(phi)
                    h_vars.append(h_var)
                    cache[k] = self.projector(h_stoch)
                else:
                    cache[k] = self.projector(h[k])
            return cache[k]

        losses = []
        for i in range(self.num_global_views):
            for j in range(i + 1, len(views)):
                if j in stochastic:
                    pair = (embed(i, False), embed(j, True))
                elif i in stochastic:
                    pair = (embed(i, True), embed(j, False))
                else:
                    pair = (embed(i, False), embed(j, False))
                losses.append(info_nce(pair[0], pair[1], self.cfg.temperature))
        loss = torch.stack(losses).mean()
        return {"loss": loss, "features": h[0].detach(), **self.branch.metrics(zs, phis, h_vars)}

    def on_step_start(self, step: int, total_steps: int) -> None:
        self.branch.set_temperature(
            cosine_anneal(
                step, total_steps, self.cfg.gumbel_temperature_start, self.cfg.gumbel_temperature_end
            )
        )


@dataclass
class SupervisedBernoulliConfig:
    latent_dim: int | None = None  # None: the backbone width (2048 for ResNet-50), no pi / rho
    variates: str = "hard"
    drop_prob: float = 0.5  # probability that an example bypasses the Gumbel-Bernoulli layer
    gumbel_temperature_start: float = 1.0
    gumbel_temperature_end: float = 0.1


class SupervisedBernoulli(Method):
    """Appendix A.2: cross-entropy on a linear classifier over pooled features that pass through a
    Gumbel-Bernoulli layer, except for a random half of the examples (p = `drop_prob`), which see the
    features directly -- a proxy for StochCon's deterministic / stochastic branches. Evaluation goes
    through the (deterministic, eval-mode) latent.
    """

    def __init__(
        self, cfg: SupervisedBernoulliConfig, backbone: nn.Module, feature_dim: int, num_classes: int
    ):
        super().__init__(backbone, feature_dim)
        if not 0.0 <= cfg.drop_prob <= 1.0:
            raise ValueError(f"method.drop_prob must lie in [0, 1], got {cfg.drop_prob}")
        if num_classes < 2:
            raise ValueError(f"SupervisedBernoulli needs a labelled dataset, got {num_classes} classes")
        self.cfg = cfg
        self.branch = StochasticBranch(
            feature_dim, "bernoulli", cfg.latent_dim, cfg.variates, cfg.gumbel_temperature_start
        )
        self.classifier = nn.Linear(feature_dim, num_classes)

    def logits(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        h = self.backbone(images)
        h_stoch, z, phi = self.branch(h)
        if self.training:
            bypass = torch.rand(h.shape[0], 1, device=h.device) < self.cfg.drop_prob
            h_stoch = torch.where(bypass, h, h_stoch)
        return self.classifier(h_stoch), h, z, phi

    def forward(self, views: list[Tensor], labels: Tensor) -> dict[str, Tensor]:
        if bool((labels < 0).any()):
            raise ValueError("SupervisedBernoulli needs labels for every training image (got label -1)")
        logits, h, z, phi = self.logits(views[0])
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(1) == labels).float().mean()
        return {
            "loss": loss,
            "features": h.detach(),
            "train_acc": accuracy.detach(),
            **self.branch.metrics([z], [phi], [None]),
        }

    def on_step_start(self, step: int, total_steps: int) -> None:
        self.branch.set_temperature(
            cosine_anneal(
                step, total_steps, self.cfg.gumbel_temperature_start, self.cfg.gumbel_temperature_end
            )
        )
