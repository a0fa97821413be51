"""Shared by the benchmarks: results folders, the environment record, number formatting, writing results."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from importlib import metadata
from pathlib import Path

from bench import perflab

RESULTS = perflab.REPO / "bench" / "results"  # gitignored
PACKAGES = ("paho-mqtt", "gmqtt", "scapy")


def new_run_dir() -> Path:
    path = RESULTS / time.strftime("%Y%m%d-%H%M%S")
    path.mkdir(parents=True, exist_ok=False)
    return path


def environment() -> dict:
    """What the numbers depend on: machine, load, versions, the commit measured."""
    def run(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=perflab.REPO).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": run("git", "rev-parse", "--short", "HEAD"),
        "uncommitted_changes": bool(run("git", "status", "--porcelain", "--", "harness", "bench")),
        "python": platform.python_version(),
        "packages": versions,
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "kernel": platform.release(),
        "perf_lab": str(perflab.lab_dir()),
    }


def median(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fnum(x: float | None, digits: int = 0) -> str:
    return "–" if x is None else f"{x:,.{digits}f}"


def spread(xs, digits: int = 0) -> str:
    """'median (min–max)', or just the value for one rep."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    if len(xs) == 1:
        return fnum(xs[0], digits)
    return f"{fnum(statistics.median(xs), digits)} ({fnum(min(xs), digits)}–{fnum(max(xs), digits)})"


def targets_markdown(targets: list[dict]) -> str:
    lines = ["| target | measured | met |", "|---|---|---|"]
    for t in targets:
        lines.append(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**NO**'} |")
    return "\n".join(lines)


def write(run_dir: Path, results: dict, markdown: str) -> None:
    (run_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (run_dir / "summary.md").write_text(markdown + "\n")


def json_line(obj) -> str:
    return json.dumps(obj) + "\n"
