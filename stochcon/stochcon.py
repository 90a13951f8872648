"""StochCon (Algorithm 1): SimCLR with one side of every contrasted pair forced through a latent variable.

h = f(x~), h' = f(x^'); phi' = pi(h'); z' ~ q(z | phi'); h'' = rho(z'); v = g(h), v' = g(h'');
minimise InfoNCE(v, v'). The whole stochastic view batch goes through the latent, so the negatives of the
stochastic branch are reparameterised the same way. pi and rho ("projectors" in Algorithm 1) are Linear layers
between the backbone width and `latent_dim` (the backbone width when null); `projectors: false` turns both off.

Multi-crop (2 global + 8 local views): every global view i is contrasted with every later view j. The
`placement` picks the stochastic views: `top` the global views, `bottom` the local ones (Figure 4). In a
pair, the stochastic side is j when j is stochastic, else i when i is; with two global views and `top`
this is exactly Algorithm 1 (view 0 deterministic, view 1 stochastic); with `bottom` the global-global
pair is plain SimCLR. The Gaussian's scale comes from the opposing view (Section 4.2): the other global
view for a global view, global view (j mod #global) for local view j.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from common.errors import ConfigError
from common.info_nce import info_nce
from common.schedules import cosine_anneal
from common.views import encode_views, project
from stochcon.latents import GumbelBernoulli, IsotropicGaussian, LatentConfig
from stochcon.simclr import SimCLR, SimCLRConfig


@dataclass
class StochConConfig(SimCLRConfig):
    """SimCLR's settings (the contrastive head) and the latent's (`method.stochcon`)."""

    name: Literal["stochcon"] = "stochcon"  # SimCLR with one side of each pair through a latent (Algorithm 1)
    stochcon: LatentConfig = field(default_factory=LatentConfig)


class StochasticBranch(nn.Module):
    """h' -> phi' = pi(h') -> z' ~ q(z | phi') -> h'' = rho(z'); the projectors pi, rho and the latent."""

    def __init__(
        self,
        feature_dim: int,
        latent: str,
        latent_dim: int | None,
        variates: str,
        temperature: float,
        pi_init_gain: float = 1.0,
        projectors: bool = True,
    ) -> None:
        super().__init__()
        self.latent_dim = feature_dim if latent_dim is None else latent_dim
        if self.latent_dim <= 0:
            raise ConfigError(f"method.stochcon.latent_dim must be positive, got {latent_dim}")
        if not projectors and self.latent_dim != feature_dim:
            raise ConfigError(
                "method.stochcon.projectors=false feeds the backbone features to the latent as they are, so "
                f"latent_dim must be null or the backbone width ({feature_dim}), not {latent_dim}"
            )
        self.pi = nn.Linear(feature_dim, self.latent_dim) if projectors else nn.Identity()
        self.rho = nn.Linear(self.latent_dim, feature_dim) if projectors else nn.Identity()
        if pi_init_gain != 1.0:
            if not projectors:
                raise ConfigError(
                    "method.stochcon.pi_init_gain scales pi, which method.stochcon.projectors=false turns off: "
                    "set projectors: true or leave pi_init_gain at 1.0"
                )
            if pi_init_gain <= 0:
                raise ConfigError(f"method.stochcon.pi_init_gain must be positive, got {pi_init_gain}")
            with torch.no_grad():
                self.pi.weight.mul_(pi_init_gain)
                self.pi.bias.mul_(pi_init_gain)
        self.kind = latent
        self.latent = (
            GumbelBernoulli(hard=variates == "hard", temperature=temperature)
            if latent == "bernoulli"
            else IsotropicGaussian(self.latent_dim)
        )
        # Bits straight on the features: checked once, on the first batch, that the features can be negative.
        self.features_unchecked = latent == "bernoulli" and not projectors

    def refuse_nonnegative_logits(self, h: Tensor) -> None:
        """A Bernoulli without pi reads the features as logits: over features that are all >= 0 (a ReLU before
        the pooling, as in every ResNet) each bit has P(1) >= 1/2 and the code 1[h >= 0] is all ones."""
        if bool((h >= 0).all()):
            raise ConfigError(
                "method.stochcon.projectors=false puts the Bernoulli bits straight on the backbone features, "
                "which are all >= 0 here (a ReLU before the pooling): the code 1[h >= 0] would be all ones; set "
                "method.stochcon.projectors=true (Algorithm 1's pi and rho)"
            )
        self.features_unchecked = False

    def forward(
        self, h: Tensor, h_var: Tensor | None = None, groups: int = 1
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Returns (h'', z', phi'); `h_var` sets the Gaussian's scale (ignored by the Bernoulli).

        `groups`: the rows of `h` are that many views of this rank's batch, one after the other; the noise
        is drawn per sample of the global batch, so it does not depend on the number of processes.
        """
        if self.features_unchecked:
            self.refuse_nonnegative_logits(h)
        phi = self.pi(h)
        if self.kind == "bernoulli":
            z = self.latent(phi, groups)
        else:
            z = self.latent(phi, self.pi(h_var) if self.training else None, groups)
        return self.rho(z), z, phi

    @classmethod
    def from_config(cls, feature_dim: int, cfg: LatentConfig) -> StochasticBranch:
        """The branch `method.stochcon` describes."""
        return cls(
            feature_dim,
            cfg.latent,
            cfg.latent_dim,
            cfg.variates,
            cfg.gumbel_temperature_start,
            cfg.pi_init_gain,
            cfg.projectors,
        )

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

    def anneal_temperature(self, step: int, total_steps: int, cfg: LatentConfig) -> None:
        """The Gumbel temperature of training: single-cycle cosine from cfg's start to its end (Section 4)."""
        self.set_temperature(
            cosine_anneal(step, total_steps, cfg.gumbel_temperature_start, cfg.gumbel_temperature_end)
        )

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
                    # 0 when every bit is a fair coin, 1 when every bit is certain: |2 sigmoid(phi) - 1|.
                    "bit_certainty": (2 * torch.sigmoid(phi) - 1).abs().mean(),
                    "gumbel_temperature": torch.tensor(self.latent.temperature),
                }
            sigma = torch.cat([self.scale(h) for h in h_vars if h is not None]).float()
            return {"latent_std": sigma.mean(), "latent_mean_spread": phi.std(0).mean()}


class StochCon(SimCLR):
    """SimCLR (its projector g, InfoNCE and multi-crop pairs) with a `StochasticBranch` on the stochastic views."""

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        cfg: StochConConfig,
        num_global_views: int,
    ):
        super().__init__(backbone, feature_dim, cfg, num_global_views)
        if num_global_views < 1:
            raise ConfigError(f"StochCon needs at least one global view, got {num_global_views}")
        self.branch = StochasticBranch.from_config(feature_dim, cfg.stochcon)

    def stochastic_views(self, num_views: int) -> range:
        if self.cfg.stochcon.placement == "top":
            return range(self.num_global_views)
        if num_views <= self.num_global_views:
            raise ConfigError(
                "method.stochcon.placement=bottom puts the local views through the latent, but there "
                "are none: set augment.local_crops > 0 or use placement=top"
            )
        return range(self.num_global_views, num_views)

    def opposing_view(self, k: int) -> int:
        """The view whose features set the Gaussian scale of stochastic view k."""
        if self.cfg.stochcon.gaussian_variance == "own":
            return k
        g = self.num_global_views
        if g < 2 and k < g:
            raise ConfigError(
                "method.stochcon.gaussian_variance=opposing needs two global views (augment.num_views)"
            )
        return (k + 1) % g if k < g else (k - g) % g

    def contrasted_pairs(self, num_views: int) -> list[tuple[tuple[int, bool], tuple[int, bool]]]:
        """The pairs of `multicrop_info_nce` (global view i with every later view j), each side as
        (view, through the latent); with `both_directions`, a pair of two stochastic views twice."""
        stochastic = set(self.stochastic_views(num_views))
        pairs = []
        for i in range(self.num_global_views):
            for j in range(i + 1, num_views):
                through_j = j in stochastic
                pairs.append(((i, not through_j and i in stochastic), (j, through_j)))
                if self.cfg.stochcon.both_directions and i in stochastic and through_j:
                    pairs.append(((i, True), (j, False)))
        return pairs

    @staticmethod
    def side_key(side: tuple[int, bool]) -> str:
        """The embedding's name of a side (view k, through the latent or not): ``z<k>`` or ``z<k>_latent``."""
        k, through = side
        return f"z{k}_latent" if through else f"z{k}"

    def embed(self, views: list[Tensor], labels: Tensor) -> dict[str, Tensor]:
        """The projection of every side of the contrasted pairs (``side_key``), the latent's samples, logits and
        (Gaussian) scale features detached for the monitors, [N, stochastic views, ...], and ``features``."""
        if len(views) < 2 or len(views) < self.num_global_views:
            raise ConfigError(
                f"StochCon needs at least 2 views and {self.num_global_views} global ones, got {len(views)}"
            )
        h = encode_views(self.backbone, views, self.cfg.views_together)
        pairs = self.contrasted_pairs(len(views))
        sides = sorted({side for pair in pairs for side in pair}, key=lambda side: (side[1], side[0]))
        plain = [k for k, through in sides if not through]
        sampled = [k for k, through in sides if through]
        # One pass through the latent for all stochastic views, one projector pass for every side.
        inputs = [h[k] for k in plain]
        out: dict[str, Tensor] = {"features": h[0].detach()}
        if sampled:
            h_var = (
                torch.cat([h[self.opposing_view(k)] for k in sampled])
                if self.branch.kind == "gaussian"
                else None
            )
            h_stoch, z, phi = self.branch(torch.cat([h[k] for k in sampled]), h_var, groups=len(sampled))
            inputs += list(h_stoch.chunk(len(sampled)))
            monitored = {"latent_z": z, "latent_phi": phi, "latent_h_var": h_var}
            out |= {key: torch.stack(value.detach().chunk(len(sampled)), dim=1)
                    for key, value in monitored.items() if value is not None}
        projections = project(self.projector, inputs, self.cfg.views_together)
        return out | {self.side_key(side): z for side, z in zip(sides, projections)}

    def loss_from_embeddings(self, embeddings: dict[str, Tensor], labels: Tensor) -> dict[str, Tensor]:
        num_views = 1 + max(int(key[1:].removesuffix("_latent")) for key in embeddings if key.startswith("z"))
        loss = torch.stack(
            [
                info_nce(embeddings[self.side_key(a)], embeddings[self.side_key(b)], self.cfg.temperature,
                         self.cfg.gather_negatives)
                for a, b in self.contrasted_pairs(num_views)
            ]
        ).mean()
        metrics: dict[str, Tensor] = {}
        if "latent_z" in embeddings:
            z, phi, h_var = (embeddings[key].flatten(0, 1) if key in embeddings else None
                             for key in ("latent_z", "latent_phi", "latent_h_var"))
            metrics = self.branch.metrics([z], [phi], [h_var])
        return {"loss": loss, "features": embeddings["features"], **metrics}

    def on_step_start(self, step: int, total_steps: int) -> None:
        self.branch.anneal_temperature(step, total_steps, self.cfg.stochcon)
