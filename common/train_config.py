"""The run settings every trainer shares (``TrainConfig``) and the checks that need more than one key.

A paper's entry point subclasses ``TrainConfig`` and adds its ``method`` (and ``eval``) sections. Single values
are checked by their types when the config is read (``PositiveInt``, ``Literal`` choices); ``check_train_config``
checks what depends on several keys or on the launch (the number of processes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from common.augment import AugmentConfig
from common.backbones import BackboneConfig
from common.config_types import Fraction, PositiveInt
from common.data import DataConfig
from common.errors import ConfigError
from common.optim import OptimConfig


@dataclass
class TrainConfig:
    output_dir: str = "runs/default"  # the run folder: config.yaml, metrics.jsonl, checkpoints, results.json
    seed: int = 0  # initial weights, data order, augmentation and noise all derive from it
    epochs: PositiveInt = 100  # passes over the training set
    max_steps: PositiveInt | None = None  # stop after this many optimiser steps (the schedules span them)
    batch_size: PositiveInt = 256  # global: over all processes and accumulation steps
    grad_accum_steps: PositiveInt = 1  # micro-batches per optimiser step (each process: batch / processes / this)
    # with grad_accum_steps > 1, a method whose loss couples the batch (InfoNCE, VICReg, Barlow Twins, MSBReg's L_s)
    # computes it on the whole batch by gradient caching (Gao et al. 2021; one more forward per micro-batch);
    # false: each micro-batch's own loss (B / K negatives and statistics). Batch-norm statistics stay per micro-batch
    grad_cache: bool = True
    train_split: str = "train"  # stl10: train+unlabeled for self-supervised pre-training
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # autocast of the forward pass (Accelerate)
    # float64: every weight and activation in double precision, for numerical checks (two processes against
    # one, channels-last against contiguous: only summation order differs); slow, CPU only in practice
    dtype: Literal["float32", "float64"] = "float32"
    channels_last: bool = False  # channels-last memory format for the model and the views (faster on GPUs)
    compile: bool = False  # torch.compile the backbone's forward
    online_probe: bool = True  # linear classifier on detached features, trained alongside
    probe_lr: float = 0.1  # the online probe's learning rate (its own parameter group, same schedule)
    log_every_steps: PositiveInt = 10  # metrics.jsonl and TensorBoard every this many steps
    progress_bar: bool = True  # training and evaluation progress bars (main process)
    # where the logged metrics also go (common/trackers.py): TensorBoard events under <output_dir>/train, or any
    # tracker Accelerate supports (its package: pip install 'ssl-repro[<tracker>]'); a resume continues its run
    tracker: Literal["tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "none"] = "tensorboard"
    tracker_project: str = "ssl-repro"  # the project (wandb, comet_ml, clearml) or experiment (mlflow) of the run
    save_every_epochs: PositiveInt = 10  # checkpoint at the end of every this many epochs
    save_every_steps: PositiveInt | None = None  # and every this many steps (long epochs, preemptible jobs)
    keep_last: PositiveInt = 2  # checkpoints kept on disk
    # false: a new run (refused if output_dir holds another) | true: continue the latest checkpoint, which
    # must exist | auto: continue it if there is one, else start (cluster requeue scripts)
    resume: Literal["false", "true", "auto"] = "false"
    overwrite: bool = False  # replace the run in output_dir, a run of ours only (checkpoints, logs, results, eval_*.json)
    on_nonfinite: Literal["error", "skip"] = "error"  # error: stop and name the step and terms | skip: drop the step
    max_skipped_fraction: Fraction = 0.01  # on_nonfinite=skip: stop with an error beyond this share of the steps
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    @staticmethod
    def keys_added(values: dict) -> dict:
        """The value runs computed before each added key existed (``common.config_upgrade.values_before_added_keys``):
        before gradient caching a run accumulated each micro-batch's own loss; with one micro-batch per step both
        compute the same."""
        return {"grad_cache": values.get("grad_cache") if values.get("grad_accum_steps", 1) == 1 else False}


def check_train_config(cfg: TrainConfig, num_processes: int) -> None:
    """What a single key's type cannot say; a ConfigError naming the key."""
    per_step = num_processes * cfg.grad_accum_steps
    if cfg.batch_size % per_step:
        raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by processes x grad_accum_steps = "
                          f"{num_processes} x {cfg.grad_accum_steps}")
    if cfg.dtype == "float64" and cfg.mixed_precision != "no":
        raise ConfigError(f"dtype=float64 runs without autocast: set mixed_precision=no (got "
                          f"'{cfg.mixed_precision}')")
