"""The suites have teeth: every broken-broker rule set (harness.proxy.broken) makes exactly the suite tests it
names in `caught_by` fail, the other tests it selects still pass, and without a rule set they all pass.

Each check runs the suites as a user would (pytest in a subprocess, --broker mosquitto:process, --broken NAME)
and reads the outcomes from report.json. A rule set that no suite test catches is a strict xfail naming the gap.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.plugin.brokers import parse_broker, unavailable_reason
from harness.proxy.broken import RULE_SETS, BrokenRuleSet, rule_set
from harness.report.validate import validate

REPO = Path(__file__).resolve().parent.parent
SUITES = REPO / "suites"
RUN_TIMEOUT = 900
FAILING = ("failed", "error")
# Clients and expectations wait 3 s instead of 5: a caught bug usually shows as a wait that runs out.
RUN_OPTIONS = ["--broker", "mosquitto:process", "-q", "-p", "no:cacheprovider", "-n", "2", "--wait-timeout", "3"]


@pytest.fixture(scope="module", autouse=True)
def mosquitto_process() -> None:
    reason = unavailable_reason(parse_broker("mosquitto:process"))
    if reason:
        pytest.skip(reason)


def run_suites(targets: list[str] | tuple[str, ...], report_dir: Path, *extra: str) -> dict:
    """Run suite files (or file::test) and return the validated report.json."""
    command = [sys.executable, "-m", "pytest", *[f"suites/{t}" for t in targets], *RUN_OPTIONS,
               "--report-dir", str(report_dir), *extra]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    path = report_dir / "report.json"
    assert path.exists(), f"no report from {' '.join(command)}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    data = json.loads(path.read_text())
    assert validate(data) == []
    return data


def outcomes(data: dict) -> dict[tuple[str, str | None], tuple[str, str]]:
    """(test id, MQTT version) -> (outcome, reason)."""
    return {(r["test"], r["mqtt_version"]): (r["outcome"], r["reason"]) for r in data["results"]}


def listing(keys, results) -> str:
    return "\n".join(f"  {test} @{version}: {results[(test, version)][0]} {results[(test, version)][1][:200]}"
                     for test, version in sorted(keys, key=str))


def all_targets() -> list[str]:
    """Every file the rule sets select (a file::test entry is covered when its whole file is selected)."""
    targets = {t for rs in RULE_SETS.values() for t in rs.suites}
    return sorted(t for t in targets if "::" not in t or t.split("::")[0] not in targets)


# ---------------------------------------------------------------------------------------- the rule sets as data

def test_caught_by_entries_match_by_name_parameters_and_version():
    rs = BrokenRuleSet("x", "bug", (), ("test_a.py::test_one", "test_a.py::test_two[qos1]", "test_b.py::test_v@5",
                                        "test_c.py::test_w[1-*]"), ("test_a.py",))
    tests = ("test_a.py::test_one", "test_a.py::test_one[qos2]", "test_a.py::test_one_more",
             "test_a.py::test_two[qos1]", "test_a.py::test_two[qos2]", "test_c.py::test_w[1-sub0]",
             "test_c.py::test_w[0-sub1]", "test_a.py::test_one[a/#]")
    caught = [t for t in tests if rs.catches(f"suites/{t}", "3.1.1")]
    assert caught == ["test_a.py::test_one", "test_a.py::test_one[qos2]", "test_a.py::test_two[qos1]",
                      "test_c.py::test_w[1-sub0]", "test_a.py::test_one[a/#]"]
    assert rs.catches("suites/test_b.py::test_v", "5") and not rs.catches("suites/test_b.py::test_v", "3.1.1")
    with pytest.raises(ValueError, match="unknown broken-broker rule set 'nope'; known: retain-flag-cleared"):
        rule_set("nope")


@pytest.mark.parametrize("name", RULE_SETS)
def test_rule_set_names_existing_tests_and_builds(name):
    rs = RULE_SETS[name]
    defined: dict[str, set[str]] = {}
    for entry in (*rs.caught_by, *rs.suites):
        file, _, test = entry.partition("@")[0].partition("::")
        if file not in defined:
            assert (SUITES / file).exists(), f"{name}: no suites/{file}"
            tree = ast.parse((SUITES / file).read_text())
            defined[file] = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        if test:
            assert test.split("[")[0] in defined[file], f"{name}: suites/{file} has no {test.split('[')[0]}"
    assert all(any(c.startswith(s.split("::")[0]) for s in rs.suites) for c in rs.caught_by), (
        f"{name}: a caught_by test is outside the files its self-test runs")
    assert rs.build() and rs.bug



def test_unknown_rule_set_is_a_usage_error():
    done = subprocess.run([sys.executable, "-m", "pytest", "suites/test_smoke.py", "--broker", "mosquitto:process",
                           "--broken", "nope", "-p", "no:cacheprovider"], cwd=REPO, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT)
    assert done.returncode == 4, done.stdout + done.stderr
    assert "--broken: unknown broken-broker rule set 'nope'; known: retain-flag-cleared" in done.stderr


# ------------------------------------------------------------------------------------------- against mosquitto

def test_selected_suites_pass_without_a_rule_set(tmp_path):
    data = run_suites(all_targets(), tmp_path)
    results = outcomes(data)
    bad = {k for k, (outcome, _) in results.items() if outcome in FAILING or outcome == "xpassed"}
    assert not bad, f"suite tests that fail on mosquitto without a rule set:\n{listing(bad, results)}"
    assert not any("BROKEN-BROKER" in note for b in data["brokers"] for note in b["notes"])


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=[] if rs.caught_by else pytest.mark.xfail(
        strict=True, reason=f"gap in the suites: no test catches {name!r} ({rs.bug})"))
    for name, rs in RULE_SETS.items()])
def test_rule_set_is_caught_by_exactly_the_tests_it_names(name, tmp_path):
    rs = RULE_SETS[name]
    data = run_suites(rs.suites, tmp_path, "--broken", name)
    (broker,) = data["brokers"]
    assert broker["id"] == f"mosquitto-process-broken-{name}"
    assert any(note.startswith(f"BROKEN-BROKER MODE: rule set {name!r}") for note in broker["notes"])
    assert "--broken" in data["run"]["args"]
    results = outcomes(data)
    expected = {k for k in results if rs.catches(*k)}
    assert expected, f"{name}: none of the tests it runs is named in caught_by"
    failed = {k for k, (outcome, _) in results.items() if outcome in FAILING}
    missed, collateral = expected - failed, failed - expected
    assert not missed and not collateral, (
        f"{name} ({rs.bug})\nnamed in caught_by, but did not fail:\n{listing(missed, results)}\n"
        f"failed, but not named in caught_by:\n{listing(collateral, results)}")
