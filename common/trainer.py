"""The training loop on Hugging Face Accelerate. It knows nothing about any method.

``Trainer(cfg, build_method, evaluate).fit()`` builds data, backbone, method and optimiser, trains with a
per-step schedule, logs, checkpoints, and writes ``backbone.safetensors`` and ``results.json``;
``common.entry.run_trainer`` is the command line around it (exit codes in ``common.errors``).

Exact resume: data order and augmentation are seeded by position (``common.batches``), every micro-batch
reseeds the global RNG from ``(seed, step, micro-batch)`` (Gumbel noise, Brownian directions, dropout), and
the checkpoint holds model, optimiser, grad-scaler and progress, so a run resumed from step ``s`` computes
exactly what the uninterrupted run computes from ``s`` on. The seed does not depend on the rank: a method
that draws noise for the global batch with ``common.distributed.per_sample_rand`` and keeps its rank's rows
gets the same noise for every sample whatever the number of processes (the distributed-equivalence tests
rely on it).

Preemption: SIGTERM or SIGUSR1 (a scheduler's warning) during training saves a checkpoint at the next step
and stops with ``Preempted``; during the initial or final evaluation it stops at once (nothing to save: the
requeued run repeats that evaluation).
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import nn
from tqdm import tqdm

from common import distributed
from common.backbones import BACKBONE_FILE, build_backbone, save_backbone
from common.backward_scale import BackwardScale, attach_backward_scale
from common.batches import BatchStream
from common.checkpoint import (
    check_output_dir,
    check_resumable,
    code_version,
    latest_checkpoint,
    load_checkpoint,
    prepare_run_folder,
    save_checkpoint,
)
from common.config import dotted_value, to_dict, to_yaml
from common.config_upgrade import upgrade_config_dict, values_before_added_keys
from common.data import SkipRecord, build_dataset, dataset_info, open_splits
from common.data_summary import data_summary, summary_lines
from common.distributed import check_launch
from common.errors import ConfigError, RunFolderError
from common.grad_cache import cached_accumulation
from common.method import Method
from common.metrics_log import MetricsLog, print_results
from common.optim import build_optimizer, learning_rate, param_groups, scaled_lr
from common.probe import OnlineProbe
from common.run_lock import RunLock
from common.seeds import GRAD_CACHE_RNG, MICRO_BATCH_RNG, derive_seed
from common.trackers import check_tracker, start_tracker
from common.train_config import TrainConfig, check_train_config


class NonFiniteLossError(RuntimeError):
    pass


class Preempted(Exception):
    pass


class TrainingModule(nn.Module):
    """The method plus the online probe, so that one DDP wrapper and one optimiser serve both."""

    def __init__(self, method: Method, probe: OnlineProbe | None):
        super().__init__()
        self.method = method
        self.probe = probe

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor,
                cached: bool = False) -> dict[str, torch.Tensor]:
        """The method's dict plus the probe's; ``cached``: ``{"embeddings": method.embed(...)}`` instead of the
        method's dict (a pass of gradient caching, ``common.grad_cache``)."""
        if cached:
            embeddings = self.method.embed(views, labels)
            out = {"embeddings": embeddings, "features": embeddings["features"]}
        else:
            out = self.method(views, labels)
        if self.probe is not None:
            out.update(self.probe(out["features"], labels))
        return out


# evaluate(method, cfg, accelerator, stage) -> figures for results.json; stage "init" or "final"
Evaluate = Callable[[Method, Any, Accelerator, str], dict]
BuildMethod = Callable[[Any, nn.Module, int], Method]


def build_initial_method(cfg: TrainConfig, build_method: BuildMethod, in_chans: int) -> Method:
    """The method before its first step: the global RNG seeded with ``cfg.seed``, then the backbone, then the
    method. Every rank gets the same weights this way, and an analysis can rebuild them from a run's config."""
    torch.manual_seed(cfg.seed)
    backbone, feature_dim = build_backbone(cfg.backbone, in_chans)
    return build_method(cfg, backbone, feature_dim)


@contextmanager
def restored_buffers(module: nn.Module, enabled: bool):
    """Yields a function that puts every buffer (batch-norm running statistics and counters) back to its
    value on entry: a skipped step must leave no trace. A buffer sized by its first forward (a VCReg layer's
    running mean under Appendix A's mean removal) goes back to its size on entry too, empty on a first step."""
    saved = [(b, b.detach().clone()) for b in module.buffers()] if enabled else []

    def restore() -> None:
        with torch.no_grad():
            for buffer, value in saved:
                if buffer.shape != value.shape:
                    buffer.resize_(value.shape)
                buffer.copy_(value)

    yield restore


class Trainer:
    def __init__(self, cfg: TrainConfig, build_method: BuildMethod, evaluate: Evaluate | None = None):
        self.cfg, self.build_method, self.evaluate = cfg, build_method, evaluate
        self.output_dir = Path(cfg.output_dir)
        self.preempt_signal: int | None = None
        self.evaluating = False
        self.skipped_before: list[str] = []  # corrupt images skipped before a resume
        self.skip_record = SkipRecord()  # those skipped by the data sets this run makes (common.data.skip_record)
        self.tracker_run: dict | None = None  # {"tracker", "id"}: the tracker run, continued by a resume
        self.folder_lock: RunLock | None = None  # the run folder's lock (main process), held while fit runs

    # ----------------------------------------------------------------------------------------- set-up
    def _setup(self) -> Path | None:
        """Build everything; returns the checkpoint to resume from. Nothing is written into the run folder
        before every input has been checked (a failed start must not block the corrected command)."""
        cfg = self.cfg
        check_tracker(cfg.tracker)
        tracker = None if cfg.tracker == "none" else cfg.tracker
        self.accelerator = Accelerator(mixed_precision=cfg.mixed_precision, log_with=tracker,
                                       project_dir=str(self.output_dir))
        acc = self.accelerator
        if acc.is_main_process:
            check_output_dir(cfg.output_dir)
        check_launch(acc.num_processes)
        check_train_config(cfg, acc.num_processes)
        if cfg.mixed_precision == "fp16" and acc.device.type == "cpu":  # Accelerate would run float32 unannounced
            raise ConfigError("mixed_precision=fp16 needs a GPU: on the CPU Accelerate ignores it and runs float32 "
                              "(use mixed_precision=no, or bf16, which autocasts on the CPU)")
        self.info = dataset_info(cfg.data)
        self.in_chans = cfg.backbone.in_chans or self.info.channels
        method = build_initial_method(cfg, self.build_method, self.in_chans)
        feature_dim = method.feature_dim
        self.dataset = build_dataset(cfg.data, cfg.train_split)
        self.data_summary = data_summary(cfg.data, cfg.train_split, self.dataset, self.info, cfg.augment, self.in_chans)
        if self.evaluate is not None:  # what the final evaluation reads: found missing now, not after the last step
            open_splits(cfg.data, [split for split in ("train", "test") if split != cfg.train_split])
        if cfg.backbone.sync_bn:
            method = distributed.convert_sync_batchnorm(method)
        probe = OnlineProbe(feature_dim, self.info.num_classes) if cfg.online_probe and self.info.num_classes else None
        module = TrainingModule(method, probe)
        self.dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
        module = module.to(self.dtype)
        if cfg.channels_last:
            module = module.to(memory_format=torch.channels_last)
        if cfg.compile:
            method.backbone.compile()
        self.stream = BatchStream(self.dataset, cfg.augment, self.info, self.in_chans, cfg.batch_size,
                                  cfg.grad_accum_steps, acc.process_index, acc.num_processes, cfg.seed, acc.device,
                                  cfg.data.num_workers)
        self.steps_per_epoch = self.stream.steps_per_epoch
        self.total_steps = self.steps_per_epoch * cfg.epochs
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        peak = scaled_lr(cfg.optim, cfg.batch_size, cfg.augment.num_views)
        groups = param_groups(method, peak, cfg.optim.weight_decay, cfg.optim.exclude_bias_and_norm,
                              cfg.optim.bias_and_norm_lr_scale)
        if probe is not None:
            groups.append({"params": list(probe.parameters()), "weight_decay": 0.0, "lars_exclude": True,
                           "base_lr": cfg.probe_lr})
        optimizer = build_optimizer(cfg.optim, groups)
        self.module, self.optimizer = acc.prepare(module, optimizer)
        self.method: Method = acc.unwrap_model(self.module).method
        attach_backward_scale(self.module, BackwardScale(getattr(acc, "scaler", None), cfg.grad_accum_steps,
                                                         acc.num_processes))
        checkpoint = None
        if acc.is_main_process:
            checkpoint, self.folder_lock = prepare_run_folder(self.output_dir, cfg.resume, cfg.overwrite, to_yaml(cfg))
        acc.wait_for_everyone()
        return checkpoint

    def _skipped_images(self) -> list[str]:
        """Every corrupt image skipped so far in this run (``data.skip_corrupt``), by training and evaluation, over
        all ranks, their loader workers and the sessions before a resume, each once; a collective call."""
        names = sorted(self.skip_record.files())
        if self.accelerator.num_processes > 1:
            names = gather_object(names)
        return sorted(set(names) | set(self.skipped_before))

    def _state(self, step: int, skipped: int, init_results: dict, skipped_images: list[str]) -> dict[str, Any]:
        scaler = getattr(self.accelerator, "scaler", None)
        return {
            "model": self.accelerator.unwrap_model(self.module).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "step": step,
            "total_steps": self.total_steps,  # an evaluation of this checkpoint tells an unfinished run by it
            "skipped_steps": skipped,
            "init_results": init_results,
            "skipped_images": skipped_images,
            "tracker_run": self.tracker_run,
            "config": to_dict(self.cfg),
            "code_version": code_version(),
            "rng": {"torch": torch.get_rng_state()},
        }

    def _save(self, step: int, skipped: int, init_results: dict) -> None:
        acc = self.accelerator
        skipped_images = self._skipped_images()  # every rank: a collective call
        if acc.is_main_process:
            state = self._state(step, skipped, init_results, skipped_images)
            save_checkpoint(self.output_dir, step, state, keep_last=self.cfg.keep_last,
                            write_extra=lambda folder: save_backbone(self.method.backbone, self.cfg.backbone,
                                                                     self.in_chans, folder / BACKBONE_FILE))
        acc.wait_for_everyone()

    def _restore(self, checkpoint: Path | None) -> tuple[int, int, dict]:
        # every rank reads the checkpoint the main process found (the folder is shared)
        found = [str(checkpoint) if checkpoint else ""]
        if self.accelerator.num_processes > 1:
            torch.distributed.broadcast_object_list(found, src=0)
        if not found[0]:
            return 0, 0, {}
        checkpoint = Path(found[0])
        state = load_checkpoint(checkpoint)
        current = to_dict(self.cfg)
        added = check_resumable(upgrade_config_dict(type(self.cfg), state["config"]), current, checkpoint,
                                values_before_added_keys(type(self.cfg), current))
        if added:
            values = ", ".join(f"{key}={dotted_value(current, key)[1]!r}" for key in added)
            self.accelerator.print(f"note: {checkpoint} was saved before these keys existed; the run goes on "
                                   f"with {values}")
        try:
            self.accelerator.unwrap_model(self.module).load_state_dict(state["model"])
        except RuntimeError as error:
            raise RunFolderError(f"checkpoint '{checkpoint}' does not fit this model: "
                                 f"{str(error).splitlines()[0]}") from None
        self.optimizer.load_state_dict(state["optimizer"])
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        self.skipped_before = state.get("skipped_images", [])
        self.tracker_run = state.get("tracker_run")
        self.accelerator.print(f"resumed from {checkpoint} at step {state['step']}")
        return state["step"], state["skipped_steps"], state["init_results"]

    def _run_evaluation(self, stage: str) -> dict:
        """The ``evaluate`` callback on the main process, the method in eval mode; a preemption signal
        received meanwhile ends the run at once on every process (the requeued run evaluates again)."""
        acc = self.accelerator
        results: dict = {}
        preempted: Preempted | None = None
        if self.evaluate is not None and acc.is_main_process:
            was_training = self.method.training
            self.method.eval()
            try:
                self.evaluating = True
                if self.preempt_signal is not None:
                    raise Preempted(f"signal {self.preempt_signal} received before the {stage} evaluation")
                results = self.evaluate(self.method, self.cfg, acc, stage)
            except Preempted as error:
                preempted = error
            finally:
                self.evaluating = False
                self.method.train(was_training)
        # the other processes wait here and stop with the main process: left waiting in a barrier, they would
        # hang until killed, and their node would not exit 75
        if self._any_rank(preempted is not None):
            raise preempted or Preempted(f"the main process was preempted during the {stage} evaluation")
        return results

    # ------------------------------------------------------------------------------------- signals
    def _on_signal(self, signum, frame) -> None:
        self.preempt_signal = signum
        if self.evaluating:
            raise Preempted(f"signal {signum} received during evaluation in {self.output_dir}; "
                            "rerun with resume=auto")

    def _any_rank(self, flag: bool) -> bool:
        if self.accelerator.num_processes == 1:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.accelerator.device)
        return bool(self.accelerator.reduce(value, reduction="sum").item() > 0)

    # ------------------------------------------------------------------------------------- the loop
    def fit(self) -> dict:
        """Train and evaluate, recording the corrupt images that training and evaluation skip; the run folder stays
        locked against other runs until this returns or raises."""
        try:
            with self.skip_record:
                return self._fit()
        finally:
            if self.folder_lock is not None:
                self.folder_lock.release()

    def _fit(self) -> dict:
        for signum in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(signum, self._on_signal)
        checkpoint = self._setup()
        cfg, acc = self.cfg, self.accelerator
        step, skipped, init_results = self._restore(checkpoint)
        finished = acc.is_main_process and step >= self.total_steps and (self.output_dir / "results.json").exists()
        if self._any_rank(finished):
            acc.print(f"{self.output_dir} has finished already ({step} steps): nothing to do")
            return json.loads((self.output_dir / "results.json").read_text()) if acc.is_main_process else {}
        acc.print("\n".join(summary_lines(self.data_summary)))  # what the run trains on, before anything else
        if acc.is_main_process:
            (self.output_dir / "data.json").write_text(json.dumps(self.data_summary, indent=2) + "\n")
        if step == 0:
            init_results = self._run_evaluation("init")
            if acc.is_main_process:
                (self.output_dir / "config.yaml").write_text(to_yaml(cfg))
        log = MetricsLog(self.output_dir, resume_step=step + 1) if acc.is_main_process else None
        previous = self.tracker_run if self.tracker_run and self.tracker_run["tracker"] == cfg.tracker else {}
        self.tracker_run = {"tracker": cfg.tracker, "id": start_tracker(
            acc, cfg.tracker, cfg.tracker_project, self.output_dir, to_dict(cfg), previous.get("id"))}

        progress = tqdm(total=self.total_steps, initial=step, disable=not (acc.is_main_process and cfg.progress_bar),
                        dynamic_ncols=True, mininterval=1.0, desc="train")
        start_time, start_step = time.perf_counter(), step
        self.module.train()
        while step < self.total_steps:
            epoch = step // self.steps_per_epoch
            for _, micro_views, micro_labels in self.stream.epoch(epoch, step % self.steps_per_epoch):
                if step >= self.total_steps:
                    break
                out, finite = self._train_step(step, micro_views, micro_labels)
                if finite:
                    self.method.on_step_end(step, self.total_steps)
                else:
                    skipped += 1
                    self._check_skipped(step, skipped)
                step += 1
                progress.update(1)
                if step % cfg.log_every_steps == 0 or step == self.total_steps:
                    self._log(log, step, out, skipped, (step - start_step) * cfg.batch_size
                              / (time.perf_counter() - start_time), progress)
                preempted = self._any_rank(self.preempt_signal is not None)
                end_of_epoch = step % self.steps_per_epoch == 0
                if (preempted or (cfg.save_every_steps and step % cfg.save_every_steps == 0)
                        or (end_of_epoch and (step // self.steps_per_epoch) % cfg.save_every_epochs == 0)):
                    self._save(step, skipped, init_results)
                if preempted:
                    progress.close()
                    raise Preempted(f"signal {self.preempt_signal} received: saved step {step} in "
                                    f"{self.output_dir}; rerun with resume=auto")
        progress.close()
        train_seconds = time.perf_counter() - start_time
        self._save(step, skipped, init_results)
        results = self._finish(step, skipped, init_results, train_seconds)
        acc.end_training()
        return results

    def _check_skipped(self, step: int, skipped: int) -> None:
        limit = self.cfg.max_skipped_fraction * self.total_steps
        if skipped > limit:
            raise NonFiniteLossError(
                f"{skipped} of {self.total_steps} steps had a non-finite loss (the last at step {step}), more than "
                f"max_skipped_fraction={self.cfg.max_skipped_fraction}: the run is diverging"
                + self._checkpoint_note())

    def _checkpoint_note(self) -> str:
        last = latest_checkpoint(self.output_dir)
        return f"; the last good checkpoint is {last}" if last else "; no checkpoint was written yet"

    def _finite(self, step: int, loss: torch.Tensor, out: dict) -> bool:
        """Whether ``loss`` is finite on every process; ``on_nonfinite=error``: raise instead of returning False."""
        if not self._any_rank(not bool(torch.isfinite(loss))):
            return True
        if self.cfg.on_nonfinite == "error":
            bad = [k for k, v in out.items() if torch.is_tensor(v) and v.numel() == 1 and not bool(torch.isfinite(v))]
            raise NonFiniteLossError(f"non-finite loss at step {step} (terms: {', '.join(bad) or 'loss'})"
                                     + self._checkpoint_note())
        return False

    def _micro_batches(self, step: int, micro_views, micro_labels, restore) -> tuple[dict, bool]:
        """Plain accumulation: each micro-batch's own loss, divided by their number; False at a non-finite loss."""
        acc, accumulation = self.accelerator, len(micro_views)
        out: dict = {}
        for micro, (views, labels) in enumerate(zip(micro_views, micro_labels)):
            torch.manual_seed(derive_seed(self.cfg.seed, step, micro, MICRO_BATCH_RNG))
            context = nullcontext() if micro == accumulation - 1 else acc.no_sync(self.module)
            with context:
                out = self.module(views, labels)
                loss = out["loss"] + out.get("probe_loss", 0.0)
                if not self._finite(step, loss, out):
                    return out, False
                acc.backward(loss / accumulation)
        return out, True

    def _cached_micro_batches(self, step: int, micro_views, micro_labels, restore) -> tuple[dict, bool]:
        """Gradient caching (``common.grad_cache``): the gradient of the whole batch's loss."""
        acc, seed = self.accelerator, self.cfg.seed
        scaler = getattr(acc, "scaler", None)
        return cached_accumulation(
            self.module, self.method, micro_views, micro_labels,
            reseed=lambda micro: torch.manual_seed(derive_seed(seed, step, micro, GRAD_CACHE_RNG)),
            noise_seed=derive_seed(seed, step, 0, MICRO_BATCH_RNG), restore_buffers=restore,
            finite=lambda loss, terms: self._finite(step, loss, terms),
            sync_context=lambda last: nullcontext() if last else acc.no_sync(self.module),
            loss_context=acc.autocast, scale=scaler.scale if scaler is not None else lambda loss: loss)

    def _train_step(self, step: int, micro_views, micro_labels) -> tuple[dict, bool]:
        cfg = self.cfg
        for group in self.optimizer.param_groups:
            if not group.get("fixed_lr"):  # a fixed-lr group (SimSiam's predictor) stays at its base_lr
                group["lr"] = learning_rate(cfg.optim, step, self.total_steps, self.steps_per_epoch, group["base_lr"])
        self.method.on_step_start(step, self.total_steps)
        accumulation = len(micro_views)
        micro_views = [[v.to(self.dtype) for v in views] for views in micro_views]
        if cfg.channels_last:
            micro_views = [[v.contiguous(memory_format=torch.channels_last) for v in views] for views in micro_views]
        # a loss that couples the batch: the gradient of the whole batch's loss (common.grad_cache)
        cached = cfg.grad_cache and accumulation > 1 and self.method.couples_batch
        with restored_buffers(self.module, cfg.on_nonfinite == "skip" or cached) as restore:
            accumulate = self._cached_micro_batches if cached else self._micro_batches
            out, finite = accumulate(step, micro_views, micro_labels, restore)
            if not finite:
                self.optimizer.zero_grad(set_to_none=True)
                restore()
                return out, False
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        out["lr"] = torch.tensor(self.optimizer.param_groups[0]["lr"])
        return out, True

    def _log(self, log: MetricsLog | None, step: int, out: dict, skipped: int, images_per_second: float,
             progress: tqdm) -> None:
        """Every rank calls this: the scalar metrics are averaged over ranks, the main process writes them."""
        # float64: a float64 run logs its losses unrounded (the distributed-equivalence checks compare them)
        scalars = {k: v.detach().double().reshape(1) for k, v in out.items() if torch.is_tensor(v) and v.numel() == 1}
        if scalars and self.accelerator.num_processes > 1:
            stacked = torch.cat(list(scalars.values())).to(self.accelerator.device)
            scalars = dict(zip(scalars, self.accelerator.reduce(stacked, reduction="mean").cpu()))
        if log is None:
            return
        record: dict[str, Any] = {"step": step, "epoch": step / self.steps_per_epoch}
        record.update({k: float(v) for k, v in scalars.items()})
        record["skipped_steps"] = skipped
        record["images_per_second"] = images_per_second
        log.write(record)
        if self.cfg.tracker != "none":
            self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)
        progress.set_postfix(loss=f"{record.get('loss', float('nan')):.3f}", lr=f"{record.get('lr', 0):.3g}")

    def _finish(self, step: int, skipped: int, init_results: dict, train_seconds: float) -> dict:
        acc = self.accelerator
        final = self._run_evaluation("final")
        results = {**init_results, **final, "steps": step, "skipped_steps": skipped}
        skipped_images = self._skipped_images()
        if self.cfg.data.skip_corrupt:
            results["skipped_corrupt_images"] = len(skipped_images)
        if acc.is_main_process:
            save_backbone(self.method.backbone, self.cfg.backbone, self.in_chans, self.output_dir / BACKBONE_FILE)
            (self.output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
            (self.output_dir / "timing.json").write_text(json.dumps(
                {"train_seconds": train_seconds, "steps_this_session": step,
                 "num_processes": acc.num_processes}, indent=2) + "\n")
            print_results(results, self.output_dir)
        acc.wait_for_everyone()
        return results

