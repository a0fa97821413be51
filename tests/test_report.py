"""Reports without brokers: the JSON model and its schema, JUnit XML, merge, diff, and the report CLI."""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET

import pytest

from harness.cli import main
from harness.cli.run import summary_table
from harness.report import junit, load, save, text, write_reports
from harness.report.compare import diff, merge
from harness.report.model import Artifacts, BrokerInfo, ClientLog, Measurement, Report, ReportError, Result, RunInfo
from harness.report.validate import validate


def result(test: str, broker: str, outcome: str, version: str | None = "5", **kw) -> Result:
    area = test.split("::")[0].rsplit("/", 1)[-1].removesuffix(".py")
    return Result(test=test, nodeid=f"{test}[{broker}]", area=area, broker=broker, mqtt_version=version,
                  outcome=outcome, **kw)


def make_report(run_id: str, brokers: list[str], results: list[Result]) -> Report:
    return Report(run=RunInfo(id=run_id, started=f"2026-01-0{len(run_id)}T00:00:00+00:00"),
                  brokers=[BrokerInfo(id=b, name=b, backend="process", urls={"mqtt": [f"mqtt://127.0.0.1:{n}"]})
                           for n, b in enumerate(brokers, 1883)],
                  results=results)


@pytest.fixture
def sample() -> Report:
    failing = result("suites/test_pub.py::test_qos1", "mosquitto-process", "failed", reason="ExpectationFailed: c1",
                     statements=["MQTT-3.3.4-1"], duration=0.25, artifacts=Artifacts(
                         clients=[ClientLog("c1", "mh-1-1", "mqtt://127.0.0.1:1883", "5", [
                             {"t": 0.0, "dir": "out", "conn": 1, "packet": "CONNECT(...)", "error": None, "raw": "10"},
                             {"t": 0.1, "dir": "in", "conn": 1, "packet": None, "error": "bad <byte>", "raw": "ff"}])],
                         broker_log="New client connected\n", expected="PUBLISH(qos=1)", actual=["PUBLISH(qos=0)"],
                         failure="Traceback <&>\x07"))
    return make_report("r1", ["mosquitto-process", "nats-process"], [
        failing,
        result("suites/test_pub.py::test_qos1", "nats-process", "skipped", reason="lacks MQTT 5 [v5]"),
        result("suites/test_pub.py::test_qos0", "mosquitto-process", "passed", statements=["MQTT-3.3.1-1"]),
        result("suites/test_pub.py::test_qos0", "nats-process", "xfailed", version="3.1.1", reason="known limit"),
        Result(test="suites/test_bad.py", nodeid="suites/test_bad.py", area="test_bad", broker=None,
               mqtt_version=None, outcome="error", reason="unknown OASIS statement ID"),
    ])


def test_json_round_trip_is_valid_against_the_schema(sample, tmp_path):
    path = save(sample, tmp_path / "report.json")
    data = json.loads(path.read_text())
    assert validate(data) == []
    assert data["summary"] == {"total": 5, "outcomes": {"passed": 1, "failed": 1, "error": 1, "xpassed": 0,
                                                        "xfailed": 1, "skipped": 1},
                               "by_broker": {"mosquitto-process": {"passed": 1, "failed": 1, "error": 0, "xpassed": 0,
                                                                   "xfailed": 0, "skipped": 0},
                                             "nats-process": {"passed": 0, "failed": 0, "error": 0, "xpassed": 0,
                                                              "xfailed": 1, "skipped": 1}},
                               "slowest": [{"nodeid": "suites/test_pub.py::test_qos1[mosquitto-process]",
                                            "test": "suites/test_pub.py::test_qos1", "broker": "mosquitto-process",
                                            "mqtt_version": "5", "device": None, "outcome": "failed",
                                            "duration": 0.25}] + [
                                   {"nodeid": f"{r.test}[{r.broker}]", "test": r.test, "broker": r.broker,
                                    "mqtt_version": r.mqtt_version, "device": None, "outcome": r.outcome,
                                    "duration": 0.0} for r in sample.results[1:4]],
                               "measurements": {}}
    assert load(path) == sample


@pytest.mark.parametrize("change, problem", [
    (lambda d: d["results"][0].update(outcome="flaky"), "$.results[0].outcome: 'flaky' is not one of"),
    (lambda d: d["results"][0].pop("statements"), "$.results[0]: missing 'statements'"),
    (lambda d: d["results"][0].update(statements=["3.3.1-1"]), "does not match"),
    (lambda d: d["brokers"][0].update(extra=1), "$.brokers[0]: unexpected field 'extra'"),
    (lambda d: d["run"].update(workers=-1), "$.run.workers: -1 is below the minimum 0"),
    (lambda d: d["results"][0]["artifacts"]["clients"][0]["packets"][0].update(dir="up"), "'up' is not one of"),
])
def test_schema_violations_are_named(sample, change, problem):
    data = sample.to_dict()
    change(data)
    assert any(problem in p for p in validate(data)), validate(data)


def test_loading_names_the_file_and_the_problem(sample, tmp_path):
    path = tmp_path / "report.json"
    path.write_text("{not json")
    with pytest.raises(ReportError, match=r"report.json: not a JSON report"):
        load(path)
    data = sample.to_dict()
    data["schema_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ReportError, match=r"report schema version 99; this harness reads version 1"):
        load(path)
    data = sample.to_dict()
    del data["run"]["host"]
    path.write_text(json.dumps(data))
    with pytest.raises(ReportError, match=r"invalid report: \$.run: missing 'host'"):
        load(path)


def test_junit_xml(sample):
    root = ET.fromstring(junit.render(sample))
    assert (root.get("tests"), root.get("failures"), root.get("errors"), root.get("skipped")) == ("5", "1", "1", "2")
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert set(suites) == {"mosquitto-process", "nats-process", "collection"}
    case = suites["mosquitto-process"].find("testcase[@name='test_qos1[MQTT 5]']")
    assert case.get("classname") == "mosquitto-process.test_pub"
    assert case.find("failure").get("message") == "ExpectationFailed: c1"
    assert case.find("failure").text == "Traceback <&>"  # the control character is dropped: not valid XML
    assert case.find("properties/property").get("value") == "MQTT-3.3.4-1"
    assert suites["nats-process"].find("testcase/skipped").get("message") == "lacks MQTT 5 [v5]"


def test_merge_combines_brokers_and_later_runs_win(sample):
    later = make_report("r22", ["mosquitto-process", "amqtt-process"], [
        result("suites/test_pub.py::test_qos1", "mosquitto-process", "passed"),
        result("suites/test_pub.py::test_qos1", "amqtt-process", "passed"),
    ])
    later.brokers[0].urls = {"mqtt": ["mqtt://127.0.0.1:9999"]}
    merged = merge([("a/report.json", sample), ("b/report.json", later)])
    assert [b.id for b in merged.brokers] == ["mosquitto-process", "nats-process", "amqtt-process"]
    assert merged.brokers[0].urls["mqtt"] == ["mqtt://127.0.0.1:1883", "mqtt://127.0.0.1:9999"]
    outcomes = {(r.test, r.broker, r.mqtt_version): r.outcome for r in merged.results}
    assert outcomes[("suites/test_pub.py::test_qos1", "mosquitto-process", "5")] == "passed"
    assert len(merged.results) == 6
    assert [m["run"] for m in merged.run.merged_from] == ["r1", "r22"]
    assert validate(merged.to_dict()) == []
    assert sample.brokers[0].urls["mqtt"] == ["mqtt://127.0.0.1:1883"]  # inputs untouched


def test_diff_finds_regressions_and_fixes(sample):
    new = copy.deepcopy(sample)
    by_key = {(r.test.split("::")[-1], r.broker): r for r in new.results}
    by_key[("test_qos1", "mosquitto-process")].outcome = "passed"  # fixed
    by_key[("test_qos0", "mosquitto-process")].outcome = "error"  # regressed
    by_key[("test_qos1", "nats-process")].outcome = "passed"  # skipped -> passed: another change
    new.results.append(result("suites/test_pub.py::test_new", "nats-process", "failed", reason="boom"))
    changes = diff(sample, new)
    assert [c.line() for c in changes.regressions] == [
        "mosquitto-process: suites/test_pub.py::test_qos0 [MQTT 5]: passed -> error"]
    assert [(c.test, c.old, c.new) for c in changes.fixes] == [("suites/test_pub.py::test_qos1", "failed", "passed")]
    assert [c.line() for c in changes.new_failures] == [
        "nats-process: suites/test_pub.py::test_new [MQTT 5]: absent -> failed (boom)"]
    assert [(c.broker, c.old, c.new) for c in changes.other] == [("nats-process", "skipped", "passed")]
    assert diff(sample, sample).regressions == []


def test_report_cli_merge_diff_render_validate(sample, tmp_path, capsys):
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    write_reports(sample, old_dir)
    regressed = copy.deepcopy(sample)
    regressed.results[2].outcome = "failed"
    write_reports(regressed, new_dir)

    assert main(["report", "diff", str(old_dir), str(new_dir / "report.json")]) == 1
    assert "regressions: 1\n  mosquitto-process: suites/test_pub.py::test_qos0 [MQTT 5]: passed -> failed" in \
        capsys.readouterr().out
    assert main(["report", "diff", str(old_dir), str(old_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["regressions"] == []

    assert main(["report", "merge", str(old_dir), str(new_dir), "-o", str(tmp_path / "merged")]) == 0
    assert "merged 2 runs: 2 brokers, 5 results" in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "merged").iterdir()} == {"report.json", "report.html", "junit.xml"}

    (old_dir / "report.html").unlink()
    assert main(["report", "render", str(old_dir / "report.json")]) == 0
    assert (old_dir / "report.html").is_file()
    assert main(["report", "validate", str(tmp_path / "merged")]) == 0
    assert "valid (schema version 1, 5 results)" in capsys.readouterr().out

    (tmp_path / "bad.json").write_text("[]")
    assert main(["report", "validate", str(tmp_path / "bad.json")]) == 1
    assert "bad.json: not an mqtt-harness report" in capsys.readouterr().out


def test_validate_checks_every_file_and_every_problem_and_the_summary(sample, tmp_path, capsys):
    good = tmp_path / "good"
    write_reports(sample, good)
    data = json.loads((good / "report.json").read_text())
    data["summary"]["total"] += 3
    data["summary"]["outcomes"]["passed"] += 3
    (tmp_path / "lying.json").write_text(json.dumps(data))
    (tmp_path / "junk.json").write_text("{")
    assert main(["report", "validate", str(tmp_path / "junk.json"), str(tmp_path / "lying.json"), str(good)]) == 1
    captured = capsys.readouterr()
    assert "junk.json: not a JSON report" in captured.out
    assert "lying.json: invalid, 2 problem(s):" in captured.out
    assert "summary.total is 8 but there are 5 results" in captured.out
    assert "summary.outcomes.passed is" in captured.out
    assert f"{good / 'report.json'}: valid" in captured.out  # checked although earlier files failed
    assert "2 of 3 reports invalid" in captured.err


def test_diff_of_reports_with_no_broker_in_common_says_so(tmp_path, capsys):
    a = make_report("a", ["mosquitto-process"], [result("suites/test_pub.py::test_qos0", "mosquitto-process", "passed")])
    b = make_report("b", ["nats-process"], [result("suites/test_pub.py::test_qos0", "nats-process", "failed")])
    write_reports(a, tmp_path / "a")
    write_reports(b, tmp_path / "b")
    assert main(["report", "diff", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "no broker in common" in err and "mosquitto-process" in err and "nats-process" in err and "merge" in err


def test_summary_table_has_areas_as_rows_and_brokers_as_columns(sample):
    table = summary_table(sample).splitlines()
    assert table[0].split() == ["area", "mosquitto-process", "nats-process"]
    assert table[2].startswith("test_pub ") and "1 passed, 1 failed" in table[2] and "1 xfailed, 1 skipped" in table[2]
    assert table[4].startswith("TOTAL")
    assert table[-1] == "collection error: suites/test_bad.py: unknown OASIS statement ID"


def measured_report() -> Report:
    """Keepalive windows on two brokers (one closes early: a warning) and a dozen results of known durations."""
    def window(broker: str, version: str, seconds: list[float]) -> Result:
        ratio = min(seconds) / 2
        return result("suites/test_keepalive.py::test_silent", broker, "passed", version=version, duration=7.0,
                      measurements=[Measurement("keepalive_window", min(seconds), "s", "silence allowed", ratio,
                                                "keepalive 2 s", seconds if len(seconds) > 1 else [],
                                                "closed early" if ratio < 1.5 else None)])
    timed = [result(f"suites/test_pub.py::test_{n}", "mosquitto-process", "passed", duration=n + 0.5)
             for n in range(12)]
    return make_report("m1", ["mosquitto-process", "nats-process"], [
        window("mosquitto-process", "5", [3.3, 5.9]), window("mosquitto-process", "3.1.1", [3.4]),
        window("nats-process", "3.1.1", [2.4]), *timed])


def test_measurements_are_kept_per_result_and_summed_up_per_broker(tmp_path):
    report = measured_report()
    path = save(report, tmp_path / "report.json")
    data = json.loads(path.read_text())
    assert validate(data) == []
    assert data["results"][0]["measurements"] == [{
        "name": "keepalive_window", "value": 3.3, "unit": "s", "label": "silence allowed", "ratio": 1.65,
        "ratio_of": "keepalive 2 s", "samples": [3.3, 5.9], "warning": None}]
    assert data["summary"]["measurements"] == {
        "mosquitto-process": {"keepalive_window": {"unit": "s", "count": 2, "min": 3.3, "max": 5.9, "min_ratio": 1.65,
                                                   "max_ratio": 2.95, "ratio_of": ["keepalive 2 s"], "warnings": 0}},
        "nats-process": {"keepalive_window": {"unit": "s", "count": 1, "min": 2.4, "max": 2.4, "min_ratio": 1.2,
                                              "max_ratio": 1.2, "ratio_of": ["keepalive 2 s"], "warnings": 1}}}
    assert load(path) == report


def test_the_ten_slowest_tests_are_in_the_summary_and_the_terminal_recap():
    report = measured_report()
    slowest = report.to_dict()["summary"]["slowest"]
    assert [s["duration"] for s in slowest] == [11.5, 10.5, 9.5, 8.5, 7.5, 7.0, 7.0, 7.0, 6.5, 5.5]
    assert slowest[0] == {"nodeid": "suites/test_pub.py::test_11[mosquitto-process]",
                          "test": "suites/test_pub.py::test_11", "broker": "mosquitto-process", "mqtt_version": "5",
                          "device": None, "outcome": "passed", "duration": 11.5}
    lines = text.slowest(report).splitlines()
    assert lines[0] == "the 10 slowest tests (test body):" and len(lines) == 11
    assert lines[1] == "    11.50s  mosquitto-process  suites/test_pub.py::test_11 [MQTT 5]"
    recap = text.measured(report).splitlines()
    assert "  mosquitto-process  keepalive window: 3.30-5.90 s = 1.650-2.950 x keepalive 2 s (2 results)" in recap
    assert "  nats-process  keepalive window: 2.40 s = 1.200 x keepalive 2 s (1 result)" in recap
    assert recap[-1] == "  WARNING nats-process suites/test_keepalive.py::test_silent [MQTT 3.1.1]: closed early"
    assert text.slowest(make_report("e", [], [])) == "" and text.measured(make_report("e", [], [])) == ""


@pytest.mark.parametrize("change, problem", [
    (lambda d: d["summary"]["slowest"].reverse(), "summary.slowest is not the ten slowest results"),
    (lambda d: d["summary"]["measurements"]["nats-process"]["keepalive_window"].update(warnings=0),
     "summary.measurements does not match"),
    (lambda d: d["results"][2]["measurements"][0].update(warning=None), "summary.measurements does not match"),
])
def test_validate_rejects_a_summary_that_contradicts_the_new_fields(tmp_path, capsys, change, problem):
    data = measured_report().to_dict()
    change(data)
    (tmp_path / "r.json").write_text(json.dumps(data))
    assert main(["report", "validate", str(tmp_path / "r.json")]) == 1
    assert problem in capsys.readouterr().out


@pytest.mark.parametrize("change, problem", [
    (lambda d: d["results"][0]["measurements"][0].update(name="Keepalive Window"), "does not match"),
    (lambda d: d["results"][0]["measurements"][0].update(value="3.3"), "value: expected number, got str"),
    (lambda d: d["results"][0]["measurements"][0].pop("unit"), "missing 'unit'"),
])
def test_measurement_schema_violations_are_named(change, problem):
    data = measured_report().to_dict()
    change(data)
    assert any(problem in p for p in validate(data)), validate(data)


def test_a_report_from_before_measurements_and_slowest_still_validates_and_renders(tmp_path, capsys):
    data = measured_report().to_dict()
    for old_report_lacks in ("slowest", "measurements"):
        del data["summary"][old_report_lacks]
    for r in data["results"]:
        del r["measurements"]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "report.json").write_text(json.dumps(data))
    assert validate(data) == []
    assert main(["report", "validate", str(tmp_path / "old")]) == 0
    assert main(["report", "render", str(tmp_path / "old" / "report.json")]) == 0
    assert "The 10 slowest tests" in (tmp_path / "old" / "report.html").read_text()  # derived from the results
    assert load(tmp_path / "old" / "report.json").results[0].measurements == []


def test_junit_carries_measurements_and_their_warnings():
    root = ET.fromstring(junit.render(measured_report()))
    props = [(p.get("name"), p.get("value")) for p in root.iter("property")]
    assert ("keepalive_window", "3.3 s (1.650 x keepalive 2 s)") in props
    assert ("keepalive_window", "2.4 s (1.200 x keepalive 2 s)") in props and ("warning", "closed early") in props
