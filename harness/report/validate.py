"""Checks a report against report.schema.json.

A small validator for the JSON Schema keywords that schema uses (type, const, enum, properties, required,
additionalProperties, items, minimum, pattern, $ref to #/$defs), so reading a report needs no extra package.
"""

from __future__ import annotations

import functools
import json
import re
from importlib import resources
from typing import Any

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}
_KNOWN = {"$schema", "$id", "title", "description", "$defs", "type", "const", "enum", "properties", "required",
          "additionalProperties", "items", "minimum", "pattern", "$ref"}


@functools.cache
def schema() -> dict[str, Any]:
    """The report JSON Schema (report.schema.json)."""
    return json.loads(resources.files(__package__).joinpath("report.schema.json").read_text(encoding="utf-8"))


def validate(data: Any) -> list[str]:
    """Every place where `data` breaks the schema, as "path: problem" lines; empty if it is valid."""
    problems: list[str] = []
    _check(data, schema(), "$", problems)
    return problems


def _check(value: Any, node: dict[str, Any], path: str, problems: list[str]) -> None:
    unknown = set(node) - _KNOWN
    if unknown:  # the schema grew a keyword this validator would silently ignore
        raise ValueError(f"report.schema.json uses unsupported keyword(s) {sorted(unknown)} at {path}")
    if "$ref" in node:
        name = node["$ref"].removeprefix("#/$defs/")
        _check(value, schema()["$defs"][name], path, problems)
        return
    if "type" in node:
        types = node["type"] if isinstance(node["type"], list) else [node["type"]]
        if not any(_TYPES[t](value) for t in types):
            problems.append(f"{path}: expected {' or '.join(types)}, got {type(value).__name__}")
            return
    if "const" in node and value != node["const"]:
        problems.append(f"{path}: expected {node['const']!r}, got {value!r}")
    if "enum" in node and value not in node["enum"]:
        problems.append(f"{path}: {value!r} is not one of {node['enum']}")
    if "minimum" in node and _TYPES["number"](value) and value < node["minimum"]:
        problems.append(f"{path}: {value} is below the minimum {node['minimum']}")
    if "pattern" in node and isinstance(value, str) and not re.search(node["pattern"], value):
        problems.append(f"{path}: {value!r} does not match {node['pattern']}")
    if isinstance(value, dict):
        for key in node.get("required", ()):
            if key not in value:
                problems.append(f"{path}: missing {key!r}")
        props = node.get("properties", {})
        extra = node.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                _check(item, props[key], f"{path}.{key}", problems)
            elif extra is False:
                problems.append(f"{path}: unexpected field {key!r}")
            elif isinstance(extra, dict):
                _check(item, extra, f"{path}.{key}", problems)
    if isinstance(value, list) and "items" in node:
        for index, item in enumerate(value):
            _check(item, node["items"], f"{path}[{index}]", problems)
