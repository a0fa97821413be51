"""Start a virtual device as a child process and hold on to it: `with spawn(["no-dup"]) as dev: dev.path`."""

from __future__ import annotations

import contextlib
import os
import secrets
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from typing import Iterable, Mapping

from harness.device.virtual.bugs import parse_bugs


class VirtualDeviceError(RuntimeError):
    """The device process did not start, or died; the message carries its stderr."""


class VirtualDevice:
    """A running virtual device. `path` is its current serial port (changes with replug())."""

    def __init__(self, proc: subprocess.Popen, bugs: frozenset[str], stderr_file, link: str | None,
                 instance: str):
        self._proc = proc
        self.bugs = bugs
        self.link = link
        self.instance = instance
        self._stderr = stderr_file
        self._buf = bytearray()
        self.path: str | None = None
        self.paths: list[str] = []

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.poll()

    def __repr__(self) -> str:
        return f"<VirtualDevice pid={self.pid} path={self.path} bugs={sorted(self.bugs)}>"

    def __enter__(self) -> "VirtualDevice":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _read_path(self, timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        out = self._proc.stdout
        with selectors.DefaultSelector() as sel:
            sel.register(out, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise VirtualDeviceError(f"virtual device pid {self.pid}: no {what} within {timeout:g} s"
                                             f"{self._stderr_tail()}")
                if not sel.select(left):
                    continue
                chunk = os.read(out.fileno(), 4096)
                if not chunk:
                    code = self._proc.wait(5)
                    raise VirtualDeviceError(f"virtual device exited with code {code} before its {what}"
                                             f"{self._stderr_tail()}")
                self._buf += chunk
        line, _, rest = bytes(self._buf).partition(b"\n")
        self._buf = bytearray(rest)
        self.path = line.decode().strip()
        self.paths.append(self.path)
        return self.path

    def replug(self, timeout: float = 10.0) -> str:
        """Unplug and replug the cable (SIGUSR1): the old port disappears, a new one (returned) appears and the
        device boots again with ESP_RST_POWERON."""
        if self._proc.poll() is not None:
            raise VirtualDeviceError(f"virtual device pid {self.pid} is not running{self._stderr_tail()}")
        os.kill(self.pid, signal.SIGUSR1)
        return self._read_path(timeout, "new port path after replug")

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, wait, SIGKILL if needed; idempotent. The exit code."""
        proc = self._proc
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()  # by PID: our own child, not yet reaped, so the pid is still ours
                proc.wait(5)
        if proc.stdout is not None and not proc.stdout.closed:
            proc.stdout.close()
        _remove_record(self.instance)
        return proc.returncode

    def stderr_text(self) -> str:
        """What the device process wrote to stderr (its own diagnostics; the device log is on the port)."""
        try:
            self._stderr.flush()
            self._stderr.seek(0)
            return self._stderr.read().decode(errors="replace")
        except (ValueError, OSError):
            return ""

    def _stderr_tail(self) -> str:
        text = self.stderr_text().strip()
        return f"; its stderr:\n{text[-4000:]}" if text else "; its stderr was empty"


def spawn(bugs: Iterable[str] = (), *, resolve: Mapping[str, str] | Iterable[str] | None = None,
          link: str | None = None, mac: str | None = None, timeout: float = 10.0, max_line: int | None = None,
          extra_args: Iterable[str] = ()) -> VirtualDevice:
    """Start `python -m harness.device.virtual` and wait for its port path. `bugs` by name (ValueError for an
    unknown one); `resolve` as {name: ip} or ["name=ip", ...]."""
    names = parse_bugs(bugs)
    from harness.brokers.reaper import TAG_ENV, reap_once
    with contextlib.suppress(Exception):  # a crashed earlier run's devices (and brokers) go first
        reap_once()
    cmd = [sys.executable, "-m", "harness.device.virtual"]
    for name in sorted(names):
        cmd += ["--bug", name]
    items = resolve.items() if isinstance(resolve, Mapping) else (s.split("=", 1) for s in (resolve or ()))
    for name, ip in items:
        cmd += ["--resolve", f"{name}={ip}"]
    if link:
        cmd += ["--link", str(link)]
    if mac:
        cmd += ["--mac", mac]
    if max_line:
        cmd += ["--max-line", str(max_line)]
    cmd += list(extra_args)
    instance = f"virtual-device-{secrets.token_hex(4)}"
    # The tag lets the reaper find the process even if its record is all that is left of us.
    env = {**os.environ, TAG_ENV: instance, "PYTHONUNBUFFERED": "1"}
    stderr_file = tempfile.TemporaryFile(prefix="mqtt-harness-vdev-")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr_file, env=env,
                            start_new_session=True)
    device = VirtualDevice(proc, names, stderr_file, str(link) if link else None, instance)
    try:
        device._read_path(timeout, "port path")
    except BaseException:
        device.stop()
        raise
    return device


def _remove_record(instance: str) -> None:
    with contextlib.suppress(Exception):
        from harness.brokers.reaper import Record, remove_record
        remove_record(Record(id=instance, name="", backend="process", owner_pid=0, owner_start=0))
