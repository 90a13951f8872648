"""Configs saved by an older version of the code: renamed keys mapped to their new names, and the keys added since,
with the value every run computed before each existed. A section class declares ``upgrade_keys(values)`` for the
first and ``keys_added(values)`` for the second; a resume (``common.checkpoint.check_resumable``) and a study's
identity of a job (``common.study.jobs``) read them here, so that a code upgrade neither strands a run nor reruns one."""

from __future__ import annotations

import copy
from typing import Any

from common.config import field_types, is_section_type, method_union, upgraded


def upgrade_config_dict(schema: type, values: dict[str, Any]) -> dict[str, Any]:
    """A saved config dict with every section's renamed keys upgraded (``upgraded``), nothing else filled in:
    what ``common.checkpoint.check_resumable`` compares with the current config."""
    out = dict(upgraded(schema, values))
    for name, cls, section in section_classes(schema, out):
        out[name] = upgrade_config_dict(cls, section)
    return out


def section_classes(schema: type, values: dict[str, Any]):
    """(field name, section class, its dict) for each nested section of a config dict of ``schema``, a method
    union resolved by the section's ``name``."""
    for name, tp in field_types(schema).items():
        section = values.get(name)
        if not isinstance(section, dict):
            continue
        choices = method_union(tp)
        cls = choices.get(section.get("name")) if choices is not None else tp if is_section_type(tp) else None
        if cls is not None:
            yield name, cls, section


def values_before_added_keys(schema: type, values: dict[str, Any]) -> dict[str, Any]:
    """Dotted key -> the value that every run computed before the key existed, for the keys added to the code
    after runs were made without them: a section class declares ``keys_added(values) -> {field: that value}``
    (given the section's values, since a key may matter only with another: ``grad_cache`` with
    ``grad_accum_steps`` above 1). A key at that value computes what a run saved without the key computed, so
    neither a resume (``common.checkpoint.check_resumable``) nor a study's identity (``common.study.jobs``)
    tells them apart."""
    keys_added = getattr(schema, "keys_added", None)
    out = dict(keys_added(values)) if keys_added is not None else {}
    for name, cls, section in section_classes(schema, values):
        out.update({f"{name}.{key}": value for key, value in values_before_added_keys(cls, section).items()})
    return out


def without_values_before_added_keys(values: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """A nested config dict less each dotted key of ``before`` (``values_before_added_keys``) that holds the value
    runs computed before the key existed: what the run computes, the same for a run saved before the key."""
    out = copy.deepcopy(values)
    for dotted, value in before.items():
        *parents, key = dotted.split(".")
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and key in node and node[key] == value:
            del node[key]
    return out
