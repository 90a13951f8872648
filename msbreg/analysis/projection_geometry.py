"""Where the online projections of a trained BYOL / MSBReg run lie on the sphere: how much of them is one shared
direction, and how many directions their spread around it uses.

    python -m msbreg.analysis.projection_geometry RUN_DIR [--split test] [--max-images 2000]

The collapse monitor ``proj_std`` says that the normalised projections u = z / ||z|| are close together, not
why. Two figures tell the two ways apart: the **mean share** ||mean(u)||^2 (1 when every image has the same
direction, near 0 when the directions are spread around the centre of the sphere) and the **effective rank**
of the centred covariance of u, (sum of eigenvalues)^2 / sum of squared eigenvalues (1 for a spread along
one line, d for an isotropic one). A loss that whitens the *centred* projections can leave them isotropic but
tiny next to a shared mean direction: high effective rank and a mean share near 1. Computed in float64 on
the run's last checkpoint, in eval mode, on the split's first ``--max-images`` images (evaluation
transform); writes ``<RUN_DIR>/projection_geometry.json`` and prints the figures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import Tensor
from torch.nn import functional as F

from common.augment import build_eval_transform
from common.data import build_dataset, dataset_info
from common.errors import InputError
from msbreg.analysis.trained_run import load_trained_method


def projection_geometry(projections: Tensor) -> dict[str, float]:
    """Mean share, centred effective rank and ``proj_std`` (as logged in training) of projections [N, D]."""
    directions = F.normalize(projections.double(), dim=1)
    mean = directions.mean(dim=0)
    centred = directions - mean
    eigenvalues = torch.linalg.eigvalsh(centred.T @ centred / len(directions)).clamp(min=0)
    return {"mean_share": mean.square().sum().item(),
            "effective_rank": (eigenvalues.sum().square() / eigenvalues.square().sum()).item(),
            "proj_std": directions.std(dim=0).mean().item(), "num_images": len(directions),
            "dim": directions.shape[1]}


@torch.no_grad()
def run_projections(run_dir: str | Path, split: str = "test", max_images: int = 2000,
                    batch_size: int = 256) -> Tensor:
    """Online projections [N, D] of the first ``max_images`` images of ``split`` under the run's last checkpoint."""
    cfg, method = load_trained_method(run_dir)
    info = dataset_info(cfg.data)
    in_chans = cfg.backbone.in_chans or info.channels
    dataset = build_dataset(cfg.data, split)
    transform = build_eval_transform(info, in_chans)
    count = min(max_images, len(dataset))
    projections = []
    for start in range(0, count, batch_size):
        images = torch.stack([transform(dataset[i][0]) for i in range(start, min(start + batch_size, count))])
        projections.append(method.projector(method.backbone(images)).float())
    return torch.cat(projections)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a BYOL / MSBReg run folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-images", type=int, default=2000)
    args = parser.parse_args(argv)
    if args.max_images < 2:
        print("error: --max-images must be at least 2")
        return 2
    try:
        result = projection_geometry(run_projections(args.run_dir, args.split, args.max_images))
    except (FileNotFoundError, InputError) as error:
        print(f"error: {error}")
        return 2
    (Path(args.run_dir) / "projection_geometry.json").write_text(json.dumps(result, indent=1))
    print(f"mean share {result['mean_share']:.4f}, centred effective rank {result['effective_rank']:.1f} of "
          f"{result['dim']}, proj_std {result['proj_std']:.4f} ({result['num_images']} images)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
