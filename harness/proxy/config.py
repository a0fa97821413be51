"""Loading faults and rules from a YAML or JSON file (the schema is in README.md)."""

from __future__ import annotations

import json
from pathlib import Path

from harness.proxy.faults import Fault
from harness.proxy.rules import Rule


def load_config(path: str | Path) -> tuple[list[Fault], list[Rule]]:
    """A file holding either a list of rules, or a mapping with 'rules' and/or 'faults' lists.

    Raises ValueError naming the file and the entry that is wrong."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - json.JSONDecodeError, yaml.YAMLError
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise ValueError(f"{path} is not valid {kind}: {exc}") from None
    return parse_config(data, str(path))


def parse_config(data, where: str = "config") -> tuple[list[Fault], list[Rule]]:
    if data is None:
        return [], []
    if isinstance(data, list):
        data = {"rules": data}
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a list of rules or a mapping with 'rules' and 'faults'")
    unknown = set(data) - {"rules", "faults"}
    if unknown:
        raise ValueError(f"{where}: unknown top-level key(s) {', '.join(sorted(unknown))}; use 'rules' and 'faults'")
    faults, rules = [], []
    for i, item in enumerate(data.get("faults") or []):
        try:
            faults.append(Fault.from_dict(item))
        except ValueError as exc:
            raise ValueError(f"{where}: faults[{i}]: {exc}") from None
    for i, item in enumerate(data.get("rules") or []):
        try:
            rules.append(Rule.from_dict(item))
        except ValueError as exc:
            raise ValueError(f"{where}: rules[{i}]: {exc}") from None
    return faults, rules
