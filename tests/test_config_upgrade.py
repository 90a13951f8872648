"""Run folders and YAML files written before the one head vocabulary (proj_hidden_dim, proj_output_dim, ...)
still load, and their runs still resume: each method section maps its renamed keys (``upgrade_keys``). A key
added to the code since a run was made is, at the value runs computed before it (``keys_added``), neither a
new study identity nor a resume note; at another value a resume is refused."""

import copy
import json
from pathlib import Path

import pytest
import yaml

from common.checkpoint import check_resumable
from common.config import config_from_dict, load_config, to_dict
from common.config_upgrade import (
    upgrade_config_dict,
    values_before_added_keys,
    without_values_before_added_keys,
)
from common.errors import RunFolderError
from msbreg.train import MSBRegTrainConfig
from stochcon import train as stochcon_train
from stochcon.train import StochConTrainConfig
from vcreg import train as vcreg_train
from vcreg.train import VCRegTrainConfig

OLD_SIMCLR = {"name": "simclr", "temperature": 0.2, "proj_hidden_dim": 512, "proj_hidden_layers": 2,
              "proj_output_dim": 64, "proj_norm": "ln"}
OLD_BYOL = {"name": "byol", "proj_hidden_dim": 256, "proj_output_dim": 32, "pred_hidden_dim": 128}


def test_old_head_keys_become_width_lists():
    simclr = config_from_dict(StochConTrainConfig, {"method": OLD_SIMCLR}).method
    assert simclr.projector == [512, 512, 64] and simclr.projector_norm == "ln" and simclr.temperature == 0.2
    for name in ("byol", "msbreg"):
        method = config_from_dict(MSBRegTrainConfig, {"method": {**OLD_BYOL, "name": name}}).method
        assert method.projector == [256, 32] and method.predictor == [128, 32]
    # a key missing from an old section takes its old default (SimCLR: 2048 hidden, one layer, 128 out)
    partial = config_from_dict(StochConTrainConfig, {"method": {"name": "simclr", "proj_output_dim": 32}}).method
    assert partial.projector == [2048, 32]


def test_old_keys_in_a_yaml_file_and_on_the_command_line(tmp_path):
    file = tmp_path / "old.yaml"
    file.write_text("method:\n  name: simclr\n  proj_hidden_dim: 64\n  proj_output_dim: 16\n")
    cfg = load_config(StochConTrainConfig, ["--config", str(file), "method.temperature=0.3"])
    assert cfg.method.projector == [64, 16] and cfg.method.temperature == 0.3


def test_a_run_saved_with_the_old_keys_resumes_under_the_new_ones(tmp_path):
    current = config_from_dict(StochConTrainConfig, {"method": {**OLD_SIMCLR}})
    saved = to_dict(current)
    saved["method"] = {**{k: v for k, v in saved["method"].items() if k not in ("projector", "projector_norm")},
                       **OLD_SIMCLR}
    assert check_resumable(upgrade_config_dict(StochConTrainConfig, saved), to_dict(current), tmp_path) == []
    # the upgrade renames, it does not hide a real difference
    saved["method"]["proj_output_dim"] = 128
    with pytest.raises(Exception, match="method.projector"):
        check_resumable(upgrade_config_dict(StochConTrainConfig, saved), to_dict(current), tmp_path)


def _without(values: dict, dotted: list[str]) -> dict:
    """``values`` as a run saved before the ``dotted`` keys existed."""
    out = copy.deepcopy(values)
    for key in dotted:
        *parents, last = key.split(".")
        node = out
        for part in parents:
            node = node[part]
        del node[last]
    return out


ADDED = ["vcreg.mean_removal", "grad_cache", "optim.bias_and_norm_lr_scale", "eval.max_test_images"]


def test_a_key_added_at_the_value_runs_had_before_it_is_neither_a_new_identity_nor_a_resume_note(tmp_path):
    cfg = load_config(VCRegTrainConfig, ["vcreg.mean_removal=false"])
    current = to_dict(cfg)
    saved = _without(current, ADDED)  # a run saved before these keys were added to the code
    before = values_before_added_keys(VCRegTrainConfig, current)
    assert {key: before[key] for key in ADDED} == {"vcreg.mean_removal": False, "grad_cache": True,
                                                  "optim.bias_and_norm_lr_scale": 1.0, "eval.max_test_images": None}
    assert without_values_before_added_keys(current, before) == saved  # a study finds the old run done
    assert check_resumable(saved, current, tmp_path, before) == []  # and a resume has nothing to say
    # another value changes what the run computes: a new identity, and a resume would change the run halfway
    centred = load_config(VCRegTrainConfig, ["vcreg.mean_removal=true"])
    centred_values = to_dict(centred)
    assert without_values_before_added_keys(centred_values, values_before_added_keys(
        VCRegTrainConfig, centred_values))["vcreg"]["mean_removal"] is True
    with pytest.raises(RunFolderError, match=r"computed vcreg\.mean_removal=False, not True"):
        check_resumable(saved, to_dict(centred), tmp_path, values_before_added_keys(VCRegTrainConfig,
                                                                                   to_dict(centred)))


def test_gradient_caching_matters_only_with_accumulation(tmp_path):
    """Before ``grad_cache`` a run accumulated each micro-batch's own loss: with one micro-batch per step either
    value computes the same, with more only false does."""
    for accumulation, cache, resumes in ((1, True, True), (1, False, True), (2, False, True), (2, True, False)):
        cfg = load_config(StochConTrainConfig, [f"grad_accum_steps={accumulation}", f"grad_cache={cache}"])
        current = to_dict(cfg)
        saved = _without(current, ["grad_cache"])
        before = values_before_added_keys(StochConTrainConfig, current)
        assert ("grad_cache" not in without_values_before_added_keys(current, before)) == resumes
        if resumes:
            assert check_resumable(saved, current, tmp_path, before) == []
        else:
            with pytest.raises(RunFolderError, match=r"computed grad_cache=False, not True"):
                check_resumable(saved, current, tmp_path, before)


def test_print_identity_is_the_config_with_the_added_keys_earlier_values(capsys):
    argv = ["--config", str(Path(__file__).resolve().parents[1] / "vcreg/configs/fashion_mnist_vcreg.yaml")]
    assert vcreg_train.main([*argv, "--print-config"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert vcreg_train.main([*argv, "--print-identity"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["config"] == config
    assert without_values_before_added_keys(config, printed["keys_added"]) == _without(config, ADDED)


def test_upgrade_config_prints_an_older_config_under_the_current_names(capsys):
    saved = {"seed": 3, "method": OLD_SIMCLR}
    assert stochcon_train.main(["--upgrade-config", json.dumps(saved)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"seed": 3, "method": {"name": "simclr", "temperature": 0.2, "projector": [512, 512, 64],
                                             "projector_norm": "ln"}}
    for bad in ("{not json", "[1, 2]"):
        assert stochcon_train.main(["--upgrade-config", bad]) == 2
        message = capsys.readouterr().err.strip()
        assert "\n" not in message and "--upgrade-config: not a JSON config dict" in message
    assert stochcon_train.main(["--upgrade-config"]) == 2
    assert "needs a config dict in JSON" in capsys.readouterr().err
