"""Mutual information between a backbone's inputs and its features, by MINE (VCReg Section 5.2, Table 6).

MINE (Belghazi et al., 2018, "Mutual Information Neural Estimation"): the Donsker-Varadhan lower bound
``I(X; Z) >= E_P[T] - log E_{P x P}[e^T]`` between the input images X and their features Z, maximised
over a small statistics network ``T``, reported in bits. X is the image as the backbone sees it (after the
evaluation transform; ``input_size`` optionally downsamples it for the statistics network) and Z its
feature, both from one pass of ``evaluation.features.extract_inputs_and_features`` over a stratified
subset of the training split, so any data set ``common.data`` reads works.

VCReg gives no MINE settings (network, steps, images); the defaults here (5,000 images, an MLP of width
256, 2,000 Adam steps of batch 512 at lr 1e-4, 80/20 split of the pairs) are this project's.

    python -m evaluation mine --checkpoint RUN data.name=cifar10 data.root=/data
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.config_types import NonNegativeInt, PositiveFloat, PositiveInt, Range
from common.data import DataConfig, build_dataset, stratified_subset
from common.errors import ConfigError
from evaluation.cli import dataset_transform, load_eval_backbone, resolve_device, run_protocol
from evaluation.features import extract_inputs_and_features
from evaluation.progress import progress_bar


class StatisticsNetwork(nn.Module):
    """MINE's ``T(x, z)``: an MLP on the concatenated (flattened) input and features."""

    def __init__(self, x_dim: int, z_dim: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(x_dim + z_dim, hidden), nn.ELU(), nn.Linear(hidden, hidden), nn.ELU(),
                                 nn.Linear(hidden, 1))

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        return self.net(torch.cat([x, z], dim=1)).squeeze(1)


def donsker_varadhan(t_joint: Tensor, t_marginal: Tensor) -> Tensor:
    """``E_P[T] - log E_{P x P}[e^T]`` in nats."""
    return t_joint.mean() - (torch.logsumexp(t_marginal, 0) - math.log(t_marginal.numel()))


def _standardise(values: Tensor) -> Tensor:
    values = values.flatten(1).float()
    return (values - values.mean(0)) / (values.std(0) + 1e-6)


def mine_bits(x: Tensor, z: Tensor, steps: int = 2000, batch_size: int = 512, lr: float = 1e-4,
              ema: float = 0.01, seed: int = 0, hidden: int = 256, device: torch.device | str = "cpu",
              progress: bool = False) -> float:
    """MINE estimate of ``I(X; Z)`` in bits: trained on 80 % of the pairs, evaluated on the other 20 %.

    The gradient of ``log E[e^T]`` is bias-corrected with a moving average of ``E[e^T]`` (Belghazi et al.,
    Section 3.2). Inputs and features are flattened and standardised per dimension first.
    """
    if len(x) != len(z) or len(x) < 10:
        raise ConfigError(f"MINE needs at least 10 (input, feature) pairs of equal count; got {len(x)} inputs "
                         f"and {len(z)} features")
    generator = torch.Generator().manual_seed(seed)
    x, z = _standardise(x).to(device), _standardise(z).to(device)
    order = torch.randperm(len(x), generator=generator)
    split = int(0.8 * len(x))
    train, held_out = order[:split], order[split:]
    torch.manual_seed(seed)
    network = StatisticsNetwork(x.shape[1], z.shape[1], hidden).to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    moving = None
    for _ in progress_bar(range(steps), desc="MINE", enabled=progress):
        idx = train[torch.randint(len(train), (batch_size,), generator=generator)].to(device)
        shuffled = train[torch.randint(len(train), (batch_size,), generator=generator)].to(device)
        t_joint, t_marginal = network(x[idx], z[idx]), network(x[idx], z[shuffled])
        exp_mean = torch.exp(t_marginal).mean()
        moving = exp_mean.detach() if moving is None else (1 - ema) * moving + ema * exp_mean.detach()
        # bias-corrected surrogate: its gradient is grad E[T] - grad E[e^T] / moving average of E[e^T]
        loss = -(t_joint.mean() - exp_mean / moving)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        permuted = held_out[torch.randperm(len(held_out), generator=generator)].to(device)
        held_out = held_out.to(device)
        bound = donsker_varadhan(network(x[held_out], z[held_out]), network(x[held_out], z[permuted]))
    return max(float(bound), 0.0) / math.log(2)


@dataclass
class MINEConfig:
    """``python -m evaluation mine``: I(input; feature) of a frozen backbone on a data set's training split."""

    checkpoint: str = ""  # required: a run folder, backbone.safetensors, checkpoint folder or model name (resnet50)
    data: DataConfig = field(default_factory=DataConfig)
    image_size: int | None = None    # evaluation resolution; None: the dataset's native size
    images: PositiveInt = 5000       # training images (stratified) whose pairs MINE sees (not from the paper)
    input_size: PositiveInt | None = None  # X downsampled (area) to this side for T; None: as the backbone sees it
    steps: PositiveInt = 2000        # Adam steps of the statistics network (not from the paper)
    mine_batch_size: PositiveInt = 512  # pairs per step (not from the paper)
    lr: PositiveFloat = 1e-4         # Adam learning rate (not from the paper)
    # moving-average rate of E[e^T] for the bias correction
    ema: Annotated[float, Range(low=0.0, high=1.0, low_open=True)] = 0.01
    hidden: PositiveInt = 256        # width of the statistics network (not from the paper)
    batch_size: PositiveInt = 256    # feature extraction batch
    num_workers: NonNegativeInt = 4  # DataLoader worker processes (0: load in this process)
    seed: int = 0  # the statistics network's initialisation and the pairs it sees
    device: str = "auto"  # auto: cuda when available, else cpu | cpu | cuda | cuda:N
    output: str | None = None  # the JSON result; None: eval_<protocol>[_<dataset>].json by the checkpoint
    overwrite: bool = False  # replace the result file at output if it exists
    progress_bar: bool = True        # tqdm bars for the extraction and the MINE steps (like the trainer's)


def estimate_mutual_information(cfg: MINEConfig) -> dict:
    """``{"mutual_information_bits", "images", "input_dim", "feature_dim"}`` (module docstring)."""
    device = resolve_device(cfg.device)
    backbone, _, in_chans = load_eval_backbone(cfg.checkpoint)
    backbone.to(device)
    dataset = build_dataset(cfg.data, "train")
    indices = torch.tensor(stratified_subset(dataset.targets, min(cfg.images, len(dataset))))
    x, z, _ = extract_inputs_and_features(backbone, dataset, dataset_transform(cfg, in_chans), cfg.batch_size,
                                          device, cfg.num_workers, indices, cfg.progress_bar)
    if cfg.input_size is not None:
        x = F.interpolate(x, size=(cfg.input_size, cfg.input_size), mode="area")
    bits = mine_bits(x, z, cfg.steps, cfg.mine_batch_size, cfg.lr, cfg.ema, cfg.seed, cfg.hidden, device,
                     cfg.progress_bar)
    return {"mutual_information_bits": bits, "images": len(indices), "input_dim": x[0].numel(),
            "feature_dim": z.shape[1]}


def main(argv: list[str] | None = None) -> int:
    return run_protocol(MINEConfig, estimate_mutual_information, argv, protocol="mine")


if __name__ == "__main__":
    sys.exit(main())
