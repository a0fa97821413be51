"""The property-based suite has teeth, and its failures replay: against mosquitto behind a broken-broker rule set
the model test fails, the report holds the shrunk history as a script, and that script, run as a user would,
fails the same way behind the same rule set and passes against the plain broker.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.plugin.brokers import parse_broker, unavailable_reason
from harness.proxy.broken import rule_set

REPO = Path(__file__).resolve().parent.parent
MODEL_TEST = "suites/test_model.py::test_random_histories_agree_with_the_model"
BUG = "qos2-delivered-twice"
RUN_TIMEOUT = 600


@pytest.fixture
def failed_model_run(tmp_path) -> dict:
    reason = unavailable_reason(parse_broker("mosquitto:process"))
    if reason:
        pytest.skip(reason)
    report_dir = tmp_path / "report"
    command = [sys.executable, "-m", "pytest", MODEL_TEST, "--broker", "mosquitto:process", "--broken", BUG,
               "--mqtt-version", "3.1.1", "-q", "-p", "no:cacheprovider", "--report-dir", str(report_dir)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    path = report_dir / "report.json"
    assert path.exists(), f"no report from {' '.join(command)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    (result,) = json.loads(path.read_text())["results"]
    return result


def _script(failure: str) -> str:
    match = re.search(r"^import sys\n.*?^    state\.teardown\(\)\n", failure, re.S | re.M)
    assert match, f"no replay script in the failure text:\n{failure[:3000]}"
    return match.group(0)


def _replay(script: str, url: str, tmp_path: Path) -> subprocess.CompletedProcess:
    script, count = re.subn(r"Target\.at\('[^']+'", f"Target.at({url!r}", script)
    assert count == 1
    path = tmp_path / "replay.py"
    path.write_text(script)
    return subprocess.run([sys.executable, str(path)], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_model_suite_catches_a_seeded_bug_and_its_replay_script_reproduces_it(
        failed_model_run, mosquitto, proxy, tmp_path):
    # one test, not two: under xdist two tests could each pay for the ~40 s failing run
    assert failed_model_run["outcome"] == "failed"
    failure = failed_model_run["artifacts"]["failure"]
    assert "arrived 2 times" in failure and "[MQTT-4.3.3-1]" in failure
    assert failed_model_run["artifacts"]["clients"], "the packet logs of the failing example are attached"

    script = _script(failure)
    assert script.count("state.publish(") <= 5, f"the history did not shrink:\n{script}"

    p = proxy(mosquitto.url("mqtt"))
    for rule in rule_set(BUG).build():
        p.add_rule(rule)
    broken = _replay(script, p.url, tmp_path)
    assert broken.returncode != 0 and "arrived 2 times" in broken.stderr, broken.stdout + broken.stderr

    plain = _replay(script, mosquitto.url("mqtt"), tmp_path)
    assert plain.returncode == 0, plain.stdout + plain.stderr
