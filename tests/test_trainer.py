"""The trainer as users run it: exit codes, run folders, preemption, non-finite losses (resume and 2-process
equivalence for every method: test_trainer_methods.py)."""

import json
import signal

import pytest
from trainer_runs import run, run_until_checkpoint, write_idx_fashion_mnist

SCRIPT = "stochcon/train.py"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_idx_fashion_mnist(tmp_path_factory.mktemp("fmnist"))


def tiny(root, out, *extra):
    """SimCLR on 512 synthetic images: 8 steps an epoch of batch 64, a width-4 CNN."""
    return [f"output_dir={out}", f"data.root={root}", "data.subset=null", "epochs=2", "batch_size=64",
            "backbone.width=4", "method.proj_hidden_dim=32", "method.proj_output_dim=16", "progress_bar=false",
            "tracker=none", "eval.linear_epochs=2", "eval.knn_k=20", "log_every_steps=1", *extra]


def test_run_writes_its_folder_and_refuses_to_overwrite_it(data_root, tmp_path):
    out = tmp_path / "run"
    done = run(SCRIPT, tiny(data_root, out))
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    for key in ("knn_top1", "knn_top1_at_init", "linear_top1", "steps"):
        assert key in results
    assert results["steps"] == 16
    assert (out / "backbone.safetensors").is_file() and (out / "config.yaml").is_file()
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 17))
    assert {"step", "epoch", "loss", "lr", "probe_loss"} <= lines[0].keys()

    again = run(SCRIPT, tiny(data_root, out))
    assert again.returncode == 2
    assert "holds another run" in again.stderr and again.stderr.strip().count("\n") == 0
    assert json.loads((out / "results.json").read_text()) == results  # untouched

    replaced = run(SCRIPT, tiny(data_root, out, "overwrite=true", "epochs=1"))
    assert replaced.returncode == 0
    assert json.loads((out / "results.json").read_text())["steps"] == 8


def test_sigterm_saves_and_exits_for_requeue(data_root, tmp_path):
    out = tmp_path / "preempted"
    args = tiny(data_root, out, "save_every_steps=2")
    proc = run_until_checkpoint(SCRIPT, args, out, step=2, sig=signal.SIGTERM)
    assert proc.returncode == 75
    saved = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert saved and not (out / "results.json").exists()
    finished = run(SCRIPT, [*args, "resume=true"])
    assert finished.returncode == 0
    assert json.loads((out / "results.json").read_text())["steps"] == 16


def test_resume_with_a_different_config_names_the_keys(data_root, tmp_path):
    out = tmp_path / "run"
    assert run(SCRIPT, tiny(data_root, out, "epochs=1")).returncode == 0
    changed = run(SCRIPT, tiny(data_root, out, "epochs=1", "resume=true", "method.temperature=0.5", "seed=3"))
    assert changed.returncode == 2
    assert "method.temperature" in changed.stderr and "seed" in changed.stderr


def test_non_finite_loss_stops_with_the_step_or_is_skipped(data_root, tmp_path):
    bad = ["optim.name=sgd", "optim.lr=1e30", "optim.warmup_epochs=0"]
    failed = run(SCRIPT, tiny(data_root, tmp_path / "a", *bad))
    assert failed.returncode == 1
    assert "non-finite loss at step" in failed.stderr
    skipped = run(SCRIPT, tiny(data_root, tmp_path / "b", *bad, "on_nonfinite=skip", "eval.linear=false",
                               "eval.knn_at_init=false"))
    assert skipped.returncode == 0, skipped.stderr[-1500:]
    assert json.loads((tmp_path / "b" / "results.json").read_text())["skipped_steps"] > 0


@pytest.mark.parametrize("override, needle", [("optim.nmae=sgd", "optim.nmae"), ("epochs=many", "epochs"),
                                              ("data.root=/nonexistent/fm", "/nonexistent/fm")])
def test_bad_input_is_a_one_line_error_with_exit_code_2(tmp_path, override, needle):
    args = [f"output_dir={tmp_path / 'x'}", "data.name=cifar10", "data.download=false", override]
    if override.startswith("data.root"):
        args = [a for a in args if not a.startswith("data.name")] + ["data.name=cifar10"]
    done = run(SCRIPT, args)
    assert done.returncode == 2
    assert needle in done.stderr and done.stderr.strip().count("\n") == 0, done.stderr
