"""A tiny device for the serial-driver tests: speaks docs/dut-protocol.md on the master side of a pty (or a
socket) using harness/device/lines.py. Answers HELLO and PING; other verbs go to `handlers`; the test tells it
what to emit (log, BOOT, EVT, raw bytes)."""

from __future__ import annotations

import os
import select
import threading
import time
import tty
from typing import Any, Callable

from harness.device.lines import Message, encode_message, parse_frame, split_log_prefix, strip_eol

BANNER = {"proto": 1, "proto_minor": 0, "fw": "fake-dut 0.0.1", "idf": "v5.3.1", "esp_mqtt": "1.1.0",
          "chip": "virtual", "mac": "02:00:00:00:00:01", "reset_reason": "ESP_RST_POWERON", "max_line": 4096,
          "platform": "virtual", "caps": ["blob", "reset", "crash", "dns"]}

# A handler gets the request and returns (kind, body) to answer, or None for no answer.
Handler = Callable[["FakeDevice", Message], "tuple[str, dict] | None"]


def make_pty() -> tuple[int, int, str]:
    """(master fd, slave fd, slave path), the slave in raw mode (no echo, no newline translation)."""
    master, slave = os.openpty()
    tty.setraw(slave)
    return master, slave, os.ttyname(slave)


def eventually(predicate: Callable[[], Any], timeout: float = 3.0, what: str = "condition"):
    """Poll `predicate` until it is truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


class FakeDevice:
    def __init__(self, fd: int, *, banner: dict | None = None, silent: bool = False,
                 handlers: dict[str, Handler] | None = None):
        self.fd = fd
        self.banner = dict(BANNER if banner is None else banner)
        self.silent = silent  # answers nothing at all
        self.handlers = dict(handlers or {})
        self.requests: list[Message] = []
        self.blobs: dict[str, bytearray] = {}
        self.seq = 0
        self._write_lock = threading.Lock()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="fake-dut")
        self._thread.start()

    # ------------------------------------------------------------------ the test's side

    def write(self, data: bytes) -> None:
        with self._write_lock:
            view = memoryview(data)
            while view:
                n = os.write(self.fd, view)
                view = view[n:]

    def send(self, kind: str, body: dict | None = None, ident: int | None = None, major: int = 1) -> None:
        self.write(encode_message(Message(kind=kind, body=body or {}, id=ident, major=major)))

    def log(self, text: str) -> None:
        self.write(text.encode() + b"\n")

    def boot(self, **banner: Any) -> None:
        self.seq = 0
        self.send("BOOT", {**self.banner, **banner})

    def event(self, name: str, seq: int | None = None, **fields: Any) -> int:
        self.seq = self.seq + 1 if seq is None else seq
        full = name if name.startswith("MQTT_EVENT_") else "MQTT_EVENT_" + name
        self.send("EVT", {"seq": self.seq, "t_ms": 100 * self.seq, "event": full, **fields})
        return self.seq

    def count(self, verb: str) -> int:
        with self._cond:
            return sum(1 for m in self.requests if m.kind == verb)

    def wait_request(self, verb: str, timeout: float = 3.0, nth: int = 1) -> Message:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [m for m in self.requests if m.kind == verb]
                if len(found) >= nth:
                    return found[nth - 1]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"the fake device got no {verb} (#{nth}) within {timeout} s")
                self._cond.wait(remaining)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    # ------------------------------------------------------------------ the device's side

    def _run(self) -> None:
        buf = b""
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self.fd], [], [], 0.02)
                if not ready:
                    continue
                data = os.read(self.fd, 65536)
            except OSError:
                return  # the fd was closed (unplug) or the pty hung up
            if not data:
                return
            buf += data
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                self._line(strip_eol(raw))

    def _line(self, raw: bytes) -> None:
        _, frame = split_log_prefix(raw)
        if frame is None:
            return
        msg = parse_frame(frame)
        if not isinstance(msg, Message):
            self.send("ERR", {"name": "BAD_JSON", "msg": msg.why})
            return
        with self._cond:
            self.requests.append(msg)
            self._cond.notify_all()
        if self.silent:
            return
        handler = self.handlers.get(msg.kind) or _DEFAULTS.get(msg.kind)
        answer = handler(self, msg) if handler else ("ERR", {"name": "UNKNOWN_VERB", "msg": msg.kind})
        if answer is not None:
            kind, body = answer
            self.send(kind, body, msg.id)


def _blob_begin(dev: FakeDevice, msg: Message):
    dev.blobs[msg.body["name"]] = bytearray()
    return "OK", {}


def _blob_chunk(dev: FakeDevice, msg: Message):
    from harness.device.lines import unb64

    blob = dev.blobs[msg.body["name"]]
    if msg.body["offset"] != len(blob):
        return "ERR", {"name": "BAD_ARGS", "msg": "offset"}
    blob += unb64(msg.body["b64"])
    return "OK", {"received": len(blob)}


def _blob_end(dev: FakeDevice, msg: Message):
    from harness.device.lines import crc32_hex

    blob = dev.blobs[msg.body["name"]]
    if crc32_hex(bytes(blob)) != msg.body["crc32"]:
        return "ERR", {"name": "CRC_MISMATCH", "msg": "crc"}
    return "OK", {"size": len(blob)}


_DEFAULTS: dict[str, Handler] = {
    "HELLO": lambda dev, msg: ("OK", dict(dev.banner)),
    "PING": lambda dev, msg: ("OK", {}),
    "SYSINFO": lambda dev, msg: ("OK", {"free_heap": 123456, "min_free_heap": 100000, "uptime_ms": 4200,
                                        "time": None, "time_source": "none", "ip": "127.0.0.1",
                                        "netif": "loopback", **dev.banner}),
    "BLOB_BEGIN": _blob_begin,
    "BLOB_CHUNK": _blob_chunk,
    "BLOB_END": _blob_end,
    "BLOB_FREE": lambda dev, msg: ("OK", {}),
    "DESTROY": lambda dev, msg: ("OK", {"err": "ESP_OK"}),
    "START": lambda dev, msg: ("OK", {"err": "ESP_OK"}),
}
