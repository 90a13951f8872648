"""Gradient caching vs plain accumulation vs the whole batch at once: time and activation memory per image.

One optimiser step of a method whose loss couples its batch, built as its trainer builds it (``build_method``
of the Fashion-MNIST config), on fixed random views of ``--batch`` images, three ways:

- ``whole``: the batch in one forward and backward (``grad_accum_steps=1``);
- ``plain_k<K>``: K micro-batches, each with its own loss (``grad_cache=false``: B / K negatives);
- ``cached_k<K>``: K micro-batches by gradient caching (``common.grad_cache``, the trainer's default for these
  methods): the loss of the whole batch, one more forward pass per micro-batch.

Time: seconds per step in interleaved rounds (``bench/timing.py``), reported per image. Memory: the activation
memory of the step, counted exactly from what autograd keeps: the bytes of the distinct tensors saved for
backward (``torch.autograd.graph.saved_tensors_hooks``) between the start of a forward and the end of its
backward, the largest over the step's forwards (each micro-batch; for caching also the whole-batch loss), plus,
for caching, the embeddings of the whole batch and their gradient, held from pass 1 to the end of pass 2
(counted as twice the bytes of everything ``embed`` returns, the detached features included: an upper bound).
Weights, gradients and optimiser state are the same for all three and left out. CPU only (the allocator's
own peak, ``torch.cuda.max_memory_allocated``, would be the figure to add on a GPU).

    python bench/grad_cache.py                        # small_convnet w16, 28 px, batch 256, K = 4
    python bench/grad_cache.py --quick                # the test: batch 16, width 4, K = 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch import nn

from bench.method_overhead import add_model_args, backbone_overrides, trainer_module
from bench.timing import fmt, interleaved, machine, quartiles, ratios, set_threads, write_json
from common.backbones import build_backbone
from common.config import load_config
from common.grad_cache import cached_accumulation
from common.optim import build_optimizer, param_groups
from common.trainer import TrainingModule, restored_buffers

ROOT = Path(__file__).resolve().parent.parent
LR = 1e-3
# name: (trainer, config, overrides, views)
METHODS = {
    "simclr": ("stochcon", "stochcon/configs/fashion_mnist_simclr.yaml", (), 2),
    "vicreg": ("vcreg", "vcreg/configs/fashion_mnist_vcreg.yaml",
               ("method.name=vicreg", "augment.name=multiview", "augment.num_views=2", "vcreg.enabled=false",
                "method.projector=[512,512]"), 2),
}


class SavedBytes:
    """Counts the bytes of the distinct tensors autograd saves for backward, per forward of the module: the
    count restarts at each forward of ``module`` and at ``reset()``; ``peak`` is the largest count."""

    def __init__(self, module: nn.Module):
        self.storages: set[int] = set()
        self.current = self.peak = 0
        module.register_forward_pre_hook(lambda *_: self.reset())

    def reset(self) -> None:
        self.storages.clear()
        self.current = 0

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.storages:
            self.storages.add(storage.data_ptr())
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
        return tensor

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda tensor: tensor)


class Step:
    """One optimiser step of ``mode`` (whole | plain | cached) with ``k`` micro-batches, as the trainer does it."""

    def __init__(self, module: TrainingModule, optimizer, views, labels, mode: str, k: int):
        self.module, self.optimizer, self.mode, self.k = module, optimizer, mode, k
        self.micro_views = [list(group) for group in zip(*(v.chunk(k) for v in views))]
        self.micro_labels = list(labels.chunk(k))
        self.saved = SavedBytes(module)
        self.cache_bytes = 0
        self.loss = float("nan")

    def __call__(self) -> None:
        with self.saved.hooks():
            if self.mode == "cached":
                with restored_buffers(self.module, True) as restore:
                    out, _ = cached_accumulation(
                        self.module, self.module.method, self.micro_views, self.micro_labels,
                        reseed=torch.manual_seed, noise_seed=0, restore_buffers=restore,
                        finite=lambda loss, terms: True)
            else:
                for micro, (views, labels) in enumerate(zip(self.micro_views, self.micro_labels)):
                    torch.manual_seed(micro)
                    out = self.module(views, labels)
                    (out["loss"] / self.k).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.loss = float(out["loss"].detach())

    def embeddings_bytes(self) -> int:
        """The whole batch's embeddings (what caching holds between its passes), without gradient."""
        with torch.no_grad():
            parts = [self.module(v, y, cached=True)["embeddings"] for v, y in zip(self.micro_views, self.micro_labels)]
        return sum(t.numel() * t.element_size() for part in parts for t in part.values() if t.is_floating_point())


def build_steps(args, name: str) -> tuple[dict[str, Step], dict]:
    trainer, config, overrides, num_views = METHODS[name]
    schema, build_method = trainer_module(trainer)
    cfg = load_config(schema, ["--config", str(ROOT / config), *overrides, *backbone_overrides(args)])
    generator = torch.Generator().manual_seed(0)
    views = [torch.randn(args.batch, args.channels, args.image_size, args.image_size, generator=generator)
             for _ in range(num_views)]
    labels = torch.randint(0, 10, (args.batch,), generator=generator)
    steps = {}
    for mode, k in (("whole", 1), ("plain", args.k), ("cached", args.k)):
        torch.manual_seed(0)
        backbone, feature_dim = build_backbone(cfg.backbone, args.channels)
        module = TrainingModule(build_method(cfg, backbone, feature_dim), None)
        optimizer = build_optimizer(cfg.optim, param_groups(module.method, LR, cfg.optim.weight_decay,
                                                            cfg.optim.exclude_bias_and_norm))
        steps[f"{name}_{mode}" if k == 1 else f"{name}_{mode}_k{k}"] = Step(module, optimizer, views, labels, mode, k)
    info = {"config": config, "overrides": list(overrides), "views": num_views, "optimizer": cfg.optim.name}
    return steps, info


def run(args) -> dict:
    steps, info = {}, {}
    for name in args.methods:
        built, info[name] = build_steps(args, name)
        steps |= built
    for step in steps.values():  # one untimed step each: the activation memory
        step()
        if step.mode == "cached":
            step.cache_bytes = 2 * step.embeddings_bytes()  # the embeddings and their gradient
    seconds = interleaved(steps, args.rounds, args.warmup)
    rows = {}
    for label, step in steps.items():
        method = label.split("_")[0]
        whole = f"{method}_whole"
        memory = step.saved.peak + step.cache_bytes
        rows[label] = {
            "method": method, "mode": step.mode, "micro_batches": step.k,
            "seconds": quartiles(seconds[label]),
            "milliseconds_per_image": 1e3 * quartiles(seconds[label])["median"] / args.batch,
            "ratio_to_whole": quartiles(ratios(seconds, label, whole)),
            "activation_bytes": memory, "activation_bytes_per_image": memory / args.batch,
            "saved_for_backward_bytes": step.saved.peak, "cache_bytes": step.cache_bytes,
            "memory_ratio_to_whole": memory / (steps[whole].saved.peak + steps[whole].cache_bytes),
            "final_loss": step.loss,
        }
    return {"backbone": args.backbone, "width": args.width, "image_size": args.image_size, "channels": args.channels,
            "batch": args.batch, "micro_batches": args.k, "methods": info, "variants": rows}


def print_table(result: dict) -> None:
    print(f"{result['backbone']} (width {result['width']}), {result['image_size']} px x {result['channels']} ch, "
          f"batch {result['batch']}, K = {result['micro_batches']}; median [q25-q75] over rounds")
    print(f"{'variant':<22}{'ms/image':>10}  {'time vs whole':<22}{'activation KiB/image':>22}{'memory vs whole':>17}")
    for label, row in result["variants"].items():
        print(f"{label:<22}{row['milliseconds_per_image']:>10.3f}  {fmt(row['ratio_to_whole']):<22}"
              f"{row['activation_bytes_per_image'] / 1024:>22.1f}{row['memory_ratio_to_whole']:>17.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(parser)
    parser.add_argument("--k", type=int, default=4, help="micro-batches per step")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 3 rounds (the test)")
    parser.add_argument("--output", default="bench/results/grad_cache.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.width, args.k, args.rounds, args.warmup = 16, 4, 2, 3, 1
    args.threads = set_threads(args.threads, args.quick)
    setup = machine() | {"rounds": args.rounds, "warmup": args.warmup, "quick": args.quick, "lr": LR}
    result = run(args)
    print_table(result)
    write_json(args.output, setup, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
