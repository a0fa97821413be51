"""Self-test of the device suites against the virtual device: a correct device passes them all, each seeded bug
fails the tests named for it, and the suites work the same through a port path given to --dut (a virtual device
started separately, as a user would with a board).

Each run is a pytest subprocess with its own virtual device and a mosquitto process broker; outcomes are read from
its report.json, so what is checked is what a user would see."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.device.virtual.bugs import BUGS

ROOT = Path(__file__).resolve().parent.parent
DEVICE = "suites/device"
BROKER = "mosquitto:process"

pytestmark = pytest.mark.skipif(shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists(),
                                reason="mosquitto is not installed (apt install mosquitto): the device self-test "
                                       "runs the device suites against a mosquitto process")

# bug -> the device tests it must fail (file::test name; every parametrization counts unless one is named)
CATCHES = {
    "no-dup": ["test_device_session.py::test_publish_resent_after_a_lost_puback_has_dup_set",
               "test_device_session.py::test_unacknowledged_publish_is_resent_with_dup_after_reconnecting"],
    "late-ping": ["test_device_keepalive.py::test_pingreq_comes_before_the_keepalive_runs_out"],
    "ping-starved": ["test_device_keepalive.py::test_pingreq_keeps_coming_while_messages_arrive"],
    "no-half-open": ["test_device_keepalive.py::test_half_open_connection_is_noticed_and_the_device_reconnects"],
    "clean-replay": ["test_device_session.py::test_clean_session_does_not_get_the_old_in_flight_messages"],
    "publish-not-pubrel": [
        "test_device_session.py::test_pubrel_not_publish_is_resent_after_reconnecting_once_pubrec_came"],
    "session-ignored": ["test_device_connect.py::test_clean_session_flag_follows_disable_clean_session[persistent]",
                        "test_device_session.py::test_persistent_session_gets_the_messages_queued_while_the_device_"
                        "was_offline"],
    "no-will": ["test_device_connect.py::test_configured_will_travels_in_the_connect",
                "test_device_will.py::test_will_is_published_when_the_device_vanishes"],
    "retain-dropped": [
        "test_device_retain.py::test_retained_publish_carries_the_flag_and_is_kept_for_later_subscribers"],
    "wrong-tls-error": ["test_device_tls.py::test_tls_failure_is_reported_with_the_esp_tls_error_a_device_gives"],
    "lost-event": ["test_device_session.py::test_persistent_session_gets_the_messages_queued_while_the_device_"
                   "was_offline"],
    "qos2-twice": ["test_device_qos.py::test_qos2_publish_resent_before_pubrel_is_delivered_to_the_application_once"],
    "big-data-truncated": ["test_device_payloads.py::test_binary_payload_to_the_device_is_reported_whole[20k]"],
}


def run_device_suites(tmp_path: Path, dut: str, selection: list[str], *extra: str) -> dict[str, list[str]]:
    """Run the device suites (or `selection` of them) with --dut `dut`; return outcome -> test ids."""
    report_dir = tmp_path / "report"
    cmd = [sys.executable, "-m", "pytest", *selection, "--dut", dut, "--broker", BROKER, "--report-dir",
           str(report_dir), "-p", "no:cacheprovider", "-q", "--mqtt-version", "3.1.1", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    report = report_dir / "report.json"
    assert report.exists(), f"no report from {' '.join(cmd)}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    outcomes: dict[str, list[str]] = {}
    for result in json.loads(report.read_text())["results"]:
        outcomes.setdefault(result["outcome"], []).append(result["test"])
    outcomes["_output"] = [proc.stdout[-6000:]]
    outcomes["_rc"] = [str(proc.returncode)]
    return outcomes


def _named(test: str) -> str:
    return f"{DEVICE}/{test}"


def _matches(result_id: str, wanted: str) -> bool:
    return result_id == wanted or (("[" not in wanted) and result_id.split("[", 1)[0] == wanted)


def test_every_bug_has_tests_that_must_catch_it():
    assert set(CATCHES) == set(BUGS), f"bugs without named tests: {set(BUGS) - set(CATCHES)}; " \
                                      f"named tests for unknown bugs: {set(CATCHES) - set(BUGS)}"


def test_correct_virtual_device_passes_every_device_test(tmp_path):
    outcomes = run_device_suites(tmp_path, "virtual", [DEVICE], "-n", "2")
    bad = outcomes.get("failed", []) + outcomes.get("error", [])
    assert not bad, f"a correct device failed: {bad}\n{outcomes['_output'][0]}"
    assert len(outcomes.get("passed", [])) >= 30, outcomes
    skipped = outcomes.get("skipped", [])
    assert all("mtls" in s or "brokers_own" in s for s in skipped), f"unexpected skips: {skipped}"


@pytest.mark.parametrize("bug", sorted(CATCHES))
def test_seeded_bug_fails_the_tests_named_for_it(tmp_path, bug):
    selection = sorted({_named(t).split("[", 1)[0] for t in CATCHES[bug]})
    outcomes = run_device_suites(tmp_path, f"virtual:{bug}", selection)
    failed = outcomes.get("failed", []) + outcomes.get("error", [])
    for wanted in CATCHES[bug]:
        assert any(_matches(f, _named(wanted)) for f in failed), \
            f"bug {bug} was not caught by {wanted}; failed: {failed}\n{outcomes['_output'][0]}"


def test_device_suites_pass_through_a_port_path_to_a_separately_started_virtual_device(tmp_path):
    """What a user with a board does: the device is already there, --dut names its port; two workers share it
    (the port lock makes them take turns)."""
    proc = subprocess.Popen([sys.executable, "-m", "harness", "dut", "virtual"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        path = proc.stdout.readline().strip()
        assert path.startswith("/dev/pts/"), f"dut virtual printed {path!r}; stderr: {proc.stderr.read()[-2000:]}"
        outcomes = run_device_suites(tmp_path, path, [DEVICE], "-n", "2")
        bad = outcomes.get("failed", []) + outcomes.get("error", [])
        assert not bad, f"failed through {path}: {bad}\n{outcomes['_output'][0]}"
        assert len(outcomes.get("passed", [])) >= 30
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# the device tests that rely on esp-mqtt behaviours the host build announces under `differs`
HOST_DIFFERS = {
    "test_device_keepalive.py::test_pingreq_comes_before_the_keepalive_runs_out",
    "test_device_keepalive.py::test_pingreq_keeps_coming_while_messages_arrive",
    "test_device_keepalive.py::test_half_open_connection_is_noticed_and_the_device_reconnects",
    "test_device_session.py::test_publish_resent_after_a_lost_puback_has_dup_set",
    "test_device_session.py::test_clean_session_does_not_get_the_old_in_flight_messages",
}


@pytest.mark.parametrize("dut", ["host", "host:asan"])
def test_host_build_of_the_firmware_passes_the_device_suites(tmp_path, dut):
    """The firmware's C core on Linux: every device test passes, except those that need an esp-mqtt behaviour
    libmosquitto does not have, which skip with the device's reason; a sanitizer report would fail the run."""
    from harness.device import host_build

    if host_build.missing_packages():
        pytest.skip(f"the host build needs {', '.join(host_build.missing_packages())}: {host_build.APT_HINT}")
    outcomes = run_device_suites(tmp_path, dut, [DEVICE], "-n", "2", "-rs")
    bad = outcomes.get("failed", []) + outcomes.get("error", [])
    assert not bad, f"--dut {dut} failed: {bad}\n{outcomes['_output'][0]}"
    assert outcomes["_rc"] == ["0"], f"--dut {dut}: pytest exited {outcomes['_rc'][0]}\n{outcomes['_output'][0]}"
    skipped = {t.split("[", 1)[0] for t in outcomes.get("skipped", []) if "mtls" not in t}
    assert skipped == {_named(t) for t in HOST_DIFFERS}, outcomes
    assert outcomes["_output"][0].count("differs from esp-mqtt in") >= len(HOST_DIFFERS), outcomes["_output"][0]
    assert len(outcomes.get("passed", [])) >= 30, outcomes
