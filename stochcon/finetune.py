"""Fine-tuning and frozen linear evaluation of a pre-trained StochCon (or SimCLR) run, Appendix A.3.

    python -m stochcon.finetune --checkpoint RUN --mode frozen|finetune [key=value ...]

Keeps the pre-trained backbone and latent and adds a linear head on the latent z (on the backbone features
for a SimCLR run). Adam, lr 3e-4, the learning rate times 0.1 at 80% of training; random resized crop and
flip. `frozen` trains only the head (backbone in eval mode), `finetune` the whole network. The Bernoulli
samples at temperature 0.1 throughout; the Gaussian uses its mean. Data and backbone settings default to
the pre-training run's; any key can be overridden. Writes a run folder like pre-training, with the test
top-1 of the fine-tuned classifier in `results.json`.

Appendix A.3 reports the best of "various epoch ranges". With `holdout_fraction` > 0 (frozen heads) `epochs` is
the most a head trains: after every epoch the head is scored on a held-out split of the training set, and the
head of the best epoch is the one tested (`chosen_epoch`, `holdout_top1`; the last epoch's too), so the epochs
are chosen without the test set.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.augment import AugmentConfig, build_eval_transform
from common.config import split_argv
from common.config_help import parse_command_line
from common.config_types import Fraction, PositiveInt
from common.data import build_dataset, dataset_info, stratified_subset
from common.entry import run_command, usage_text
from common.errors import ConfigError, DataError
from common.method import FeatureSplits, Method
from common.optim import OptimConfig
from common.train_config import TrainConfig
from common.trainer import Trainer
from evaluation.features import extract_inputs_and_features
from evaluation.final import FinalEvalConfig, evaluate_method
from stochcon.analysis.runs import load_trained_method

MODES = ("frozen", "finetune")


@dataclass
class FinetuneConfig(TrainConfig):
    checkpoint: str = ""  # pre-training run folder or checkpoint folder (required)
    mode: Literal["frozen", "finetune"] = "finetune"  # frozen: train the linear head only | finetune: everything
    epochs: PositiveInt = 100  # with holdout_fraction > 0: the most epochs a head trains (the best one is kept)
    # frozen: this share of data.subset, stratified, from the training images the subset leaves out (never
    # trained on, never the test set), scores the head after every epoch; the best epoch's head is tested.
    # 0: the last epoch's head (Appendix A.3 reports the best of several epoch ranges without saying how)
    holdout_fraction: Fraction = 0.0
    online_probe: bool = False
    save_every_epochs: PositiveInt = 100
    # after fine-tuning: the classifier's test_top1, and a 20-NN of the fine-tuned backbone's features
    eval: FinalEvalConfig = field(
        default_factory=lambda: FinalEvalConfig(knn_k=[20], knn_at_init=False, linear=False))
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(name="supervised", num_views=1))
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            name="adam",
            lr=3e-4,
            lr_scaling="none",
            weight_decay=0.0,
            schedule="step",
            milestones=[0.8],
            gamma=0.1,
        )
    )

    @staticmethod
    def keys_added(values: dict) -> dict:
        """Before the held-out split, a head was tested after its last epoch (``TrainConfig.keys_added``)."""
        return {**TrainConfig.keys_added(values), "holdout_fraction": 0.0}


@dataclass
class Holdout:
    """Held-out training images (evaluation transform) and labels that score the head after every epoch."""

    images: Tensor
    labels: Tensor
    steps_per_epoch: int
    epochs: int


def holdout_indices(targets: Tensor, subset: int | None, fraction: float) -> list[int]:
    """Indices into the training split of a stratified ``fraction`` of the ``subset`` training images: the images
    ``stratified_subset`` would take next (its round robin over the classes goes on), so none is trained on and
    the classes stay balanced; the test split is never read."""
    if fraction == 0:
        return []
    if subset is None:
        raise ConfigError("holdout_fraction > 0 needs data.subset: the held-out images are training images the "
                          "subset leaves out")
    count = max(1, round(fraction * subset))
    if subset + count > len(targets):
        raise ConfigError(f"holdout_fraction={fraction} holds out {count} images, but data.subset={subset} leaves "
                          f"only {len(targets) - subset} of the {len(targets)} training images")
    trained = set(stratified_subset(targets, subset))
    return [i for i in stratified_subset(targets, subset + count) if i not in trained]


class Finetuned(Method):
    """Pre-trained backbone (and latent) plus a linear head, trained with cross-entropy; with a ``Holdout`` (frozen
    only), the head of the epoch that scores best on it is kept (buffers, so a resume keeps it too)."""

    def __init__(self, pretrained: Method, num_classes: int, mode: str, holdout: Holdout | None = None):
        super().__init__(pretrained.backbone, pretrained.feature_dim)
        if mode not in MODES:
            raise ValueError(f"mode must be frozen or finetune, not '{mode}'")
        if holdout is not None and mode != "frozen":
            raise ConfigError("holdout_fraction > 0 keeps the best epoch's head, which needs mode=frozen (fine-tuning "
                              "changes the whole network): set holdout_fraction=0")
        self.mode = mode
        self.branch = getattr(pretrained, "branch", None)
        width = self.feature_dim
        if self.branch is not None:
            self.branch.set_temperature(pretrained.cfg.stochcon.finetune_gumbel_temperature)
            width = self.branch.latent_dim
            # Unused here, so frozen (DDP requires every trainable parameter to get a gradient): the contrastive
            # decoder rho, and the Gaussian's scale head (fine-tuning uses its mean).
            self.branch.rho.requires_grad_(False)
            if self.branch.kind == "gaussian":
                self.branch.latent.requires_grad_(False)
        self.head = nn.Linear(width, num_classes)
        self.holdout = holdout
        self.holdout_inputs: Tensor | None = None  # the head's input on the held-out images (frozen: computed once)
        if holdout is not None:  # per epoch: held-out top-1 (nan until scored), and the best epoch's head
            self.register_buffer("holdout_curve", torch.full((holdout.epochs,), float("nan")))
            self.register_buffer("best_weight", self.head.weight.detach().clone())
            self.register_buffer("best_bias", self.head.bias.detach().clone())
        if mode == "frozen":
            self.backbone.requires_grad_(False)
            if self.branch is not None:
                self.branch.requires_grad_(False)

    def train(self, mode: bool = True) -> Finetuned:
        super().train(mode)
        if self.mode == "frozen":
            self.backbone.eval()  # frozen batch-norm statistics too
        if self.branch is not None and self.branch.kind == "gaussian":
            self.branch.latent.eval()  # the Gaussian's mean, in training as at inference (Appendix A.3)
        return self

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(backbone features h, the head's input z): a Bernoulli sample at the fine-tuning temperature (the
        noise-free bits in eval mode), the Gaussian's mean, or h itself for a run without a latent."""
        h = self.backbone(images)
        if self.branch is None:
            return h, h
        phi = self.branch.pi(h)
        return h, (self.branch.latent(phi) if self.branch.kind == "bernoulli" else phi)

    def forward(self, views: list[Tensor], labels: Tensor) -> dict[str, Tensor]:
        if bool((labels < 0).any()):
            raise DataError("fine-tuning needs labels for every training image (got label -1)")
        features, z = self.encode(views[0])
        logits = self.head(z)
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(1) == labels).float().mean()
        return {"loss": loss, "features": features.detach(), "train_top1": accuracy.detach()}

    def eval_input(self, h: Tensor) -> Tensor:
        """The head's input at evaluation: the latent in eval mode (the noise-free bits, the Gaussian's mean)."""
        if self.branch is None:
            return h
        z = self.branch.pi(h)
        if self.branch.kind == "bernoulli":
            was_training = self.branch.latent.training
            z = self.branch.latent.eval()(z)
            self.branch.latent.train(was_training)
        return z

    def on_step_end(self, step: int, total_steps: int) -> None:
        """After every epoch's last step (and the run's last): score the head on the held-out images and keep it
        if it beats every earlier epoch (the first best on a tie)."""
        holdout = self.holdout
        done = step + 1
        if holdout is None or (done % holdout.steps_per_epoch and done != total_steps):
            return
        weight = self.head.weight
        with torch.no_grad():
            if self.holdout_inputs is None:  # the backbone and latent are frozen: their output never changes
                self.backbone.eval()
                images = holdout.images.to(weight.device, weight.dtype)
                self.holdout_inputs = torch.cat([self.eval_input(self.backbone(batch)) for batch in images.split(512)])
            top1 = (self.head(self.holdout_inputs).argmax(1).cpu() == holdout.labels).double().mean()
            epoch = -(-done // holdout.steps_per_epoch)  # 1-based; a run's last partial epoch counts as the next
            earlier = self.holdout_curve[: epoch - 1]
            if bool(torch.isnan(earlier).all()) or top1 > earlier[~torch.isnan(earlier)].max():
                self.best_weight.copy_(weight)
                self.best_bias.copy_(self.head.bias)
            self.holdout_curve[epoch - 1] = top1

    def evaluate_features(self, features: FeatureSplits) -> dict[str, float]:
        """``test_top1``: the fine-tuned classifier on the test images (eval mode: the deterministic latent); with
        a held-out split, the best epoch's head (``chosen_epoch``) and the last epoch's (``..._last_epoch``)."""
        h = features.test_x.to(self.head.weight.device, self.head.weight.dtype)
        z = self.eval_input(h)

        def top1(logits: Tensor) -> float:
            return float((logits.argmax(1).cpu() == features.test_y).float().mean())

        if self.holdout is None:
            return {"test_top1": top1(self.head(z))}
        curve = self.holdout_curve.cpu()
        scored = ~torch.isnan(curve)
        last = int(scored.nonzero().max()) if scored.any() else 0
        chosen = int(torch.where(scored, curve, -1.0).argmax())  # the first maximum: the earliest best epoch
        return {"test_top1": top1(F.linear(z, self.best_weight, self.best_bias)),
                "test_top1_last_epoch": top1(self.head(z)), "chosen_epoch": chosen + 1, "epochs_scored": last + 1,
                "holdout_top1": float(curve[chosen]), "holdout_top1_last_epoch": float(curve[last]),
                "holdout_images": len(self.holdout.labels)}


def holdout_split(cfg: FinetuneConfig) -> Holdout | None:
    """The held-out images of ``cfg`` (``holdout_indices``) under the evaluation transform; None without them."""
    if cfg.holdout_fraction == 0:
        return None
    whole = replace(cfg.data, subset=None)
    dataset = build_dataset(whole, cfg.train_split)
    indices = holdout_indices(dataset.targets, cfg.data.subset, cfg.holdout_fraction)
    info = dataset_info(cfg.data)
    transform = build_eval_transform(info, cfg.backbone.in_chans or info.channels, cfg.augment.image_size)
    images, _, labels = extract_inputs_and_features(nn.Identity(), dataset, transform, 512, "cpu",
                                                    cfg.data.num_workers, torch.tensor(indices))
    # the trainer drops each epoch's last incomplete batch (common.batches.BatchStream)
    return Holdout(images, labels, max(1, cfg.data.subset // cfg.batch_size), cfg.epochs)


def _pretraining_overrides(checkpoint: str) -> list[str]:
    """`data.*`, `backbone.*` and `augment.image_size` of the pre-training run, as key=value overrides."""
    _, pre_cfg, _ = load_trained_method(checkpoint)
    overrides = []
    for section in ("data", "backbone"):
        sub = getattr(pre_cfg, section)
        for f in fields(sub):
            value = getattr(sub, f.name)
            if not isinstance(value, (list, dict)):
                overrides.append(f"{section}.{f.name}={'null' if value is None else value}")
    overrides.append(f"augment.image_size={pre_cfg.augment.image_size or 'null'}")
    return overrides


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        cfg = parse_command_line(FinetuneConfig, argv, usage_text("python -m stochcon.finetune", __doc__))
        if cfg is None:
            return 0
        if not cfg.checkpoint:
            raise ConfigError("checkpoint is required: --checkpoint RUN (a pre-training run or checkpoint folder)")
        # the pre-training run's data and backbone, under this command's own file and overrides
        line = split_argv(argv)
        line.overrides = _pretraining_overrides(cfg.checkpoint) + line.overrides
        cfg = parse_command_line(FinetuneConfig, (["--config", line.config_file] if line.config_file else [])
                                 + line.overrides, "")
        Trainer(cfg, build, evaluate).fit()
        return 0

    def build(cfg: FinetuneConfig, backbone: nn.Module, feature_dim: int) -> Method:
        pretrained, _, _ = load_trained_method(cfg.checkpoint)
        backbone.load_state_dict(pretrained.backbone.state_dict())
        pretrained.backbone = backbone
        return Finetuned(pretrained, dataset_info(cfg.data).num_classes, cfg.mode, holdout_split(cfg))

    def evaluate(method: Method, cfg: FinetuneConfig, accelerator, stage: str) -> dict:
        if stage != "final":
            return {}
        results = evaluate_method(method, cfg, accelerator, stage)
        return {**results, "mode": cfg.mode, "checkpoint": str(Path(cfg.checkpoint).resolve())}

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
