"""How hard each VCReg layer pulls: the norm of the gradient a layer adds in backward against the norm of the
gradient that reaches it from above, on one batch of a supervised run.

    python -m vcreg.analysis.gradient_share --run RUN [--at init end] [--images 256] --output share.json
    python -m vcreg.analysis.gradient_share --config vcreg/configs/fashion_mnist_vcreg.yaml vcreg.enabled=true \
        vcreg.alpha=0.16 vcreg.beta=0.01 --output share.json

The paper tunes alpha and beta on ResNet-50, ConvNeXt and ViT (Appendix C); Algorithm 1's covariance term
grows with the rows a layer sees (images x locations) and shrinks with its channels as 1 / (d (d - 1)), so
the same alpha and beta pull with a different force on another network. The share ``added / incoming`` at
each layer says where the regulariser dominates the task: above 1, the layer's weights follow VCReg more than
the loss. ``--at init`` rebuilds the run's network before its first step (its own seed), ``--at end`` loads its
last checkpoint; the JSON has one list of layers per moment asked for. The batch is the first ``--images`` of a stratified draw of the training split through the
evaluation transform, in training mode (batch statistics), as a training step sees it without augmentation.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from common.augment import build_eval_transform
from common.checkpoint import latest_checkpoint, load_checkpoint, load_method_weights
from common.config import load_config
from common.data import build_dataset, dataset_info, stratified_subset
from common.errors import ConfigError
from common.output_paths import check_output_file
from common.trainer import build_initial_method
from vcreg.layer import VCReg, statistics_dtype
from vcreg.train import VCRegTrainConfig, build_method


def training_batch(cfg: VCRegTrainConfig, images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``images`` stratified training images of the run's data set through its evaluation transform, with labels."""
    info = dataset_info(cfg.data)
    in_chans = cfg.backbone.in_chans or info.channels
    dataset = build_dataset(cfg.data, "train")
    indices = torch.tensor(stratified_subset(dataset.targets, min(images, len(dataset))))
    transform = build_eval_transform(info, in_chans, cfg.augment.image_size)
    pairs = [dataset[int(i)] for i in indices]
    return torch.stack([transform(image) for image, _ in pairs]), torch.tensor([label for _, label in pairs])


def gradient_shares(method: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> list[dict]:
    """One backward of the supervised loss; per VCReg layer (input side first): its feature shape, the norm of the
    gradient arriving from above, the norm of the gradient it adds, and their ratio."""
    layers = [(name, module) for name, module in method.named_modules() if isinstance(module, VCReg)]
    if not layers:
        raise ConfigError("the network has no VCReg layer (vcreg.enabled=false?): nothing to measure")
    seen: dict[str, dict] = {}

    def record(name: str):
        def hook(_module, grad_input, grad_output):
            dtype = statistics_dtype(grad_output[0])  # at least float32: half-precision norms overflow
            incoming, passed = grad_output[0].to(dtype), grad_input[0].to(dtype)
            seen[name] = {"layer": name, "shape": list(incoming.shape), "incoming_norm": float(incoming.norm()),
                          "added_norm": float((passed - incoming).norm())}
            seen[name]["share"] = seen[name]["added_norm"] / max(seen[name]["incoming_norm"], 1e-30)
        return hook

    handles = [module.register_full_backward_hook(record(name)) for name, module in layers]
    try:
        method.train()
        images.requires_grad_(True)  # every VCReg layer, the first one too, then sees a gradient to add to
        method([images], labels)["loss"].backward()
    finally:
        for handle in handles:
            handle.remove()
    return [seen[name] for name, _ in layers if name in seen]


def load_method(cfg: VCRegTrainConfig, run: Path | None, at: str) -> torch.nn.Module:
    in_chans = cfg.backbone.in_chans or dataset_info(cfg.data).channels
    method = build_initial_method(cfg, build_method, in_chans)
    if run is not None and at == "end":
        checkpoint = latest_checkpoint(run)
        if checkpoint is None:
            raise ConfigError(f"run '{run}' has no checkpoint to measure at its end")
        load_method_weights(method, load_checkpoint(checkpoint), checkpoint)
    return method


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vcreg.analysis.gradient_share",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=None, help="a run folder of vcreg/train.py (its config.yaml)")
    parser.add_argument("--config", type=Path, default=None, help="a config instead of a run (measured at init)")
    parser.add_argument("--at", choices=("init", "end"), nargs="+", default=["init"],
                        help="the run's initial and/or last weights (a --config has only init)")
    parser.add_argument("--images", type=int, default=256, help="the batch (the rows are images x locations)")
    parser.add_argument("--output", type=Path, default=Path("gradient_share.json"))
    args, overrides = parser.parse_known_args(argv)
    try:  # before the work, not when its result cannot be written
        check_output_file(args.output, "--output")
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if (args.run is None) == (args.config is None) or args.images < 2 or (args.config and "end" in args.at):
        print("error: give exactly one of --run and --config (a config has no end), and --images of at least 2",
              file=sys.stderr)
        return 2
    config = args.config if args.run is None else args.run / "config.yaml"
    if not config.is_file():
        print(f"error: no config file '{config}'", file=sys.stderr)
        return 2
    try:
        cfg = load_config(VCRegTrainConfig, ["--config", str(config), *overrides])
        if cfg.method.name != "supervised":
            raise ConfigError(f"gradient_share measures supervised runs, not method.name={cfg.method.name}")
        images, labels = training_batch(cfg, args.images)
        moments = {at: gradient_shares(load_method(cfg, args.run, at), images, labels) for at in args.at}
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    result = {"config": str(config), "overrides": overrides, "images": len(labels), **moments}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    for at, layers in moments.items():
        for layer in layers:
            print(f"{at:4s} {layer['layer']:32s} {layer['shape']!s:20s} incoming {layer['incoming_norm']:.3e}  "
                  f"added {layer['added_norm']:.3e}  share {layer['share']:.2f}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
