"""Checkpoints that survive crashes: atomic saves under SIGKILL, keep_last, the recorded code version, and a
saved backbone that does not fit its architecture, and a method rebuilt from the trainer's saved model state."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from common.backbones import BackboneConfig, build_backbone, load_backbone, save_backbone
from common.checkpoint import (
    check_resumable,
    code_version,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_method_weights,
    save_checkpoint,
)
from common.errors import RunFolderError
from common.trainer import TrainingModule

# A child process that saves checkpoints of ~16 MB as fast as it can, until it is killed.
SAVER = """
import sys, torch
from common.checkpoint import save_checkpoint
out, start = sys.argv[1], int(sys.argv[2])
for step in range(start, start + 10_000):
    save_checkpoint(out, step, {"step": step, "weights": torch.full((4_000_000,), float(step))}, keep_last=2)
"""


def test_sigkill_during_saves_always_leaves_a_complete_latest_checkpoint(tmp_path):
    from trainer_runs import ROOT, env

    out = tmp_path / "run"
    for delay in (0.0, 0.013, 0.029, 0.047, 0.071, 0.11):
        first = latest_checkpoint(out)
        start = 1 if first is None else load_checkpoint(first)["step"] + 1  # go on like a resumed run
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(out), str(start)], cwd=ROOT, env=env())
        deadline = time.time() + 120
        while latest_checkpoint(out) == first and time.time() < deadline:  # this child's first save is done
            time.sleep(0.002)
        time.sleep(delay)  # lands anywhere in a later save: mid torch.save, around the rename, mid clean-up
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        latest = latest_checkpoint(out)
        assert latest is not None and latest != first
        state = load_checkpoint(latest)
        assert torch.equal(state["weights"], torch.full((4_000_000,), float(state["step"])))
        assert latest.name == f"step_{state['step']:08d}"


def test_keep_last_bounds_the_checkpoints_and_stale_temporaries_are_removed(tmp_path):
    stale = tmp_path / "checkpoints" / ".tmp_step_00000009_12345"  # left by a process killed during a save
    stale.mkdir(parents=True)
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, {"step": step}, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000004", "step_00000005"]
    assert not stale.exists()
    save_checkpoint(tmp_path, 5, {"step": 5, "again": True}, keep_last=2)  # the same step saved twice
    assert load_checkpoint(latest_checkpoint(tmp_path))["again"]


def test_code_version_is_the_git_commit():
    from trainer_runs import ROOT

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=False).stdout.strip()
    if not commit:
        pytest.skip("not a git checkout")
    assert code_version().removesuffix("+dirty") == commit


def test_unreadable_checkpoint_is_a_one_line_error(tmp_path):
    folder = tmp_path / "checkpoints" / "step_00000001"
    folder.mkdir(parents=True)
    (folder / "state.pt").write_bytes(b"truncated")
    with pytest.raises(ValueError, match="cannot be read") as error:
        load_checkpoint(folder)
    assert "\n" not in str(error.value)


def test_backbone_of_another_architecture_is_a_one_line_error(tmp_path):
    cfg = BackboneConfig(name="small_convnet", width=4)
    backbone, _ = build_backbone(cfg, 1)
    path = tmp_path / "backbone.safetensors"
    save_backbone(backbone, cfg, 1, path)
    assert torch.equal(load_backbone(path)[0].features[0].weight, backbone.features[0].weight)

    # The same weights under metadata that claims another width: every conv has another shape.
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        weights = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 (safe_open is not a dict)
    metadata["backbone_config"] = json.dumps(json.loads(metadata["backbone_config"]) | {"width": 8})
    save_file(weights, str(path), metadata=metadata)
    with pytest.raises(ValueError, match="of another shape") as error:
        load_backbone(path)
    assert "\n" not in str(error.value)

    # A file that lacks keys: a ResNet's state under small_convnet's metadata.
    resnet, _ = build_backbone(BackboneConfig(name="resnet18"), 1)
    save_file({k: v.contiguous() for k, v in resnet.state_dict().items()}, str(path), metadata=metadata)
    with pytest.raises(ValueError, match="missing keys"):
        load_backbone(path)


def test_method_weights_come_back_from_the_trainers_model_state_without_the_probe(tmp_path):
    torch.manual_seed(0)
    method, probe = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)), torch.nn.Linear(2, 4)
    method[1].running_mean.fill_(0.5)
    save_checkpoint(tmp_path, 7, {"model": TrainingModule(method, probe).state_dict()})
    folder = latest_checkpoint(tmp_path)
    rebuilt = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    assert load_method_weights(rebuilt, load_checkpoint(folder), folder) is rebuilt and not rebuilt.training
    for name, value in method.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name], value), name
    other = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.BatchNorm1d(5))
    with pytest.raises(RunFolderError, match=r"checkpoint '.*step_0+7' does not fit the method it names: size mismatch for 0.weight"):
        load_method_weights(other, load_checkpoint(folder), folder)


def test_keys_added_after_a_run_started_do_not_block_its_resume_but_changed_ones_do(tmp_path):
    """An upgrade adds config keys (grad_cache, tracker_project, ...): a checkpoint saved before them lacks them.
    Its run resumes and is told the values they take; a key it has with another value is refused, and so is a
    key it has that the code no longer knows."""
    saved = {"seed": 0, "optim": {"lr": 0.3}, "method": {"name": "simclr", "temperature": 0.1}}
    current = {"seed": 0, "grad_cache": True, "optim": {"lr": 0.3, "bias_and_norm_lr_scale": 1.0},
               "method": {"name": "simclr", "temperature": 0.1}}
    assert sorted(check_resumable(saved, current, tmp_path)) == ["grad_cache", "optim.bias_and_norm_lr_scale"]
    changed = {**current, "optim": {"lr": 0.5, "bias_and_norm_lr_scale": 1.0}}
    with pytest.raises(RunFolderError, match=r"differs in optim\.lr \("):
        check_resumable(saved, changed, tmp_path)
    removed = {"seed": 0, "optim": {"lr": 0.3}, "method": {"name": "simclr"}}
    with pytest.raises(RunFolderError, match=r"differs in method\.temperature \("):
        check_resumable(saved, removed, tmp_path)
