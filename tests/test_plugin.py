"""The mqtt-harness pytest plugin, run as pytest runs it (a subprocess per run, via pytester) against real brokers:
matrix over two brokers, capability gating, known-limit xfails, statement validation, failure output, xdist."""

from __future__ import annotations

import json
import os
import shutil
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.brokers import definitions as brokerdefs
from harness.plugin import markers
from harness.plugin.brokers import unavailable_reason, parse_broker
from harness.report import load
from harness.report.validate import validate

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "suites" / "test_smoke.py"
RUN_TIMEOUT = 240


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=RUN_TIMEOUT)


def outcomes(report_dir: Path) -> dict[tuple[str, str | None, str | None], tuple[str, str]]:
    """(test name, broker, version) -> (outcome, reason), from a valid report.json."""
    data = json.loads((report_dir / "report.json").read_text())
    assert validate(data) == []
    return {(r["test"].split("::")[-1], r["broker"], r["mqtt_version"]): (r["outcome"], r["reason"])
            for r in data["results"]}


def require_process(name: str) -> None:
    reason = unavailable_reason(parse_broker(f"{name}:process"))
    if reason:
        pytest.skip(reason)


@pytest.fixture
def url_broker(mosquitto, pki) -> list[str]:
    """--broker options for the tests' own mosquitto, seen as an external broker (plain and mTLS listeners)."""
    return ["--broker", f"{mosquitto.url('mqtt')},mqtts-mtls={mosquitto.url('mqtts-mtls')}", "--ca", str(pki.ca),
            "--cert", str(pki.client_cert), "--key", str(pki.client_key)]


def test_matrix_over_two_brokers_writes_valid_reports(pytester, mosquitto, url_broker):
    require_process("mosquitto")
    shutil.copy(SMOKE, pytester.path / SMOKE.name)
    result = run(pytester, SMOKE.name, "--broker", "mosquitto:process", *url_broker, "--report-dir", "out", "-v")
    result.assert_outcomes(passed=12)  # 3 tests x 2 MQTT versions x 2 brokers
    result.stdout.fnmatch_lines(["*test_connect_is_accepted?mosquitto-process-mqtt5? PASSED*",
                                 "*test_connect_is_accepted?url-127.0.0.1-*-mqtt311? PASSED*"])
    report = load(pytester.path / "out" / "report.json")
    external = report.brokers[1]
    assert [b.id for b in report.brokers] == ["mosquitto-process", external.id]
    assert external.backend == "external" and external.capabilities_source == "discovery"
    assert external.capabilities["versions"] == ["3.1.1", "5"] and external.version  # from $SYS/broker/version
    assert report.brokers[0].capabilities_source == "profile" and report.brokers[0].urls.keys() >= {"mqtt", "wss"}
    connect = [r for r in report.results if r.test.endswith("test_connect_is_accepted")]
    assert {(r.broker, r.mqtt_version) for r in connect} == {(b.id, v) for b in report.brokers for v in ("3.1.1", "5")}
    by_version = {r.mqtt_version: r.statements for r in connect}
    assert by_version == {"3.1.1": ["MQTT-3.2.0-1", "MQTT-3.2.2-1"], "5": ["MQTT-3.2.0-1", "MQTT-3.2.2-2"]}
    logs = connect[0].artifacts.clients[0].packets
    assert logs[0]["dir"] == "out" and logs[0]["packet"].startswith("CONNECT(") and "raw" not in logs[0]
    suites = ET.parse(pytester.path / "out" / "junit.xml").getroot()
    assert suites.get("tests") == "12" and suites.get("failures") == "0"
    assert (pytester.path / "out" / "report.html").read_text().count("class='detail'") == 12


def test_plugin_stays_out_of_plain_tests(pytester):
    pytester.makepyfile(test_plain="""
        import pytest

        def test_plain(request):
            assert not hasattr(request.node, "callspec")

        @pytest.mark.parametrize("broker, topic", [("mine", "t")])  # the plugin's fixture names, as parameters
        def test_own_parameters(broker, topic):
            assert (broker, topic) == ("mine", "t")
    """)
    result = run(pytester)
    result.assert_outcomes(passed=2)
    assert "mqtt-harness:" not in result.stdout.str()
    assert not list(pytester.path.glob("**/report.json"))


def test_capability_gating_skips_name_the_missing_capability(pytester, mosquitto):
    require_process("nats")
    pytester.makepyfile(test_gated="""
        import pytest

        @pytest.mark.requires(qos2=True)
        async def test_needs_qos2(client_factory):
            pass

        @pytest.mark.requires(mtls=True)
        async def test_needs_mtls(client_factory):
            pass

        @pytest.mark.requires(shared_subscriptions=False)
        async def test_needs_no_shared(client_factory):
            pass
    """)
    url = mosquitto.url("mqtt")
    result = run(pytester, "--broker", "nats:process", "--broker", url, "--report-dir", "out")
    assert result.ret == 0, result.stdout.str()
    got = outcomes(pytester.path / "out")
    nats_qos2, reason = got[("test_needs_qos2", "nats-process", "3.1.1")]
    assert nats_qos2 == "skipped"
    assert "nats:process lacks QoS 2 [qos2] (profile: max_qos=1); known limit: QoS 2 is not supported" in reason
    outcome, reason = got[("test_needs_qos2", "nats-process", "5")]
    assert outcome == "skipped" and "lacks MQTT 5 [v5]" in reason and "known limit: nats-server implements" in reason
    external = next(b for (_, b, _) in got if b.startswith("url-"))
    assert got[("test_needs_qos2", external, "5")][0] == "passed"  # claimed in the MQTT 5 CONNACK
    outcome, reason = got[("test_needs_mtls", external, "3.1.1")]
    assert outcome == "skipped" and f"{url} lacks a mqtts-mtls listener [mtls] (listeners: mqtt)" in reason
    outcome, reason = got[("test_needs_no_shared", external, "3.1.1")]
    assert outcome == "skipped" and "needs a broker without shared subscriptions" in reason
    assert got[("test_needs_no_shared", "nats-process", "3.1.1")][0] == "passed"


def test_known_limits_are_strict_xfails(pytester, mosquitto):
    url = mosquitto.url("mqtt")
    pytester.makepyfile(test_limits="""
        import pytest
        from harness.core.packets import Publish
        from harness.expect import expect_packet

        @pytest.mark.v311_only
        async def test_broken_on_purpose(client_factory, topic):
            sub = await client_factory()
            await sub.subscribe(topic, qos=1)
            await sub.publish(topic, b"x", qos=1)
            await expect_packet(sub, Publish, qos=2, timeout=2)

        @pytest.mark.v311_only
        @pytest.mark.spec("MQTT-3.3.2-3")
        async def test_works_anyway(client_factory):
            await client_factory()
    """)
    pytester.path.joinpath("limits.yaml").write_text(
        f"'{url}':\n  test_broken_on_purpose: documented bug 1\n  MQTT-3.3.2-3: documented bug 2\n")
    result = run(pytester, "--broker", url, "--known-limits", "limits.yaml", "--report-dir", "out")
    assert result.ret == 1
    got = {name: value for (name, _, _), value in outcomes(pytester.path / "out").items()}
    outcome, reason = got["test_broken_on_purpose"]
    assert outcome == "xfailed" and "[test_broken_on_purpose]: documented bug 1" in reason
    outcome, reason = got["test_works_anyway"]  # the limit no longer holds: strict xfail fails
    assert outcome == "failed" and "XPASS(strict)" in reason and "documented bug 2" in reason


def test_known_limit_can_name_one_mqtt_version(pytester, mosquitto):
    url = mosquitto.url("mqtt")
    pytester.makepyfile(test_limits="""
        async def test_fails_at_5(client_factory, mqtt_version):
            await client_factory()
            assert mqtt_version == "3.1.1"
    """)
    pytester.path.joinpath("limits.yaml").write_text(f"'{url}':\n  test_fails_at_5[mqtt5]: documented bug\n")
    result = run(pytester, "--broker", url, "--known-limits", "limits.yaml", "--report-dir", "out")
    assert result.ret == 0
    got = {version: value for (_, _, version), value in outcomes(pytester.path / "out").items()}
    assert got["3.1.1"][0] == "passed"
    outcome, reason = got["5"]
    assert outcome == "xfailed" and "documented bug" in reason


@pytest.mark.parametrize("marker, message", [
    ('spec("MQTT-9.9.9-9")', "unknown OASIS statement ID 'MQTT-9.9.9-9' in MQTT 3.1.1"),
    ('spec("MQTT-3.3.2-20")', "(it exists in the other version: cite it with v5='MQTT-3.3.2-20')"),
    ('spec(v311="MQTT-3.12.4-2")', "unknown OASIS statement ID 'MQTT-3.12.4-2' in MQTT 3.1.1 (given as v311=)"),
    ('spec(v5="§five")', "spec section '§five' is not a section number; write it like '§5.4.3'"),
    ("requires(qos3=True)", "@pytest.mark.requires: unknown capability 'qos3'"),
])
def test_bad_markers_are_collection_errors(pytester, marker, message):
    pytester.makepyfile(test_bad=f"""
        import pytest

        @pytest.mark.{marker}
        async def test_it(client_factory):
            pass
    """)
    result = run(pytester, "--broker", "mosquitto:process")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*ERROR collecting test_bad.py*", f"*test_bad.py::test_it: *{message}*"])


def test_spec_sections_stand_in_for_untagged_rules():
    mark = pytest.mark.spec("MQTT-3.3.2-3", v5="§5.4.3").mark
    assert markers.spec_errors([mark], ["3.1.1", "5"]) == []
    assert markers.statement_ids([mark], "5") == ["MQTT-3.3.2-3", "§5.4.3"]
    assert markers.statement_ids([mark], "3.1.1") == ["MQTT-3.3.2-3"]


@pytest.mark.parametrize("broker, message", [
    ("nosuch", "unknown broker 'nosuch': use one of*"),
    ("mosquitto:cloud", "unknown backend 'cloud' in 'mosquitto:cloud': use process or docker*"),
    ("tcp://localhost:1883", "*unknown scheme 'tcp'*use mqtt:// instead*"),
])
def test_bad_broker_is_a_usage_error(pytester, broker, message):
    pytester.makepyfile(test_x="async def test_x(client_factory): pass")
    result = run(pytester, "--broker", broker)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: --broker: {message}"])


def test_broker_that_cannot_run_here_is_a_usage_error(pytester):
    defn = next((d for d in brokerdefs.load_all() if d.process is None
                 and unavailable_reason(parse_broker(f"{d.name}:docker"))), None)
    if defn is None:
        pytest.skip("every docker-only broker can run here")
    pytester.makepyfile(test_x="async def test_x(client_factory): pass")
    result = run(pytester, "--broker", f"{defn.name}:docker")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: broker {defn.name}:docker cannot run here: *"])


def test_failures_explain_themselves_and_tests_have_time_limits(pytester):
    require_process("mosquitto")
    pytester.makepyfile(test_fail="""
        import asyncio
        import pytest
        from harness.core.packets import Publish
        from harness.expect import expect_nothing, expect_packet

        @pytest.mark.v5_only
        async def test_wrong_qos(client_factory, topic):
            sub = await client_factory(name="sub")
            pub = await client_factory(name="pub")
            await sub.subscribe(topic + "a", qos=1)
            await pub.publish(topic + "a", b"hello", qos=1)
            await expect_packet(sub, Publish, topic=topic + "a", qos=2, timeout=2)

        @pytest.mark.v5_only
        async def test_something_arrives(client_factory, topic):
            sub = await client_factory()
            await sub.subscribe(topic + "#")
            await sub.publish(topic + "x", b"1")
            await expect_nothing(sub)

        @pytest.mark.v5_only
        @pytest.mark.timeout(0.5)
        async def test_hangs(client_factory):
            client = await client_factory()
            await asyncio.Event().wait()
    """)
    result = run(pytester, "--broker", "mosquitto:process", "--report-dir", "out")
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines([
        "E*sub: expected PUBLISH(topic='mh/*/a', qos=2) within 2s; received PUBLISH(topic='mh/*/a', qos=1, *"
        "payload=b'hello' (5 B)) (qos: expected 2, got 1)",
        "E*received instead:",
        "E*PUBLISH(topic='mh/*/a', qos=1, retain=False, dup=False, packet_id=1, payload=b'hello' (5 B))   "
        "<- qos: expected 2, got 1",
        "E*--- packet log of sub (mqtt://127.0.0.1:*) ---",
        "*Captured packet logs of the other clients call*",
        "--- pub (*) ---",
        "*Captured broker log (mosquitto:process) call*",
        "*New client connected from 127.0.0.1:* as mh-*",
    ])
    result.stdout.fnmatch_lines([
        "E*c1: expected no PUBLISH/DISCONNECT before the PINGRESP barrier, got 1; received PUBLISH(*",
        "E*PUBLISH(topic='mh/*/x', qos=0, retain=False, dup=False, payload=b'1' (1 B))",
    ])
    result.stdout.fnmatch_lines(["test did not finish within its time limit of 0.5s (raise it with *); it was "
                                 "waiting at test_fail.py:*: await asyncio.Event().wait()"])
    report = load(pytester.path / "out" / "report.json")
    wrong = next(r for r in report.results if r.test.endswith("test_wrong_qos"))
    assert wrong.artifacts.expected.startswith("PUBLISH(topic='mh/") and wrong.artifacts.expected.endswith("qos=2)")
    assert "qos: expected 2, got 1" in wrong.artifacts.actual[0]
    assert "New client connected" in wrong.artifacts.broker_log
    assert [c.name for c in wrong.artifacts.clients] == ["sub", "pub"]
    assert all("raw" in p for p in wrong.artifacts.clients[0].packets)  # bytes kept for failures
    hung = next(r for r in report.results if r.test.endswith("test_hangs"))
    assert hung.reason.startswith("test did not finish within its time limit of 0.5s")
    assert hung.artifacts.clients[0].packets[-1]["packet"] == "DISCONNECT()"  # closed in the test's own loop


def test_collect_waits_for_a_count_then_takes_a_barrier(pytester):
    require_process("mosquitto")
    pytester.makepyfile(test_collect="""
        import pytest
        from harness.expect import collect, expect_nothing

        @pytest.mark.v311_only
        async def test_collect(client_factory, topic):
            sub = await client_factory()
            pub = await client_factory()
            await sub.subscribe(topic + "a", qos=1)
            for i in range(5):
                pub.publish_nowait(topic + "a", b"%d" % i, qos=1)
            got = await collect(sub, 5, after=pub)
            assert [m.payload for m in got] == [b"0", b"1", b"2", b"3", b"4"]
            await expect_nothing(sub)  # collect() moved the position past what it returned
            await pub.publish(topic + "a", b"5", qos=1)
            short = await collect(sub, 2, after=pub, timeout=0.2)  # one arrives; short is not a failure
            assert [m.payload for m in short] == [b"5"]
    """)
    run(pytester, "--broker", "mosquitto:process").assert_outcomes(passed=1)


def test_xdist_workers_run_their_own_brokers(pytester):
    require_process("mosquitto")
    shutil.copy(SMOKE, pytester.path / SMOKE.name)
    result = run(pytester, SMOKE.name, "--broker", "mosquitto:process", "-n", "2", "--report-dir", "out")
    result.assert_outcomes(passed=6)
    report = load(pytester.path / "out" / "report.json")
    assert report.run.workers == 2 and len(report.results) == 6
    assert len(report.brokers) == 1 and len(report.brokers[0].urls["mqtt"]) == 2  # one mosquitto per worker


def test_auto_workers_in_a_suite_run_are_three_per_cpu_unless_the_user_sets_them(pytester, monkeypatch):
    """The suites wait on broker timers more than they compute: `-n auto` with a broker starts WORKERS_PER_CPU
    workers per CPU; PYTEST_XDIST_AUTO_NUM_WORKERS, xdist's own setting, still decides when given."""
    require_process("mosquitto")
    from harness.plugin import MAX_AUTO_WORKERS, WORKERS_PER_CPU

    shutil.copy(SMOKE, pytester.path / SMOKE.name)
    monkeypatch.delenv("PYTEST_XDIST_AUTO_NUM_WORKERS", raising=False)
    run(pytester, SMOKE.name, "--broker", "mosquitto:process", "-n", "auto", "--report-dir", "auto").assert_outcomes(
        passed=6)
    cpus = len(os.sched_getaffinity(0))
    assert load(pytester.path / "auto" / "report.json").run.workers == min(MAX_AUTO_WORKERS, WORKERS_PER_CPU * cpus)
    monkeypatch.setenv("PYTEST_XDIST_AUTO_NUM_WORKERS", "1")
    run(pytester, SMOKE.name, "--broker", "mosquitto:process", "-n", "auto", "--report-dir", "one").assert_outcomes(
        passed=6)
    assert load(pytester.path / "one" / "report.json").run.workers == 1


def test_mqtt_harness_run(tmp_path):
    require_process("mosquitto")
    import subprocess
    import sys

    failing = tmp_path / "test_failing.py"
    failing.write_text(textwrap.dedent("""
        import pytest

        @pytest.mark.v311_only
        async def test_fails(client_factory):
            assert (await client_factory()).connack.session_present, "no session"
    """))
    cli = [sys.executable, "-m", "harness", "run", "--broker", "mosquitto:process", "-n", "0"]  # one process: lines in order
    ok = subprocess.run([*cli, str(SMOKE), "--report-dir", str(tmp_path / "ok"), "-k", "publish"],
                        capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "[1/2] PASS  mosquitto-process    3.1.1 " in ok.stdout
    assert "test_smoke  2 passed" in ok.stdout and f"reports: {tmp_path / 'ok' / 'report.html'}" in ok.stdout
    bad = subprocess.run([*cli, str(failing), "--report-dir", str(tmp_path / "bad")],
                         capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=tmp_path)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "FAIL  mosquitto-process    3.1.1 " in bad.stdout and "AssertionError: no session" in bad.stdout
    assert "test_failing  1 failed" in bad.stdout


def test_default_broker_is_docker_where_it_works_else_a_process(pytester):
    from harness.plugin.brokers import default_broker

    spec = default_broker()
    assert spec.backend in ("docker", "process") and spec.chosen_because
    if unavailable_reason(spec):
        pytest.skip(f"the default broker cannot run here: {unavailable_reason(spec)}")
    pytester.makepyfile(test_default="""
        import pytest

        @pytest.mark.v311_only
        async def test_it(client_factory, broker):
            assert (await client_factory()).connack.reason_code == 0
    """)
    result = run(pytester, "--report-dir", "out")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"mqtt-harness: broker under test {spec.id} (chosen by default: *)"])
    broker = load(pytester.path / "out" / "report.json").brokers[0]
    assert broker.id == spec.id and broker.notes == [f"chosen by default: {spec.chosen_because}"]


def test_tls_listeners_of_managed_and_url_brokers(pytester, mosquitto, pki):
    require_process("mosquitto")
    pytester.makepyfile(test_tls="""
        import pytest
        from harness.errors import ConnectError

        @pytest.mark.v311_only
        @pytest.mark.requires(tls=True, mtls=True)
        async def test_mtls(client_factory):
            await client_factory("mqtts")
            await client_factory("mqtts-mtls")  # presents the trusted client certificate
            untrusted = await client_factory("mqtts-mtls", cert="client_untrusted", connect=False)
            with pytest.raises(ConnectError):
                await untrusted.open()
    """)
    urls = f"{mosquitto.url('mqtt')},{mosquitto.url('mqtts')}"
    result = run(pytester, "--broker", "mosquitto:process", "--broker", urls, "--mtls-url", mosquitto.url("mqtts-mtls"),
                 "--ca", str(pki.ca), "--cert", str(pki.client_cert), "--key", str(pki.client_key), "-v")
    result.assert_outcomes(passed=2)


def test_unreachable_url_broker_errors_every_test_and_stays_in_the_report(pytester):
    pytester.makepyfile(test_x="""
        async def test_a(client_factory): pass
        async def test_b(client_factory): pass
    """)
    result = run(pytester, "--broker", "mqtt://127.0.0.1:1", "--report-dir", "out")
    result.assert_outcomes(errors=4)
    result.stdout.fnmatch_lines(["*BrokerError: cannot reach mqtt://127.0.0.1:1: tcp: *refused*"])
    report = load(pytester.path / "out" / "report.json")
    assert {r.outcome for r in report.results} == {"error"}
    (broker,) = report.brokers
    assert broker.id == "url-127.0.0.1-1" and broker.notes[0].startswith("not available: cannot reach")


def test_broker_that_dies_during_a_test_fails_it_and_is_restarted(pytester):
    require_process("mosquitto")
    pytester.makepyfile(test_crash="""
        import os, signal

        async def test_a_kills_the_broker(broker, client_factory):
            await client_factory()
            os.kill(broker.instance.pid, signal.SIGKILL)  # stands in for a broker crashing on some input
            broker.instance._proc.wait(timeout=10)

        async def test_b_runs_on_a_fresh_broker(client_factory):
            client = await client_factory()
            await client.ping()
    """)
    result = run(pytester, "--broker", "mosquitto:process", "--mqtt-version", "3.1.1", "--report-dir", "out")
    got = {name: outcome for (name, _, _), (outcome, _) in outcomes(pytester.path / "out").items()}
    assert got == {"test_a_kills_the_broker": "failed", "test_b_runs_on_a_fresh_broker": "passed"}, result.stdout.str()
    report = load(pytester.path / "out" / "report.json")
    crashed = next(r for r in report.results if r.outcome == "failed")
    assert "died during this test: exited with code -9" in crashed.reason
    assert any("crashed during" in note and "restarted" in note for note in report.brokers[0].notes)
