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
    assert f"MQTT 3.1.1: {len(covered)} of 141 statements covered by a test, {len(uncovered)} not: " in text


def test_uncovered_sorts_work_left_from_untestable_and_client_side():
    """--uncovered tells the work left (server-side, testable) from statements no broker test can check: those
    untestable from outside (with the catalogue's reason) and client-side ones (the device suites' part)."""
    rows = json.loads(mh("statements", "--json", "--uncovered").stdout)
    statuses = {(r["version"], r["id"]): r["status"] for r in rows}
    assert statuses[("3.1.1", "MQTT-7.0.0-1")] == "untestable"  # bridging: outbound connections
    assert statuses[("5", "MQTT-4.6.0-2")] == "client"          # the Client's PUBACK order
    for r in rows:
        assert not r["tests"]
        want = "client" if r["side"] == "client" else ("untestable" if r["untestable"] else "uncovered")
        assert r["status"] == want, r
    text = mh("statements", "--uncovered").stdout
    work, untestable, client = (text.index("== " + t) for t in (
        "server-side, testable, no test yet", "untestable from outside the broker", "client-side"))
    assert work < untestable < client
    assert "why: concerns a Server's outbound connections" in text
    counts = {s: sum(1 for r in rows if r["version"] == "5" and r["status"] == s)
              for s in ("uncovered", "untestable", "client")}
    assert (f"{counts['uncovered']} server-side testable (work left), {counts['untestable']} untestable from outside "
            f"the broker, {counts['client']} client-side") in text


def test_no_statement_is_both_covered_and_untestable():
    """A test that checks a statement marked untestable means the reason is wrong (or the test claims too much)."""
    rows = json.loads(mh("statements", "--json", "--covered").stdout)
    both = [(r["version"], r["id"]) for r in rows if r["untestable"]]
    assert not both, f"covered by a test yet marked untestable in the catalogue: {both}"


def test_every_server_side_statement_is_covered_or_says_why_not():
    """Issue 12 item 13: each server-side MUST / MUST NOT of both versions has a suite test, or its catalogue entry
    says why it cannot be checked from outside the broker. What is left is client-side (the device suites)."""
    rows = json.loads(mh("statements", "--json", "--uncovered").stdout)
    left = [(r["version"], r["id"]) for r in rows if r["status"] == "uncovered"]
    assert not left, f"server-side statements with neither a test nor an untestable reason: {left}"
