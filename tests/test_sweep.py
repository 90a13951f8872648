"""common.sweep: sweep files expand to the grid of runs of the trainer they name, validated by its schema."""

import shlex
import sys
from pathlib import Path

import pytest
import yaml

from common import sweep
from common.errors import ConfigError
from msbreg.train import MSBRegTrainConfig
from vcreg.train import VCRegTrainConfig

ROOT = Path(__file__).resolve().parents[1]
MSBREG_CONFIGS = ROOT / "msbreg" / "configs"
VCREG_CONFIGS = ROOT / "vcreg" / "configs"
SWEEP_FILES = sorted([*MSBREG_CONFIGS.glob("*_sweep.yaml"), *VCREG_CONFIGS.glob("*_sweep.yaml")])


def write_sweep(tmp_path: Path, **keys) -> Path:
    spec = {"train": "msbreg/train.py", "base": str(MSBREG_CONFIGS / "imagenet100_resnet18_msbreg.yaml"),
            "output_root": "runs", "name": "ls{method.lambda_s}", "grid": {"method.lambda_s": [0.1, 0.2]}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**spec, **keys}))
    return path


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_every_sweep_file_expands_and_validates(path):
    sweep.validate(sweep.expand(path))


def test_table5_sweep_expands_to_the_full_grid_and_validates():
    expanded = sweep.expand(MSBREG_CONFIGS / "imagenet100_table5_sweep.yaml")
    assert expanded.trainer.module == "msbreg.train" and expanded.trainer.schema is MSBRegTrainConfig
    assert expanded.trainer.script == ROOT / "msbreg" / "train.py"
    runs = expanded.runs
    assert len(runs) == 3 * 4 * 5
    assert len({run.name for run in runs}) == 60
    assert runs[0].name == "k2_ls0.0_lb0.0" and runs[-1].name == "k8_ls0.01_lb2.0"
    assert "augment.num_views=8" in runs[-1].argv and "epochs=300" in runs[-1].argv
    assert runs[-1].argv[-1] == "output_dir=runs/msbreg/table5/k8_ls0.01_lb2.0"
    sweep.validate(expanded)


def test_vcreg_sweep_expands_to_the_alpha_beta_grid_and_validates_against_vcreg():
    expanded = sweep.expand(VCREG_CONFIGS / "imagenet_resnet50_vcreg_sweep.yaml")
    assert expanded.trainer.module == "vcreg.train" and expanded.trainer.schema is VCRegTrainConfig
    alphas, betas = [1.28, 0.64, 0.32, 0.16], [0.16, 0.08, 0.04, 0.02, 0.01]
    assert [run.name for run in expanded.runs] == [f"a{a}_b{b}" for a in alphas for b in betas]
    assert expanded.runs[-1].argv == ["--config", str(VCREG_CONFIGS / "imagenet_resnet50_vcreg.yaml"),
                                      "vcreg.alpha=0.16", "vcreg.beta=0.01",
                                      "output_dir=runs/vcreg/imagenet_resnet50_sweep/a0.16_b0.01"]
    sweep.validate(expanded)
    msbreg_only = sweep.Sweep(expanded.trainer, [sweep.SweepRun("x", ["method.lambda_s=0.1"])])
    with pytest.raises(ConfigError, match="method.lambda_s"):  # validated against vcreg's schema, not msbreg's
        sweep.validate(msbreg_only)


def test_train_key_takes_a_script_path_or_a_module_name(tmp_path):
    by_module = sweep.expand(write_sweep(tmp_path, train="msbreg.train"))
    by_script = sweep.expand(write_sweep(tmp_path, train="msbreg/train.py"))
    assert by_module.trainer == by_script.trainer


def test_commands_are_launcher_train_script_and_arguments(tmp_path, capfd):
    path = write_sweep(tmp_path)
    assert sweep.main([str(path)]) == 0
    printed = capfd.readouterr().out.splitlines()
    assert printed[0] == shlex.join([sys.executable, str(ROOT / "msbreg" / "train.py"), "--config",
                                     str(MSBREG_CONFIGS / "imagenet100_resnet18_msbreg.yaml"),
                                     "method.lambda_s=0.1", "output_dir=runs/ls0.1"])
    assert len(printed) == 2
    # --run launches each command; echo stands in for 'accelerate launch'
    assert sweep.main([str(path), "--run", "--launcher", "echo launched"]) == 0
    out = capfd.readouterr().out
    assert f"launched {ROOT / 'msbreg' / 'train.py'} --config" in out and "[2/2] ls0.2" in out
    assert sweep.main([str(path), "--run", "--launcher", "false"]) == 1
    assert "run 'ls0.1' failed with exit code 1" in capfd.readouterr().err


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_sweep_names_a_misspelt_key(tmp_path, capsys):
    bad = write_sweep(tmp_path, name="ls{method.lamda_s}", grid={"method.lamda_s": [0.1]})
    assert sweep.main([str(bad)]) == 2
    assert "lamda_s" in one_line_error(capsys)


@pytest.mark.parametrize("train", ["msbreg/trian.py", "msbreg.trian", "nosuchpackage.train"])
def test_unknown_train_module_is_a_one_line_error(tmp_path, capsys, train):
    assert sweep.main([str(write_sweep(tmp_path, train=train))]) == 2
    assert f"unknown train module '{train}'" in one_line_error(capsys)


def test_train_module_without_schema_and_missing_train_key_are_one_line_errors(tmp_path, capsys):
    assert sweep.main([str(write_sweep(tmp_path, train="msbreg.losses"))]) == 2
    assert "train module 'msbreg.losses' defines no CONFIG_SCHEMA" in one_line_error(capsys)
    spec = yaml.safe_load(write_sweep(tmp_path).read_text())
    del spec["train"]
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec))
    assert sweep.main([str(tmp_path / "sweep.yaml")]) == 2
    assert "missing key 'train'" in one_line_error(capsys)


def test_a_sweep_file_with_bad_yaml_is_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "broken_sweep.yaml"
    path.write_text("train: vcreg/train.py\ngrid: {vcreg.alpha: [0.16, 1.28\n")
    assert sweep.main([str(path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "not valid YAML" in error and "\n" not in error
