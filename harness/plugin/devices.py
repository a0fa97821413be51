"""Devices under test in the pytest plugin: --dut options, the `dut` and `duts` fixtures, device facts and logs
for the report.

A --dut names a device: a serial port or pyserial URL, `auto[:serial=..|location=..|VID:PID]`, `virtual[:BUG,..]`
(a virtual ESP32 this process starts) or `host[:asan]` (the firmware's C core built for Linux, started likewise).
Each test that asks for `dut` runs once per --dut. The port is opened for the test only, under an exclusive
lock, so xdist workers sharing one board take turns instead of stealing each other's lines.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

MAX_DEVICE_LOG = 20_000  # characters of device log kept per test
NO_DUT = ("no device under test: give --dut PORT|URL|auto|virtual|host (e.g. --dut virtual, --dut /dev/ttyUSB0); "
          "see README 'Devices'")


class DutSpecError(ValueError):
    pass


@dataclass(frozen=True)
class DutSpec:
    text: str  # as given
    kind: str  # "virtual", "host", "auto" or "port"
    id: str  # test id / report column
    target: str = ""  # port path or URL, or the auto filter
    bugs: tuple[str, ...] = ()
    sanitize: bool = False

    def __str__(self) -> str:
        return self.text


def parse_dut(text: str) -> DutSpec:
    text = text.strip()
    if not text:
        raise DutSpecError("empty --dut: give a port (/dev/ttyUSB0), a pyserial URL, auto, virtual or host")
    head, _, rest = text.partition(":")
    if head == "virtual":
        bugs = tuple(b.strip() for b in rest.split(",") if b.strip())
        from harness.device.virtual.bugs import BUGS

        unknown = [b for b in bugs if b not in BUGS]
        if unknown:
            raise DutSpecError(f"--dut {text}: unknown bug {', '.join(unknown)}; valid: {', '.join(sorted(BUGS))} "
                               "(mqtt-harness dut virtual --list-bugs)")
        return DutSpec(text, "virtual", "virtual" + "".join(f"-{b}" for b in bugs), bugs=bugs)
    if head == "host":
        if rest not in ("", "asan"):
            raise DutSpecError(f"--dut {text}: host takes no option or ':asan' (host:asan)")
        return DutSpec(text, "host", "host-asan" if rest else "host", sanitize=bool(rest))
    if head == "auto":
        return DutSpec(text, "auto", "auto" + (f"-{_slug(rest)}" if rest else ""), target=text)
    if "://" in text:
        return DutSpec(text, "port", _slug(text.split("://", 1)[1]) or "url", target=text)
    if not text.startswith("/") and not re.fullmatch(r"COM\d+", text):
        raise DutSpecError(f"--dut {text}: not a port path (/dev/ttyUSB0), a pyserial URL (socket://host:port, "
                           "rfc2217://host:port), auto, virtual[:BUG,...] or host[:asan]")
    return DutSpec(text, "port", _slug(text.removeprefix("/dev/")), target=text)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")


def unique_dut_ids(specs: list[DutSpec]) -> list[DutSpec]:
    seen: dict[str, int] = {}
    out = []
    for spec in specs:
        n = seen[spec.id] = seen.get(spec.id, 0) + 1
        out.append(spec if n == 1 else DutSpec(spec.text, spec.kind, f"{spec.id}-{n}", spec.target, spec.bugs,
                                               spec.sanitize))
    return out


@dataclass
class DeviceFacts:
    """What the report says about a device: a column of the devices x tests matrix."""

    id: str
    spec: str
    port: str
    platform: str = ""
    banner: dict[str, Any] = field(default_factory=dict)
    bugs: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "spec": self.spec, "port": self.port, "platform": self.platform,
                "banner": self.banner, "bugs": self.bugs, "notes": self.notes}


class DevicePool:
    """The devices of this test process: spawned stand-ins (one per process and spec) and resolved ports."""

    def __init__(self, baud: int, reset: str, handshake_timeout: float, lock_dir: Path):
        self.baud, self.reset, self.handshake_timeout = baud, reset, handshake_timeout
        self.lock_dir = lock_dir
        self._spawned: dict[str, Any] = {}
        self._ports: dict[str, str] = {}
        self.facts: dict[str, DeviceFacts] = {}

    def port(self, spec: DutSpec) -> str:
        if spec.id in self._ports:
            return self._ports[spec.id]
        if spec.kind == "virtual":
            from harness.device.virtual.spawn import spawn

            dev = spawn(bugs=spec.bugs)
            self._spawned[spec.id] = dev
            path = dev.path
        elif spec.kind == "host":
            from harness.device import host_build

            dev = host_build.spawn(sanitize=spec.sanitize)
            self._spawned[spec.id] = dev
            path = dev.path
        elif spec.kind == "auto":
            from harness.device.ports import resolve_port

            path = resolve_port(spec.target)
        else:
            path = spec.target
        self._ports[spec.id] = path
        return path

    def spawned(self, spec: DutSpec):
        return self._spawned.get(spec.id)

    @contextlib.contextmanager
    def exclusive(self, spec: DutSpec, timeout: float):
        """Hold the port's lock (a file under the harness state dir) for one test; other workers wait."""
        path = self.port(spec)
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        lock = self.lock_dir / (hashlib.sha1(path.encode()).hexdigest()[:16] + ".lock")
        with open(lock, "w") as fh:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"--dut {spec.text}: port {path} stayed locked by another test process "
                                           f"for {timeout:g}s") from None
                    time.sleep(0.05)  # polling a lock another process holds: no event to wait for
            try:
                fh.write(f"{path}\n")
                fh.flush()
                yield path
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def open(self, spec: DutSpec, path: str):
        from harness.device.serial_driver import Dut

        dut = Dut.open(path, baud=self.baud, reset=self.reset, handshake_timeout=self.handshake_timeout,
                       name=spec.id)
        self._note(spec, path, dut)
        return dut

    def _note(self, spec: DutSpec, path: str, dut) -> None:
        if spec.id not in self.facts:
            info = dict(getattr(dut, "info", {}) or {})
            self.facts[spec.id] = DeviceFacts(id=spec.id, spec=spec.text, port=path,
                                              platform=str(info.get("platform", "")), banner=info,
                                              bugs=list(info.get("bugs") or spec.bugs))

    def stop_all(self) -> list[str]:
        errors = []
        for sid, dev in self._spawned.items():
            try:
                dev.stop()
            except Exception as exc:  # one stand-in failing to stop must not keep the others running
                errors.append(f"{sid}: {exc}")
        self._spawned.clear()
        return errors


def add_options(group) -> None:
    group.addoption("--dut", action="append", default=[], metavar="PORT|URL|auto|virtual[:BUG,..]|host[:asan]",
                    help="device under test, repeatable (device tests run once per device; `duts` gets them all): "
                         "a serial port (/dev/ttyUSB0), a pyserial URL (socket://host:port, rfc2217://host:port), "
                         "auto (the one ESP32-looking USB port; auto:serial=SN, auto:location=1-1.2, "
                         "auto:303a:1001), virtual (a virtual ESP32 on a pseudo-terminal; virtual:no-dup,... with "
                         "seeded bugs, see `mqtt-harness dut virtual --list-bugs`), host (the firmware's C core "
                         "built for Linux over libmosquitto; host:asan with sanitizers)")
    group.addoption("--dut-baud", type=int, default=115200, metavar="BAUD",
                    help="serial speed of --dut ports (default: %(default)s)")
    group.addoption("--dut-reset", choices=("none", "dtr", "esptool"), default="none",
                    help="reset the device when a session first opens it: none, dtr (the classic DTR/RTS "
                         "auto-reset circuit) or esptool (also reads chip type and MAC) (default: %(default)s)")
    group.addoption("--dut-host", metavar="ADDRESS", default="127.0.0.1",
                    help="the address of this machine as the device reaches it: device tests listen there and "
                         "point the device at it (default %(default)s, right for virtual and host devices; a board "
                         "on Wi-Fi needs this machine's LAN address)")
    group.addoption("--dut-timeout", type=float, default=5.0, metavar="SECONDS",
                    help="how long to wait for the device's handshake (default: %(default)s)")


def parse_specs(config: pytest.Config) -> list[DutSpec]:
    try:
        return unique_dut_ids([parse_dut(t) for t in config.getoption("dut")])
    except DutSpecError as exc:
        raise pytest.UsageError(str(exc)) from None


def params(specs: list[DutSpec]) -> list:
    if not specs:
        return [pytest.param(None, id="no-dut", marks=pytest.mark.skip(reason=NO_DUT))]
    return [pytest.param(s, id=s.id) for s in specs]


def log_excerpt(dut, since: int) -> str:
    text = dut.log_text(since)
    return text if len(text) <= MAX_DEVICE_LOG else "[...]\n" + text[-MAX_DEVICE_LOG:]


def event_lines(dut, since: int) -> list[str]:
    return [describe_event(e) for e in dut.events[since:]]


def describe_event(event) -> str:
    body = dict(event.body)
    for key in ("seq", "t_ms", "event", "event_id"):
        body.pop(key, None)
    shown = {k: v for k, v in body.items() if v not in (None, "", [], {}) and k != "error_handle"}
    text = f"#{event.seq} t={event.t_ms}ms {event.name} " + " ".join(f"{k}={v}" for k, v in shown.items())
    if event.tls_error:
        text += f" esp_tls={event.tls_error}"
    return text
