"""Turns pytest's per-phase test reports into report Results (in the controlling process, also under xdist).

Worker processes attach a `mqtt_harness` dict to each report of a suite test (xdist carries report attributes to
the controller); this module only reads those and pytest's own report fields. Measurements (the `measure` fixture)
travel as pytest user properties, which every phase report carries.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import platform
import re
import secrets
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import harness
from harness.report.model import (
    ERROR, FAILED, PASSED, SKIPPED, XFAILED, XPASSED, Artifacts, BrokerInfo, ClientLog, DeviceInfo, Measurement,
    Report, Result, RunInfo, now_iso,
)

MAX_FAILURE_TEXT = 30_000
MEASUREMENT_PROPERTY = "mqtt_harness_measurement"  # user property name of a `measure` record
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@pytest.fixture
def measure(record_property):
    """`measure(name, value, unit, *, label="", ratio=None, ratio_of="", samples=(), warning=None)` records a
    quantity the test measured (report.json: results[].measurements, summed up per broker in
    summary.measurements; report.html shows it). `ratio` is the value as a multiple of `ratio_of` ("keepalive
    2 s"); `warning` marks a value the spec allows but a reader should see. Record before asserting on the value,
    so a failing result still carries it. Returns the Measurement."""
    def record(name: str, value: float, unit: str, *, label: str = "", ratio: float | None = None,
               ratio_of: str = "", samples=(), warning: str | None = None) -> Measurement:
        if not _NAME.match(name):
            raise ValueError(f"measurement name {name!r}: use lower case letters, digits and _ (keepalive_window)")
        measurement = Measurement(name, round(float(value), 6), unit, label,
                                  None if ratio is None else round(float(ratio), 4), ratio_of,
                                  [round(float(x), 6) for x in samples], warning)
        record_property(MEASUREMENT_PROPERTY, dataclasses.asdict(measurement))
        return measurement
    return record


class ResultCollector:
    """Accumulates results and broker facts for one run."""

    def __init__(self, config: pytest.Config):
        self.config = config
        self.started = now_iso()
        self.began = time.monotonic()
        self.run_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(3)
        self.results: dict[str, Result] = {}
        self.brokers: dict[str, BrokerInfo] = {}
        self.devices: dict[str, DeviceInfo] = {}
        self.workers: set[str] = set()
        self.reruns: dict[str, int] = {}
        self._properties_seen: dict[str, int] = {}  # user properties of earlier (rerun) attempts, per node id
        self._pending: dict[str, dict[str, Any]] = {}

    def add_collect_error(self, report: pytest.CollectReport) -> None:
        text = report.longreprtext
        self.results[report.nodeid] = Result(
            test=report.nodeid, nodeid=report.nodeid, area=Path(report.nodeid.split("::")[0]).stem, broker=None,
            mqtt_version=None, outcome=ERROR, reason=_first_line(text) or "collection error",
            artifacts=Artifacts(failure=text[:MAX_FAILURE_TEXT]))

    def add_report(self, report: pytest.TestReport) -> Result | None:
        """Feed one phase report; returns the Result when the test's last phase (teardown) arrived."""
        payload = getattr(report, "mqtt_harness", None)
        if payload is None:
            return None
        node = getattr(report, "node", None)
        if node is not None:
            self.workers.add(str(getattr(node, "gateway", node)))
        nodeid = report.nodeid
        if report.outcome == "rerun":
            self.reruns[nodeid] = self.reruns.get(nodeid, 0) + 1
            self._properties_seen[nodeid] = len(report.user_properties)  # the item keeps them across attempts
            self._pending.pop(nodeid, None)
            return None
        state = self._pending.setdefault(nodeid, {"outcome": None, "reason": "", "duration": 0.0, "failure": None})
        when, xfail = report.when, getattr(report, "wasxfail", None)
        if when == "setup":
            if report.failed:
                state.update(outcome=ERROR, reason=_crash(report), failure=report.longreprtext)
            elif report.skipped:
                state.update(outcome=XFAILED if xfail is not None else SKIPPED, reason=xfail or _skip_reason(report))
        elif when == "call":
            state["duration"] = report.duration
            if xfail is not None:
                state.update(outcome=XFAILED if report.skipped else XPASSED, reason=xfail)
                if report.skipped and report.longrepr is not None:  # the assertion that shows the limit still holds
                    state["failure"] = report.longreprtext
            elif report.failed:
                state.update(outcome=FAILED, reason=_crash(report), failure=report.longreprtext)
            elif report.skipped:
                state.update(outcome=SKIPPED, reason=_skip_reason(report))
            else:
                state["outcome"] = PASSED
        elif when == "teardown":
            if report.failed and state["outcome"] in (None, PASSED, SKIPPED, XFAILED):
                state.update(outcome=ERROR, reason=f"teardown: {_crash(report)}", failure=report.longreprtext)
            self._pending.pop(nodeid)
            return self._finish(report, payload, state)
        return None

    def _finish(self, report: pytest.TestReport, payload: dict[str, Any], state: dict[str, Any]) -> Result:
        info = payload.get("broker_info")
        if info:
            self._add_broker(info)
        for device in payload.get("device_info") or []:
            self.devices.setdefault(device["id"], DeviceInfo(**device))
        raw = payload.get("artifacts") or {}
        failure = state["failure"]
        artifacts = Artifacts(
            clients=[ClientLog(**c) for c in raw.get("clients", [])],
            broker_log=raw.get("broker_log"), expected=raw.get("expected"), actual=list(raw.get("actual") or []),
            failure=failure[:MAX_FAILURE_TEXT] if failure else None,
            device_log=raw.get("device_log"), device_events=list(raw.get("device_events") or []))
        properties = list(report.user_properties)
        seen = self._properties_seen.pop(report.nodeid, 0)
        properties = properties[seen:] if seen <= len(properties) else properties  # (a plugin that resets them)
        measurements = [Measurement(**value) for key, value in properties if key == MEASUREMENT_PROPERTY]
        result = Result(
            test=payload["test"], nodeid=report.nodeid, area=payload["area"], broker=payload["broker"],
            mqtt_version=payload["mqtt_version"], outcome=state["outcome"] or ERROR,
            statements=list(payload["statements"]), duration=round(state["duration"], 6), reason=state["reason"],
            reruns=self.reruns.get(report.nodeid, 0), artifacts=artifacts, device=payload.get("device"),
            measurements=measurements)
        self.results[report.nodeid] = result
        return result

    def _add_broker(self, info: dict[str, Any]) -> None:
        known = self.brokers.get(info["id"])
        if known is None:
            self.brokers[info["id"]] = BrokerInfo(**info)
            return
        for kind, urls in info["urls"].items():  # one instance per xdist worker
            known.urls.setdefault(kind, [])
            known.urls[kind] += [u for u in urls if u not in known.urls[kind]]
        known.version = known.version or info["version"]
        known.notes += [n for n in info["notes"] if n not in known.notes]  # e.g. a crash noted in another worker

    def report(self, notes: dict[str, list[str]] | None = None) -> Report:
        config = self.config
        rerun_plugin = "pytest-rerunfailures" if config.pluginmanager.hasplugin("rerunfailures") else None
        max_reruns = int(getattr(config.option, "reruns", 0) or 0)
        if self.reruns and rerun_plugin is None:
            rerun_plugin = "unknown plugin"
        run = RunInfo(
            id=self.run_id, started=self.started, finished=now_iso(),
            duration=round(time.monotonic() - self.began, 3), harness_version=harness.__version__,
            host=socket.gethostname(), platform=platform.platform(), python=sys.version.split()[0],
            pytest=pytest.__version__, args=[str(a) for a in config.invocation_params.args],
            workers=len(self.workers), rerun_plugin=rerun_plugin, max_reruns=max_reruns)
        for broker_id, extra in (notes or {}).items():
            if broker_id in self.brokers:
                self.brokers[broker_id].notes += [n for n in extra if n not in self.brokers[broker_id].notes]
        return Report(run=run, brokers=list(self.brokers.values()), results=list(self.results.values()),
                      devices=list(self.devices.values()))


def _first_line(text: str) -> str:
    for line in text.splitlines():
        line = line.strip()
        if line and not set(line) <= set("_=-"):
            return line[:500]
    return ""


def _crash(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr)
    # "harness.expect.ExpectationFailed: c2: expected ..." -> "ExpectationFailed: c2: expected ..."; pytest.fail()
    # messages need no "Failed: " in front.
    line = re.sub(r"^(?:[A-Za-z_]\w*\.)+(?=\w+: )", "", _first_line(text))
    return line.removeprefix("Failed: ")


def _skip_reason(report: pytest.TestReport) -> str:
    if isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    return _first_line(report.longreprtext)
