"""The suite markers: spec(...) statement IDs, requires(...) capability gating, v5_only / v311_only, and known
limits (profile or --known-limits) that turn into strict xfails."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable

from harness.brokers.broker import MQTTS, MQTTS_MTLS, WS, WSS
from harness.plugin.brokers import BrokerUnderTest
from harness.spec import is_known, normalize_id, statement

VERSIONS = ("3.1.1", "5")
# A spec section, cited where the rule a test checks has no tagged statement (e.g. "§5.4.3", TLS server auth).
SECTION_PATTERN = re.compile(r"§\d+(\.\d+)*")
VERSION_IDS = {"3.1.1": "mqtt311", "5": "mqtt5"}
_SPEC_KEYWORDS = {"v5": "5", "v311": "3.1.1"}

# esp-mqtt behaviours a stand-in may lack (the host build: libmosquitto does the MQTT work)
ESP_BEHAVIOURS = ("retransmit", "outbox", "keepalive")

MARKERS = (
    "spec(*ids, v5=ids, v311=ids): OASIS normative statement IDs the test checks (IDs for every MQTT version it "
    "runs at; v5=/v311= for one version only), or spec sections like '§5.4.3' where the rule has no tagged "
    "statement. Unknown IDs are a collection error.",
    "requires(**capabilities): run only against brokers with these capabilities (e.g. qos2=True, "
    "shared_subscriptions=True, mtls=True); others skip naming the missing one. "
    "Capabilities: " + ", ".join(("qos1", "qos2", "retain", "wildcards", "shared_subscriptions", "v5", "v311",
                                  "tls", "mtls", "ws", "wss")),
    "v5_only: run the test at MQTT 5 only",
    "v311_only: run the test at MQTT 3.1.1 only",
    "device: a test of the device under test (--dut); skips when no --dut is given",
    "esp_behaviour(*names): the test relies on esp-mqtt behaviours (" + ", ".join(ESP_BEHAVIOURS) + "); a device "
    "whose banner lists one under `differs` (docs/dut-protocol.md) skips with the device's own reason",
)


@dataclass(frozen=True)
class Requirement:
    what: str  # how the skip reason names it
    check: Callable[[BrokerUnderTest], bool]
    detail: Callable[[BrokerUnderTest], str]  # the fact behind the verdict, e.g. "max_qos=1"
    limit_key: str = ""  # the profile known-limit key that documents its absence
    listener: bool = False  # known from the listeners served, not from the capabilities


def _listener(kind: str, limit_key: str = "") -> Requirement:
    return Requirement(f"a {kind} listener", lambda b: b.has(kind),
                       lambda b: f"listeners: {', '.join(b.urls())}", limit_key, listener=True)


REQUIREMENTS: dict[str, Requirement] = {
    "qos1": Requirement("QoS 1", lambda b: b.capabilities.max_qos >= 1, lambda b: f"max_qos={b.capabilities.max_qos}"),
    "qos2": Requirement("QoS 2", lambda b: b.capabilities.max_qos >= 2, lambda b: f"max_qos={b.capabilities.max_qos}",
                        "qos2"),
    "retain": Requirement("retained messages", lambda b: b.capabilities.retain,
                          lambda b: f"retain={b.capabilities.retain}"),
    "wildcards": Requirement("wildcard subscriptions", lambda b: b.capabilities.wildcards,
                             lambda b: f"wildcards={b.capabilities.wildcards}"),
    "shared_subscriptions": Requirement("shared subscriptions", lambda b: b.capabilities.shared_subscriptions,
                                        lambda b: f"shared_subscriptions={b.capabilities.shared_subscriptions}"),
    "v5": Requirement("MQTT 5", lambda b: "5" in b.capabilities.versions,
                      lambda b: f"versions: {', '.join(b.capabilities.versions)}", "mqtt5"),
    "v311": Requirement("MQTT 3.1.1", lambda b: "3.1.1" in b.capabilities.versions,
                        lambda b: f"versions: {', '.join(b.capabilities.versions)}"),
    "tls": _listener(MQTTS),
    "mtls": _listener(MQTTS_MTLS, "mtls-required"),
    "ws": _listener(WS, "websockets"),
    "wss": _listener(WSS, "websockets"),
}


def required(markers: Iterable) -> dict[str, bool]:
    """Merge every requires(...) marker: capability -> wanted state. ValueError names an unknown capability."""
    wanted: dict[str, bool] = {}
    for mark in markers:
        for name in mark.args:
            wanted[name] = True
        wanted.update({name: bool(value) for name, value in mark.kwargs.items()})
    unknown = sorted(set(wanted) - set(REQUIREMENTS))
    if unknown:
        raise ValueError(f"@pytest.mark.requires: unknown capability {', '.join(map(repr, unknown))}; "
                         f"known: {', '.join(REQUIREMENTS)}")
    return wanted


def skip_reason(broker: BrokerUnderTest, wanted: dict[str, bool], version: str | None) -> str | None:
    """Why this test cannot run on `broker` (naming the missing capability and where that is known from), or None."""
    if version is not None:  # the version comes first: nothing else matters on a broker that does not speak it
        wanted = {"v5" if version == "5" else "v311": True, **wanted}
    for name, state in wanted.items():
        req = REQUIREMENTS[name]
        if req.check(broker) == state:
            continue
        detail = req.detail(broker) if req.listener else f"{broker.capabilities_source}: {req.detail(broker)}"
        if state:
            reason = f"{broker.name} lacks {req.what} [{name}] ({detail})"
        else:
            reason = f"needs a broker without {req.what} [{name}]; {broker.name} has it ({detail})"
        limit = broker.known_limits.get(req.limit_key) if state else None
        return reason + (f"; known limit: {limit}" if limit else "")
    return None


def statement_ids(markers: Iterable, version: str | None) -> list[str]:
    """The statement IDs a test checks at `version` (None: at every version), canonical spelling, in order."""
    ids: list[str] = []
    for mark in markers:
        ids.extend(mark.args)
        for key, ver in _SPEC_KEYWORDS.items():
            if key in mark.kwargs and version in (None, ver):
                value = mark.kwargs[key]
                ids.extend([value] if isinstance(value, str) else value)
    canonical = []
    for raw in ids:
        try:
            canonical.append(statement(raw, version).id)
        except LookupError:
            canonical.append(normalize_id(raw))
    return list(dict.fromkeys(canonical))


def spec_errors(markers: list, versions: Iterable[str | None]) -> list[str]:
    """Problems with the spec(...) markers of a test that runs at `versions` (None: not per version)."""
    errors = []
    for mark in markers:
        extra = set(mark.kwargs) - set(_SPEC_KEYWORDS)
        if extra:
            errors.append(f"@pytest.mark.spec takes statement IDs and v5=/v311=, not {', '.join(sorted(extra))}")
        for raw in mark.args:
            if not isinstance(raw, str):
                errors.append(f"@pytest.mark.spec({raw!r}): statement IDs are strings like 'MQTT-3.3.1-6'")
                continue
            if _is_section(raw):
                errors.extend(_section_error(raw))
                continue
            for version in versions:
                if not is_known(raw, version):
                    where = f"MQTT {version}" if version else "MQTT 5 or 3.1.1"
                    hint = (" (it exists in the other version: cite it with "
                            f"{'v311' if version == '5' else 'v5'}={raw!r})" if version and is_known(raw) else "")
                    errors.append(f"unknown OASIS statement ID {raw!r} in {where}{hint}")
        for key, version in _SPEC_KEYWORDS.items():
            value = mark.kwargs.get(key, ())
            for raw in [value] if isinstance(value, str) else value:
                if _is_section(raw):
                    errors.extend(_section_error(raw))
                elif not is_known(raw, version):
                    errors.append(f"unknown OASIS statement ID {raw!r} in MQTT {version} (given as {key}=)")
    return list(dict.fromkeys(errors))


def _is_section(raw: str) -> bool:
    return raw.strip().startswith("§")


def _section_error(raw: str) -> list[str]:
    # A section number cannot be checked against the catalogue (it lists tagged statements only): check its form.
    if SECTION_PATTERN.fullmatch(raw.strip()):
        return []
    return [f"spec section {raw!r} is not a section number; write it like '§5.4.3'"]


def known_limit(limits: dict[str, str], keys: Iterable[str]) -> tuple[str, str] | None:
    """The first (key, reason) of `limits` that names this test: by function name, area::name, test id, or one of
    its statement IDs."""
    for key in keys:
        if key in limits:
            return key, limits[key]
    return None


def behaviour_skip(markers: Iterable, device_name: str, differs: dict) -> str | None:
    """Why a device test cannot run on this device: an esp_behaviour(...) it announces it does not have."""
    for mark in markers:
        for name in mark.args:
            if name not in ESP_BEHAVIOURS:
                raise ValueError(f"esp_behaviour({name!r}): unknown; known: {', '.join(ESP_BEHAVIOURS)}")
            if name in (differs or {}):
                return f"device {device_name} differs from esp-mqtt in {name}: {differs[name]}"
    return None
