"""Optimisers: LARS as in SimCLR's reference implementation, parameter groups and a factory.

Every parameter group carries ``base_lr``: the trainer sets ``lr`` of each group from its own
``base_lr`` and the schedule at every step, so groups with different learning rates (the online
probe, a classifier vs an encoder) share one schedule.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated, Literal

import torch
from torch import nn

from common.config_types import Fraction, Length, NonNegativeFloat, PositiveFloat, UnitInterval
from common.errors import ConfigError
from common.method import Method, ParameterGroup
from common.schedules import step_decay, warmup_cosine


@dataclass
class OptimConfig:
    name: Literal["lars", "sgd", "adam", "adamw"] = "lars"  # the optimiser
    lr: NonNegativeFloat = 0.3         # base learning rate, before scaling with the batch size
    # linear: lr * batch/256 | linear_views: also * augment.num_views (MSBReg) | sqrt: lr * sqrt(batch) | none
    lr_scaling: Literal["linear", "linear_views", "sqrt", "none"] = "linear"
    weight_decay: NonNegativeFloat = 1e-6  # L2 penalty (SimCLR's LARS: 1e-6); AdamW: decoupled decay
    momentum: NonNegativeFloat = 0.9   # SGD/LARS momentum
    nesterov: bool = False             # SGD/LARS: Nesterov momentum
    eta: PositiveFloat = 1e-3          # LARS trust coefficient
    exclude_bias_and_norm: bool = True  # no weight decay and no LARS adaptation for parameters with ndim <= 1
    # Their learning rate as a multiple of the others' (with exclude_bias_and_norm): under LARS the weights' steps
    # shrink by the trust ratio eta ||w|| / ||g|| while these take plain steps at the full rate (Barlow Twins'
    # code: 0.0048 / 0.2 = 0.024); 1: the same rate, as SimCLR's, BYOL's and VICReg's code
    bias_and_norm_lr_scale: NonNegativeFloat = 1.0
    # Adam/AdamW: decay rates of the first and second moment estimates (PyTorch's defaults)
    betas: Annotated[list[UnitInterval], Length(low=2, high=2)] = field(default_factory=lambda: [0.9, 0.999])
    warmup_epochs: NonNegativeFloat = 10.0  # linear warm-up from 0 to the peak (warmup_cosine), in epochs
    final_lr: Fraction = 0.0           # learning rate at the end of the cosine, as a fraction of the peak
    schedule: Literal["warmup_cosine", "step", "constant"] = "warmup_cosine"  # the learning rate per step
    milestones: list[Fraction] = field(default_factory=lambda: [0.8])  # step schedule: fractions of training
    gamma: NonNegativeFloat = 0.1      # step schedule: the learning rate is multiplied by this at each milestone
    foreach: bool = True               # multi-tensor (foreach) update where the optimiser has one

    @staticmethod
    def keys_added(values: dict) -> dict:
        """Before the key existed biases and norms took the peak rate (``common.config_upgrade.values_before_added_keys``)."""
        return {"bias_and_norm_lr_scale": 1.0}


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al., 2017) as in SimCLR's TensorFlow code.

    For a parameter w with gradient g, in groups with ``lars_exclude=False``:
        g <- g + wd * w
        trust = eta * ||w|| / ||g||   (1 when either norm is 0)
        v <- m * v + lr * trust * g
        w <- w - v
    In groups with ``lars_exclude=True`` (biases and normalisation weights) neither weight decay nor
    the trust ratio is applied: v <- m * v + lr * g.
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 1e-3, nesterov: bool = False):
        if lr < 0 or momentum < 0 or weight_decay < 0 or eta < 0:
            raise ValueError(f"LARS needs non-negative lr, momentum, weight_decay and eta; got {lr}, {momentum}, "
                             f"{weight_decay}, {eta}")
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta,
                    "nesterov": nesterov, "lars_exclude": False}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if not group["lars_exclude"]:
                if group["weight_decay"] != 0:
                    grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
                param_norms = torch._foreach_norm(params)
                grad_norms = torch._foreach_norm(grads)
                trusts = [
                    torch.where((pn > 0) & (gn > 0), group["eta"] * pn / gn, torch.ones_like(pn))
                    for pn, gn in zip(param_norms, grad_norms)
                ]
                grads = torch._foreach_mul(grads, trusts)
            buffers = []
            for p, g in zip(params, grads):
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buffers.append(state["momentum_buffer"])
            # v <- m * v + lr * g
            torch._foreach_mul_(buffers, group["momentum"])
            torch._foreach_add_(buffers, grads, alpha=group["lr"])
            if group["nesterov"]:
                update = torch._foreach_add(torch._foreach_mul(buffers, group["momentum"]), grads, alpha=group["lr"])
                torch._foreach_sub_(params, update)
            else:
                torch._foreach_sub_(params, buffers)
        return loss


def is_excluded(parameter: torch.Tensor) -> bool:
    """Biases and normalisation weights: every parameter with at most one dimension."""
    return parameter.ndim <= 1


def param_groups(model: nn.Module, base_lr: float, weight_decay: float, exclude_bias_and_norm: bool = True,
                 bias_and_norm_lr_scale: float = 1.0) -> list[dict]:
    """The optimiser's groups: each group the method declares (``Method.parameter_groups``; one group for any
    other module) split into its weights and its biases/norm parameters, the latter without weight decay or LARS
    adaptation and at ``bias_and_norm_lr_scale`` x the learning rate. Each group carries ``name``, ``base_lr``
    (its peak), ``lr`` and ``fixed_lr`` (the trainer keeps ``lr`` at ``base_lr`` instead of following the
    schedule)."""
    if bias_and_norm_lr_scale != 1.0 and not exclude_bias_and_norm:
        raise ConfigError("optim.bias_and_norm_lr_scale sets the rate of the parameters exclude_bias_and_norm "
                          "separates: set optim.exclude_bias_and_norm=true or leave the scale at 1.0")
    declared = (model.parameter_groups() if isinstance(model, Method)
                else [ParameterGroup("all", [p for p in model.parameters() if p.requires_grad])])
    trainable = [p for p in model.parameters() if p.requires_grad]
    seen = [id(p) for group in declared for p in group.params]
    if sorted(seen) != sorted(id(p) for p in trainable):
        raise ValueError(f"{type(model).__name__}.parameter_groups must hold every trainable parameter exactly "
                         f"once: {len(seen)} entries for {len(trainable)} parameters")
    groups = []
    for group in declared:
        regular = [p for p in group.params if not (exclude_bias_and_norm and is_excluded(p))]
        excluded = [p for p in group.params if exclude_bias_and_norm and is_excluded(p)]
        for name, params, decay, lars_exclude, lr in (
                (group.name, regular, weight_decay, False, base_lr),
                (f"{group.name}_bias_and_norm", excluded, 0.0, True, base_lr * bias_and_norm_lr_scale)):
            if params:
                groups.append({"name": name, "params": params, "weight_decay": decay, "lars_exclude": lars_exclude,
                               "base_lr": lr, "lr": lr, "fixed_lr": group.fixed_lr})
    return groups


def scaled_lr(cfg: OptimConfig, batch_size: int, num_views: int = 2) -> float:
    """The peak learning rate from the base one (Goyal et al.'s linear scaling rule and its variants)."""
    if cfg.lr_scaling == "linear":
        return cfg.lr * batch_size / 256
    if cfg.lr_scaling == "linear_views":
        return cfg.lr * batch_size / 256 * num_views
    if cfg.lr_scaling == "sqrt":
        return cfg.lr * (batch_size ** 0.5)
    if cfg.lr_scaling == "none":
        return cfg.lr
    raise ValueError(f"optim.lr_scaling must be linear, linear_views, sqrt or none, not '{cfg.lr_scaling}'")


def build_optimizer(cfg: OptimConfig, groups: list[dict]) -> torch.optim.Optimizer:
    """The optimiser named by ``cfg.name`` over ``groups`` (each with its ``base_lr``)."""
    lr = groups[0]["base_lr"]
    if cfg.name == "lars":
        return LARS(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, eta=cfg.eta,
                    nesterov=cfg.nesterov)
    for group in groups:  # the other optimisers do not know the LARS flag
        group.pop("lars_exclude", None)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov, foreach=cfg.foreach)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                                foreach=cfg.foreach)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                                 foreach=cfg.foreach)
    raise ValueError(f"optim.name must be one of sgd, lars, adam, adamw, not '{cfg.name}'")


def learning_rate(cfg: OptimConfig, step: int, total_steps: int, steps_per_epoch: int, base: float) -> float:
    if cfg.schedule == "warmup_cosine":
        warmup = round(cfg.warmup_epochs * steps_per_epoch)
        return warmup_cosine(step, total_steps, warmup, base, cfg.final_lr * base)
    if cfg.schedule == "step":
        return step_decay(step, [round(m * total_steps) for m in cfg.milestones], base, cfg.gamma)
    return base  # constant
