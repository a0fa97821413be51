"""`mqtt-harness statements`: the OASIS normative statements of each MQTT version, and the suite tests that check
each one (from the tests' spec(...) markers, collected without running anything)."""

from __future__ import annotations

import argparse
import json
import shutil
import textwrap
from collections import defaultdict
from pathlib import Path

from harness.cli import CliError


def add_parser(sub) -> None:
    p = sub.add_parser("statements", help="list the spec statements and the tests that cover them",
                       description="List the OASIS normative statements of MQTT 3.1.1 and 5.0 with the suite tests "
                                   "tagged with each (spec markers).",
                       epilog="exit codes: 0 done, 2 usage error, 3 the suites could not be collected")
    p.add_argument("--version", dest="mqtt_version", choices=("3.1.1", "5"), help="one MQTT version (default: both)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--covered", action="store_true", help="only statements some test checks")
    which.add_argument("--uncovered", action="store_true", help="only statements no test checks, grouped: server-side testable (work left), untestable (with the "
                            "reason), client-side")
    p.add_argument("--tests", action="store_true", help="list the covering tests under each statement")
    p.add_argument("--json", action="store_true", help="print JSON: [{id, version, section, text, tests, side, untestable, status}]")
    p.add_argument("--suites", metavar="DIR", help="suites folder (default: as `mqtt-harness run`)")
    p.set_defaults(func=run)


def coverage(suites: str, broker: str = "mqtt://127.0.0.1:9") -> dict[tuple[str, str], set[str]]:
    """(version, statement id) -> ids of the tests that check it, with broker and version parameters removed."""
    import pytest

    from harness.plugin import canonical_test_id, markers

    found: dict[tuple[str, str], set[str]] = defaultdict(set)

    class Collect:
        def pytest_collection_finish(self, session):
            for item in session.items:
                callspec = getattr(item, "callspec", None)
                version = callspec.params.get("mqtt_version") if callspec is not None else None
                for ver in ([version] if version else ["3.1.1", "5"]):
                    for sid in markers.statement_ids(item.iter_markers("spec"), ver):
                        found[(ver, sid)].add(canonical_test_id(item))

    # a URL broker that is never contacted: collection only needs a broker to parametrize over
    argv = [suites, "--collect-only", "-p", "no:terminal", "-p", "no:cacheprovider", "--broker",
            broker, "--mqtt-version", "all"]
    code = pytest.main(argv, plugins=[Collect()])
    if code not in (0, pytest.ExitCode.NO_TESTS_COLLECTED):
        raise CliError(f"could not collect the suites in {suites} (pytest exit {int(code)})", 3)
    return found


# What a statement no test covers is: work left, untestable from outside the broker, or for the device suites.
STATUS_TITLES = {
    "uncovered": "server-side, testable, no test yet (work left)",
    "untestable": "untestable from outside the broker (reason from the catalogue)",
    "client": "client-side (the device suites' part; the broker suites cannot check a client)",
}


def status(st, tests) -> str:
    """"covered", or for a statement without tests: "client", "untestable" or "uncovered"."""
    if tests:
        return "covered"
    if st.side == "client":
        return "client"
    return "untestable" if st.untestable else "uncovered"


def run(args: argparse.Namespace) -> int:
    from harness.cli.run import find_suites
    from harness.spec import statements

    suites = str(find_suites(Path(args.suites) if args.suites else None))
    found = coverage(suites)
    versions = [args.mqtt_version] if args.mqtt_version else ["3.1.1", "5"]
    rows = []
    for version in versions:
        for st in statements(version):
            tests = sorted(found.get((version, st.id), ()))
            if (args.covered and not tests) or (args.uncovered and tests):
                continue
            rows.append({"id": st.id, "version": version, "section": st.section, "text": st.text, "tests": tests,
                         "side": st.side, "untestable": st.untestable, "status": status(st, tests)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = shutil.get_terminal_size((120, 20)).columns
    if args.uncovered:  # grouped: the work left first, then what needs no broker test
        groups = [(STATUS_TITLES[s], [r for r in rows if r["status"] == s]) for s in STATUS_TITLES]
    else:
        groups = [(None, rows)]
    for title, group in groups:
        if title is not None:
            print(f"== {title}: {len(group)}")
        for row in group:
            label = {"client": "client", "untestable": "untestable", "uncovered": "UNCOVERED"}.get(
                row["status"], f"{len(row['tests'])} test{'s' if len(row['tests']) != 1 else ''}")
            head = f"{row['id']:<16} {row['version']:<6} {label:<10}  "
            text = textwrap.shorten(row["text"], max(20, width - len(head)), placeholder="...")
            print(head + text)
            if row["status"] == "untestable":
                print(textwrap.fill(row["untestable"], max(40, width), initial_indent=" " * 18 + "why: ",
                                    subsequent_indent=" " * 23))
            if args.tests:
                for test in row["tests"]:
                    print(f"{'':<30}{test}")
    for version in versions:
        counts = defaultdict(int)
        for st in statements(version):
            counts[status(st, found.get((version, st.id)))] += 1
        total = len(statements(version))
        print(f"MQTT {version}: {counts['covered']} of {total} statements covered by a test, {total - counts['covered']} "
              f"not: {counts['uncovered']} server-side testable (work left), {counts['untestable']} untestable from "
              f"outside the broker, {counts['client']} client-side")
    return 0
