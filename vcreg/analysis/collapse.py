"""Neural collapse and information compression of penultimate features (Section 5.2, Table 6), per run.

For each run folder of ``vcreg/train.py``: CDNV (eq. 8) and NCC accuracy (eq. 9) from
``evaluation.neural_collapse`` on the run's data set (the training images the run's ``eval.max_train_images``
selects), and the MINE estimate of I(input; feature) from ``evaluation.mine`` on ``--mine-images`` training
images; a JSON list and a bar chart. Each figure alone, for any data set:
``python -m evaluation neural_collapse`` and ``python -m evaluation mine``.

    python -m vcreg.analysis.collapse --runs runs/fmnist_supervised runs/fmnist_vcreg --output collapse.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from common.config import load_config
from common.errors import ConfigError
from common.output_paths import check_output_file
from common.plots import new_figure, save_figure
from evaluation.mine import MINEConfig, estimate_mutual_information
from evaluation.neural_collapse import NeuralCollapseConfig, evaluate_neural_collapse
from vcreg.train import VCRegTrainConfig


def analyse_run(run: Path, mine_images: int, mine_steps: int, device: str) -> dict:
    """CDNV, NCC accuracy (train and test) and, when ``mine_images > 0``, MINE bits of one run folder."""
    cfg = load_config(VCRegTrainConfig, ["--config", str(run / "config.yaml")])
    shared = {"checkpoint": str(run), "data": cfg.data, "image_size": cfg.augment.image_size,
              "batch_size": cfg.eval.batch_size, "num_workers": cfg.data.num_workers, "device": device,
              "progress_bar": cfg.progress_bar}
    result = {"run": str(run), **evaluate_neural_collapse(
        NeuralCollapseConfig(**shared, max_train_images=cfg.eval.max_train_images))}
    if mine_images > 0:
        mine = estimate_mutual_information(MINEConfig(**shared, images=mine_images, steps=mine_steps))
        result["mutual_information_bits"] = mine["mutual_information_bits"]
    return result


def plot(results: list[dict], path: Path) -> None:
    keys = [k for k in ("cdnv", "ncc_top1", "mutual_information_bits") if k in results[0]]
    fig, axes = new_figure(1, len(keys), figsize=(3.6 * len(keys), 3.4), squeeze=False)
    names = [Path(r["run"]).name for r in results]
    for ax, key in zip(axes[0], keys):
        ax.bar(names, [r[key] for r in results], color=[f"C{i}" for i in range(len(results))])
        ax.set_title(key)
        ax.tick_params(axis="x", rotation=20, labelsize=8)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="CDNV, NCC accuracy and MINE mutual information of trained runs")
    parser.add_argument("--runs", nargs="+", required=True, type=Path, help="run folders of vcreg/train.py")
    parser.add_argument("--mine-images", type=int, default=5000, help="training images for MINE (0: skip MINE)")
    parser.add_argument("--mine-steps", type=int, default=2000)
    parser.add_argument("--output", type=Path, default=Path("collapse.json"))
    args = parser.parse_args(argv)
    try:  # before the work, not when its result cannot be written
        check_output_file(args.output, "--output", (".png",))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for run in args.runs:
        if not (run / "config.yaml").is_file():
            print(f"error: '{run}' is not a run folder (no config.yaml)", file=sys.stderr)
            return 2
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = [analyse_run(run, args.mine_images, args.mine_steps, device) for run in args.runs]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.output.with_suffix(".png"))
    for r in results:
        print(json.dumps(r))
    print(f"wrote {args.output} and {args.output.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
