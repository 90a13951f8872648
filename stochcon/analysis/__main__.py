"""`python -m stochcon.analysis <command> RUN [RUN ...] --out DIR`: the paper's analyses on trained runs.

    bits         active-bit counts of the Bernoulli code on train and test, at initialisation and every
                 checkpoint (Figure 4), in eval mode (at initialisation batch norm's initial running statistics
                 make every unit constant: `confidence` reads that network with batch statistics too)
    rf-units     random-forest units vs mean F1, 5-fold stratified on the training set (Figure 2 right)
    variance     aggregate variance of the Gaussian latent on the test set vs bottleneck size (Figure 3)
    confidence   bit probabilities of the Bernoulli code at initialisation and at the run's last checkpoint, with
                 batch norm on its running statistics (eval mode) and on batch statistics (what a training
                 step sees); a config file instead of a run gives initialisation only
    compression  compression ratio of each run's code against its input images, and the paper's 588x
    spectrum     eigenvalue spectrum and participation ratio of the backbone features on test (any run,
                 SimCLR too; not a paper figure)

Each writes `<command>.json` and `<command>.png` under --out. Exit code 2 on a bad run folder or argument, or a
run without the latent the command needs (a SimCLR run for all but `spectrum`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from common.config import load_config
from common.data import build_dataset, dataset_info
from common.entry import run_command
from common.method import Method
from common.output_paths import check_output_folder
from stochcon.analysis.aggregate_variance import aggregate_variance, write_aggregate_variance_report
from stochcon.analysis.bit_confidence import batch_statistics_features, confidence, write_confidence_report
from stochcon.analysis.bit_counts import BitCountCurve, bit_stats, epoch_of_step, write_bit_count_report
from stochcon.analysis.compression import compression_ratio, write_compression_report
from stochcon.analysis.feature_spectrum import feature_spectrum, write_feature_spectrum_report
from stochcon.analysis.rf_units import random_forest_units, write_rf_units_report
from stochcon.analysis.runs import (
    checkpoints_of,
    encode_split,
    extract_split,
    initial_method,
    load_trained_method,
    require_latent,
    split_images,
)
from stochcon.latents import LatentConfig


def _name(run: str) -> str:
    return Path(run).resolve().name


def _training_points(run: str) -> Iterator[tuple[int, Method, Any]]:
    """(step, method, train config) at initialisation and at every checkpoint of `run`, oldest first. The
    step-0 weights are the run's own step-0 checkpoint when it has one, else rebuilt from its seed."""
    for index, checkpoint in enumerate(checkpoints_of(run)):
        method, cfg, state = load_trained_method(checkpoint)
        if index == 0 and state["step"] > 0:
            yield 0, initial_method(cfg), cfg
        yield state["step"], method, cfg


def bits(args: argparse.Namespace) -> Path:
    curves = {}
    for run in args.runs:
        curve = BitCountCurve()
        train_size = None
        for step, method, cfg in _training_points(run):
            require_latent(method, run, "bits", "bernoulli")
            if train_size is None:
                train_size = len(build_dataset(cfg.data, cfg.train_split))
            curve.steps.append(step)
            curve.epochs.append(epoch_of_step(step, train_size, cfg.batch_size))
            for split, stats in (("train", curve.train), ("test", curve.test)):
                stats.append(bit_stats(encode_split(method, cfg, split, args.max_images).code))
        curves[_name(run)] = curve
    return write_bit_count_report(curves, args.out)


def training_batch(cfg: Any) -> int:
    """Images per batch-norm batch of a training step: the batch, times the views when they go through the
    backbone together (``views_together``)."""
    views = cfg.augment.num_views if getattr(cfg.method, "views_together", False) else 1
    return cfg.batch_size * views


def _confidence_points(run: str, overrides: list[str]) -> Iterator[tuple[int, Method, Any]]:
    """(step, method, config): a config file's initial network, or a run's step 0 and its last checkpoint."""
    if Path(run).suffix in (".yaml", ".yml") and Path(run).is_file():
        from stochcon.train import CONFIG_SCHEMA  # as runs.py: the trainer imports this package's modules

        cfg = load_config(CONFIG_SCHEMA, ["--config", run, *overrides])
        yield 0, initial_method(cfg), cfg
        return
    points = list(_training_points(run))
    yield from [points[0], points[-1]] if len(points) > 1 else points


def confidence_command(args: argparse.Namespace) -> Path:
    rows = {}
    for run in args.runs:
        for step, method, cfg in _confidence_points(run, args.set):
            branch = require_latent(method, run, "confidence", "bernoulli")
            images, h_eval, _ = split_images(method, cfg, args.split, args.max_images)
            h_batch, _ = batch_statistics_features(method.backbone, images, training_batch(cfg), cfg.seed)
            for mode, h in (("eval", h_eval), ("batch", h_batch)):
                with torch.no_grad():
                    phi = branch.pi(h).double().numpy()
                rows[f"{_name(run)} step {step} {mode}"] = confidence(phi)
    return write_confidence_report(rows, args.out)


def rf_units(args: argparse.Namespace) -> Path:
    curves = {}
    for run in args.runs:
        method, cfg, _ = load_trained_method(run)
        branch = require_latent(method, run, "rf-units")
        encoded = encode_split(method, cfg, cfg.train_split, args.max_images)
        dim = encoded.code.shape[1]
        units = [k for k in args.units if k <= dim] or [dim]
        curves[f"{_name(run)} ({branch.kind}, D={dim})"] = random_forest_units(
            encoded.code, encoded.labels, units, folds=args.folds, n_estimators=args.trees, seed=args.seed
        )
    return write_rf_units_report(curves, args.out)


def variance_setting(latent_cfg: LatentConfig) -> str:
    """A Gaussian run's setting apart from its width: where its scale comes from, which views it samples, and
    whether pi and rho are off (the `variance` figure draws one line per setting)."""
    source = "opposing-view scale" if latent_cfg.gaussian_variance == "opposing" else "own-view scale (ablation)"
    parts = [source, f"{latent_cfg.placement} views"]
    if not latent_cfg.projectors:
        parts.append("no pi/rho")
    return ", ".join(parts)


def variance(args: argparse.Namespace) -> Path:
    rows = {}
    for run in args.runs:
        method, cfg, _ = load_trained_method(run)
        require_latent(method, run, "variance", "gaussian")
        encoded = encode_split(method, cfg, "test", args.max_images)
        row = aggregate_variance(encoded.code, encoded.sigma)
        rows[_name(run)] = replace(row, setting=variance_setting(cfg.method.stochcon))
    return write_aggregate_variance_report(rows, args.out)


def compression(args: argparse.Namespace) -> Path:
    rows = {"paper: 224x224x3 -> 2048 bits": compression_ratio(224, 224, 3, 2048)}
    for run in args.runs:
        method, cfg, _ = load_trained_method(run)
        branch = require_latent(method, run, "compression")
        info = dataset_info(cfg.data)
        size = cfg.augment.image_size or info.image_size
        bits_per_unit = 1 if branch.kind == "bernoulli" else 32
        rows[_name(run)] = compression_ratio(
            size, size, info.channels, branch.latent_dim, bits_per_unit=bits_per_unit
        )
    return write_compression_report(rows, args.out)


def spectrum(args: argparse.Namespace) -> Path:
    rows = {}
    for run in args.runs:
        method, cfg, _ = load_trained_method(run)
        features, _ = extract_split(method.backbone, cfg, "test", args.max_images)
        rows[_name(run)] = feature_spectrum(features)
    return write_feature_spectrum_report(rows, args.out)


def _unit_list(text: str) -> list[int]:
    try:
        return [int(k) for k in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--units must be comma-separated integers, got '{text}'") from None


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m stochcon.analysis", description=__doc__.split("\n")[0])
    commands = top.add_subparsers(dest="command", required=True)
    for name, func, help_text in [
        ("bits", bits, "active-bit counts per checkpoint (Figure 4)"),
        ("rf-units", rf_units, "random-forest units (Figure 2 right)"),
        ("variance", variance, "aggregate variance of Gaussian latents (Figure 3)"),
        ("confidence", confidence_command, "confident bit probabilities, eval mode and batch statistics"),
        ("compression", compression, "compression ratio of the code (footnote 2)"),
        ("spectrum", spectrum, "spectrum and participation ratio of the backbone features"),
    ]:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument(
            "runs", nargs="*" if name == "compression" else "+", help="run or checkpoint folders"
        )
        sub.add_argument("--out", required=True, help="folder for the JSON and PNG")
        sub.add_argument("--max-images", type=int, default=None, help="stratified subset of each split")
        sub.set_defaults(func=func)
        if name == "rf-units":
            sub.add_argument(
                "--units", type=_unit_list, default=[1, 2, 4, 8, 11, 16, 32, 64, 128, 256, 512, 2048]
            )
            sub.add_argument("--folds", type=int, default=5)
            sub.add_argument("--trees", type=int, default=100)
            sub.add_argument("--seed", type=int, default=0)
        if name == "confidence":
            sub.add_argument("--split", default="test", help="the data set's split the images come from")
            sub.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                             help="overrides of a config file given instead of a run")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body() -> int:
        check_output_folder(args.out, "--out")  # before the analysis, not when its results cannot be written
        png = args.func(args)
        print(f"wrote {png} and {png.with_suffix('.json')}")
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
