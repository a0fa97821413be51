"""Reports of conformance runs: the model (model.py, versioned JSON described in SCHEMA.md), and its renderings:
report.html (html.py, self-contained), junit.xml (junit.py); merging runs and diffing two (compare.py)."""

from __future__ import annotations

from pathlib import Path

from harness.report.model import Report, ReportError, load, save

FILES = {"json": "report.json", "html": "report.html", "junit": "junit.xml"}


def write_reports(report: Report, directory: str | Path) -> dict[str, Path]:
    """Write report.json, report.html and junit.xml into `directory` (created if needed); returns their paths."""
    from harness.report import html, junit

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return {
        "json": save(report, directory / FILES["json"]),
        "html": html.write(report, directory / FILES["html"]),
        "junit": junit.write(report, directory / FILES["junit"]),
    }


__all__ = ["FILES", "Report", "ReportError", "load", "save", "write_reports"]
