"""The report of one conformance run (or of several merged): plain dataclasses, and their JSON form.

The JSON form is versioned (SCHEMA_VERSION) and described in SCHEMA.md and report.schema.json beside this file.
Readers accept only the schema version they know; a change that old readers cannot ignore bumps it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

SCHEMA_NAME = "mqtt-harness-report"
SCHEMA_VERSION = 1

PASSED, FAILED, SKIPPED, ERROR, XFAILED, XPASSED = "passed", "failed", "skipped", "error", "xfailed", "xpassed"
OUTCOMES = (PASSED, FAILED, ERROR, XPASSED, XFAILED, SKIPPED)
# Outcomes that make a run fail (a strict xfail that passes is reported by pytest as failed).
FAILING = (FAILED, ERROR)
SLOWEST = 10  # results listed in summary.slowest


def now_iso() -> str:
    """The current time as reports write it: ISO 8601, UTC, seconds."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class ReportError(ValueError):
    """A report file that cannot be read: the message names the file and the problem; `problems` lists every one."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems or [])


@dataclass
class ClientLog:
    """The decoded packet log of one client a test used."""

    name: str
    client_id: str
    url: str
    mqtt_version: str
    # One dict per packet: t (seconds since the client's first packet), dir ("in"/"out"), conn (connection number),
    # packet (codec summary, None if undecodable), error (decode error or None), raw (hex; failures only).
    packets: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Artifacts:
    """What a result carries to explain itself."""

    clients: list[ClientLog] = field(default_factory=list)
    broker_log: str | None = None  # the broker's log lines written during the test (non-passing results)
    expected: str | None = None  # a failed expectation: the packet that was expected (codec summary form)
    actual: list[str] = field(default_factory=list)  # ... and what arrived instead
    failure: str | None = None  # pytest's failure text (traceback, assertion message)
    device_log: str | None = None  # device tests: the device's log lines during the test (every outcome)
    device_events: list[str] = field(default_factory=list)  # ... and its events, decoded one per line


@dataclass
class Measurement:
    """A quantity a test measured on the broker, e.g. how long it let a silent client live (the keepalive window).

    Recorded by the `measure` fixture of the pytest plugin; kept whatever the outcome, so a failing or known-limit
    result still says what was measured."""

    name: str  # e.g. "keepalive_window"
    value: float  # in `unit`
    unit: str  # e.g. "s"
    label: str = ""  # what was measured, in words
    ratio: float | None = None  # value as a multiple of a reference quantity (e.g. 1.52 x the keepalive) ...
    ratio_of: str = ""  # ... and which: "keepalive 2 s"
    samples: list[float] = field(default_factory=list)  # every sample when value sums up several (e.g. the minimum)
    warning: str | None = None  # allowed, but worth a reader's attention (shown in the reports, not a failure)


@dataclass
class Result:
    """One test run against one broker at one MQTT version."""

    test: str  # the test's id without broker and MQTT version: suites/test_smoke.py::test_pubsub[qos1]
    nodeid: str  # pytest's full node id
    area: str  # suite file stem: "test_smoke"
    broker: str | None  # BrokerInfo.id; None for collection errors
    mqtt_version: str | None  # "3.1.1", "5", or None for tests not run per version
    outcome: str  # one of OUTCOMES
    statements: list[str] = field(default_factory=list)
    duration: float = 0.0  # seconds in the test body (setup and teardown excluded)
    reason: str = ""  # why skipped/xfailed, or the first line of the failure
    reruns: int = 0  # times a rerun plugin ran it again before this outcome
    artifacts: Artifacts = field(default_factory=Artifacts)
    device: str | None = None  # DeviceInfo.id for device tests
    measurements: list[Measurement] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, str]:
        """Identifies the same check across runs: (test, MQTT version, broker[/device])."""
        return self.test, self.mqtt_version or "", (self.broker or "") + (f"/{self.device}" if self.device else "")


@dataclass
class BrokerInfo:
    """A broker under test: a column of the matrix."""

    id: str  # e.g. "mosquitto-docker", "url-127.0.0.1-1883"
    name: str  # as given on the command line: "mosquitto:docker", "mqtt://127.0.0.1:1883"
    backend: str  # "process", "docker" or "external"
    urls: dict[str, list[str]] = field(default_factory=dict)  # listener kind -> URLs (one per worker)
    display_name: str = ""
    product: str = ""  # from the profile, or what the broker says about itself
    version: str = ""  # reported by the broker ($SYS/broker/version) or its log, when it says
    capabilities: dict[str, Any] = field(default_factory=dict)
    capabilities_source: str = ""  # "profile" or "discovery"
    known_limits: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class DeviceInfo:
    """A device under test: a column of the devices x tests matrix."""

    id: str  # e.g. "virtual", "virtual-no-dup", "ttyUSB0"
    spec: str  # as given to --dut
    port: str  # the port or URL it was reached on
    platform: str = ""  # esp32, virtual, host
    banner: dict[str, Any] = field(default_factory=dict)  # its HELLO answer: firmware, IDF, esp-mqtt, chip, MAC...
    bugs: list[str] = field(default_factory=list)  # seeded bugs of a virtual device
    notes: list[str] = field(default_factory=list)


@dataclass
class RunInfo:
    id: str
    started: str  # ISO 8601, UTC
    finished: str = ""
    duration: float = 0.0
    harness_version: str = ""
    host: str = ""
    platform: str = ""
    python: str = ""
    pytest: str = ""
    args: list[str] = field(default_factory=list)
    workers: int = 0  # pytest-xdist workers (0: none)
    # Reruns are never silent: the plugin that did them and how many it may do per test (0 = none configured).
    rerun_plugin: str | None = None
    max_reruns: int = 0
    merged_from: list[dict[str, str]] = field(default_factory=list)  # set by `report merge`: file, run id, started


@dataclass
class Report:
    run: RunInfo
    brokers: list[BrokerInfo] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)
    devices: list[DeviceInfo] = field(default_factory=list)

    def device(self, device_id: str) -> DeviceInfo | None:
        return next((d for d in self.devices if d.id == device_id), None)

    def broker(self, broker_id: str) -> BrokerInfo | None:
        return next((b for b in self.brokers if b.id == broker_id), None)

    def counts(self, results: Iterable[Result] | None = None) -> dict[str, int]:
        """Results per outcome (every outcome present, zeros included)."""
        counts = dict.fromkeys(OUTCOMES, 0)
        for result in self.results if results is None else results:
            counts[result.outcome] += 1
        return counts

    @property
    def failed(self) -> bool:
        return any(r.outcome in FAILING for r in self.results)

    def slowest(self, n: int = SLOWEST) -> list[Result]:
        """The `n` results that took longest (test body), longest first; ties in report order."""
        timed = [r for r in self.results if r.broker is not None]
        return sorted(timed, key=lambda r: -r.duration)[:n]

    def measured(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Per broker and measurement name, over every result that measured it (and every sample): unit, count of
        results, min/max of the value and of the ratio, what the ratio is of, and how many results warned
        ({broker id: {name: {...}}})."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for result in self.results:
            for m in result.measurements:
                if result.broker is None:
                    continue
                values = [*m.samples, m.value]
                entry = out.setdefault(result.broker, {}).setdefault(m.name, {
                    "unit": m.unit, "count": 0, "min": min(values), "max": max(values), "min_ratio": None,
                    "max_ratio": None, "ratio_of": [], "warnings": 0})
                entry["count"] += 1
                entry["min"], entry["max"] = min(entry["min"], *values), max(entry["max"], *values)
                if m.ratio is not None:
                    # samples share the value's reference quantity: their ratios scale with them
                    ratios = [m.ratio] + ([round(v * m.ratio / m.value, 4) for v in m.samples] if m.value else [])
                    low, high = min(ratios), max(ratios)
                    entry["min_ratio"] = low if entry["min_ratio"] is None else min(entry["min_ratio"], low)
                    entry["max_ratio"] = high if entry["max_ratio"] is None else max(entry["max_ratio"], high)
                if m.ratio_of and m.ratio_of not in entry["ratio_of"]:
                    entry["ratio_of"].append(m.ratio_of)
                entry["warnings"] += m.warning is not None
        return out

    def to_dict(self) -> dict[str, Any]:
        data = {"schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION, **dataclasses.asdict(self)}
        data["summary"] = {
            "total": len(self.results),
            "outcomes": self.counts(),
            "by_broker": {b.id: self.counts(r for r in self.results if r.broker == b.id) for b in self.brokers},
            "slowest": [{"nodeid": r.nodeid, "test": r.test, "broker": r.broker, "mqtt_version": r.mqtt_version,
                         "device": r.device, "outcome": r.outcome, "duration": r.duration} for r in self.slowest()],
            "measurements": self.measured(),
        }
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Report":
        return cls(
            run=_build(RunInfo, data["run"]),
            brokers=[_build(BrokerInfo, b) for b in data.get("brokers", [])],
            results=[_result(r) for r in data.get("results", [])],
            devices=[_build(DeviceInfo, d) for d in data.get("devices", [])],
        )


def _build(cls, data: dict[str, Any]):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def _result(data: dict[str, Any]) -> Result:
    result = _build(Result, data)
    raw = data.get("artifacts") or {}
    result.artifacts = _build(Artifacts, raw)
    result.artifacts.clients = [_build(ClientLog, c) for c in raw.get("clients", [])]
    result.measurements = [_build(Measurement, m) for m in data.get("measurements", [])]
    return result


def dumps(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=1, ensure_ascii=False) + "\n"


def save(report: Report, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(dumps(report), encoding="utf-8")
    return path


def summary_problems(data: dict[str, Any]) -> list[str]:
    """Where the stored summary contradicts the results it summarises (a hand-edited or truncated report)."""
    stored = data.get("summary")
    if stored is None:
        return []
    actual = Report.from_dict(data).to_dict()["summary"]
    problems = []
    if stored.get("total") != actual["total"]:
        problems.append(f"summary.total is {stored.get('total')} but there are {actual['total']} results")
    for outcome, count in actual["outcomes"].items():
        if (stored.get("outcomes") or {}).get(outcome, 0) != count:
            problems.append(f"summary.outcomes.{outcome} is {(stored.get('outcomes') or {}).get(outcome, 0)} but "
                            f"{count} results are {outcome}")
    for broker, counts in actual["by_broker"].items():
        said = (stored.get("by_broker") or {}).get(broker)
        if said is not None and said != counts:
            problems.append(f"summary.by_broker.{broker} does not match its results")
    # Derived lists that older reports do not have: checked where present.
    if "slowest" in stored and stored["slowest"] != actual["slowest"]:
        problems.append("summary.slowest is not the ten slowest results")
    if "measurements" in stored and stored["measurements"] != actual["measurements"]:
        problems.append("summary.measurements does not match the results' measurements")
    return problems


def load(path: str | Path) -> Report:
    """Read and validate a report.json; ReportError names the file and what is wrong with it."""
    from harness.report.validate import validate  # the schema file is read only when a report is loaded

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: not a JSON report ({exc})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA_NAME:
        raise ReportError(f"{path}: not an mqtt-harness report (no \"schema\": \"{SCHEMA_NAME}\")")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ReportError(f"{path}: report schema version {data.get('schema_version')!r}; this harness reads "
                          f"version {SCHEMA_VERSION}: re-render it with the harness that wrote it")
    problems = validate(data)
    if not problems:
        problems = summary_problems(data)
    if problems:
        shown = "; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
        raise ReportError(f"{path}: invalid report: {shown}", problems=problems)
    return Report.from_dict(data)
