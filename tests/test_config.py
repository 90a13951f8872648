from dataclasses import dataclass, field

import pytest

from common.config import ConfigError, diff_configs, load_config, split_argv, to_dict


@dataclass
class Inner:
    name: str = "a"
    size: int = 3
    scale: list[float] = field(default_factory=lambda: [0.1, 1.0])


@dataclass
class Schema:
    seed: int = 0
    lr: float = 0.1
    max_steps: int | None = None
    inner: Inner = field(default_factory=Inner)


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


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError) as error:
        load_config(Schema, ["inner.size=big"])
    assert "inner.size" in str(error.value) and "\n" not in str(error.value)


def test_unknown_key_in_yaml_and_missing_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("inner:\n  nmae: x\n")
    with pytest.raises(ConfigError, match="nmae"):
        load_config(Schema, ["--config", str(path)])
    with pytest.raises(ConfigError, match="not found"):
        load_config(Schema, ["--config", str(tmp_path / "missing.yaml")])


def test_yaml_on_off_are_strings_not_booleans(tmp_path):
    @dataclass
    class WithOn:
        on: str = "loader"

    path = tmp_path / "on.yaml"
    path.write_text("on: device\n")
    assert load_config(WithOn, ["--config", str(path)]).on == "device"


def test_split_argv_and_diff():
    assert split_argv(["--config", "x.yaml", "a=1", "--b.c", "2", "--flag"]) == ("x.yaml", ["a=1", "b.c=2", "flag=true"])
    with pytest.raises(ConfigError, match="cannot parse"):
        split_argv(["stray"])
    a, b = to_dict(Schema()), to_dict(Schema(lr=0.2, inner=Inner(size=4)))
    assert diff_configs(a, b) == ["inner.size", "lr"]
