"""Trackers: a missing package is one line naming the extra; a run preempted by SIGTERM and requeued with
resume=auto logs to the same Weights & Biases (offline) and MLflow (file store) run."""

import importlib.util
import json
import signal

import pytest
import torch
from trainer_runs import run, run_until_checkpoint

from common.checkpoint import latest_checkpoint
from common.errors import EXIT_BAD_INPUT, EXIT_PREEMPTED
from common.trackers import TRACKER_PACKAGES, flat_config

SCRIPT = "stochcon/train.py"


def tiny(root, out, *extra):
    """SimCLR on 512 synthetic images: 8 steps an epoch of batch 64, a width-4 CNN, 16 steps."""
    return [f"output_dir={out}", f"data.root={root}", "data.num_workers=0", "epochs=2", "batch_size=64",
            "backbone.width=4", "method.projector=[32,16]", "progress_bar=false", "eval.linear=false",
            "eval.knn_k=[20]", "log_every_steps=1", "save_every_steps=2", *extra]


def tracker_run_of(out):
    return torch.load(latest_checkpoint(out) / "state.pt", weights_only=False)["tracker_run"]


def preempted_then_resumed(data_root, out, tracker):
    args = tiny(data_root, out, f"tracker={tracker}")
    proc = run_until_checkpoint(SCRIPT, args, out, step=2, sig=signal.SIGTERM)
    assert proc.returncode == EXIT_PREEMPTED, proc.stderr.read()[-2000:]
    first = tracker_run_of(out)
    assert first["tracker"] == tracker and first["id"]
    finished = run(SCRIPT, [*args, "resume=auto"])
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "resumed from" in finished.stdout
    assert json.loads((out / "results.json").read_text())["steps"] == 16
    assert tracker_run_of(out) == first
    return first["id"]


def test_a_missing_tracker_package_is_one_line_naming_the_extra(data_root, tmp_path):
    missing = [name for name, (module, _) in TRACKER_PACKAGES.items() if importlib.util.find_spec(module) is None]
    if not missing:
        pytest.skip("every tracker's package is installed here")
    name = missing[0]
    out = tmp_path / "run"
    done = run(SCRIPT, tiny(data_root, out, f"tracker={name}"))
    assert done.returncode == EXIT_BAD_INPUT
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert f"ssl-repro[{TRACKER_PACKAGES[name][1]}]" in done.stderr
    assert not out.exists() or not any(out.iterdir())  # nothing that blocks the corrected command


def test_flat_config_names_nested_keys_with_dots():
    assert flat_config({"seed": 0, "optim": {"lr": 0.3, "betas": [0.9, 0.99]}, "max_steps": None}) == {
        "seed": 0, "optim.lr": 0.3, "optim.betas": "[0.9, 0.99]", "max_steps": None}


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb is not installed: pip install "
                    "'ssl-repro[wandb]' (scripts/test.sh installs it)")
def test_wandb_offline_run_continues_after_sigterm_and_resume(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_id = preempted_then_resumed(data_root, tmp_path / "run", "wandb")
    # offline, every start writes its own folder offline-run-<time>-<id>: both carry the one run id
    folders = sorted((tmp_path / "wandb_dir" / "wandb").glob("offline-run-*"))
    assert len(folders) == 2 and all(folder.name.endswith(f"-{run_id}") for folder in folders)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed: pip install "
                    "'ssl-repro[mlflow]' (scripts/test.sh installs it)")
def test_mlflow_run_continues_after_sigterm_and_resume(data_root, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this switch
    run_id = preempted_then_resumed(data_root, tmp_path / "run", "mlflow")
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("ssl-repro")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]  # one run, not one per start
    steps = sorted({m.step for m in client.get_metric_history(run_id, "loss")})
    assert steps == list(range(1, 17))  # both sessions log to it: every step of the run
