"""The device firmware's C core built for Linux (firmware/esp32-dut/host): build it, start it, stop it.

    path = build()                      # firmware/esp32-dut/host/build/release/mqtt-dut-host, rebuilt only when a source changed
    with spawn(resolve={"broker.lan": "127.0.0.1"}) as dev:
        dev.path                        # its pseudo-terminal: give it to serial_driver.Dut.open()

The binary serves docs/dut-protocol.md on a pty it opens itself and prints the pty's path alone on its first
stdout line. Names resolve only from its static table (localhost, IP literals, --resolve), never through DNS.
`mqtt-harness dut host` is the CLI face of this module (add_arguments / run).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable, Mapping

from harness.errors import HarnessError
from harness.toolchain import c_compiler

REPO = Path(__file__).resolve().parents[2]
FIRMWARE = REPO / "firmware" / "esp32-dut"
HOST_SOURCE = FIRMWARE / "host"
BINARY = "mqtt-dut-host"
APT_PACKAGES = ("cmake", "gcc", "pkg-config", "libmosquitto-dev", "libcjson-dev", "libssl-dev", "libcmocka-dev")
# what the tests need on top (clang for the fuzz target and the clang build)
APT_HINT = "sudo apt-get install -y " + " ".join(APT_PACKAGES)
_SANITIZER = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer|ThreadSanitizer)|runtime error:|"
                        r"SUMMARY: UndefinedBehaviorSanitizer")


class HostBuildError(HarnessError):
    """The host firmware could not be built: missing packages (named, with the apt-get line) or a compile error
    (with the end of the compiler output)."""

    def __init__(self, message: str, *, missing: Iterable[str] = ()):
        super().__init__(message)
        self.missing = tuple(missing)


class HostDeviceError(HarnessError):
    """The host device did not start, died, or left a sanitizer report (the message carries its stderr)."""


def build_dir(sanitize: bool = False) -> Path:
    return HOST_SOURCE / "build" / ("asan" if sanitize else "release")


def missing_packages() -> list[str]:
    """The apt packages the host build needs and this machine lacks (empty: all there)."""
    missing = []
    if not shutil.which("cmake"):
        missing.append("cmake")
    if not c_compiler():
        missing.append("gcc")
    if not shutil.which("pkg-config"):
        missing.append("pkg-config")
        return missing + [p for p in ("libmosquitto-dev", "libcjson-dev", "libssl-dev") if not _header(p)]
    for module, package in (("libmosquitto", "libmosquitto-dev"), ("libcjson", "libcjson-dev"),
                            ("openssl", "libssl-dev")):
        if subprocess.run(["pkg-config", "--exists", module], capture_output=True).returncode != 0:
            missing.append(package)
    return missing


def _header(package: str) -> bool:
    return Path({"libmosquitto-dev": "/usr/include/mosquitto.h", "libcjson-dev": "/usr/include/cjson/cJSON.h",
                 "libssl-dev": "/usr/include/openssl/ssl.h"}[package]).exists()


def have_cmocka() -> bool:
    return bool(shutil.which("pkg-config")) and \
        subprocess.run(["pkg-config", "--exists", "cmocka"], capture_output=True).returncode == 0


def _source_digest(options: list[str]) -> str:
    """A digest of every source file of the host build and the cmake options: a change means rebuild."""
    h = hashlib.sha256("\0".join(options).encode())
    roots = [HOST_SOURCE, FIRMWARE / "components" / "dut_core", FIRMWARE / "main"]
    outputs = HOST_SOURCE / "build"  # the build's own output lives under the source: never part of the digest
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            if "__pycache__" in path.parts or path.is_relative_to(outputs):
                continue
            h.update(str(path.relative_to(FIRMWARE)).encode() + b"\0")
            h.update(path.read_bytes())
    return h.hexdigest()


def build(sanitize: bool = False, force: bool = False, *, jobs: int | None = None, tests: bool | None = None) -> Path:
    """Configure and build the host firmware (firmware/esp32-dut/host/build/release, or .../build/asan with ASan+UBSan) when a source
    changed since the last build (or `force`); return the binary. The cmocka tests are built too when cmocka
    is installed (`tests` forces the choice). Raises HostBuildError."""
    missing = missing_packages()
    if missing:
        raise HostBuildError(f"the host firmware build needs the Debian packages {', '.join(missing)}: "
                             f"{APT_HINT}", missing=missing)
    tests = have_cmocka() if tests is None else tests
    out = build_dir(sanitize)
    binary = out / BINARY
    options = [f"-DDUT_SANITIZE={'ON' if sanitize else 'OFF'}", f"-DDUT_TESTS={'ON' if tests else 'OFF'}"]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".build.lock", "w") as lock:  # several pytest workers may want the same build
        fcntl.flock(lock, fcntl.LOCK_EX)
        digest = _source_digest(options)
        stamp = out / ".source-digest"
        if not force and binary.exists() and stamp.exists() and stamp.read_text() == digest:
            return binary
        steps = [["cmake", "-S", str(HOST_SOURCE), "-B", str(out), *options],
                 ["cmake", "--build", str(out), "-j", str(jobs or os.cpu_count() or 2)]]
        for step in steps:
            proc = subprocess.run(step, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-40:])
                raise HostBuildError(f"{' '.join(step)} failed (exit {proc.returncode}):\n{tail}")
        stamp.write_text(digest)
    return binary


class HostDevice:
    """A running host device: `path` (its pty), `pid`, `stop()`. A context manager."""

    def __init__(self, proc: subprocess.Popen, stderr_path: Path, sanitize: bool):
        self._proc = proc
        self._stderr_path = stderr_path
        self.sanitize = sanitize
        self.path: str | None = None
        self._stopped = False

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.poll()

    def __repr__(self) -> str:
        return f"<HostDevice pid={self.pid} path={self.path}{' asan' if self.sanitize else ''}>"

    def __enter__(self) -> "HostDevice":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stderr(self) -> str:
        try:
            return self._stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def _tail(self, n: int = 40) -> str:
        text = self.stderr().strip()
        return ("\n" + "\n".join(text.splitlines()[-n:])) if text else ""

    def _read_path(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        buf = b""
        out = self._proc.stdout
        assert out is not None
        with selectors.DefaultSelector() as sel:
            sel.register(out, selectors.EVENT_READ)
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise HostDeviceError(f"host device pid {self.pid} printed no pty path within {timeout:g} s"
                                          f"{self._tail()}")
                if not sel.select(left):
                    continue
                chunk = os.read(out.fileno(), 4096)
                if not chunk:
                    code = self._proc.wait(5)
                    raise HostDeviceError(f"host device exited with code {code} before printing its pty path"
                                          f"{self._tail()}")
                buf += chunk
        self.path = buf.split(b"\n", 1)[0].decode().strip()
        # nothing else comes on stdout: close it so no pipe is left to fill
        out.close()
        return self.path

    def wait(self, timeout: float | None = None) -> int:
        return self._proc.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`, by PID. Idempotent. With the sanitizer build, a sanitizer
        report on stderr raises HostDeviceError carrying it."""
        if self._stopped:
            return
        self._stopped = True
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self._proc.pid, signal.SIGKILL)
                self._proc.wait(timeout)
        if self._proc.stdout and not self._proc.stdout.closed:
            self._proc.stdout.close()
        report = self.stderr()
        with contextlib.suppress(OSError):
            self._stderr_path.unlink()
        if self.sanitize and _SANITIZER.search(report):
            raise HostDeviceError(f"host device pid {self.pid} (sanitizer build) reported:\n{report.strip()}")


def _resolve_args(resolve: Mapping[str, str] | Iterable[str] | None) -> list[str]:
    if not resolve:
        return []
    items = [f"{k}={v}" for k, v in resolve.items()] if isinstance(resolve, Mapping) else list(resolve)
    args = []
    for item in items:
        name, sep, ip = item.partition("=")
        if not sep or not name or not ip:
            raise ValueError(f"--resolve {item!r}: expected NAME=IP")
        args += ["--resolve", item]
    return args


def spawn(sanitize: bool = False, resolve: Mapping[str, str] | Iterable[str] | None = None, timeout: float = 10,
          *, build_first: bool = True, extra_args: Iterable[str] = ()) -> HostDevice:
    """Start the host device (building it first if needed); return once its pty path is known."""
    binary = build(sanitize) if build_first else build_dir(sanitize) / BINARY
    if not binary.exists():
        raise HostDeviceError(f"{binary} does not exist: run build(sanitize={sanitize}) first")
    fd, name = tempfile.mkstemp(prefix="mqtt-dut-host-", suffix=".stderr")
    env = dict(os.environ)
    if sanitize:
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0:halt_on_error=1")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    try:
        # its own session: a Ctrl-C in the terminal reaches us, and we stop it; the stderr is a file so a chatty
        # sanitizer can never block on a full pipe
        proc = subprocess.Popen([str(binary), *_resolve_args(resolve), *extra_args], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=fd, env=env, start_new_session=True)
    finally:
        os.close(fd)
    dev = HostDevice(proc, Path(name), sanitize)
    try:
        dev._read_path(timeout)
    except BaseException:
        with contextlib.suppress(HarnessError):
            dev.stop()
        raise
    return dev


# ------------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `mqtt-harness dut host`."""
    parser.add_argument("--build", action="store_true",
                        help="only build (or rebuild if sources changed) the host firmware, print the binary's path "
                             "and exit")
    parser.add_argument("--sanitize", action="store_true",
                        help="the AddressSanitizer + UBSan build (firmware/esp32-dut/host/build/asan); a sanitizer report on exit fails")
    parser.add_argument("--resolve", action="append", default=[], metavar="NAME=IP",
                        help="a name the device resolves (repeatable); it never asks DNS: only localhost, IP "
                             "literals and these")
    parser.add_argument("--force-build", action="store_true", help="rebuild even if no source changed")


def run(args: argparse.Namespace) -> int:
    """`mqtt-harness dut host`: build if needed, then print the pty path on the first stdout line and serve until
    stopped (Ctrl-C: exit 130; SIGTERM: 143)."""
    sanitize = bool(getattr(args, "sanitize", False))
    try:
        binary = build(sanitize, force=bool(getattr(args, "force_build", False)))
    except HostBuildError as exc:
        print(f"mqtt-harness dut host: {exc}", file=sys.stderr)
        return 1
    if getattr(args, "build", False):
        print(binary)
        return 0
    try:
        dev = spawn(sanitize, resolve=getattr(args, "resolve", None) or None, build_first=False)
    except (HostDeviceError, ValueError) as exc:
        print(f"mqtt-harness dut host: {exc}", file=sys.stderr)
        return 1
    print(dev.path, flush=True)

    def on_term(signum, frame):
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, on_term)
    code = 0
    try:
        code = dev.wait()
        print(f"mqtt-harness dut host: the device exited with code {code}{dev._tail()}", file=sys.stderr)
    except KeyboardInterrupt:
        code = 130
    except _Terminated:
        code = 143
    finally:
        signal.signal(signal.SIGTERM, previous)
        try:
            dev.stop()
        except HostDeviceError as exc:
            print(f"mqtt-harness dut host: {exc}", file=sys.stderr)
            code = 1
    return code


class _Terminated(Exception):
    pass
