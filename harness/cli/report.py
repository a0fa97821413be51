"""`mqtt-harness report ...`: combine, compare, re-render and check report.json files of conformance runs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness.cli import CliError
from harness.report import FILES, ReportError, load, write_reports
from harness.report.compare import diff, merge


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    report = subparsers.add_parser("report", help="merge, diff, render and validate conformance reports")
    sub = report.add_subparsers(dest="report_command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser("merge", help="combine runs (e.g. one per broker) into one matrix")
    p.add_argument("reports", nargs="+", type=Path, metavar="REPORT",
                   help="report.json files or run directories, oldest first (later runs win for the same result)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="DIR",
                   help="directory for the merged report.json, report.html and junit.xml")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("diff", help="regressions and fixes between two runs; exit 1 if anything regressed")
    p.add_argument("old", type=Path, metavar="OLD")
    p.add_argument("new", type=Path, metavar="NEW")
    p.add_argument("--json", action="store_true", help="print the differences as JSON")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("render", help="write report.html and junit.xml again from a report.json")
    p.add_argument("report", type=Path, metavar="REPORT")
    p.add_argument("-o", "--output", type=Path, metavar="DIR", help="directory (default: the report's own)")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("validate", help="check report.json files against the schema (harness/report/SCHEMA.md)")
    p.add_argument("reports", nargs="+", type=Path, metavar="REPORT")
    p.set_defaults(func=cmd_validate)


def _load(path: Path):
    """A report from a report.json path or a run directory holding one."""
    if path.is_dir():
        path = path / FILES["json"]
    try:
        return path, load(path)
    except ReportError as exc:
        raise CliError(str(exc)) from None


def cmd_merge(args: argparse.Namespace) -> int:
    merged = merge([_load(p) for p in args.reports])
    paths = write_reports(merged, args.output)
    print(f"merged {len(args.reports)} runs: {len(merged.brokers)} brokers, {len(merged.results)} results")
    for path in paths.values():
        print(f"  {path}")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    (_, old), (_, new) = _load(args.old), _load(args.new)
    old_ids, new_ids = {b.id for b in old.brokers}, {b.id for b in new.brokers}
    if old_ids and new_ids and not old_ids & new_ids:
        raise CliError(f"nothing to compare: the reports have no broker in common ({args.old}: "
                       f"{', '.join(sorted(old_ids))}; {args.new}: {', '.join(sorted(new_ids))}). Diff runs of the "
                       "same broker, or merge them instead: mqtt-harness report merge", 2)
    changes = diff(old, new)
    groups = {"regressions": changes.regressions, "fixes": changes.fixes, "new failures": changes.new_failures,
              "other changes": changes.other}
    if args.json:
        print(json.dumps({name.replace(" ", "_"): [vars(c) for c in items] for name, items in groups.items()},
                         indent=1))
    else:
        for name, items in groups.items():
            print(f"{name}: {len(items)}")
            for change in items:
                print(f"  {change.line()}")
    return 1 if changes.regressions else 0


def cmd_render(args: argparse.Namespace) -> int:
    path, report = _load(args.report)
    for written in write_reports(report, args.output or path.parent).values():
        print(written)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Every file is checked and every problem shown; exit 1 if any file is invalid."""
    bad = 0
    for given in args.reports:
        path = given / FILES["json"] if given.is_dir() else given
        try:
            report = load(path)
        except ReportError as exc:
            bad += 1
            if exc.problems:
                print(f"{path}: invalid, {len(exc.problems)} problem(s):")
                for problem in exc.problems:
                    print(f"  {problem}")
            else:
                print(exc)
            continue
        print(f"{path}: valid (schema version 1, {len(report.results)} results)")
    if bad:
        raise CliError(f"{bad} of {len(args.reports)} reports invalid")
    return 0
