"""Trained StochCon runs: rebuild the method from a checkpoint and encode a dataset with it.

A run folder's `checkpoints/step_<N>/state.pt` holds the training module's weights (`method.*`, `probe.*`)
and the resolved train config; the method is rebuilt with the entry point's own schema and builder, so the
analyses and fine-tuning see exactly the network that was trained.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from common.augment import build_eval_transform
from common.backbones import build_backbone
from common.checkpoint import STATE_FILE, list_checkpoints, load_checkpoint, load_method_weights
from common.config import config_from_dict
from common.data import build_dataset, dataset_info, stratified_subset
from common.errors import ConfigError, RunFolderError
from common.method import Method
from common.trainer import build_initial_method
from evaluation.features import extract_features, extract_inputs_and_features


def checkpoints_of(path: str | Path) -> list[Path]:
    """The checkpoint folders named by `path`: itself if it is one, else every checkpoint of the run, oldest first."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return [path]
    if not path.exists():
        raise RunFolderError(f"run or checkpoint not found: {path}")
    found = list_checkpoints(path)
    if not found:
        raise RunFolderError(f"no checkpoints/step_<N>/{STATE_FILE} in run folder '{path}'")
    return found


def _entry_point() -> tuple[type, Callable[[Any, nn.Module, int], Method]]:
    from stochcon.train import StochConTrainConfig, build_method

    return StochConTrainConfig, build_method


def load_trained_method(
    checkpoint: str | Path, schema: type | None = None, build_method: Callable | None = None
) -> tuple[Method, Any, dict]:
    """(method in eval mode, its train config, the checkpoint state) from a checkpoint folder or a run (its
    latest checkpoint). `schema` and `build_method` default to `stochcon.train`'s."""
    folder = checkpoints_of(checkpoint)[-1]
    if schema is None or build_method is None:
        schema, build_method = _entry_point()
    state = load_checkpoint(folder)
    try:
        cfg = config_from_dict(schema, state["config"])
    except ConfigError as error:
        raise ConfigError(f"checkpoint '{folder}': its config does not fit {schema.__name__}: {error}") from None
    in_chans = cfg.backbone.in_chans or dataset_info(cfg.data).channels
    backbone, feature_dim = build_backbone(cfg.backbone, in_chans)
    return load_method_weights(build_method(cfg, backbone, feature_dim), state, folder), cfg, state


def initial_method(cfg: Any, build_method: Callable | None = None) -> Method:
    """The method of the run `cfg` describes as it was before its first step, in eval mode, built as the trainer
    builds it (`common.trainer.build_initial_method`). The caller's RNG state is left as it was."""
    if build_method is None:
        _, build_method = _entry_point()
    in_chans = cfg.backbone.in_chans or dataset_info(cfg.data).channels
    with torch.random.fork_rng(devices=[]):
        method = build_initial_method(cfg, build_method, in_chans)
    return method.eval()


def require_latent(method: Method, run: str | Path, command: str, kind: str | None = None) -> nn.Module:
    """The method's latent branch; a ConfigError naming the run when it has none (SimCLR) or, with `kind`,
    when its latent is of another kind."""
    branch = getattr(method, "branch", None)
    if branch is None:
        raise ConfigError(
            f"run '{run}' is a {type(method).__name__} run without a latent variable: `{command}` needs a "
            "StochCon run"
        )
    if kind is not None and branch.kind != kind:
        raise ConfigError(f"run '{run}' has a {branch.kind} latent: `{command}` needs a {kind} one")
    return branch


class LatentEncoder(nn.Module):
    """Images -> [h, code, sigma]: backbone features, the deterministic code (`StochasticBranch.code`) and,
    for the Gaussian, the scale predicted from the same image (the scale of q(z | x) for a single view)."""

    def __init__(self, method: Method):
        super().__init__()
        if not hasattr(method, "branch"):
            raise ConfigError(f"{type(method).__name__} has no latent variable to analyse")
        self.backbone, self.branch = method.backbone, method.branch

    def forward(self, images: Tensor) -> Tensor:
        h = self.backbone(images)
        parts = [h, self.branch.code(h)]
        if self.branch.kind == "gaussian":
            parts.append(self.branch.scale(h))
        return torch.cat(parts, dim=1)


@dataclass
class EncodedSplit:
    features: np.ndarray  # backbone features h [N, D_backbone]
    code: np.ndarray  # hard bits (Bernoulli) or the mean (Gaussian) [N, D_latent]
    sigma: np.ndarray | None  # Gaussian scale [N, D_latent]
    labels: np.ndarray


def split_source(cfg: Any, split: str, max_images: int | None) -> tuple[Any, Callable, Tensor | None]:
    """(dataset, evaluation transform, indices) of the `split` images of the run's dataset: a stratified subset
    of `max_images` when given, else every image (indices None)."""
    info = dataset_info(cfg.data)
    dataset = build_dataset(cfg.data, split)
    indices = None
    if max_images is not None and max_images < len(dataset):
        indices = torch.tensor(stratified_subset(dataset.targets, max_images))
    return dataset, build_eval_transform(info, cfg.backbone.in_chans or info.channels, cfg.augment.image_size), indices


def extract_split(
    encoder: nn.Module, cfg: Any, split: str, max_images: int | None = None, batch_size: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """(outputs, labels) of `encoder` on the `split` images of the run's dataset, with the run's evaluation
    transform (a stratified subset of `max_images` when given)."""
    dataset, transform, indices = split_source(cfg, split, max_images)
    out, labels = extract_features(
        encoder, dataset, transform, batch_size, "cpu", cfg.data.num_workers, indices
    )
    return out.numpy(), labels.numpy()


def split_images(
    method: Method, cfg: Any, split: str, max_images: int | None = None, batch_size: int = 512
) -> tuple[Tensor, Tensor, Tensor]:
    """(images as the run's evaluation transform gives them, the backbone's eval-mode features, labels) of the
    `split` images of the run's dataset (a stratified subset of `max_images` when given)."""
    dataset, transform, indices = split_source(cfg, split, max_images)
    return extract_inputs_and_features(
        method.backbone, dataset, transform, batch_size, "cpu", cfg.data.num_workers, indices
    )


def encode_split(
    method: Method, cfg: Any, split: str, max_images: int | None = None, batch_size: int = 512
) -> EncodedSplit:
    """Encode the `split` images of the run's dataset (a stratified subset of `max_images` when given)."""
    encoder = LatentEncoder(method)
    out, labels = extract_split(encoder, cfg, split, max_images, batch_size)
    width, latent = method.feature_dim, encoder.branch.latent_dim
    sigma = out[:, width + latent :] if encoder.branch.kind == "gaussian" else None
    return EncodedSplit(out[:, :width], out[:, width : width + latent], sigma, labels)
