"""Typed configs: dataclass schemas, YAML files and dotted command-line overrides.

Precedence: dataclass defaults < YAML file (``--config``) < ``key=value`` / ``--key value`` overrides.
Every key must exist in the schema and every value must fit its declared type; otherwise a ``ConfigError``
with a one-line message that names the key is raised.

Types a field may have: ``int``, ``float``, ``bool``, ``str``, ``Literal[...]`` (a choice, checked here),
``X | None``, ``list[X]``, ``tuple[X, ...]``, ``dict[str, X]``, a nested dataclass, or a union of dataclasses
that each declare ``name: Literal["their name"]`` (the ``method`` section: ``method.name`` picks the
dataclass, and a key that the chosen one lacks is an error naming it).

Values are read as their field's type asks, never by YAML 1.1's guesses: a string field receives the text
the user wrote (``mixed_precision=no``, ``backbone.name: on``), a boolean field only ``true`` or ``false``,
and ``null`` (or ``~``, or nothing) means None where the field allows None.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union

import yaml

from common.config_types import Length, Range
from common.errors import ConfigError
from common.yaml_text import (
    FALSE_WORDS,
    NULL_WORDS,
    TRUE_WORDS,
    PlainText,
    parse_text,
    plain_value,
    read_yaml,
)

T = TypeVar("T")
HELP_FLAGS = ("-h", "--help")
PRINT_CONFIG_FLAG = "--print-config"
# the resolved config and the value each key added to the code had before it existed (``values_before_added_keys``):
# what the study runner (``common.study.jobs.identity``) compares to tell a finished job
PRINT_IDENTITY_FLAG = "--print-identity"
# ``--upgrade-config JSON``: a config dict saved by an older version of the command, its renamed keys upgraded
# (``common.config_upgrade.upgrade_config_dict``): how the study runner reads a job recorded before a rename
UPGRADE_CONFIG_FLAG = "--upgrade-config"
# ------------------------------------------------------------------------------------------------- types
def is_section_type(tp: Any) -> bool:
    """Whether a field of this type is a nested section (a dataclass)."""
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _is_text_type(tp: Any) -> bool:
    if typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp is str or typing.get_origin(tp) is Literal


def _union_args(tp: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return typing.get_args(tp)
    return None


def _without_none(tp: Any) -> tuple[Any, bool]:
    """``(the type without None, whether None is allowed)``."""
    args = _union_args(tp)
    if args is None or type(None) not in args:
        return tp, False
    rest = tuple(a for a in args if a is not type(None))
    return (rest[0] if len(rest) == 1 else Union[rest]), True  # noqa: UP007 (a runtime union of the rest)


def method_union(tp: Any) -> dict[str, type] | None:
    """For a union of dataclasses that each declare ``name: Literal[...]``: name -> dataclass; else None."""
    args = _union_args(tp)
    if not args or not all(is_section_type(a) for a in args):
        return None
    choices: dict[str, type] = {}
    for cls in args:
        name_type = field_types(cls).get("name")
        if typing.get_origin(name_type) is not Literal:
            raise TypeError(f"{cls.__name__} is in a union of configs but has no `name: Literal[...]` field")
        for name in typing.get_args(name_type):
            choices[name] = cls
    return choices


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotation of every dataclass field of ``cls``."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def type_name(tp: Any) -> str:
    """A short readable name: ``int | None``, ``list[float]``, ``no|bf16|fp16``, ``int >= 1``."""
    if typing.get_origin(tp) is Annotated:
        base, *extras = typing.get_args(tp)
        bounds = [e.describe() for e in extras if isinstance(e, (Range, Length))]
        return " ".join([type_name(base), *bounds])
    if typing.get_origin(tp) is Literal:
        return "|".join(str(a) for a in typing.get_args(tp))
    args = _union_args(tp)
    if args is not None:
        return " | ".join("None" if a is type(None) else type_name(a) for a in args)
    origin = typing.get_origin(tp)
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else type_name(a) for a in typing.get_args(tp))
        return f"{origin.__name__}[{inner}]"
    return getattr(tp, "__name__", str(tp))


# -------------------------------------------------------------------------------------------- conversion
def _fail(key: str, expected: str, value: Any) -> ConfigError:
    shown = value if not isinstance(value, (dict, list)) else type(value).__name__
    return ConfigError(f"key '{key}' expects {expected}, got {shown!r}")


def convert(value: Any, tp: Any, key: str) -> Any:
    """``value`` (text from YAML or the command line, or a Python value) as type ``tp``; ConfigError naming
    ``key`` when it does not fit."""
    inner, nullable = _without_none(tp)
    is_text = _is_text_type(inner)
    if value is None or (isinstance(value, PlainText) and value in NULL_WORDS and (nullable or not is_text)):
        if nullable or tp is Any:
            return None
        raise _fail(key, type_name(tp), "null")
    tp = inner
    if tp is Any:
        return plain_value(value)
    if typing.get_origin(tp) is Annotated:
        base, *extras = typing.get_args(tp)
        result = convert(value, base, key)
        for bound in extras:
            if isinstance(bound, (Range, Length)) and not bound.check(result):
                raise ConfigError(f"key '{key}' must be {bound.describe()}; got {result!r}")
        return result
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, bool):  # a boolean choice written as a YAML boolean, or saved by an older version
            text = "true" if value else "false"
        else:
            text = str(value) if isinstance(value, (str, int, float)) else value
        if text not in choices:
            raise ConfigError(f"key '{key}' must be one of {', '.join(map(str, choices))}; got {value!r}")
        return text
    if tp is str:
        if isinstance(value, (dict, list)):
            raise _fail(key, "a string", value)
        return str(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and (value in TRUE_WORDS or value in FALSE_WORDS):
            return value in TRUE_WORDS
        raise _fail(key, "true or false", value)
    if tp in (int, float):
        if isinstance(value, bool):
            raise _fail(key, tp.__name__, value)
        if isinstance(value, (int, float)):
            number = value
        elif isinstance(value, str):
            try:
                number = int(value) if tp is int else float(value)
            except ValueError:
                raise _fail(key, tp.__name__, value) from None
        else:
            raise _fail(key, tp.__name__, value)
        if tp is int and isinstance(number, float):
            if not number.is_integer():
                raise _fail(key, "an integer", value)
            number = int(number)
        if isinstance(number, float) and not math.isfinite(number):  # nan passes every bound check and inf means no setting of ours
            raise _fail(key, "a finite number", value)
        return tp(number)
    if origin in (list, tuple, Sequence):
        if not isinstance(value, (list, tuple)):
            raise _fail(key, f"a list ({type_name(tp)})", value)
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise _fail(key, f"{len(args)} values", value)
            return tuple(convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, dict):
            raise _fail(key, f"a mapping ({type_name(tp)})", value)
        args = typing.get_args(tp) or (str, Any)
        return {convert(k, args[0], key): convert(v, args[1], f"{key}.{k}") for k, v in value.items()}
    raise TypeError(f"config field '{key}' has a type the loader does not support: {type_name(tp)}")


# -------------------------------------------------------------------------------------------- building
def _unknown_key(key: str, known: Sequence[str], section: str) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    where = f" for {section}" if section else ""
    return ConfigError(f"unknown key '{key}'{where}{hint}")


def _build(cls: type, default: Any, layers: list[Any], prefix: str) -> Any:
    """An instance of dataclass ``cls``: the fields of ``default`` (an instance of ``cls``, or None for its own
    defaults) overridden by each mapping of ``layers`` in turn."""
    hints = field_types(cls)
    layers = [upgraded(cls, layer) for layer in layers]
    for layer in layers:
        if not isinstance(layer, dict):
            raise _fail(prefix.rstrip(".") or "config", f"a mapping of keys ({cls.__name__})", layer)
        for key in layer:
            if key not in hints:
                raise _unknown_key(f"{prefix}{key}", list(hints), cls.__name__)
    default = default if default is not None else _default_instance(cls, prefix)
    values = {}
    for name, tp in hints.items():
        key = f"{prefix}{name}"
        given = [layer[name] for layer in layers if name in layer]
        current = getattr(default, name)
        if is_section_type(tp) or method_union(tp):
            values[name] = _build_section(tp, current, given, key)
        elif given:
            values[name] = convert(given[-1], tp, key)
        else:
            values[name] = current
    return cls(**values)


def upgraded(cls: type, layer: Any) -> Any:
    """``layer`` with the keys a section renamed mapped to their new names: a section class may declare
    ``upgrade_keys(values) -> values`` so that older run folders and YAML files still load and resume."""
    upgrade = getattr(cls, "upgrade_keys", None)
    return upgrade(layer) if upgrade is not None and isinstance(layer, dict) else layer


def _build_section(tp: Any, current: Any, given: list[Any], key: str) -> Any:
    """A nested dataclass field, or a union of method dataclasses chosen by its ``name``."""
    if any(layer is None for layer in given):
        raise _fail(key, "a mapping of keys", None)
    choices = method_union(tp)
    if choices is None:
        return _build(tp, current, given, f"{key}.")
    names = [layer["name"] for layer in given if "name" in layer]
    name = convert(names[-1], Literal[tuple(choices)], f"{key}.name") if names else current.name
    cls = choices[name]
    return _build(cls, current if type(current) is cls else None, given, f"{key}.")


def _default_instance(cls: type, prefix: str) -> Any:
    try:
        return cls()
    except TypeError as error:
        raise TypeError(f"config section '{prefix.rstrip('.') or cls.__name__}' ({cls.__name__}) needs a default "
                        f"for every field: {error}") from None


def _dotted(overrides: Sequence[str], schema: type) -> dict[str, Any]:
    """``["a.b=1", ...]`` as a nested mapping of texts (each value parsed as YAML text, e.g. lists)."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"cannot parse override '{item}': expected key=value")
        if _is_text_field(schema, key):  # the text as written; a quoted YAML string (from a sweep) unquoted
            quoted = len(text) >= 2 and text[0] == text[-1] and text[0] in "'\""
            value = parse_text(text, f"the value of '{key}'") if quoted else PlainText(text)
        else:
            value = parse_text(text, f"the value of '{key}'")
        parts = key.split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' sets a key below '{part}', which is a value")
        node[parts[-1]] = value
    return nested


def _is_text_field(schema: type, dotted: str) -> bool:
    """Whether ``dotted`` names a string field in every dataclass it could belong to: its value is then taken
    as written (``backbone.name=[x]`` is the text, not a list)."""
    classes = [schema]
    parts = dotted.split(".")
    for part in parts[:-1]:
        nxt = []
        for cls in classes:
            tp = field_types(cls).get(part)
            if is_section_type(tp):
                nxt.append(tp)
            elif (choices := method_union(tp)) is not None:
                nxt.extend(dict.fromkeys(choices.values()))
        classes = nxt
    leaf_types = {_without_none(field_types(cls)[parts[-1]])[0] for cls in classes if parts[-1] in field_types(cls)}
    return bool(leaf_types) and all(_is_text_type(tp) for tp in leaf_types)


# ------------------------------------------------------------------------------------------ command line
@dataclasses.dataclass
class CommandLine:
    config_file: str | None
    overrides: list[str]
    help: bool = False
    print_config: bool = False
    print_identity: bool = False
    upgrade_config: str | None = None  # the JSON text after UPGRADE_CONFIG_FLAG


def split_argv(argv: Sequence[str]) -> CommandLine:
    """Separate ``--config FILE``, ``--help``/``-h`` and ``--print-config`` from the overrides; ``--key value``
    and ``--key=value`` mean ``key=value`` and a bare ``--flag`` means ``flag=true``."""
    line = CommandLine(None, [])
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in HELP_FLAGS:
            line.help = True
        elif arg == PRINT_CONFIG_FLAG:
            line.print_config = True
        elif arg == PRINT_IDENTITY_FLAG:
            line.print_identity = True
        elif arg == UPGRADE_CONFIG_FLAG:
            if i + 1 == len(args):
                raise ConfigError(f"{UPGRADE_CONFIG_FLAG} needs a config dict in JSON after it")
            line.upgrade_config = args[i + 1]
            i += 1
        elif arg.startswith("--"):
            body = arg[2:]
            if "=" in body:
                key, value = body.split("=", 1)
            elif i + 1 < len(args) and not args[i + 1].startswith("--") and args[i + 1] not in HELP_FLAGS:
                key, value = body, args[i + 1]
                i += 1
            else:
                key, value = body, "true"
            key = key.replace("-", "_")
            if key == "config":
                line.config_file = value
            else:
                line.overrides.append(f"{key}={value}")
        elif "=" in arg:
            line.overrides.append(arg)
        else:
            raise ConfigError(f"cannot parse argument '{arg}': expected key=value, --key value or --config FILE "
                              "(--help lists the keys)")
        i += 1
    return line


def load_config(schema: type[T], argv: Sequence[str] | None = None, default_config: str | Path | None = None) -> T:
    """Build a ``schema`` instance from defaults, an optional YAML file and overrides.

    ``default_config`` is the YAML file used when ``argv`` names none (the quickstart of a trainer).
    """
    line = split_argv(sys.argv[1:] if argv is None else argv)
    return resolve(schema, line, default_config)


def resolve(schema: type[T], line: CommandLine, default_config: str | Path | None = None) -> T:
    config_file = line.config_file or (str(default_config) if default_config else None)
    layers = [read_yaml(config_file)] if config_file else []
    if line.overrides:
        layers.append(_dotted(line.overrides, schema))
    return _build(schema, None, layers, "")


def config_from_dict(schema: type[T], values: dict[str, Any]) -> T:
    """A ``schema`` instance from a plain nested dict (a run's saved config), checked like a YAML file."""
    return _build(schema, None, [values], "")


# ------------------------------------------------------------------------------------------------ output
def to_dict(config: Any) -> dict[str, Any]:
    """A plain nested dict of a config dataclass (for YAML, JSON and checkpoint metadata)."""
    return dataclasses.asdict(config)


def to_yaml(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def dotted_value(config: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    """(whether the nested config dict has the dotted key, its value or None)."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


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
