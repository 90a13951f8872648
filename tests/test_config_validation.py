"""Config values that have no meaning are refused before anything runs (one line naming the key, exit code 2,
nothing written), and every command's --help says what will run: the values of its default config, a comment
for every key, the command's real name."""

import contextlib
import dataclasses
import io
import math

import pytest
import yaml

from common.config import ConfigError, config_from_dict, field_types, load_config, method_union
from common.config_types import Length, Range
from common.errors import EXIT_BAD_INPUT
from tests.trainer_runs import ROOT, write_idx_fashion_mnist

# A trainer run on a small data set of the real format, one step long: where a value is wrongly accepted the
# test fails within seconds instead of training the quickstart.
SMALL = ["data.subset=null", "data.num_workers=0", "progress_bar=false", "tracker=none", "backbone.width=4",
         "max_steps=1", "eval.knn_at_init=false", "eval.linear=false"]


def trainer(name: str):
    if name == "stochcon":
        from stochcon import train
    elif name == "msbreg":
        from msbreg import train
    else:
        from vcreg import train
    return train


def protocols():
    """Every command that reads key=value overrides: the trainers, fine-tuning, every evaluation protocol."""
    from evaluation import knn, linear, mine, neural_collapse, semi_supervised, transfer, voc07
    from stochcon import finetune

    return {"stochcon.train": (trainer("stochcon").main, trainer("stochcon").CONFIG_SCHEMA),
            "msbreg.train": (trainer("msbreg").main, trainer("msbreg").CONFIG_SCHEMA),
            "vcreg.train": (trainer("vcreg").main, trainer("vcreg").CONFIG_SCHEMA),
            "stochcon.finetune": (finetune.main, finetune.FinetuneConfig),
            "evaluation.knn": (knn.main, knn.KNNEvalConfig),
            "evaluation.linear": (linear.main, linear.LinearEvalConfig),
            "evaluation.semi_supervised": (semi_supervised.main, semi_supervised.SemiSupervisedConfig),
            "evaluation.transfer": (transfer.main, transfer.TransferConfig),
            "evaluation.voc07": (voc07.main, voc07.VOC07Config),
            "evaluation.neural_collapse": (neural_collapse.main, neural_collapse.NeuralCollapseConfig),
            "evaluation.mine": (mine.main, mine.MINEConfig)}


def outputs(main, argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def assert_refused(main, argv, key, run_dir, data_root):
    """Exit code 2, one line on stderr naming ``key``, and no run folder."""
    code, _, err = outputs(main, [*argv, f"data.root={data_root}", *SMALL, f"output_dir={run_dir}"])
    assert code == EXIT_BAD_INPUT, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and key in lines[0], err
    assert not run_dir.exists()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_idx_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=64, n_test=32)


# ------------------------------------------------------------------------------------- non-finite numbers
@pytest.mark.parametrize("command, override, key", [
    ("stochcon", "optim.lr=nan", "optim.lr"),
    ("stochcon", "optim.lr=inf", "optim.lr"),
    ("stochcon", "method.temperature=nan", "method.temperature"),
    ("stochcon", "probe_lr=-inf", "probe_lr"),
    ("msbreg", "method.lambda_b=NaN", "method.lambda_b"),
    ("vcreg", "vcreg.alpha=nan", "vcreg.alpha"),
    ("vcreg", "vcreg.beta=.inf", "vcreg.beta"),
])
def test_a_float_that_is_not_finite_is_refused_on_the_command_line(data_root, tmp_path, command, override, key):
    assert_refused(trainer(command).main, [override], key, tmp_path / "run", data_root)


@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf", "nan", "inf", "1e999"])
def test_a_float_that_is_not_finite_is_refused_in_a_yaml_file(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(f"optim:\n  lr: {text}\n")
    with pytest.raises(ConfigError, match="key .optim.lr. (expects|must)"):
        load_config(trainer("stochcon").CONFIG_SCHEMA, ["--config", str(path)])


def test_every_float_field_of_every_command_refuses_nan():
    """Not field by field: any float field anywhere (a bound check is never enough, nan compares false)."""
    checked = 0

    def walk(cls):
        nonlocal checked
        for name, tp in field_types(cls).items():
            choices = method_union(tp)
            if choices:
                for option in dict.fromkeys(choices.values()):
                    walk(option)
            elif dataclasses.is_dataclass(tp) and isinstance(tp, type):
                walk(tp)
            elif "float" in str(tp) and not any(word in str(tp) for word in ("list", "dict", "tuple", "Literal")):
                with pytest.raises(ConfigError, match="finite"):
                    config_from_dict(cls, {name: math.nan})
                checked += 1

    for _, schema in protocols().values():
        walk(schema)
    assert checked > 50  # the walk reached the sections and every method's fields


# --------------------------------------------------------------------------------- values without meaning
@pytest.mark.parametrize("override, key", [
    ("optim.warmup_epochs=-1", "optim.warmup_epochs"),
    ("optim.final_lr=2", "optim.final_lr"),  # a fraction of the peak: above 1 would end above the peak
    ("optim.final_lr=-0.1", "optim.final_lr"),
    ("optim.gamma=-0.1", "optim.gamma"),
    ("optim.betas=[0.9]", "optim.betas"),
    ("optim.betas=[0.9,0.999,0.5]", "optim.betas"),
    ("optim.betas=[0.9,1.0]", "optim.betas[1]"),
    ("optim.betas=[-0.1,0.999]", "optim.betas[0]"),
    ("optim.eta=0", "optim.eta"),
    ("optim.milestones=[80]", "optim.milestones[0]"),  # fractions of training: a milestone past 1 never comes
    ("optim.eta=-0.001", "optim.eta"),
    ("eval.knn_k=[]", "eval.knn_k"),
    ("eval.knn_k=[0]", "eval.knn_k[0]"),
    ("eval.linear_epochs=0", "eval.linear_epochs"),
    ("method.projector=[]", "method.projector"),
    ("method.projector=[0,16]", "method.projector[0]"),
])
def test_a_value_without_meaning_is_refused_before_anything_is_written(data_root, tmp_path, override, key):
    assert_refused(trainer("stochcon").main, [override], key, tmp_path / "run", data_root)


@pytest.mark.parametrize("command, overrides, key", [
    ("msbreg", ["method.projector=[]"], "method.projector"),
    ("msbreg", ["method.predictor=[]"], "method.predictor"),
    ("vcreg", ["method.name=simclr", "method.projector=[]"], "method.projector"),
    ("vcreg", ["method.name=vicreg", "method.projector=[]"], "method.projector"),
    ("vcreg", ["subclass_probe.epochs=0"], "subclass_probe.epochs"),
])
def test_empty_heads_and_zero_epochs_are_refused_by_every_trainer(data_root, tmp_path, command, overrides, key):
    assert_refused(trainer(command).main, overrides, key, tmp_path / "run", data_root)


@pytest.mark.parametrize("protocol, overrides, key", [
    ("evaluation.knn", ["k=[]"], "k"),
    ("evaluation.knn", ["k=[0]"], "k[0]"),
    ("evaluation.linear", ["probe.epochs=0"], "probe.epochs"),
    ("evaluation.linear", ["probe.milestones=[30,60]"], "probe.milestones[0]"),
    ("evaluation.semi_supervised", ["epochs=0"], "epochs"),
    ("evaluation.semi_supervised", ["momentum=1"], "momentum"),
    ("evaluation.transfer", ["sgd_epochs=0"], "sgd_epochs"),
    ("evaluation.voc07", ["folds=1"], "folds"),
    ("evaluation.mine", ["lr=nan"], "lr"),
])
def test_an_evaluation_refuses_a_value_without_meaning(tmp_path, protocol, overrides, key):
    main, _ = protocols()[protocol]
    output = tmp_path / "result.json"
    code, _, err = outputs(main, ["checkpoint=resnet18", f"output={output}", *overrides])
    assert code == EXIT_BAD_INPUT, err
    assert f"'{key}'" in err and len(err.strip().splitlines()) == 1, err
    assert not output.exists()


@pytest.mark.parametrize("command, overrides", [
    ("stochcon", ["method.name=simclr"]),
    ("stochcon", ["method.name=stochcon"]),
    ("msbreg", ["--config", str(ROOT / "msbreg" / "configs" / "fashion_mnist_byol.yaml")]),
    ("msbreg", ["method.name=msbreg"]),
    ("vcreg", ["method.name=simclr", "augment.name=multiview"]),
    ("vcreg", ["method.name=vicreg", "augment.name=multiview"]),
])
def test_one_view_for_a_method_of_pairs_of_views_is_refused_before_the_run_folder(data_root, tmp_path, command,
                                                                                 overrides):
    assert_refused(trainer(command).main, [*overrides, "augment.num_views=1"], "augment.num_views", tmp_path / "run",
                   data_root)


def test_typed_bounds_describe_themselves_in_help():
    assert Range(low=0.0, high=1.0, high_open=True).describe() == ">= 0 and < 1"
    assert not Range(low=0.0, high=1.0, high_open=True).check(1.0)
    assert Length(low=2, high=2).describe() == "of 2 values" and not Length(low=1).check([])


# ------------------------------------------------------------------------------------------------ --help
def help_rows(text: str, key: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"  {key}: ")]


def every_key(schema: type, prefix: str = "") -> set[str]:
    keys = set()
    for name, tp in field_types(schema).items():
        choices = method_union(tp)
        if choices is not None:
            for option in choices.values():
                keys |= every_key(option, f"{prefix}{name}.")
        elif dataclasses.is_dataclass(tp) and isinstance(tp, type):
            keys |= every_key(tp, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


@pytest.mark.parametrize("command", list(protocols()))
def test_every_key_of_every_command_has_a_comment_in_help(command):
    main, schema = protocols()[command]
    code, text, _ = outputs(main, ["--help"])
    assert code == 0
    missing = []
    for key in sorted(every_key(schema)):
        rows = help_rows(text, key)
        assert rows, key
        missing += [row.strip() for row in rows if "    # " not in row]
    assert not missing, missing
    assert "???" not in text and "<function" not in text and "<lambda>" not in text


@pytest.mark.parametrize("command", list(protocols()))
def test_help_names_the_command_that_runs(command):
    main, _ = protocols()[command]
    _, text, _ = outputs(main, ["--help"])
    usage = text.splitlines()[0]
    if command.endswith(".train"):
        assert usage.startswith(f"usage: {command.replace('.', '/')}.py "), usage
    elif command == "stochcon.finetune":
        assert usage.startswith("usage: python -m stochcon.finetune "), usage
    else:
        assert usage.startswith(f"usage: python -m evaluation {command.removeprefix('evaluation.')} "), usage
        from evaluation.__main__ import main as evaluation_main
        assert outputs(evaluation_main, [command.removeprefix("evaluation."), "--help"])[0] == 0


@pytest.mark.parametrize("command", ["stochcon", "msbreg", "vcreg"])
def test_help_shows_the_values_a_bare_command_runs_with(command):
    """--help shows the values of the trainer's default config, the ones --print-config resolves."""
    train = trainer(command)
    _, text, _ = outputs(train.main, ["--help"])
    _, printed, _ = outputs(train.main, ["--print-config"])
    resolved = config_from_dict(train.CONFIG_SCHEMA, yaml.safe_load(printed))
    assert help_rows(text, "epochs")[0].split("    #")[0].rsplit(" = ", 1)[1] == str(resolved.epochs)
    assert f'"{resolved.backbone.name}"' in help_rows(text, "backbone.name")[0]
    assert f'"{resolved.output_dir}"' in help_rows(text, "output_dir")[0]
    # and the overrides given with --help
    _, text, _ = outputs(train.main, ["--help", "epochs=3"])
    assert help_rows(text, "epochs")[0].split("    #")[0].rsplit(" = ", 1)[1] == "3"


@pytest.mark.parametrize("command", ["stochcon", "msbreg", "vcreg"])
def test_a_bare_trainer_runs_a_cpu_sized_default_config(command):
    train = trainer(command)
    _, printed, _ = outputs(train.main, ["--print-config"])
    resolved = config_from_dict(train.CONFIG_SCHEMA, yaml.safe_load(printed))
    assert resolved.data.name == "fashion_mnist" and resolved.backbone.name == "small_convnet"
    assert resolved.epochs <= 4


def test_evaluation_without_a_protocol_prints_usage_and_exits_2():
    from evaluation.__main__ import main

    code, out, err = outputs(main, [])
    assert code == EXIT_BAD_INPUT and "usage:" in err and "evaluation.knn" in err and not out
    assert outputs(main, ["--help"])[0] == 0


def test_augment_preview_help_prints_help_and_writes_nothing(tmp_path, monkeypatch):
    from common.augment import PreviewConfig, main

    monkeypatch.chdir(tmp_path)
    for flag in ["--help", "--print-config"]:
        code, text, _ = outputs(main, [flag, f"output_dir={tmp_path / 'preview'}"])
        assert code == 0 and text
        assert list(tmp_path.iterdir()) == []
    code, text, _ = outputs(main, ["--help"])
    for key in every_key(PreviewConfig):
        assert help_rows(text, key) and all("    # " in row for row in help_rows(text, key)), key
