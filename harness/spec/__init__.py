"""Catalogue of the OASIS normative statements of MQTT 3.1.1 and MQTT 5.0.

The statements come from each specification's "Mandatory normative statement(s)" appendix
(statements-3.1.1.json, statements-5.0.json; their "source" field says which document and copy).

IDs such as "MQTT-3.1.0-1" exist in both versions with different wording, so every lookup takes a
version ("3.1.1" or "5"; "5.0" is accepted too). Without one, `statement()` prefers MQTT 5 and falls
back to 3.1.1; `lookup()` returns every version that has the ID. IDs are accepted with or without
the brackets the spec prints ("[MQTT-3.3.1-6]"), in any case, and in the malformed forms the spec
itself prints for a few statements (e.g. "MQTT-3.1.2.7" for MQTT-3.1.2-7 in 3.1.1).

Two optional fields say how a statement can be checked: "side": "client" marks a statement that binds the Client
only (the device suites check those; the broker suites cannot), and "untestable" gives the reason a server-side
statement cannot be checked from outside the broker. tests/test_spec_catalogue.py validates both, and
`mqtt-harness statements --uncovered` sorts what no test covers by them.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from importlib import resources

from harness.errors import HarnessError

VERSIONS = ("5", "3.1.1")  # lookup order when no version is given
_FILES = {"5": "statements-5.0.json", "3.1.1": "statements-3.1.1.json"}
_VERSION_NAMES = {"5": "5", "5.0": "5", "3.1.1": "3.1.1"}
SIDES = ("server", "client")  # "server": binds the Server (alone or with the Client); the default
ID_PATTERN = re.compile(r"MQTT-\d+\.\d+\.\d+-\d+")


class UnknownStatement(HarnessError, LookupError):
    """No statement with this ID in the requested version(s)."""


@dataclass(frozen=True)
class Statement:
    """One normative statement: its ID, the MQTT version it belongs to, its section and wording.

    `text` is the appendix wording. `body_text` is set only where the normative body says something
    different in meaning (the appendix is non-normative and truncates or inverts a few statements).
    `aliases` are other spellings of the ID printed in the spec. `side` is "client" for a statement that binds
    the Client only, else "server". `untestable` is why a server-side statement cannot be checked from outside
    the broker (None: a suite test can check it).
    """

    id: str
    version: str
    section: str
    text: str
    body_text: str | None = None
    aliases: tuple[str, ...] = ()
    side: str = "server"
    untestable: str | None = None


def normalize_id(statement_id: str) -> str:
    """Return the ID as the spec tags it, e.g. " [mqtt-3.3.1-6] " -> "MQTT-3.3.1-6"."""
    return statement_id.strip().strip("[]").strip().upper()


def normalize_version(version: str) -> str:
    """Return the catalogue's name for an MQTT version: "3.1.1" or "5"."""
    try:
        return _VERSION_NAMES[str(version).strip()]
    except KeyError:
        raise ValueError(f"unknown MQTT version {version!r}: use '3.1.1' or '5'") from None


@functools.cache
def _load(version: str) -> tuple[dict[str, Statement], tuple[Statement, ...]]:
    raw = json.loads(resources.files(__name__).joinpath(_FILES[version]).read_text(encoding="utf-8"))
    ordered = tuple(
        Statement(
            id=item["id"],
            version=version,
            section=item["section"],
            text=item["text"],
            body_text=item.get("body_text"),
            aliases=tuple(item.get("aliases", ())),
            side=item.get("side", "server"),
            untestable=item.get("untestable"),
        )
        for item in raw["statements"]
    )
    index = {}
    for stmt in ordered:
        for key in (stmt.id, *stmt.aliases):
            index[key.upper()] = stmt
    return index, ordered


def statements(version: str) -> list[Statement]:
    """All statements of one version, in the order the spec lists them."""
    return list(_load(normalize_version(version))[1])


def lookup(statement_id: str) -> tuple[Statement, ...]:
    """Every version's statement with this ID, MQTT 5 first; empty if no version has it."""
    key = normalize_id(statement_id)
    return tuple(stmt for v in VERSIONS if (stmt := _load(v)[0].get(key)) is not None)


def statement(statement_id: str, version: str | None = None) -> Statement:
    """The statement with this ID in `version`, or (no version) in MQTT 5, else in 3.1.1."""
    if version is not None:
        found = _load(normalize_version(version))[0].get(normalize_id(statement_id))
        where = f"MQTT {normalize_version(version)}"
    else:
        found = next(iter(lookup(statement_id)), None)
        where = "MQTT 5 or 3.1.1"
    if found is None:
        raise UnknownStatement(
            f"no statement {statement_id!r} in {where}; IDs look like 'MQTT-3.3.1-6' "
            "(see harness.spec.statements(version) for the list)"
        )
    return found


def is_known(statement_id: str, version: str | None = None) -> bool:
    """Whether the ID names a statement of `version` (of either version when None)."""
    if version is None:
        return bool(lookup(statement_id))
    return normalize_id(statement_id) in _load(normalize_version(version))[0]
