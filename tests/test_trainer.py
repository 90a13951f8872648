"""The trainer as users run it: exit codes, run folders, resume and requeue, preemption, non-finite losses,
refused nonsense (resume and 2-process equivalence for every method: test_trainer_methods.py)."""

import json
import os
import shutil
import signal
import stat
import sys

import pytest
import torch
from accelerate.state import AcceleratorState
from trainer_runs import ROOT, env, run, run_until_checkpoint

from common.checkpoint import latest_checkpoint
from common.config import load_config
from common.entry import run_trainer
from common.errors import EXIT_BAD_INPUT, EXIT_PREEMPTED
from common.trainer import Trainer, restored_buffers
from evaluation.final import evaluate_method
from stochcon import train as stochcon_train
from vcreg.layer import VCReg

SCRIPT = "stochcon/train.py"


def tiny(root, out, *extra):
    """SimCLR on 512 synthetic images: 8 steps an epoch of batch 64, a width-4 CNN."""
    return [f"output_dir={out}", f"data.root={root}", "data.subset=null", "data.num_workers=0", "epochs=2",
            "batch_size=64", "backbone.width=4", "method.projector=[32,16]",
            "progress_bar=false", "tracker=none", "eval.linear_epochs=2", "eval.knn_k=[20]", "log_every_steps=1",
            *extra]


def one_line(stderr: str) -> bool:
    return stderr.strip().count("\n") == 0 and stderr.startswith("error: ")


def test_run_writes_its_folder_refuses_to_overwrite_it_and_overwrite_removes_everything(data_root, tmp_path):
    out = tmp_path / "run"
    done = run(SCRIPT, tiny(data_root, out, "tracker=tensorboard"))
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    for key in ("knn_top1_k20", "knn_top1_k20_at_init", "linear_top1", "steps"):
        assert key in results
    assert results["steps"] == 16
    assert (out / "backbone.safetensors").is_file() and (out / "config.yaml").is_file()
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 17))
    assert {"step", "epoch", "loss", "lr", "probe_loss"} <= lines[0].keys()
    events = list((out / "train").rglob("events.out.tfevents.*"))
    assert events
    (out / "eval_knn_cifar10.json").write_text("{}")  # what an evaluation command writes next to the run

    again = run(SCRIPT, tiny(data_root, out))
    assert again.returncode == 2
    assert "holds another run" in again.stderr and one_line(again.stderr)
    assert json.loads((out / "results.json").read_text()) == results  # untouched

    replaced = run(SCRIPT, tiny(data_root, out, "overwrite=true", "epochs=1"))
    assert replaced.returncode == 0
    assert json.loads((out / "results.json").read_text())["steps"] == 8
    assert not (out / "train").exists() and not (out / "eval_knn_cifar10.json").exists()
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000008"]


def test_run_files_follow_the_umask(data_root, tmp_path):
    out = tmp_path / "run"
    done = run(SCRIPT, tiny(data_root, out, "epochs=1", "eval.knn_at_init=false", "eval.linear=false"))
    assert done.returncode == 0, done.stderr[-1500:]
    mask = os.umask(0)
    os.umask(mask)
    for path in (out / "backbone.safetensors", latest_checkpoint(out) / "backbone.safetensors", out / "results.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path


def test_sigterm_saves_and_exits_for_requeue_which_resume_auto_finishes(data_root, tmp_path):
    out = tmp_path / "preempted"
    args = tiny(data_root, out, "save_every_steps=2")
    proc = run_until_checkpoint(SCRIPT, args, out, step=2, sig=signal.SIGTERM)
    assert proc.returncode == EXIT_PREEMPTED
    assert list((out / "checkpoints").iterdir()) and not (out / "results.json").exists()
    finished = run(SCRIPT, [*args, "resume=auto"])
    assert finished.returncode == 0 and "resumed from" in finished.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 16
    requeued = run(SCRIPT, [*args, "resume=auto"])  # a requeue after the end: nothing to do, same results
    assert requeued.returncode == 0 and "finished already" in requeued.stdout
    assert json.loads((out / "results.json").read_text()) == results


def test_resume_true_needs_a_checkpoint_and_auto_starts_without_one(data_root, tmp_path):
    out = tmp_path / "run"
    missing = run(SCRIPT, tiny(data_root, out, "epochs=1", "resume=true"))
    assert missing.returncode == 2 and "no checkpoint" in missing.stderr and one_line(missing.stderr)
    started = run(SCRIPT, tiny(data_root, out, "epochs=1", "resume=auto", "eval.linear=false"))
    assert started.returncode == 0, started.stderr[-1500:]
    assert json.loads((out / "results.json").read_text())["steps"] == 8


def test_resume_auto_restarts_its_own_run_stopped_before_the_first_checkpoint(data_root, tmp_path):
    """A job killed before its first checkpoint leaves config.yaml and logged steps; its requeue (resume=auto,
    same config) starts again instead of failing forever, and another run's folder is still refused."""
    out = tmp_path / "run"
    args = tiny(data_root, out, "epochs=1", "resume=auto", "eval.linear=false", "eval.knn_at_init=false")

    def stopped_before_first_checkpoint():
        for name in ("results.json", "backbone.safetensors", "timing.json", "checkpoints"):
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        assert (out / "config.yaml").is_file() and (out / "metrics.jsonl").stat().st_size > 0

    assert run(SCRIPT, args).returncode == 0
    stopped_before_first_checkpoint()
    other = run(SCRIPT, [*args, "seed=1"])
    assert other.returncode == 2 and "holds another run" in other.stderr and one_line(other.stderr)
    requeued = run(SCRIPT, args)
    assert requeued.returncode == 0, requeued.stderr[-1500:]
    assert json.loads((out / "results.json").read_text())["steps"] == 8
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 9))  # the old log was replaced, not appended to


def test_resume_compares_configs_by_meaning(data_root, tmp_path):
    """Another spelling of output_dir, a moved folder, and keys that cannot change the result all resume;
    a key that changes what is computed is refused, by name."""
    first = tmp_path / "run"
    args = ["epochs=2", "save_every_steps=4", "eval.knn_at_init=false", "eval.linear=false"]
    proc = run_until_checkpoint(SCRIPT, tiny(data_root, first, *args), first, step=4, sig=signal.SIGKILL)
    assert proc.returncode != 0
    moved = tmp_path / "moved" / "run"
    moved.parent.mkdir()
    shutil.copytree(first, moved)
    # a checkpoint saved before keys existed (an upgrade in the middle of a run) still resumes: silently for a key
    # at the value its runs had before it (grad_cache with one micro-batch a step: keys_added), and naming the
    # value for a key that declares none (augment.hue stands for one here)
    state_file = latest_checkpoint(moved) / "state.pt"
    state = torch.load(state_file, weights_only=False)
    del state["config"]["grad_cache"]
    del state["config"]["augment"]["hue"]
    torch.save(state, state_file)
    copied_root = tmp_path / "data_copy"
    shutil.copytree(data_root, copied_root)
    spelt = f"./{os.path.relpath(moved, ROOT)}/"
    resumed = run(SCRIPT, [*tiny(copied_root, spelt, *args), "resume=true", "data.num_workers=1",
                           "eval.batch_size=64", "log_every_steps=3", "progress_bar=true", "keep_last=5"])
    assert resumed.returncode == 0, resumed.stderr[-1500:]
    assert "resumed from" in resumed.stdout
    assert "saved before these keys existed; the run goes on with augment.hue=" in resumed.stdout
    assert "grad_cache" not in resumed.stdout
    changed = run(SCRIPT, tiny(data_root, first, *args, "resume=true", "method.temperature=0.5", "seed=3"))
    assert changed.returncode == 2 and one_line(changed.stderr)
    differing = changed.stderr.split("differs in ", 1)[1].split(" (", 1)[0].split(", ")
    assert sorted(differing) == ["method.temperature", "seed"]


def test_a_start_that_fails_before_its_first_step_does_not_block_the_corrected_command(data_root, tmp_path):
    out = tmp_path / "run"
    bad_root = tmp_path / "empty"
    bad_root.mkdir()
    failed = run(SCRIPT, tiny(bad_root, out, "data.name=cifar10", "data.download=false"))
    assert failed.returncode == 2 and one_line(failed.stderr)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(data_root, corrupt)
    labels = corrupt / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:100])  # fewer labels than images
    failed = run(SCRIPT, tiny(corrupt, out))
    assert failed.returncode == 2 and one_line(failed.stderr)
    fixed = run(SCRIPT, tiny(data_root, out, "epochs=1"))
    assert fixed.returncode == 0, fixed.stderr[-1500:]


@pytest.mark.parametrize("override, needle", [
    ("batch_size=0", "batch_size"), ("batch_size=-64", "batch_size"),
    ("grad_accum_steps=0", "grad_accum_steps"), ("grad_accum_steps=5", "batch_size"), ("epochs=0", "epochs"),
    ("max_steps=0", "max_steps"), ("eval.linear_epochs=0", "eval.linear_epochs"), ("optim.nmae=sgd", "optim.nmae"),
    ("epochs=many", "epochs"), ("mixed_precision=yes", "mixed_precision"),
    ("backbone.name=timm:no_such_model_xyz", "no_such_model_xyz"),
    ("data.root=/nonexistent/cifar", "/nonexistent/cifar")])
def test_nonsense_is_a_one_line_error_with_exit_code_2_and_nothing_written(data_root, tmp_path, override, needle):
    out = tmp_path / "x"
    # Fashion-MNIST falls back to Debian's copy where data.root has none: a missing root is tried with CIFAR-10
    dataset = ["data.name=cifar10"] if override.startswith("data.root") else []
    done = run(SCRIPT, [*tiny(data_root, out), "data.download=false", *dataset, override])
    assert done.returncode == 2, done.stderr[-1500:]
    assert needle in done.stderr and one_line(done.stderr), done.stderr
    assert not out.exists() or not any(out.iterdir())


def test_accelerate_cpu_launcher_with_several_processes_is_refused_with_the_command_that_works(data_root, tmp_path):
    import subprocess

    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           str(ROOT / SCRIPT), *tiny(data_root, tmp_path / "x")], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode != 0, done.stderr[-2000:]  # the launcher reports any failure of its process as 1
    assert "error: accelerate launch --cpu started 1 process" in done.stderr
    assert "--multi_gpu --num_processes" in done.stderr and "ACCELERATE_USE_CPU=true" in done.stderr
    assert not (tmp_path / "x").exists()  # refused before anything was written


# ----------------------------------------------------------------------------- in this process (fast)
def in_process(data_root, out, *extra, evaluate=evaluate_method) -> int:
    return run_trainer(stochcon_train.CONFIG_SCHEMA, stochcon_train.build_method, evaluate=evaluate,
                       argv=tiny(data_root, out, *extra))


@pytest.mark.parametrize("stage", ["init", "final"])
def test_preemption_during_an_evaluation_exits_75_and_resume_auto_finishes(data_root, tmp_path, fresh_accelerate,
                                                                           stage):
    def signalled(method, cfg, accelerator, when):
        if when == stage:
            os.kill(os.getpid(), signal.SIGUSR1)
            raise AssertionError("the signal handler must stop the evaluation")  # not reached
        return evaluate_method(method, cfg, accelerator, when)

    out = tmp_path / "run"
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        assert in_process(data_root, out, "epochs=1", evaluate=signalled) == EXIT_PREEMPTED
        assert not (out / "results.json").exists()
        assert (latest_checkpoint(out) is None) == (stage == "init")
        AcceleratorState._reset_state(True)
        assert in_process(data_root, out, "epochs=1", "resume=auto") == 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    assert json.loads((out / "results.json").read_text())["steps"] == 8


def test_a_bug_keeps_its_traceback_and_bad_input_is_one_line(data_root, tmp_path, fresh_accelerate):
    def broken(cfg, backbone, feature_dim):
        method = stochcon_train.build_method(cfg, backbone, feature_dim)

        def forward(views, labels):
            raise ValueError("expected input of shape [N, 16], got [N, 15]")  # a shape bug inside the method

        method.forward = forward
        return method

    argv = tiny(data_root, tmp_path / "bug", "epochs=1")
    with pytest.raises(ValueError, match="shape"):  # the bug propagates: exit 1 with its traceback
        run_trainer(stochcon_train.CONFIG_SCHEMA, broken, evaluate=None, argv=argv)
    assert in_process(data_root, tmp_path / "y", "optim.name=nadam") == EXIT_BAD_INPUT


def test_non_finite_loss_names_a_checkpoint_only_when_one_exists(data_root, tmp_path, fresh_accelerate, capsys):
    bad = ["optim.name=sgd", "optim.lr=1e30", "optim.warmup_epochs=0", "eval.knn_at_init=false"]
    assert in_process(data_root, tmp_path / "a", *bad) == 1
    error = capsys.readouterr().err
    assert "non-finite loss at step" in error and "no checkpoint was written yet" in error


def test_skipped_steps_leave_no_trace_and_too_many_stop_the_run(data_root, tmp_path, fresh_accelerate, capsys):
    bn = torch.nn.BatchNorm1d(3)
    before = [b.clone() for b in bn.buffers()]
    with restored_buffers(bn, enabled=True) as restore:
        bn(torch.randn(8, 3) * torch.inf)
        assert not all(torch.equal(a, b) for a, b in zip(before, bn.buffers()))
        restore()
    assert all(torch.equal(a, b) for a, b in zip(before, bn.buffers()))

    # a buffer that its first forward sizes (VCReg's running mean with Appendix A's mean removal) is emptied again
    layer = VCReg(1.0, 1.0, mean_removal=True)
    with restored_buffers(layer, enabled=True) as restore:
        layer(torch.randn(8, 3) * torch.inf)
        assert layer.running_mean.shape == (3,)
        restore()
    assert layer.running_mean.shape == (0,)
    x = torch.randn(8, 3)
    assert torch.equal(layer.eval()(x), x)  # as before any step: nothing to subtract

    bad = ["optim.name=sgd", "optim.lr=1e30", "optim.warmup_epochs=0", "eval.knn_at_init=false", "eval.linear=false",
           "on_nonfinite=skip"]
    assert in_process(data_root, tmp_path / "b", *bad) == 1
    assert "more than max_skipped_fraction=0.01" in capsys.readouterr().err
    cfg = load_config(stochcon_train.CONFIG_SCHEMA, tiny(data_root, tmp_path / "c", *bad, "max_skipped_fraction=1"))
    AcceleratorState._reset_state(True)
    results = Trainer(cfg, stochcon_train.build_method, evaluate_method).fit()
    assert results["skipped_steps"] > 0
    state = torch.load(latest_checkpoint(tmp_path / "c") / "state.pt", weights_only=False)["model"]
    running_vars = [v for k, v in state.items() if k.endswith("running_var")]
    assert running_vars and all(bool(torch.isfinite(v).all()) for v in running_vars)


def test_skipped_corrupt_training_images_are_counted_once_in_the_results(tmp_path):
    """An image folder with one corrupt JPEG among its training images: with data.skip_corrupt=true the run
    finishes and results.json counts the file once, however often the epochs and the evaluation read it."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, per_class in (("train", 24), ("val", 8)):
        for label in range(2):
            folder = tmp_path / "folder" / split / f"class{label}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 60, (20, 20, 3), dtype=np.uint8) + 150 * label
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.jpg")
    (tmp_path / "folder" / "train" / "class0" / "0.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    out = tmp_path / "run"
    done = run(SCRIPT, [f"output_dir={out}", "data.name=image_folder", f"data.root={tmp_path / 'folder'}",
                        "data.skip_corrupt=true", "data.num_workers=0", "augment.on=loader", "epochs=2",
                        "batch_size=16", "backbone.name=small_convnet", "backbone.width=4",
                        "method.projector=[16,8]", "progress_bar=false",
                        "tracker=none", "eval.linear_epochs=1", "eval.knn_k=[5]"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((out / "results.json").read_text())["skipped_corrupt_images"] == 1
