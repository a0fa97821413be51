"""Across runs: merge several reports into one matrix, and diff two (regressions and fixes)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from harness.report.model import FAILING, PASSED, XFAILED, BrokerInfo, Report, Result, RunInfo, now_iso


def merge(reports: list[tuple[str | Path, Report]]) -> Report:
    """One report holding every broker and result of `reports` ((file, report) pairs, oldest first).

    A result (same test, MQTT version and broker) that several runs have is taken from the last of them.
    """
    if not reports:
        raise ValueError("nothing to merge: give at least one report")
    brokers: dict[str, BrokerInfo] = {}
    results: dict[tuple, Result] = {}
    for _, report in reports:
        for broker in report.brokers:
            known = brokers.get(broker.id)
            if known is None:
                brokers[broker.id] = dataclasses.replace(broker, urls={k: list(v) for k, v in broker.urls.items()})
            else:
                for kind, urls in broker.urls.items():
                    known.urls.setdefault(kind, [])
                    known.urls[kind] += [u for u in urls if u not in known.urls[kind]]
        for result in report.results:
            results[result.key if result.broker else ("collection", result.nodeid)] = result
    last = reports[-1][1].run
    run = RunInfo(
        id="merged-" + "+".join(r.run.id for _, r in reports), started=min(r.run.started for _, r in reports),
        finished=now_iso(), duration=round(sum(r.run.duration for _, r in reports), 3),
        harness_version=last.harness_version, host=", ".join(dict.fromkeys(r.run.host for _, r in reports)),
        platform=last.platform, python=last.python, pytest=last.pytest, args=[],
        workers=max(r.run.workers for _, r in reports),
        rerun_plugin=next((r.run.rerun_plugin for _, r in reports if r.run.rerun_plugin), None),
        max_reruns=max(r.run.max_reruns for _, r in reports),
        merged_from=[{"file": str(path), "run": r.run.id, "started": r.run.started} for path, r in reports])
    return Report(run=run, brokers=list(brokers.values()), results=list(results.values()))


@dataclass
class Change:
    test: str
    mqtt_version: str
    broker: str
    old: str  # outcome, "" when the result is new
    new: str  # outcome, "" when the result is gone
    reason: str = ""  # the new result's reason (or the old one's if it is gone)

    def line(self) -> str:
        version = f" [MQTT {self.mqtt_version}]" if self.mqtt_version else ""
        text = f"{self.broker}: {self.test}{version}: {self.old or 'absent'} -> {self.new or 'absent'}"
        return text + (f" ({self.reason})" if self.reason else "")


@dataclass
class Diff:
    regressions: list[Change] = field(default_factory=list)  # was not failing, fails now
    fixes: list[Change] = field(default_factory=list)  # failed, passes (or is a known limit) now
    new_failures: list[Change] = field(default_factory=list)  # failing results OLD did not have at all
    other: list[Change] = field(default_factory=list)  # any other outcome change, added or removed result


def diff(old: Report, new: Report) -> Diff:
    """Compare results by (test, MQTT version, broker)."""
    before = {r.key: r for r in old.results if r.broker}
    after = {r.key: r for r in new.results if r.broker}
    out = Diff()
    for key in sorted(before.keys() | after.keys()):
        a, b = before.get(key), after.get(key)
        change = Change(key[0], key[1], key[2], a.outcome if a else "", b.outcome if b else "",
                        (b or a).reason)
        if a is not None and b is not None and a.outcome == b.outcome:
            continue
        if b is not None and b.outcome in FAILING:
            (out.new_failures if a is None else out.regressions if a.outcome not in FAILING else out.other
             ).append(change)
        elif a is not None and a.outcome in FAILING and b is not None and b.outcome in (PASSED, XFAILED):
            out.fixes.append(change)
        else:
            out.other.append(change)
    return out
