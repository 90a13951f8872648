"""YAML read as text: every scalar stays what the user wrote, so that a config's schema, not YAML 1.1's guesses,
decides what ``no``, ``on``, ``1e-5`` or ``0777`` mean (``common.config`` converts each value to its field's
type). Values without a schema (an untyped ``dict`` field, a sweep grid) are read with YAML 1.2's core types.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from common.errors import ConfigError

NULL_WORDS = {"null", "Null", "NULL", "~", ""}
TRUE_WORDS, FALSE_WORDS = {"true", "True", "TRUE"}, {"false", "False", "FALSE"}


class PlainText(str):
    """The text of an unquoted YAML scalar: it may be read as null, a boolean or a number, as its field asks."""


class TextLoader(yaml.SafeLoader):
    """YAML without implicit typing: every scalar stays the text the user wrote (unquoted ones as ``PlainText``),
    so that the schema, not YAML 1.1, decides what ``no``, ``on``, ``1e-5`` or ``0777`` mean."""


TextLoader.yaml_implicit_resolvers = {}


def _construct_text(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> str:
    text = loader.construct_scalar(node)
    return PlainText(text) if node.style is None else str(text)


TextLoader.add_constructor("tag:yaml.org,2002:str", _construct_text)


def parse_text(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=TextLoader)
    except yaml.YAMLError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{where} is not valid YAML: {first}") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping with every scalar kept as text (see ``TextLoader``); one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    content = parse_text(path.read_text(), f"config file {path}")
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, not {type(content).__name__}")
    return content


def plain_value(value: Any) -> Any:
    """A value read without a schema (an untyped ``dict`` field, a sweep grid): YAML 1.2's core types."""
    if isinstance(value, dict):
        return {key: plain_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain_value(item) for item in value]
    if not isinstance(value, PlainText):
        return str(value) if isinstance(value, str) else value
    if value in NULL_WORDS:
        return None
    if value in TRUE_WORDS or value in FALSE_WORDS:
        return value in TRUE_WORDS
    for number in (int, float):
        try:
            return number(value)
        except ValueError:
            pass
    return str(value)
