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
    which.add_argument("--uncovered", action="store_true", help="only statements no test checks")
    p.add_argument("--tests", action="store_true", help="list the covering tests under each statement")
    p.add_argument("--json", action="store_true", help="print JSON: [{id, version, section, text, tests}]")
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


def run(args: argparse.Namespace) -> int:
    from harness.cli.run import find_suites
    from harness.spec import statements

    suites = str(find_suites(Path(args.suites) if args.suites else None))
    found = coverage(suites)
    rows = []
    for version in ([args.mqtt_version] if args.mqtt_version else ["3.1.1", "5"]):
        for st in statements(version):
            tests = sorted(found.get((version, st.id), ()))
            if (args.covered and not tests) or (args.uncovered and tests):
                continue
            rows.append({"id": st.id, "version": version, "section": st.section, "text": st.text, "tests": tests})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = shutil.get_terminal_size((120, 20)).columns
    for row in rows:
        head = f"{row['id']:<16} {row['version']:<6} {len(row['tests']):>3} test{'s' if len(row['tests']) != 1 else ' '}  "
        text = textwrap.shorten(row["text"], max(20, width - len(head)), placeholder="...")
        print(head + text)
        if args.tests:
            for test in row["tests"]:
                print(f"{'':<30}{test}")
    for version in ([args.mqtt_version] if args.mqtt_version else ["3.1.1", "5"]):
        total = len(statements(version))
        covered = sum(1 for st in statements(version) if found.get((version, st.id)))
        print(f"MQTT {version}: {covered} of {total} statements covered by a test, {total - covered} not")
    return 0
