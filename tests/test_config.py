"""Configs: precedence, typed values (YAML 1.2, strings as written, choices, bounds), method sections chosen by
name, and the --help / --print-config of every entry point."""

import contextlib
import dataclasses
import io
import re
import typing
from dataclasses import dataclass, field
from typing import Literal

import pytest

from common.config import (
    ConfigError,
    config_from_dict,
    diff_configs,
    field_types,
    load_config,
    method_union,
    split_argv,
    to_dict,
    to_yaml,
)
from common.config_types import Fraction, PositiveInt

# Every word YAML 1.1 reads as a boolean: a string field must receive each one as written.
YAML11_BOOLEANS = ["y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false",
                   "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF"]


@dataclass
class Inner:
    name: str = "a"
    size: PositiveInt = 3
    scale: list[float] = field(default_factory=lambda: [0.1, 1.0])


@dataclass
class Schema:
    seed: int = 0
    lr: float = 0.1
    max_steps: int | None = None
    flag: bool = False
    mode: Literal["no", "bf16", "fp16"] = "no"
    share: Fraction = 0.5
    label: str | None = "x"
    inner: Inner = field(default_factory=Inner)


@dataclass
class Alpha:
    name: Literal["alpha"] = "alpha"
    temperature: float = 0.1


@dataclass
class Beta:
    name: Literal["beta"] = "beta"
    temperature: float = 0.2
    depth: int = 2


@dataclass
class WithMethod:
    seed: int = 0
    method: Alpha | Beta = field(default_factory=Alpha)


def test_defaults_yaml_and_overrides_in_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 5\ninner:\n  name: b\n")
    cfg = load_config(Schema, ["--config", str(path), "inner.size=7", "--lr", "0.5", "--max-steps=9"])
    assert (cfg.seed, cfg.lr, cfg.max_steps, cfg.inner.name, cfg.inner.size) == (5, 0.5, 9, "b", 7)
    assert isinstance(cfg, Schema) and isinstance(cfg.inner, Inner)


def test_default_config_used_when_none_given(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text("seed: 3\n")
    assert load_config(Schema, [], default_config=path).seed == 3
    assert load_config(Schema, ["seed=4"], default_config=path).seed == 4


@pytest.mark.parametrize("argv, key", [(["inner.colour=red"], "inner.colour"), (["sed=1"], "sed")])
def test_unknown_key_is_one_line_error_naming_it(argv, key):
    with pytest.raises(ConfigError) as error:
        load_config(Schema, argv)
    assert key in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("override, key", [
    ("inner.size=big", "inner.size"), ("inner.size=0", "inner.size"), ("inner.size=2.5", "inner.size"),
    ("share=1.5", "share"), ("mode=yes", "mode"), ("flag=yes", "flag"), ("flag=1", "flag"), ("seed=null", "seed"),
    ("inner.scale=0.5", "inner.scale")])
def test_a_value_that_does_not_fit_names_the_key(override, key):
    with pytest.raises(ConfigError) as error:
        load_config(Schema, [override])
    assert f"'{key}'" in str(error.value) and "\n" not in str(error.value)


def test_unknown_key_in_yaml_bad_yaml_and_missing_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("inner:\n  nmae: x\n")
    with pytest.raises(ConfigError, match="nmae.*did you mean 'name'"):
        load_config(Schema, ["--config", str(path)])
    path.write_text("inner: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Schema, ["--config", str(path)])
    with pytest.raises(ConfigError, match="not found"):
        load_config(Schema, ["--config", str(tmp_path / "missing.yaml")])


@pytest.mark.parametrize("word", YAML11_BOOLEANS)
def test_a_string_field_receives_the_word_as_written(tmp_path, word):
    assert load_config(Schema, [f"inner.name={word}"]).inner.name == word
    path = tmp_path / "c.yaml"
    path.write_text(f"inner:\n  name: {word}\nlabel: {word}\n")
    cfg = load_config(Schema, ["--config", str(path)])
    assert (cfg.inner.name, cfg.label) == (word, word)
    assert load_config(Schema, ["--config", str(path), f"label={word}"]).label == word


def test_choices_booleans_numbers_and_null_read_as_their_types(tmp_path):
    cfg = load_config(Schema, ["mode=no", "flag=true", "lr=1e-5", "max_steps=null", "label=null",
                               "inner.scale=[0.2, 1]"])
    assert (cfg.mode, cfg.flag, cfg.lr, cfg.max_steps, cfg.label, cfg.inner.scale) == ("no", True, 1e-5, None,
                                                                                       None, [0.2, 1.0])
    path = tmp_path / "c.yaml"
    path.write_text("mode: fp16\nflag: false\nlr: 3.0e-4\nmax_steps: 10\ninner:\n  name: '007'\n")
    cfg = load_config(Schema, ["--config", str(path)])
    assert (cfg.mode, cfg.flag, cfg.lr, cfg.max_steps, cfg.inner.name) == ("fp16", False, 3e-4, 10, "007")
    # a quoted value (what a sweep file writes) is the string inside the quotes
    assert load_config(Schema, ["mode='bf16'"]).mode == "bf16"


def test_method_section_is_the_dataclass_its_name_chooses(tmp_path):
    assert load_config(WithMethod, []).method == Alpha()
    beta = load_config(WithMethod, ["method.name=beta", "method.depth=5"]).method
    assert beta == Beta(depth=5)
    path = tmp_path / "m.yaml"
    path.write_text("method:\n  name: beta\n  temperature: 0.7\n")
    assert load_config(WithMethod, ["--config", str(path)]).method == Beta(temperature=0.7)
    with pytest.raises(ConfigError, match=r"'method.depth'.*Alpha"):  # depth is not a key of alpha
        load_config(WithMethod, ["method.depth=5"])
    with pytest.raises(ConfigError, match=r"'method.depth'"):  # the file's beta key, but the command says alpha
        load_config(WithMethod, ["--config", str(path), "method.name=alpha", "method.depth=1"])
    with pytest.raises(ConfigError, match="'method.name' must be one of alpha, beta"):
        load_config(WithMethod, ["method.name=gamma"])


def test_saved_config_round_trips_and_older_booleans_still_read():
    cfg = load_config(WithMethod, ["method.name=beta", "seed=3"])
    assert config_from_dict(WithMethod, to_dict(cfg)) == cfg

    @dataclass
    class Resume:
        resume: Literal["false", "true", "auto"] = "false"

    assert config_from_dict(Resume, {"resume": True}).resume == "true"  # a run folder of an earlier version


def test_split_argv_and_diff():
    line = split_argv(["--config", "x.yaml", "a=1", "--b.c", "2", "--flag", "--print-config"])
    assert (line.config_file, line.overrides, line.print_config, line.help) == ("x.yaml", ["a=1", "b.c=2",
                                                                                          "flag=true"], True, False)
    assert split_argv(["-h"]).help and split_argv(["x=1", "--help"]).help
    with pytest.raises(ConfigError, match="cannot parse"):
        split_argv(["stray"])
    a, b = to_dict(Schema()), to_dict(Schema(lr=0.2, inner=Inner(size=4)))
    assert diff_configs(a, b) == ["inner.size", "lr"]


def test_resolved_yaml_reads_back_the_same():
    cfg = load_config(Schema, ["mode=no", "inner.name=on", "label=yes"])
    text = to_yaml(cfg)
    assert "'no'" in text and "'on'" in text  # quoted, so that any YAML reader sees strings
    path_cfg = config_from_dict(Schema, __import__("yaml").safe_load(text))
    assert path_cfg == cfg


# ------------------------------------------------------------------------------ every entry point's --help
def all_keys(schema: type, prefix: str = "") -> set[str]:
    """Every dotted key of a schema, the keys of every dataclass a method section can choose included."""
    keys = set()
    for name, tp in field_types(schema).items():
        choices = method_union(tp)
        if choices is not None:
            for option in choices.values():
                keys |= all_keys(option, f"{prefix}{name}.")
        elif dataclasses.is_dataclass(tp) and isinstance(tp, type):
            keys |= all_keys(tp, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


def entry_points():
    from evaluation import knn, linear, semi_supervised, transfer, voc07
    from msbreg import train as msbreg_train
    from stochcon import finetune
    from stochcon import train as stochcon_train
    from vcreg import train as vcreg_train

    return [(stochcon_train.main, stochcon_train.CONFIG_SCHEMA), (msbreg_train.main, msbreg_train.CONFIG_SCHEMA),
            (vcreg_train.main, vcreg_train.CONFIG_SCHEMA), (finetune.main, finetune.FinetuneConfig),
            (knn.main, knn.KNNEvalConfig), (linear.main, linear.LinearEvalConfig),
            (semi_supervised.main, semi_supervised.SemiSupervisedConfig), (transfer.main, transfer.TransferConfig),
            (voc07.main, voc07.VOC07Config)]


def output_of(main, argv) -> tuple[int, str]:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(argv)
    return code, buffer.getvalue()


@pytest.mark.parametrize("index", range(9))
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_every_key_with_type_default_and_comment(index, flag):
    main, schema = entry_points()[index]
    code, text = output_of(main, [flag])
    assert code == 0
    assert "usage:" in text and "--print-config" in text
    for key in all_keys(schema):
        assert f"  {key}: " in text, key
    if "output_dir" in field_types(schema):
        # type, the value it runs with (a trainer's default config; tests/test_config_validation.py), comment
        assert re.search(r'\n  output_dir: str = "[^"]+"    # the run folder', text)
    for union_key in [k for k, tp in field_types(schema).items() if method_union(tp)]:
        for name in method_union(field_types(schema)[union_key]):
            assert f"{union_key}.name={name}" in text  # each method's keys under its own heading


def test_print_config_prints_the_resolved_yaml_and_runs_nothing(tmp_path):
    from stochcon import train

    out = tmp_path / "never"
    code, text = output_of(train.main, ["--config", "stochcon/configs/fashion_mnist_simclr.yaml", "--print-config",
                                        f"output_dir={out}", "mixed_precision=no", "epochs=7"])
    assert code == 0 and not out.exists()
    resolved = config_from_dict(train.CONFIG_SCHEMA, __import__("yaml").safe_load(text))
    assert (resolved.epochs, resolved.mixed_precision, resolved.output_dir) == (7, "no", str(out))
    assert resolved.method.name == "simclr"


def test_every_schema_field_has_a_type_the_loader_reads():
    """No field of any entry point's schema falls outside the loader's types (it would only fail when set)."""
    from common.config import convert

    def check(schema):
        for name, tp in field_types(schema).items():
            choices = method_union(tp)
            if choices:
                for option in choices.values():
                    check(option)
            elif dataclasses.is_dataclass(tp) and isinstance(tp, type):
                check(tp)
            else:
                convert(getattr(schema(), name), tp, name)  # the default itself must read back

    for _, schema in entry_points():
        check(schema)
    assert typing.get_origin(field_types(Schema)["mode"]) is Literal
