"""The speed switches train the same model as the default path: bf16 autocast, channels_last, torch.compile,
and the optimisers' foreach (multi-tensor) update.

Each test builds a method as its trainer does (``build_method`` from the Fashion-MNIST CPU config, a tiny
small_convnet), takes three optimiser steps on fixed views with the default path and with one switch, applied
the way ``common.trainer`` applies it (``mixed_precision=bf16``: Accelerate's CPU autocast to bfloat16 around
the forward; ``channels_last``: module and views in channels-last memory format; ``compile``:
``method.backbone.compile()``; ``optim.foreach``: passed to ``torch.optim.SGD``/``AdamW``; LARS is ours and
always uses the foreach kernels), and compares the three losses.

Tolerances: channels-last, foreach and compile compute the same sums in another order (other kernels), so they
run in float64, where that reordering moves a result by a few units of 2^-53 per operation: after three steps
of these tiny networks far below the 1e-9 asked, while a switch that computed something else would differ by
the size of the change (1e-4 or more). bf16 keeps 8 mantissa bits (relative rounding 2^-9 = 0.2% per
operation), so its losses are compared within 5%. torch.compile of float64 code runs on the CPU as well.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.backbones import build_backbone
from common.config import load_config
from common.optim import build_optimizer, param_groups

ROOT = Path(__file__).resolve().parent.parent
METHODS = {  # name: (trainer, config)
    "simclr": ("stochcon", "stochcon/configs/fashion_mnist_simclr.yaml"),
    "vcreg_blocks": ("vcreg", "vcreg/configs/fashion_mnist_vcreg.yaml"),
}
STEPS = 3


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is faster than two fighting for cores (and keeps the results reproducible)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def schema_and_builder(trainer: str):
    if trainer == "stochcon":
        from stochcon import train
        return train.StochConTrainConfig, train.build_method
    from vcreg import train
    return train.VCRegTrainConfig, train.build_method


EXACT = {"rel": 1e-9, "abs": 1e-12}


def losses(method: str, overrides: tuple[str, ...] = (), *, bf16: bool = False, channels_last: bool = False,
           compile: bool = False, float64: bool = False) -> list[float]:
    trainer, config = METHODS[method]
    schema, build_method = schema_and_builder(trainer)
    cfg = load_config(schema, ["--config", str(ROOT / config), "backbone.width=4", "batch_size=16", *overrides])
    torch.manual_seed(0)
    backbone, feature_dim = build_backbone(cfg.backbone, 1)
    module = build_method(cfg, backbone, feature_dim)
    dtype = torch.float64 if float64 else torch.float32
    module = module.to(dtype)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    if compile:
        module.backbone.compile()
    optimizer = build_optimizer(cfg.optim, param_groups(module, 0.05, cfg.optim.weight_decay,
                                                        cfg.optim.exclude_bias_and_norm))
    generator = torch.Generator().manual_seed(1)
    views = [torch.randn(16, 1, 28, 28, generator=generator, dtype=dtype) for _ in range(cfg.augment.num_views)]
    labels = torch.randint(0, 10, (16,), generator=generator)
    if channels_last:
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    out = []
    for step in range(STEPS):
        module.on_step_start(step, STEPS)
        torch.manual_seed(step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = module(views, labels)["loss"]
        loss.float().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        module.on_step_end(step, STEPS)
        out.append(float(loss.detach()))
    return out


@pytest.mark.parametrize("method", list(METHODS))
def test_bf16_autocast_matches_float32(method):
    reference, bf16 = losses(method), losses(method, bf16=True)
    assert all(torch.isfinite(torch.tensor(bf16)))
    assert bf16 == pytest.approx(reference, rel=5e-2)
    assert bf16 != reference  # autocast did run in bfloat16


@pytest.mark.parametrize("method", list(METHODS))
def test_channels_last_matches_default(method):
    assert losses(method, channels_last=True, float64=True) == pytest.approx(losses(method, float64=True), **EXACT)


@pytest.mark.parametrize("method,optimiser", [("simclr", "sgd"), ("vcreg_blocks", "adamw"), ("simclr", "adam")])
def test_foreach_matches_per_tensor_update(method, optimiser):
    multi = losses(method, (f"optim.name={optimiser}", "optim.foreach=true"), float64=True)
    single = losses(method, (f"optim.name={optimiser}", "optim.foreach=false"), float64=True)
    assert multi == pytest.approx(single, **EXACT)


@pytest.mark.slow  # torch.compile (inductor: generates and builds C++ for the CPU), about half a minute
def test_compile_matches_eager():
    assert losses("simclr", compile=True, float64=True) == pytest.approx(losses("simclr", float64=True), **EXACT)
