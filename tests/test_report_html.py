"""report.html in a real headless Chromium: it renders offline, the matrix is there, and a failure's detail panel
opens from its matrix cell (URL fragment)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.report import html
from harness.report.model import Artifacts, BrokerInfo, ClientLog, Report, Result, RunInfo

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "profile"
    profile.mkdir(exist_ok=True)
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=90)


@pytest.fixture
def report_file(tmp_path) -> Path:
    log = ClientLog("sub", "mh-1-1", "mqtt://127.0.0.1:1883", "5", [
        {"t": 0.0, "dir": "out", "conn": 1, "packet": "SUBSCRIBE(pid=1, 'mh/x/a'/q1)", "error": None},
        {"t": 0.001, "dir": "in", "conn": 1, "packet": "PUBLISH(topic='mh/x/a', qos=0)", "error": None}])
    results = [
        Result("suites/test_publish.py::test_qos1_delivery", "n1", "test_publish", "mosquitto-docker", "5", "failed",
               ["MQTT-3.3.2-3"], 0.2, "ExpectationFailed: sub: expected PUBLISH(qos=1)",
               artifacts=Artifacts([log], "New client connected\n", "PUBLISH(topic='mh/x/a', qos=1)",
                                   ["PUBLISH(topic='mh/x/a', qos=0)   <- qos: expected 1, got 0"], "Traceback ...")),
        Result("suites/test_publish.py::test_qos1_delivery", "n2", "test_publish", "nats-process", "5", "skipped",
               reason="nats:process lacks MQTT 5 [v5]"),
        Result("suites/test_connect.py::test_accepted", "n3", "test_connect", "mosquitto-docker", "3.1.1", "passed",
               ["MQTT-3.2.0-1"], 0.01),
        Result("suites/test_connect.py::test_accepted", "n4", "test_connect", "nats-process", "3.1.1", "xfailed",
               ["MQTT-3.2.0-1"], 0.01, "known limit"),
    ]
    report = Report(RunInfo(id="20260101T000000Z-abc", started="2026-01-01T00:00:00+00:00", harness_version="0.1.0"),
                    [BrokerInfo("mosquitto-docker", "mosquitto", "docker", {"mqtt": ["mqtt://127.0.0.1:1883"]},
                                "Eclipse Mosquitto", "mosquitto 2.0.11", "2.0.11", {"max_qos": 2}, "profile"),
                     BrokerInfo("nats-process", "nats", "process", {"mqtt": ["mqtt://127.0.0.1:4222"]})],
                    results)
    return html.write(report, tmp_path / "report.html")


def test_page_is_self_contained(report_file):
    text = report_file.read_text()
    assert not re.search(r"""(src|href)=['"](https?:)?//""", text)  # nothing loaded from anywhere
    assert "@import" not in text and "url(" not in text


def test_matrix_renders_and_a_failure_detail_opens(report_file, tmp_path):
    page = report_file.as_uri()
    dom = chromium(tmp_path, "--dump-dom", page).stdout
    assert 'data-ready="1"' in dom  # the script ran
    rows = re.findall(r'<tr class="row"[^>]*>(.*?)</tr>', dom, re.S)
    assert len(rows) == 2 and all(row.count("class=\"cell\"") == 2 for row in rows)
    fail_link = re.search(r'<a class="pill failed" href="#(r-\d+)"', dom).group(1)
    assert "data-open" not in re.search(r"<body[^>]*>", dom).group()

    dom = chromium(tmp_path, "--dump-dom", f"{page}#{fail_link}").stdout
    assert f'data-open="{fail_link}"' in re.search(r"<body[^>]*>", dom).group()
    detail = re.search(rf'<section class="detail open" id="{fail_link}".*?</section>', dom, re.S).group()
    assert "qos: expected 1, got 0" in detail and "New client connected" in detail
    assert "The Topic Name in a PUBLISH packet sent by a Server" in detail  # statement text from the catalogue

    shot = tmp_path / "detail.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,900", f"{page}#{fail_link}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
