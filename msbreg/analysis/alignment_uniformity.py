"""Alignment and uniformity (Wang & Isola 2020) of a trained run, as in supplementary Table 3.

    python -m msbreg.analysis.alignment_uniformity RUN_DIR [--split test] [--max-images 5000] [--seed 0]
                                                   [--embedding backbone|projection] [--output FILE]

Two augmented views of each image (the run's own ``augment`` settings, two global views) go through the
frozen network; on the L2-normalised embeddings, alignment is the mean squared distance between the two
views of an image (lower: more invariant) and uniformity the log of the mean pairwise Gaussian potential
exp(-2 ||u - v||^2) over the first views (lower: more uniform on the sphere). The paper does not say which
embedding it measures, so both are a switch: ``backbone`` (the default; the representation that is kept,
non-negative after the last ReLU) and ``projection`` (the online projector's output, where L_s, L_b and
L_uniform act; rebuilt from the run's last checkpoint). Writes ``--output`` (default
``<RUN_DIR>/alignment_uniformity.json``) and prints the two figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from common.augment import build_view_transforms
from common.backbones import load_backbone, read_backbone_config
from common.config import ConfigError, load_config
from common.data import MultiViewDataset, build_dataset, dataset_info
from common.output_paths import check_output_file
from msbreg.analysis.trained_run import load_trained_method
from msbreg.losses import alignment_loss, uniformity_loss

EMBEDDINGS = ("backbone", "projection")


@torch.no_grad()
def pair_features(encoder: nn.Module, loader, device: torch.device) -> tuple[Tensor, Tensor]:
    """Embeddings [N, D] (float32, CPU) of the first and second view of every image of ``loader``."""
    encoder.eval().to(device)
    first, second = [], []
    for views, _ in loader:
        first.append(encoder(views[0].to(device)).float().cpu())
        second.append(encoder(views[1].to(device)).float().cpu())
    return torch.cat(first), torch.cat(second)


def alignment_uniformity(first: Tensor, second: Tensor) -> dict[str, float]:
    """Table 3's two figures from paired features: alignment (alpha = 2) and uniformity (t = 2)."""
    return {"alignment": alignment_loss(first, second).item(), "uniformity": uniformity_loss(first).item(),
            "num_images": first.shape[0], "dim": first.shape[1]}


def run_encoder(run_dir: Path, embedding: str) -> nn.Module:
    """The trained network up to ``embedding``: the saved backbone, or backbone then online projector."""
    if embedding == "backbone":
        return load_backbone(run_dir)[0]
    if embedding == "projection":
        _, method = load_trained_method(run_dir)
        return nn.Sequential(method.backbone, method.projector)
    raise ValueError(f"unknown embedding '{embedding}' (choose from {', '.join(EMBEDDINGS)})")


def evaluate_run(run_dir: str | Path, split: str = "test", max_images: int = 5000, seed: int = 0,
                 batch_size: int = 256, device: str = "cpu", output: str | Path | None = None,
                 embedding: str = "backbone") -> dict:
    from msbreg.train import MSBRegTrainConfig

    run_dir = Path(run_dir)
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"no config.yaml in run folder '{run_dir}'")
    cfg = load_config(MSBRegTrainConfig, ["--config", str(config_file)])
    encoder = run_encoder(run_dir, embedding)
    _, in_chans, _ = read_backbone_config(run_dir)
    augment = dataclasses.replace(cfg.augment, num_views=2, local_crops=0)
    dataset = build_dataset(cfg.data, split)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:max_images]
    views = MultiViewDataset(Subset(dataset, order.tolist()),
                             build_view_transforms(augment, dataset_info(cfg.data), in_chans), seed)
    loader = DataLoader(views, batch_size=batch_size, num_workers=cfg.data.num_workers)
    first, second = pair_features(encoder, loader, torch.device(device))
    result = {"run_dir": str(run_dir), "split": split, "seed": seed, "embedding": embedding,
              **alignment_uniformity(first, second)}
    output = Path(output) if output is not None else run_dir / "alignment_uniformity.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-images", type=int, default=5000, help="images drawn at random (seeded) from the split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--embedding", choices=EMBEDDINGS, default="backbone",
                        help="backbone: the kept representation | projection: the online projector's output")
    parser.add_argument("--output", default=None, help="the JSON file (default: RUN_DIR/alignment_uniformity.json)")
    args = parser.parse_args(argv)
    try:
        if args.output is not None:
            check_output_file(args.output, "--output")
        result = evaluate_run(args.run_dir, args.split, args.max_images, args.seed, args.batch_size, args.device,
                              args.output, args.embedding)
    except (ConfigError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}")
        return 2
    print(f"{args.embedding}: alignment {result['alignment']:.4f}  uniformity {result['uniformity']:.4f}  "
          f"({result['num_images']} {args.split} images, {result['dim']} dimensions)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
