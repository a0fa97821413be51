"""Narrowing a run to spec statements, and listing which statements the suites cover."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.plugin import statement_matches

ROOT = Path(__file__).resolve().parent.parent


def mh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("sid, prefix, hit", [
    ("MQTT-3.3.1-6", "MQTT-3.3.1-6", True), ("MQTT-3.3.1-6", "MQTT-3.3", True), ("MQTT-3.3.1-6", "MQTT-3.3.1-", True),
    ("MQTT-3.3.1-10", "MQTT-3.3.1-1", False), ("MQTT-3.31.1-1", "MQTT-3.3", False), ("MQTT-3.3.1-6", "MQTT-4", False),
])
def test_statement_prefix_matches_whole_parts_only(sid, prefix, hit):
    assert statement_matches(sid, prefix) is hit


def test_run_statement_selects_exactly_the_tagged_tests():
    proc = mh("run", "--list", "--statement", "3.3.1-6", "--broker", "mosquitto:process")
    assert proc.returncode == 0, proc.stderr
    listed = {line.split("[", 1)[0] for line in proc.stdout.splitlines()}
    covered = json.loads(mh("statements", "--json", "--covered").stdout)
    tagged = {t.split("[", 1)[0] for row in covered if row["id"] == "MQTT-3.3.1-6" for t in row["tests"]}
    assert listed == tagged and listed, (listed, tagged)


def test_statements_lists_covered_and_uncovered_with_totals():
    full = json.loads(mh("statements", "--json", "--version", "3.1.1").stdout)
    assert len(full) == 141
    covered = json.loads(mh("statements", "--json", "--version", "3.1.1", "--covered").stdout)
    uncovered = json.loads(mh("statements", "--json", "--version", "3.1.1", "--uncovered").stdout)
    assert len(covered) + len(uncovered) == 141 and all(r["tests"] for r in covered)
    assert not any(r["tests"] for r in uncovered)
    text = mh("statements", "--version", "3.1.1", "--uncovered").stdout
    assert f"MQTT 3.1.1: {len(covered)} of 141 statements covered by a test, {len(uncovered)} not" in text
