"""How pytest's phase reports become report results: outcomes per phase, reasons, reruns that are never silent, and
measurements (the `measure` fixture; the keepalive suite's enforcement window, from a real run)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from harness.plugin.brokers import parse_broker, unavailable_reason
from harness.plugin.results import MEASUREMENT_PROPERTY, ResultCollector
from harness.report import load
from harness.report.model import Measurement

pytest_plugins = ["pytester"]
REPO = Path(__file__).resolve().parent.parent

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


# ------------------------------------------------------------------------------------------------ measurements

WINDOW = {"name": "keepalive_window", "value": 3.01, "unit": "s", "label": "", "ratio": 1.505,
          "ratio_of": "keepalive 2 s", "samples": [], "warning": None}


def measured(when: str, outcome: str, *values: float, **attrs) -> pytest.TestReport:
    report = phase(when, outcome, **attrs)
    # as pytest keeps them: the item's list, appended to as the test goes, copied into each phase report
    report.user_properties = [("other", 1)] + [(MEASUREMENT_PROPERTY, {**WINDOW, "value": v}) for v in values]
    return report


def test_measurements_travel_as_user_properties_into_the_result(collector):
    result = feed(collector, measured("setup", "passed"), measured("call", "passed", 3.01),
                  measured("teardown", "passed", 3.01))
    assert result.measurements == [Measurement(**WINDOW)]


def test_a_rerun_keeps_only_the_last_attempts_measurements(collector):
    # the item keeps its user properties across attempts: the first attempt's 9.0 must not count
    first = [measured("setup", "passed"), measured("call", "rerun", 9.0, longrepr="AssertionError: late")]
    result = feed(collector, *first, measured("setup", "passed", 9.0), measured("call", "passed", 9.0, 3.01),
                  measured("teardown", "passed", 9.0, 3.01))
    assert [m.value for m in result.measurements] == [3.01]


def test_an_xfailed_result_keeps_the_failure_that_shows_the_limit_holds(collector):
    result = feed(collector, phase("setup", "passed"),
                  phase("call", "skipped", "AssertionError: closed [5.73]s after the last packet", wasxfail="known"),
                  phase("teardown", "passed"))
    assert (result.outcome, result.reason) == ("xfailed", "known")
    assert result.artifacts.failure == "AssertionError: closed [5.73]s after the last packet"


def test_the_measure_fixture_records_for_the_report(pytester):
    pytester.makepyfile(test_m="""
        import pytest

        def test_m(measure):
            m = measure("keepalive_window", 2.4, "s", ratio=1.2, ratio_of="keepalive 2 s", samples=[2.4, 2.9],
                        warning="early")
            assert m.ratio == 1.2
            with pytest.raises(ValueError, match="lower case"):
                measure("Keepalive Window", 1, "s")
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--junitxml", "j.xml", timeout=60)
    result.assert_outcomes(passed=1)
    assert 'name="mqtt_harness_measurement"' in (pytester.path / "j.xml").read_text()


def keepalive_suite():
    spec = importlib.util.spec_from_file_location("keepalive_suite", REPO / "suites" / "test_keepalive.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("silences, ratio, warned", [([3.02], 1.51, False), ([2.4, 3.9], 1.2, True),
                                                     ([2.0], 1.0, True), ([2.999], 1.4995, True)])
def test_the_keepalive_suite_warns_below_one_and_a_half_keepalives(silences, ratio, warned):
    recorded = []
    keepalive_suite().record_window(lambda *a, **kw: recorded.append((a, kw)), silences, 2)
    (args, kwargs), = recorded
    assert args == ("keepalive_window", min(silences), "s")
    assert kwargs["ratio"] == pytest.approx(ratio) and kwargs["ratio_of"] == "keepalive 2 s"
    assert kwargs["samples"] == (silences if len(silences) > 1 else ())
    assert (kwargs["warning"] is not None) == warned
    if warned:
        assert "before 1.5 x keepalive" in kwargs["warning"]


def test_the_report_states_each_brokers_keepalive_window(pytester):
    """The real suite against real brokers: every closing broker's window lands in report.json, per result and per
    broker, also for a known-limit xfail (mosquitto's periodic scan)."""
    brokers = [b for b in ("mosquitto", "aedes") if unavailable_reason(parse_broker(f"{b}:process")) is None]
    if not brokers:
        pytest.skip("neither mosquitto nor aedes can run here as a process")
    args = [a for b in brokers for a in ("--broker", f"{b}:process")]
    run = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", str(REPO / "suites" / "test_keepalive.py"), "-k", "within_one_and_a_half",
        "--mqtt-version", "3.1.1", "--keepalive-seconds", "1", "--report-dir", "out", *args, timeout=120)
    assert run.ret in (0, 1), run.stdout.str()
    report = load(pytester.path / "out" / "report.json")
    for broker in brokers:
        (result,) = [r for r in report.results if r.broker == f"{broker}-process"]
        assert result.outcome in ("passed", "xfailed", "failed"), result.reason
        (window,) = result.measurements
        assert window.name == "keepalive_window" and window.unit == "s" and window.ratio_of == "keepalive 1 s"
        assert len(window.samples) == 6 and window.value == min(window.samples)
        assert window.ratio == pytest.approx(window.value / 1, abs=1e-3)
        assert window.ratio >= 1.0  # nobody here closes before the keepalive (that would fail the next test)
        assert (window.warning is None) == (window.ratio >= 1.5)
        summed = report.to_dict()["summary"]["measurements"][f"{broker}-process"]["keepalive_window"]
        assert summed["count"] == 1 and summed["min"] == window.value and summed["max"] == max(window.samples)
