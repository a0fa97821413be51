"""Finding and importing the perf-lab scripts, so our numbers come from their method and code.

The lab lives outside the repo (default ../shared/research/perf-lab next to it); set PERF_LAB to move it.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent
ENV = "PERF_LAB"
DEFAULT = REPO.parent / "shared" / "research" / "perf-lab"
NEEDED = ("tp_client.py", "bench_throughput.py", "bench_codec.py", "mosquitto.conf")


def lab_dir() -> Path:
    """The perf-lab folder; exits with a message naming PERF_LAB if it is not there."""
    path = Path(os.environ.get(ENV) or DEFAULT).resolve()
    missing = [name for name in NEEDED if not (path / name).is_file()]
    if missing:
        raise SystemExit(f"perf-lab scripts not found: {path} lacks {', '.join(missing)}; "
                         f"set {ENV}=/path/to/perf-lab (the folder holding {', '.join(NEEDED)})")
    return path


def load(name: str) -> ModuleType:
    """Import one of the lab's modules (tp_client, bench_throughput, bench_codec) by name."""
    path = str(lab_dir())
    if path not in sys.path:
        sys.path.append(path)
    return importlib.import_module(name)


def subprocess_env() -> dict[str, str]:
    """Environment for client subprocesses: they import both `bench` (repo root) and the lab's tp_client."""
    env = dict(os.environ)
    paths = [str(REPO), str(lab_dir())]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env[ENV] = str(lab_dir())
    return env
