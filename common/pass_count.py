"""Counting a training pass exactly, as functions of the micro-batch: FLOPs and the activation memory autograd keeps.

How it counts: one forward and backward pass at micro-batches of 2, 3 and 4 images, on the meta device (shapes
only: no data, no memory, no time) where the method runs there, else on the CPU (a method that branches on a
value, ``.item()``, cannot run on the meta device). Both counts are polynomials of degree at most 2 in the batch
B: a backbone's work and activations grow with B, a batch-coupled loss's B x B similarity or B x D x D covariance
terms with B^2 or B. The three points fix that polynomial exactly (exact integer interpolation), so the counts at
the paper's batch are exact for the graph the trainer builds -- where scaling one small batch linearly would miss
the B^2 terms. Not counted: the cross-device part of a loss over the gathered global batch (a single process
plans), and what differs between the CPU or meta kernels and a GPU's: activations are counted in float32, so
under bf16/fp16 autocast (which keeps half-precision copies for matrix products) the figure is an upper bound,
and an attention kernel that saves no attention matrix (flash attention) needs less than counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from common.probe import OnlineProbe
from common.trainer import TrainingModule, build_initial_method


@dataclass
class PassCount:
    """One forward and backward pass of a micro-batch."""
    flops: int  # forward + backward
    forward_flops: int
    activation_bytes: int  # tensors saved for backward, one count per storage, parameters excluded
    largest_activation_bytes: int  # the largest of them (what a backward step holds twice, briefly)


def count_pass(module: torch.nn.Module, views: list[torch.Tensor], labels: torch.Tensor) -> PassCount:
    """FLOPs and saved-activation bytes of ``module(views, labels)["loss"]`` (plus ``probe_loss``) and its
    backward pass, on whatever device the module and the views are (the meta device: no data, no memory)."""
    parameter_storages = {p.untyped_storage() for p in module.parameters()}
    saved: dict = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage not in parameter_storages:
            saved[storage] = storage.nbytes()
        return tensor

    counter = FlopCounterMode(display=False)
    with counter:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            out = module(views, labels)
            loss = out["loss"] + out.get("probe_loss", 0.0)
        forward = counter.get_total_flops()
        loss.backward()
    return PassCount(counter.get_total_flops(), forward, sum(saved.values()), max(saved.values(), default=0))


def view_shapes(cfg, channels: int, native_size: int) -> list[tuple[int, int]]:
    """(channels, size) of every view the augmentation makes: the global views, then the local crops."""
    size = cfg.augment.image_size or native_size
    shapes = [(channels, size)] * cfg.augment.num_views
    if cfg.augment.name == "multiview":
        shapes += [(channels, cfg.augment.local_size)] * cfg.augment.local_crops
    return shapes


def count_probe(feature_dim: int, num_classes: int, batch: int) -> PassCount:
    """The online probe's pass on ``batch`` detached features (the trainer trains it alongside the method)."""
    probe = OnlineProbe(feature_dim, num_classes)

    class ProbeLoss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.probe = probe

        def forward(self, views, labels):
            return {"loss": self.probe(views[0], labels)["probe_loss"]}

    return count_pass(ProbeLoss(), [torch.zeros(batch, feature_dim)], torch.zeros(batch, dtype=torch.long))


FIT_BATCHES = (2, 3, 4)  # batch 1 would break BatchNorm's training statistics


def quadratic(points: list[tuple[int, int]]):
    """The polynomial of degree <= 2 through three (batch, count) points, exactly (Lagrange in fractions)."""
    from fractions import Fraction

    def value(batch: int) -> int:
        total = Fraction(0)
        for i, (xi, yi) in enumerate(points):
            term = Fraction(yi)
            for j, (xj, _) in enumerate(points):
                if j != i:
                    term *= Fraction(batch - xj, xi - xj)
            total += term
        return round(total)

    return value


@dataclass
class Counts:
    """Per-device counts as exact functions of the micro-batch."""
    device: str  # where the passes ran: meta or cpu
    parameters: int  # every parameter (an EMA target included), the online probe included
    trainable: int
    flops: object  # batch -> forward + backward FLOPs
    forward_flops: object
    activation_bytes: object
    largest_activation_bytes: object
    couples_batch: bool  # the method's loss couples the samples of a batch (gradient caching when accumulating)


def measure(cfg, build_method, channels: int, native_size: int, num_classes: int, device: str = "cpu") -> Counts:
    """Build the method as the trainer does and count its passes at ``FIT_BATCHES``: on the meta device, else
    on ``device`` (bench/gpu_check.py counts on the GPU it measures)."""
    shapes = view_shapes(cfg, channels, native_size)
    last_error: Exception | None = None
    for where in ("meta", device):
        try:
            with torch.device(where):
                method = build_initial_method(cfg, build_method, channels)
            method.train()
            method.on_step_start(0, 1)
            passes = []
            for batch in FIT_BATCHES:
                with torch.device(where):
                    views = [torch.zeros(batch, c, s, s) for c, s in shapes]
                    labels = torch.zeros(batch, dtype=torch.long)
                count = count_pass(TrainingModule(method, None), views, labels)
                method.zero_grad(set_to_none=True)
                if cfg.online_probe and num_classes:
                    with torch.device(where if where != "meta" else "cpu"):
                        probe = count_probe(method.feature_dim, num_classes, batch)
                    count = PassCount(count.flops + probe.flops, count.forward_flops + probe.forward_flops,
                                      count.activation_bytes + probe.activation_bytes,
                                      max(count.largest_activation_bytes, probe.largest_activation_bytes))
                passes.append(count)
        except (RuntimeError, NotImplementedError) as error:  # an operator or a branch the meta device cannot run
            last_error = error
            continue
        probe_parameters = (method.feature_dim + 1) * num_classes if cfg.online_probe and num_classes else 0
        fits = {name: quadratic([(b, getattr(p, name)) for b, p in zip(FIT_BATCHES, passes)])
                for name in ("flops", "forward_flops", "activation_bytes", "largest_activation_bytes")}
        return Counts(where, sum(p.numel() for p in method.parameters()) + probe_parameters,
                      sum(p.numel() for p in method.parameters() if p.requires_grad) + probe_parameters, **fits,
                      couples_batch=method.couples_batch)
    raise last_error
