"""A local mosquitto for benchmarks: the perf lab's mosquitto.conf on a free 127.0.0.1 port, stopped by PID.

A pid file in the results folder lets the next run stop a broker that a crashed run left behind; the PID is
only signalled if that process's command line names this module's config file.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from bench import perflab

CONFIG_NAME = "bench-mosquitto.conf"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
ATTEMPTS = 5  # another process may take the free port before mosquitto binds it


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def reap(pidfile: Path) -> None:
    """Stop a broker a previous crashed run left behind (recorded in `pidfile`)."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pidfile.unlink(missing_ok=True)
        return
    if CONFIG_NAME in _cmdline(pid):
        os.kill(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)


class Mosquitto:
    """Usage: `with Mosquitto(workdir, pidfile) as broker: ... broker.port, broker.pid`."""

    def __init__(self, workdir: Path, pidfile: Path):
        self.workdir = Path(workdir)
        self.pidfile = Path(pidfile)
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "mosquitto.log"
        self.config_path = self.workdir / CONFIG_NAME

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _config(self, port: int) -> str:
        text = (perflab.lab_dir() / "mosquitto.conf").read_text()
        text, count = re.subn(r"(?m)^listener\s+\d+\s+127\.0\.0\.1\s*$", f"listener {port} 127.0.0.1", text)
        if count != 1:
            raise SystemExit(f"{perflab.lab_dir() / 'mosquitto.conf'}: expected one 'listener PORT 127.0.0.1' line")
        return text

    def start(self) -> "Mosquitto":
        exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
        if exe is None:
            raise SystemExit("mosquitto is not installed: apt-get install mosquitto")
        self.workdir.mkdir(parents=True, exist_ok=True)
        reap(self.pidfile)
        for _ in range(ATTEMPTS):
            self.port = free_port()
            self.config_path.write_text(self._config(self.port))
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen([exe, "-c", str(self.config_path)], stdout=log, stderr=log,
                                             stdin=subprocess.DEVNULL, start_new_session=True)
            self.pidfile.write_text(f"{self.proc.pid} {self.config_path}\n")
            if self._wait_listening():
                return self
            self.stop()
        raise SystemExit(f"mosquitto did not start listening after {ATTEMPTS} attempts; see {self.log_path}")

    def _wait_listening(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False  # usually: the port was taken meanwhile
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return True
            except OSError:
                time.sleep(0.02)  # polling a port that is not up yet; bounded by the deadline
        return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        self.pidfile.unlink(missing_ok=True)

    def version(self) -> str:
        out = subprocess.run([self.proc.args[0], "-h"], capture_output=True, text=True, timeout=10).stdout
        return out.splitlines()[0] if out else "unknown"

    def __enter__(self) -> "Mosquitto":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
