"""How pytest's phase reports become report results: outcomes per phase, reasons, and reruns that are never silent."""

from __future__ import annotations

import pytest

from harness.plugin.results import ResultCollector

PAYLOAD = {"test": "suites/test_a.py::test_x", "area": "test_a", "broker": "b", "mqtt_version": "5",
           "statements": ["MQTT-3.3.2-3"]}
LAST = {**PAYLOAD, "broker_info": None, "artifacts": {"clients": [], "broker_log": None, "expected": None,
                                                      "actual": []}}


def phase(when: str, outcome: str, longrepr=None, **attrs) -> pytest.TestReport:
    report = pytest.TestReport("suites/test_a.py::test_x[b-mqtt5]", ("suites/test_a.py", 1, "test_x"), {}, outcome,
                               longrepr, when, duration=0.5)
    report.mqtt_harness = LAST if when == "teardown" else PAYLOAD
    for name, value in attrs.items():
        setattr(report, name, value)
    return report


def feed(collector: ResultCollector, *reports: pytest.TestReport):
    results = [collector.add_report(r) for r in reports]
    assert results[:-1] == [None] * (len(results) - 1)
    return results[-1]


@pytest.fixture
def collector(pytestconfig) -> ResultCollector:
    return ResultCollector(pytestconfig)


@pytest.mark.parametrize("phases, outcome, reason", [
    ([("setup", "passed"), ("call", "passed"), ("teardown", "passed")], "passed", ""),
    ([("setup", "skipped", ("f", 1, "Skipped: b lacks QoS 2 [qos2]")), ("teardown", "passed")], "skipped",
     "b lacks QoS 2 [qos2]"),
    ([("setup", "passed"), ("call", "skipped", None, "known limit"), ("teardown", "passed")], "xfailed",
     "known limit"),
    ([("setup", "passed"), ("call", "passed", None, "known limit"), ("teardown", "passed")], "xpassed", "known limit"),
    ([("setup", "passed"), ("call", "failed", "AssertionError: no\nmore"), ("teardown", "passed")], "failed",
     "AssertionError: no"),
    ([("setup", "failed", "BrokerError: mosquitto exited"), ("teardown", "passed")], "error",
     "BrokerError: mosquitto exited"),
    ([("setup", "passed"), ("call", "passed"), ("teardown", "failed", "OSError: x")], "error", "teardown: OSError: x"),
])
def test_outcome_and_reason_from_the_phases(collector, phases, outcome, reason):
    reports = []
    for when, state, *rest in phases:
        longrepr = rest[0] if rest else None
        extra = {"wasxfail": rest[1]} if len(rest) > 1 else {}
        reports.append(phase(when, state, longrepr, **extra))
    result = feed(collector, *reports)
    assert (result.outcome, result.reason) == (outcome, reason)
    assert result.statements == ["MQTT-3.3.2-3"] and result.broker == "b" and result.mqtt_version == "5"


def test_reruns_are_counted_and_reported(collector):
    # pytest-rerunfailures logs the failed phase as "rerun" and starts the next attempt (no teardown report).
    first = [phase("setup", "passed"), phase("call", "rerun", "AssertionError: flaky")]
    result = feed(collector, *first, phase("setup", "passed"), phase("call", "passed"), phase("teardown", "passed"))
    assert (result.outcome, result.reruns) == ("passed", 1)
    report = collector.report()
    assert report.run.rerun_plugin is not None  # never silent, even if the plugin doing it is unknown
    assert [r.reruns for r in report.results] == [1]
