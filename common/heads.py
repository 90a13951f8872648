"""Projection and prediction heads: MLPs of Linear-Norm-ReLU blocks and a final Linear."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import ConfigError


class WSLinear(nn.Linear):
    """Linear layer with weight standardisation (Qiao et al., 2019): each output row has zero mean, unit std."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        mean = weight.mean(dim=1, keepdim=True)
        std = weight.std(dim=1, keepdim=True) + 1e-5
        return F.linear(x, (weight - mean) / std, self.bias)


def _norm(kind: str, dim: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm1d(dim)
    if kind == "ln":
        return nn.LayerNorm(dim)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"head norm must be bn, ln or none, not '{kind}'")


def mlp(in_dim: int, hidden_dims: Sequence[int], out_dim: int, norm: str = "bn", last_norm: bool = False,
        weight_standardization: bool = False, last_bias: bool = True) -> nn.Sequential:
    """``in_dim -> [Linear, norm, ReLU] x len(hidden_dims) -> Linear -> out_dim`` (+ optional final norm).

    SimCLR's projector: ``mlp(2048, [2048], 128)``; BYOL's: ``mlp(2048, [4096], 256)``. ``last_norm=True`` adds a
    normalisation on the output (a BatchNorm without affine for ``norm="bn"``), as SimCLR v2's projector and the
    VCReg paper's Appendix C.4 SimCLR projector have; StochCon's paper does not describe its projector, and ours
    follows SimCLR v1 (no output norm). Hidden layers drop their bias when followed by a normalisation, which
    would cancel it; ``last_bias=False`` drops the output layer's too (VICReg's projector has none).
    """
    linear = WSLinear if weight_standardization else nn.Linear
    layers: list[nn.Module] = []
    dim = in_dim
    for hidden in hidden_dims:
        layers += [linear(dim, hidden, bias=norm == "none"), _norm(norm, hidden), nn.ReLU(inplace=True)]
        dim = hidden
    layers.append(linear(dim, out_dim, bias=last_bias and not last_norm))
    if last_norm:
        layers.append(nn.BatchNorm1d(out_dim, affine=False) if norm == "bn" else _norm(norm, out_dim))
    return nn.Sequential(*layers)


def head(in_dim: int, widths: Sequence[int], key: str, **mlp_options) -> nn.Sequential:
    """The head a config's width list describes: ``widths`` = hidden widths..., output width (every method's
    ``method.projector`` and ``method.predictor``); ``key`` names that list in the error of an empty one."""
    if not widths or min(widths) < 1:
        raise ConfigError(f"{key} must list the hidden widths and then the output width (all positive), "
                          f"got {list(widths)}")
    *hidden, out = widths
    return mlp(in_dim, hidden, out, **mlp_options)


def widths_from_old_keys(values: dict, keys: tuple[str, str, str | None], new_key: str,
                         defaults: tuple[int, int, int]) -> dict:
    """``values`` (a config section written before the one head vocabulary) with the old width keys
    ``(hidden, output, hidden_layers or None)`` replaced by ``new_key``'s width list: ``[hidden] * layers + [output]``,
    a missing old key taking its old default. Sections without the old keys come back unchanged."""
    hidden, output, layers = keys
    present = [key for key in keys if key is not None and key in values]
    if not present:
        return values
    widths = ([values.get(hidden, defaults[0])] * (values.get(layers, defaults[2]) if layers else defaults[2])
              + [values.get(output, defaults[1])])
    return {**{k: v for k, v in values.items() if k not in present}, new_key: widths}
