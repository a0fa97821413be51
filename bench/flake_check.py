"""Flake check: run the conformance suites several times in a row against one broker and check that every test
has the same outcome in every run.

    .venv/bin/python -m bench.flake_check                 # 20 runs: every suite, mosquitto:process, -n auto
    .venv/bin/python -m bench.flake_check --runs 5 suites/test_qos.py --broker nats -n 4

Each run is `mqtt-harness run --broker B -n N --report-dir OUT/run-NN [PATH ...]` in its own process; its
report.json is what is compared, not its exit status (a test that fails the same way every time is a finding,
not a flake). A test whose outcome differs between runs, that is missing from a run, or that a rerun plugin ran
again, is a flake: it is listed with each run's outcome and reason. Prints each run's wall time and outcome
counts, then the median, min and max wall time. Writes OUT/summary.json (default OUT:
bench/results/flake-<timestamp>/; every run's output is in run-NN/output.log). Exit status 1 on a flake or a run
that wrote no report.

A script, not a test: it asserts nothing about timing.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from harness.report import FILES, ReportError, load
from harness.report.model import OUTCOMES

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"  # gitignored


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.flake_check", description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="*", metavar="PATH", help="suite files or folders (default: every suite)")
    p.add_argument("--runs", type=int, default=20, help="how many runs (default: %(default)s)")
    p.add_argument("--broker", action="append", metavar="NAME|URL",
                   help="broker under test, repeatable (default: mosquitto:process)")
    p.add_argument("-n", default="auto", metavar="N", help="xdist workers per run (default: %(default)s)")
    p.add_argument("--out", type=Path, metavar="DIR", help="results folder (default: bench/results/flake-<time>)")
    p.add_argument("--run-timeout", type=float, default=3600, metavar="SECONDS",
                   help="give up on a run after this long (default: %(default)s)")
    p.add_argument("--harness-args", default="", metavar="ARGS",
                   help="more `mqtt-harness run` arguments, quoted: --harness-args \"--pytest '-p no:cacheprovider'\"")
    args = p.parse_args(argv)
    if args.runs < 2:
        p.error("--runs must be at least 2: a flake shows as a difference between runs")
    return args


def run_once(args: argparse.Namespace, folder: Path) -> tuple[float, int]:
    """One `mqtt-harness run` into `folder`; returns (wall seconds, exit status; -1 if it timed out)."""
    folder.mkdir(parents=True)
    command = [sys.executable, "-m", "harness", "run", "-n", args.n, "--report-dir", str(folder)]
    for broker in args.broker or ["mosquitto:process"]:
        command += ["--broker", broker]
    command += shlex.split(args.harness_args) + args.paths
    started = time.monotonic()
    with open(folder / "output.log", "w") as output:
        output.write(" ".join(shlex.quote(part) for part in command) + "\n\n")
        output.flush()
        try:
            status = subprocess.run(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT,
                                    timeout=args.run_timeout).returncode
        except subprocess.TimeoutExpired:
            status = -1  # subprocess.run killed it; its brokers are reaped by the next run's start
    return time.monotonic() - started, status


def outcomes_of(folder: Path) -> "Outcomes | None":
    """nodeid -> (outcome, reason, reruns) from the run's report.json; None if there is none."""
    try:
        report = load(folder / FILES["json"])
    except ReportError:
        return None
    return {r.nodeid: (r.outcome, r.reason, r.reruns) for r in report.results}


Outcomes = dict[str, tuple[str, str, int]]


def flakes(runs: dict[int, Outcomes]) -> dict[str, dict[int, tuple[str, str, int]]]:
    """Tests whose outcome is not the same in every run (or that were rerun): nodeid -> {run number: result}."""
    found = {}
    for nodeid in sorted(set().union(*runs.values())):
        seen = {number: run.get(nodeid, ("absent", "not in this run's report", 0)) for number, run in runs.items()}
        if len({outcome for outcome, _, _ in seen.values()}) > 1 or any(r for _, _, r in seen.values()):
            found[nodeid] = seen
    return found


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or RESULTS / time.strftime("flake-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=args.out is not None)
    print(f"flake check: {args.runs} runs of {' '.join(args.paths) or 'every suite'} against "
          f"{', '.join(args.broker or ['mosquitto:process'])} (-n {args.n}); results in {out}", flush=True)
    walls: list[float] = []
    runs: dict[int, Outcomes] = {}
    missing: list[int] = []
    for number in range(1, args.runs + 1):
        folder = out / f"run-{number:02d}"
        wall, status = run_once(args, folder)
        walls.append(wall)
        outcomes = outcomes_of(folder)
        if outcomes is None:
            missing.append(number)
            print(f"run {number:2d}: {wall:7.1f} s  exit {status}: no report (see {folder / 'output.log'})",
                  flush=True)
            continue
        runs[number] = outcomes
        counts = Counter(outcome for outcome, _, _ in outcomes.values())
        shown = ", ".join(f"{counts[o]} {o}" for o in OUTCOMES if counts[o])
        print(f"run {number:2d}: {wall:7.1f} s  exit {status}  {len(outcomes)} results: {shown}", flush=True)

    print(f"\nwall time per run: median {statistics.median(walls):.1f} s, min {min(walls):.1f} s, "
          f"max {max(walls):.1f} s ({len(walls)} runs)")
    flaky = flakes(runs) if len(runs) > 1 else {}
    for nodeid, seen in flaky.items():
        print(f"\nFLAKE {nodeid}")
        for number, (outcome, reason, reruns) in seen.items():
            rerun = f" after {reruns} rerun(s)" if reruns else ""
            print(f"  run {number:2d}: {outcome}{rerun}{': ' + reason[:300] if reason else ''}")
    if missing:
        print(f"\nruns without a report: {', '.join(map(str, missing))}")
    if not flaky and not missing:
        total = len(next(iter(runs.values()))) if runs else 0
        print(f"\nno flake: each of the {total} results was the same in all {len(runs)} runs")
    summary = {"runs": args.runs, "paths": args.paths, "brokers": args.broker or ["mosquitto:process"], "n": args.n,
               "wall_seconds": [round(w, 3) for w in walls], "median": round(statistics.median(walls), 3),
               "min": round(min(walls), 3), "max": round(max(walls), 3), "runs_without_report": missing,
               "flakes": {nodeid: {str(n): list(r) for n, r in seen.items()} for nodeid, seen in flaky.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if flaky or missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
