"""A local mosquitto for benchmarks: the perf lab's mosquitto.conf on a free 127.0.0.1 port, stopped by PID.

Each run's folder gets a pid file naming the broker and the process that started it. A later run stops the
brokers whose starter is gone (a killed run); the PID is only signalled if that process still runs with the
config file of that folder, so a reused PID or another run's live broker is never touched.
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
PIDFILE = "mosquitto.pid"
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


def _start_time(pid: int) -> str:
    """Process start time in clock ticks since boot ('' if gone): tells a live process from a reused PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat[stat.rindex(")") + 2:].split()[19]


def reap(results: Path) -> None:
    """Stop brokers that runs which are no longer alive left behind under `results`/*/PIDFILE."""
    for pidfile in Path(results).glob(f"*/{PIDFILE}"):
        try:
            broker, owner, owner_start = pidfile.read_text().split()
            broker_pid, owner_pid = int(broker), int(owner)
        except (OSError, ValueError):
            continue
        if _start_time(owner_pid) == owner_start:
            continue  # its run is still going
        if str(pidfile.with_name(CONFIG_NAME)) in _cmdline(broker_pid):
            os.kill(broker_pid, signal.SIGKILL)
        pidfile.unlink(missing_ok=True)


class Mosquitto:
    """Usage: `with Mosquitto(run_dir) as broker: ... broker.port, broker.pid`. run_dir's parent is reaped first."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.pidfile = self.workdir / PIDFILE
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
        reap(self.workdir.parent)
        for _ in range(ATTEMPTS):
            self.port = free_port()
            self.config_path.write_text(self._config(self.port))
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen([exe, "-c", str(self.config_path)], stdout=log, stderr=log,
                                             stdin=subprocess.DEVNULL, start_new_session=True)
            me = os.getpid()
            self.pidfile.write_text(f"{self.proc.pid} {me} {_start_time(me)}\n")
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
                return self.proc.poll() is None  # not some other process that took the port
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
