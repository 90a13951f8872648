"""``--help`` and ``--print-config`` for every entry point: each key of a config schema with its type, default and
the comment the dataclass gives it, grouped by section; the resolved config as YAML.

The comments are read from the dataclasses' source: the comment at the end of a field's line, or the comment
lines right above it.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import json
import sys
import tokenize
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from common.config import (
    field_types,
    is_section_type,
    method_union,
    resolve,
    split_argv,
    to_dict,
    to_yaml,
    type_name,
)
from common.config_upgrade import upgrade_config_dict, values_before_added_keys
from common.errors import ConfigError

T = TypeVar("T")


def field_comments(cls: type) -> dict[str, str]:
    """Field name -> its comment in the source of ``cls`` and of the dataclasses it inherits from."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        comments.update(_comments_in(source, set(getattr(klass, "__annotations__", {}))))
    return comments


def _comments_in(source: str, names: set[str]) -> dict[str, str]:
    lines = source.splitlines()
    inline: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            inline[token.start[0]] = token.string.lstrip("#").strip()
    found: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        name = stripped.split(":", 1)[0].strip()
        if name not in names or not stripped.startswith(name + ":"):
            continue
        above = []
        previous = number - 1
        while previous >= 1 and lines[previous - 1].strip().startswith("#"):
            above.insert(0, lines[previous - 1].strip().lstrip("#").strip())
            previous -= 1
        parts = above + ([inline[number]] if number in inline and not line.strip().startswith("#") else [])
        if parts:
            found[name] = " ".join(parts)
    return found


def _shown_path(path: str) -> str:
    """``path`` relative to the current folder when it lies below it (a trainer's default config)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return path


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)


def _section_lines(cls: type, instance: Any, prefix: str, out: list[tuple[str, list[str]]]) -> None:
    comments = field_comments(cls)
    rows: list[str] = []
    nested: list[tuple[type, Any, str, dict | None]] = []
    for name, tp in field_types(cls).items():
        value = getattr(instance, name)
        if is_section_type(tp):
            nested.append((tp, value, f"{prefix}{name}.", None))
            continue
        choices = method_union(tp)
        if choices is not None:
            nested.append((tp, value, f"{prefix}{name}.", choices))
            continue
        row = f"  {prefix}{name}: {type_name(tp)} = {_shown(value)}"
        if name in comments:
            row += f"    # {comments[name]}"
        rows.append(row)
    out.append((prefix.rstrip(".") or "run", rows))
    for tp, value, sub, choices in nested:
        if choices is None:
            _section_lines(tp, value, sub, out)
            continue
        for name, option in choices.items():
            default = value if type(value) is option else option()
            title_rows: list[tuple[str, list[str]]] = []
            _section_lines(option, default, sub, title_rows)
            chosen = " (the default)" if type(value) is option else ""
            first_title, first_rows = title_rows[0]
            title_rows[0] = (f"{first_title} with {sub}name={name}{chosen}", first_rows)
            out.extend(title_rows)


def schema_help(schema: type, values: Any = None, source: str | None = None) -> str:
    """Every key of ``schema``, by section: ``  key: type = value    # comment``. The values are those of
    ``values`` (the config the command would run, read from ``source``), else the dataclass defaults."""
    sections: list[tuple[str, list[str]]] = []
    _section_lines(schema, schema() if values is None else values, "", sections)
    text = ["Keys (set them in the YAML file or as key=value; dotted keys for sections):"]
    if source:
        text.append(f"(each value shown is the one this command runs with: the defaults, then {source})")
    for title, rows in sections:
        if rows:
            text.append(f"\n[{title}]")
            text.extend(rows)
    return "\n".join(text)


def parse_command_line(schema: type[T], argv: Sequence[str] | None, usage: str,
                       default_config: str | Path | None = None) -> T | None:
    """What every entry point does with its arguments: ``--help`` prints ``usage`` and every key of ``schema``
    (type, default, comment); ``--print-config`` prints the resolved YAML, ``--print-identity`` the same with the
    value each key added to the code had before it existed (``common.config_upgrade.values_before_added_keys``: what the
    study runner compares), ``--upgrade-config JSON`` that older config dict with its renamed keys upgraded (how the
    study runner reads a record made before a rename); each returns None without running anything. Otherwise the
    resolved config. Bad keys or values are a ConfigError with ``--help`` too."""
    line = split_argv(sys.argv[1:] if argv is None else argv)
    if line.upgrade_config is not None:
        try:
            saved = json.loads(line.upgrade_config)
        except json.JSONDecodeError as error:
            raise ConfigError(f"--upgrade-config: not a JSON config dict ({error})") from None
        if not isinstance(saved, dict):
            raise ConfigError("--upgrade-config: not a JSON config dict")
        print(json.dumps(upgrade_config_dict(schema, saved)))
        return None
    cfg = resolve(schema, line, default_config)
    if line.help:  # the values this command line would run with (the default config of a trainer), not bare defaults
        config_file = line.config_file or (str(default_config) if default_config else None)
        given = ([_shown_path(config_file)] if config_file else []) + (["the overrides"] if line.overrides else [])
        print(usage.strip() + "\n")
        print(schema_help(schema, cfg, " and ".join(given) or None))
        return None
    if line.print_config:
        print(to_yaml(cfg), end="")
        return None
    if line.print_identity:
        values = to_dict(cfg)
        print(yaml.safe_dump({"config": values, "keys_added": values_before_added_keys(schema, values)},
                             sort_keys=False), end="")
        return None
    return cfg
