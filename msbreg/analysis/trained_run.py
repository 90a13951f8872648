"""A finished BYOL / MSBReg run, rebuilt from its last checkpoint: the whole method (backbone, projector,
predictor, target), in eval mode, for the analyses that look past the backbone."""

from __future__ import annotations

from pathlib import Path

from common.checkpoint import latest_checkpoint, load_checkpoint, load_method_weights
from common.config import load_config
from common.data import dataset_info
from common.method import Method
from common.trainer import build_initial_method


def load_trained_method(run_dir: str | Path):
    """``(train config, method)`` of ``run_dir``: the config it ran with and its last checkpoint's weights."""
    from msbreg.train import MSBRegTrainConfig, build_method

    run_dir = Path(run_dir)
    config_file = run_dir / "config.yaml"
    checkpoint = latest_checkpoint(run_dir)
    if not config_file.is_file() or checkpoint is None:
        raise FileNotFoundError(f"'{run_dir}' is not a finished run folder (config.yaml and a checkpoint)")
    cfg = load_config(MSBRegTrainConfig, ["--config", str(config_file)])
    in_chans = cfg.backbone.in_chans or dataset_info(cfg.data).channels
    method: Method = build_initial_method(cfg, build_method, in_chans)
    return cfg, load_method_weights(method, load_checkpoint(checkpoint), checkpoint)
