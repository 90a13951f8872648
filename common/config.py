"""Typed configs: dataclass schemas, YAML files and dotted command-line overrides.

Precedence: dataclass defaults < YAML file (``--config``) < ``key=value`` / ``--key value`` overrides.
Every key must exist in the schema and every value must fit its declared type; otherwise a
``ConfigError`` with a one-line message that names the key is raised.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from common.errors import ConfigError

T = TypeVar("T")


def _one_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    first = text[0] if text else type(error).__name__
    full_key = getattr(error, "full_key", None)
    if full_key and full_key not in first:
        first = f"{first} (key '{full_key}')"
    return first


def split_argv(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """Separate ``--config FILE`` from the overrides; ``--key value`` and ``--key=value`` mean ``key=value``."""
    config_file: str | None = None
    overrides: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            body = arg[2:]
            if "=" in body:
                key, value = body.split("=", 1)
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                key, value = body, args[i + 1]
                i += 1
            else:
                key, value = body, "true"
            key = key.replace("-", "_")
            if key == "config":
                config_file = value
            else:
                overrides.append(f"{key}={value}")
        elif "=" in arg:
            overrides.append(arg)
        else:
            raise ConfigError(f"cannot parse argument '{arg}': expected key=value, --key value or --config FILE")
        i += 1
    return config_file, overrides


def load_config(schema: type[T], argv: Sequence[str] | None = None, default_config: str | Path | None = None) -> T:
    """Build a ``schema`` instance from defaults, an optional YAML file and overrides.

    ``default_config`` is the YAML file used when ``argv`` names none (the quickstart of a trainer).
    """
    argv = sys.argv[1:] if argv is None else argv
    config_file, overrides = split_argv(argv)
    config_file = config_file or (str(default_config) if default_config else None)
    try:
        merged = OmegaConf.structured(schema)
        if config_file:
            merged = OmegaConf.merge(merged, _read_yaml(config_file))
        if overrides:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(overrides))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise ConfigError(_one_line(error)) from None


class _Yaml12Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. YAML 1.1 also reads on/off/yes/no as booleans, which would
    turn the key ``augment.on`` into ``True``."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        content = yaml.load(path.read_text(), Loader=_Yaml12Loader) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {_one_line(error)}") from None
    if not isinstance(content, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, not {type(content).__name__}")
    return content


def to_dict(config: Any) -> dict[str, Any]:
    """A plain nested dict of a config dataclass (for YAML, JSON and checkpoint metadata)."""
    return dataclasses.asdict(config)


def to_yaml(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def diff_configs(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    keys = sorted(set(a) | set(b))
    differing: list[str] = []
    for key in keys:
        dotted = f"{prefix}{key}"
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            differing += diff_configs(va, vb, prefix=f"{dotted}.")
        elif va != vb:
            differing.append(dotted)
    return differing
