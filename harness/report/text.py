"""Plain-text pieces of a report for the terminal (`mqtt-harness run` prints them after its summary table): the
slowest tests, and what was measured on each broker with its warnings."""

from __future__ import annotations

from harness.report.model import SLOWEST, Report


def slowest(report: Report, n: int = SLOWEST) -> str:
    """The n slowest tests (test body), one line each, longest first; "" when nothing ran."""
    results = report.slowest(n)
    if not results:
        return ""
    lines = [f"the {len(results)} slowest tests (test body):"]
    for r in results:
        where = "/".join(x for x in (r.broker, r.device) if x)
        version = f" [MQTT {r.mqtt_version}]" if r.mqtt_version else ""
        lines.append(f"  {r.duration:7.2f}s  {where}  {r.test}{version}")
    return "\n".join(lines)


def measured(report: Report) -> str:
    """Per broker, each measurement's range (e.g. the keepalive window as a multiple of the keepalive), and the
    warnings; "" when no test measured anything."""
    by_broker = report.measured()
    if not by_broker:
        return ""
    lines = ["measured:"]
    for broker, names in by_broker.items():
        for name, m in sorted(names.items()):
            text = f"  {broker}  {name.replace('_', ' ')}: {_span(m['min'], m['max'], 2)} {m['unit']}"
            if m["min_ratio"] is not None:
                text += f" = {_span(m['min_ratio'], m['max_ratio'], 3)} x {', '.join(m['ratio_of'])}"
            text += f" ({m['count']} result{'s' if m['count'] != 1 else ''})"
            lines.append(text)
    for result in report.results:
        for m in result.measurements:
            if m.warning:
                version = f" [MQTT {result.mqtt_version}]" if result.mqtt_version else ""
                lines.append(f"  WARNING {result.broker} {result.test}{version}: {m.warning}")
    return "\n".join(lines)


def _span(low: float, high: float, digits: int) -> str:
    a, b = f"{low:.{digits}f}", f"{high:.{digits}f}"
    return a if a == b else f"{a}-{b}"
