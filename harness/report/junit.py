"""JUnit XML (the dialect CI systems read: testsuites/testsuite/testcase with failure, error and skipped)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

from harness.report.model import ERROR, FAILED, SKIPPED, XFAILED, XPASSED, Report, Result

_CONTROL = {c: None for c in range(32) if c not in (9, 10, 13)}  # XML 1.0 forbids these characters


def _text(value: str) -> str:
    return value.translate(_CONTROL)


def render(report: Report) -> str:
    """One <testsuite> per broker (collection errors in their own), one <testcase> per result."""
    suites: dict[str, list[Result]] = defaultdict(list)
    for result in report.results:
        key = result.broker or "collection"
        suites[f"{key}/{result.device}" if result.device else key].append(result)
    root = ET.Element("testsuites", name=f"mqtt-harness {report.run.id}")
    totals = defaultdict(int)
    for broker_id, results in suites.items():
        suite = ET.SubElement(root, "testsuite", name=broker_id, timestamp=report.run.started,
                              hostname=report.run.host)
        counts = report.counts(results)
        attrs = {"tests": len(results), "failures": counts[FAILED], "errors": counts[ERROR],
                 "skipped": counts[SKIPPED] + counts[XFAILED], "time": f"{sum(r.duration for r in results):.3f}"}
        for key, value in attrs.items():
            suite.set(key, str(value))
            totals[key] += value if key != "time" else 0
        for result in results:
            _testcase(suite, result)
    for key in ("tests", "failures", "errors", "skipped"):
        root.set(key, str(totals[key]))
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _testcase(suite: ET.Element, result: Result) -> None:
    path, _, name = result.test.partition("::")
    version = f"[MQTT {result.mqtt_version}]" if result.mqtt_version else ""
    where = result.broker or "collection"
    where += f".{result.device}" if result.device else ""
    case = ET.SubElement(suite, "testcase", classname=f"{where}.{result.area}",
                         name=f"{name or path}{version}", file=path, time=f"{result.duration:.3f}")
    if result.statements or result.measurements:
        props = ET.SubElement(case, "properties")
        for sid in result.statements:
            ET.SubElement(props, "property", name="statement", value=sid)
        for m in result.measurements:  # e.g. keepalive_window = "3.01 s (1.505 x keepalive 2 s)"
            ratio = f" ({m.ratio:.3f} x {m.ratio_of})" if m.ratio is not None else ""
            ET.SubElement(props, "property", name=m.name, value=_text(f"{m.value:g} {m.unit}{ratio}"))
            if m.warning:
                ET.SubElement(props, "property", name="warning", value=_text(m.warning))
    reason = _text(result.reason)
    detail = _text(result.artifacts.failure or "")
    if result.outcome == FAILED:
        ET.SubElement(case, "failure", message=reason).text = detail
    elif result.outcome == ERROR:
        ET.SubElement(case, "error", message=reason).text = detail
    elif result.outcome in (SKIPPED, XFAILED):
        prefix = "expected failure: " if result.outcome == XFAILED else ""
        ET.SubElement(case, "skipped", message=prefix + reason)
    elif result.outcome == XPASSED:
        ET.SubElement(case, "system-out").text = f"unexpectedly passed (xfail: {reason})"
    if result.artifacts.device_log and result.outcome in (FAILED, ERROR):
        ET.SubElement(case, "system-err").text = _text(result.artifacts.device_log)


def write(report: Report, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(render(report), encoding="utf-8")
    return path
