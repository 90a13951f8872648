"""Run folders and YAML files written before the one head vocabulary (proj_hidden_dim, proj_output_dim, ...)
still load, and their runs still resume: each method section maps its renamed keys (``upgrade_keys``)."""

import pytest

from common.checkpoint import check_resumable
from common.config import config_from_dict, load_config, to_dict, upgrade_config_dict
from msbreg.train import MSBRegTrainConfig
from stochcon.train import StochConTrainConfig

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
