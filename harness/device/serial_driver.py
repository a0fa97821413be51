"""`Dut`: the device under test over a serial port, driving harness.device.protocol with pyserial.

    dut = Dut.open("/dev/ttyUSB0")            # or rfc2217://host:port, socket://host:port, auto
    dut.init({"broker": {"address": {"uri": url}}}); dut.start()
    dut.expect_event("CONNECTED", timeout=10)
    msg_id = dut.publish("t/1", b"hi", qos=1)
    dut.expect_event("PUBLISHED", msg_id=msg_id)

A reader thread feeds every byte to the sans-IO core and files the items under a lock; callers wait on a
condition variable, always with a timeout. Failures the test must see (an unexpected reboot, lost events, a
lost port) are raised by the next request or expectation, once; `problems` keeps them all as text.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import time
from typing import Any, Callable, Iterable, TypeVar

from harness.device import link, ports
from harness.device.errors import (DeviceError, DeviceRebooted, DeviceTimeout, EventLost, HandshakeError, PortError,
                                   ProtocolMismatch)
from harness.device.lines import PROTO_MAJOR, b64, chunk_size, crc32_hex
from harness.device.protocol import (Answer, Boot, DataError, DataMessage, DeviceProtocol, Event, EventGap, LogLine,
                                     Malformed, StrayAnswer, VersionMismatch, event_name, field_agrees)
from harness.device.reset import check_mode, dtr_reset, esptool_reset
from harness.device.show import describe, missing_text
from harness.errors import HarnessError

T = TypeVar("T")
HELLO_RETRY_S = 1.0  # a HELLO lost while the firmware was still starting is sent again after this
REPLUG_POLL_S = 0.1  # how often a lost port is tried again
PUBLISH_BLOB = "_publish"  # the blob a large payload travels in
LOG_TAIL = 20  # device log lines quoted in failure messages
EVENTS_SHOWN = 200  # events listed in an expect_event timeout


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at * 1000) % 1000:03d}"


class Dut:
    """One device under test on one port. Create with Dut.open(); close() when done (or use `with`)."""

    def __init__(self, port: str, *, baud: int = 115200, reset: str = "none", handshake_timeout: float = 5.0,
                 request_timeout: float = 5.0, expect_timeout: float = 10.0, replug_timeout: float = 10.0,
                 name: str | None = None):
        self.port = port
        self.baud = baud
        self.reset_mode = check_mode(reset)
        self.handshake_timeout = handshake_timeout
        self.request_timeout = request_timeout
        self.expect_timeout = expect_timeout
        self.replug_timeout = replug_timeout
        self.name = name or os.path.basename(port.rstrip("/")) or port
        self.info: dict[str, Any] = {}
        self.caps: set[str] = set()
        self.chip_info = None  # harness.device.reset.ChipInfo after an esptool reset
        self.events: list[Event] = []
        self.messages: list[DataMessage] = []
        self.log: list[LogLine] = []
        self.problems: list[str] = []
        self.boots: list[dict[str, Any]] = []
        self.unexpected_reboots: list[dict[str, Any]] = []
        self.bytes_received = 0
        self._core = DeviceProtocol()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._request_lock = threading.RLock()  # one request at a time (the protocol's rule)
        self._write_lock = threading.Lock()
        self._serial = None
        self._reader: threading.Thread | None = None
        self._stop = threading.Event()
        self._closed = False
        self._port_state = "closed"  # open | lost | reopened | failed | closed
        self._port_error: PortError | None = None
        self._port_generation = 0
        self._lost: tuple[float, float, str] | None = None  # wall time, monotonic time, why
        self._need_handshake = True
        self._handshaken = False
        self._expect_boot = False
        self._boot_count = 0
        self._answers: dict[int, Answer] = {}
        self._boot_at = (0, 0)  # (len(events), len(messages)) at the last BOOT
        self._failures: list[HarnessError] = []
        self._missing: list[int] = []
        self._event_cursor = 0
        self._message_cursor = 0
        # log text after the expect() cursor, as pieces joined only when expect() looks (appending to one str
        # attribute would copy it for every line: quadratic for a chatty device)
        self._log_chunks: list[str] = []
        self.aio = _Aio(self)

    # --------------------------------------------------------------------------------------- open/close

    @classmethod
    def open(cls, port: str, *, baud: int = 115200, reset: str = "none", handshake_timeout: float = 5.0,
             request_timeout: float = 5.0, name: str | None = None, expect_timeout: float = 10.0,
             replug_timeout: float = 10.0) -> "Dut":
        """Open `port` (a path, a pyserial URL, or auto[:...]), reset the board if asked, and handshake."""
        resolved = ports.resolve_port(port)
        dut = cls(resolved, baud=baud, reset=reset, handshake_timeout=handshake_timeout,
                  request_timeout=request_timeout, expect_timeout=expect_timeout, replug_timeout=replug_timeout,
                  name=name)
        try:
            dut._open()
        except BaseException:
            dut.close()
            raise
        return dut

    def _open(self) -> None:
        if self.reset_mode == "esptool":
            self.chip_info = esptool_reset(self.port)
            self._expect_boot = True
        self._start_port(link.open_port(self.port, self.baud))
        if self.reset_mode == "dtr":
            with self._cond:
                self._expect_boot = True
            dtr_reset(self._serial, usb_jtag=self._usb_jtag(), name=self.port)
        if self._expect_boot:
            self._wait_boot(0, self.handshake_timeout, fail=False)  # a banner we missed is fine: HELLO tells
            with self._cond:
                self._expect_boot = False
        self._handshake(self.handshake_timeout)

    def _usb_jtag(self) -> bool:
        info = ports.lookup(self.port) if link.is_path(self.port) else None
        return bool(info and info.usb_jtag)

    def _start_port(self, serial_port) -> None:
        with self._cond:
            self._serial = serial_port
            self._port_state = "open"
            self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read_loop, args=(self._stop,), daemon=True,
                                        name=f"dut-reader-{self.name}")
        self._reader.start()

    def _stop_port(self) -> None:
        """Stop the reader and close the port (keeping every line that arrived)."""
        self._stop.set()
        serial_port = self._serial
        if serial_port is not None:
            with contextlib.suppress(Exception):
                serial_port.cancel_read()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=5.0)
        with self._cond:
            self._handle(self._core.flush(time.time()))
            self._serial = None
            self._port_state = "closed"
            self._cond.notify_all()
        if serial_port is not None:
            with contextlib.suppress(Exception):
                serial_port.close()

    def close(self) -> None:
        """Stop the reader thread and close the port. Safe to call twice."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
        self._stop_port()

    def __enter__(self) -> "Dut":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Dut {self.name} {self.port} {self.baud} baud {self._port_state}>"

    @property
    def port_state(self) -> str:
        """open, lost (the reader is trying to reopen it), reopened, failed or closed."""
        return self._port_state

    @property
    def reset_reason(self) -> str | None:
        if self.boots and self.boots[-1].get("reset_reason"):
            return self.boots[-1]["reset_reason"]
        return self.info.get("reset_reason")

    # ------------------------------------------------------------------------------------------ reading

    def _read_loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            serial_port = self._serial
            try:
                data = serial_port.read(serial_port.in_waiting or 1)
            except Exception as exc:  # noqa: BLE001 - SerialException, OSError, or a closed port's TypeError
                if stop.is_set():
                    break
                if not self._port_lost(serial_port, exc, stop):
                    break
                continue
            with self._cond:
                if self._port_state == "reopened":
                    self._port_back()
                if data:
                    self.bytes_received += len(data)
                    self._handle(self._core.receive_data(data, time.time()))
                    self._cond.notify_all()

    def _port_lost(self, serial_port, exc: BaseException, stop: threading.Event) -> bool:
        """Keep what arrived, then reopen the same path until replug_timeout. False: gave up (or closing)."""
        why = " ".join(str(exc).split()) or type(exc).__name__
        with self._cond:
            if self._lost is None:  # a reopened port that fails at once continues the same outage
                self._lost = (time.time(), time.monotonic(), why)
            self._handle(self._core.flush(time.time(), f"incomplete line: the port was lost ({why})"))
            self._port_state = "lost"
            self._need_handshake = True
            self._cond.notify_all()
        with contextlib.suppress(Exception):
            serial_port.close()
        deadline = self._lost[1] + self.replug_timeout
        last = why
        while not stop.is_set():
            try:
                fresh = link.open_port(self.port, self.baud)
            except PortError as err:
                last = str(err)
            else:
                with self._cond:
                    self._serial = fresh
                    self._port_state = "reopened"
                    self._port_generation += 1
                    self._cond.notify_all()
                return True
            if time.monotonic() >= deadline:
                lost_at, _, first = self._lost
                error = PortError(f"{self.port} was lost at {_clock(lost_at)} ({first}) and did not come back "
                                  f"within {self.replug_timeout:g} s (last try: {last}). Check the cable and the "
                                  "USB hub; after a replug the board may also come back under another name "
                                  "(--dut auto:serial=... follows it)")
                with self._cond:
                    self._port_error = error
                    self._port_state = "failed"
                    self.problems.append(str(error))
                    self._cond.notify_all()
                return False
            stop.wait(REPLUG_POLL_S)
        return False

    def _port_back(self) -> None:
        lost_at, since, why = self._lost
        self._lost = None
        self._port_state = "open"
        self.problems.append(f"port lost at {_clock(lost_at)} ({why}), back after {time.monotonic() - since:.1f} s")
        self._cond.notify_all()

    def _handle(self, items: Iterable[Any]) -> None:
        """File the core's items (lock held)."""
        for item in items:
            if isinstance(item, LogLine):
                self.log.append(item)
                self._log_chunks.append(item.text + "\n")
            elif isinstance(item, Event):
                self.events.append(item)
            elif isinstance(item, DataMessage):
                self.messages.append(item)
            elif isinstance(item, Answer):
                self._answers[item.id] = item
            elif isinstance(item, Boot):
                self._on_boot(item)
            elif isinstance(item, EventGap):
                self._missing += item.missing
                self.problems.append(f"event gap: {missing_text(item.missing)} lost (expected #{item.expected}, "
                                     f"got #{item.got})")
            elif isinstance(item, (Malformed, StrayAnswer)):
                self.problems.append(f"{'malformed line' if isinstance(item, Malformed) else 'stray answer'}: "
                                     f"{item.why}: {item.text[:200]}")
            elif isinstance(item, DataError):
                self.problems.append(item.why)
            elif isinstance(item, VersionMismatch):
                self.problems.append(describe(item))

    def _on_boot(self, boot: Boot) -> None:
        self.boots.append(boot.banner)
        self._boot_count += 1
        self._need_handshake = True
        self._boot_at = (len(self.events), len(self.messages))
        if self._expect_boot:
            self._expect_boot = False
            return
        if not self._handshaken:  # a boot while we were still connecting is nobody's failure
            return
        self.unexpected_reboots.append(boot.banner)
        reason = boot.reset_reason or "no reset_reason"
        tail = "\n".join("  " + line.text for line in self.log[-LOG_TAIL:]) or "  (no log)"
        self.problems.append(f"unexpected reboot at {_clock(boot.at)}: {reason}")
        self._failures.append(DeviceRebooted(
            f"{self.name} ({self.port}) rebooted on its own: reset_reason {reason} (the host did not reset it); "
            f"the client state is gone. Device log before the BOOT:\n{tail}", reset_reason=boot.reset_reason,
            banner=boot.banner))

    # ------------------------------------------------------------------------------------------ waiting

    def _take_failure(self) -> HarnessError | None:
        """The failure the caller must raise now, if any (lock held). Reboots and gaps are raised once."""
        if self._port_error is not None:
            return self._port_error
        if self._core.mismatch is not None:
            m = self._core.mismatch
            return ProtocolMismatch(
                f"{self.name} ({self.port}) speaks device protocol {m.device} ({m.where}); this mqtt-harness speaks "
                f"{m.host}. Flash the firmware of this mqtt-harness version (mqtt-harness dut flash {self.port} "
                "firmware/esp32-dut), or use the mqtt-harness that matches the firmware", device=m.device,
                host=m.host)
        if self._failures:
            return self._failures.pop(0)
        if self._missing:
            missing, self._missing = self._missing, []
            return EventLost(f"{self.name} ({self.port}): events {missing_text(missing)} were lost on the serial "
                             "line (the event numbering skipped them); the test cannot know what happened. A noisy "
                             "cable, a too high --dut-baud, or a firmware writing protocol lines from two tasks "
                             "without a lock", missing=missing)
        if self._closed:
            return PortError(f"{self.name} ({self.port}) is closed")
        return None

    def _wait(self, ready: Callable[[], T | None], timeout: float) -> T | None:
        """Wait until ready() returns non-None (lock held while it runs); None after `timeout`. Raises the
        pending failure (reboot, lost events, lost port) as soon as there is one."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                failure = self._take_failure()
                if failure is not None:
                    raise failure
                result = ready()
                if result is not None:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def check(self) -> None:
        """Raise a pending failure (unexpected reboot, lost events, lost port) now; the plugin calls this at the
        end of a test so a failure no later call noticed still fails it."""
        with self._cond:
            failure = self._take_failure()
        if failure is not None:
            raise failure

    def _log_tail(self, n: int = LOG_TAIL) -> str:
        return "\n".join("  " + line.text for line in self.log[-n:]) or "  (no device log)"

    # --------------------------------------------------------------------------------------- requests

    def _write(self, data: bytes) -> None:
        with self._write_lock:
            for attempt in (1, 2):
                with self._cond:
                    ok = self._wait_port_locked(self.replug_timeout)
                    serial_port, generation = self._serial, self._port_generation
                if not ok:
                    raise self._port_error or PortError(f"{self.port} did not come back within "
                                                        f"{self.replug_timeout:g} s")
                try:
                    serial_port.write(data)
                    return
                except Exception as exc:  # noqa: BLE001 - SerialException/OSError: the reader reopens the port
                    if attempt == 2:
                        raise PortError(f"writing to {self.port} failed twice: {exc}") from None
                    self._wait(lambda: True if self._port_generation != generation or
                               self._port_state == "failed" else None, self.replug_timeout)

    def _wait_port_locked(self, timeout: float) -> bool:
        """Wait (lock held) while the reader reopens a lost port. False: it did not come back in time."""
        deadline = time.monotonic() + timeout
        while True:
            if self._closed:
                raise PortError(f"{self.name} ({self.port}) is closed")
            if self._port_state in ("open", "reopened"):
                return True
            if self._port_state == "failed":
                return False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._cond.wait(remaining)

    def _raise_pending(self) -> None:
        self.check()

    def _ensure_ready(self) -> None:
        with self._cond:
            needed = self._need_handshake or not self._core.ready
        if needed:
            self._handshake(self.handshake_timeout)

    def request(self, verb: str, body: dict[str, Any] | None = None, timeout: float | None = None) -> dict:
        """Send a request and return its OK body. ERR raises DeviceError; no answer raises DeviceTimeout."""
        with self._request_lock:
            self._raise_pending()
            self._ensure_ready()
            return self._call(verb, body, timeout).body

    def _call(self, verb: str, body: dict[str, Any] | None, timeout: float | None, *, ping: bool = True) -> Answer:
        timeout = self.request_timeout if timeout is None else timeout
        with self._cond:
            ident, data = self._core.request(verb, body or {})
        try:
            self._write(data)
            answer = self._wait(lambda: self._answers.pop(ident, None), timeout)
        finally:
            with self._cond:
                if ident in self._core.outstanding:
                    self._core.abandon(ident)
        if answer is None:
            raise self._no_answer(verb, ident, timeout, ping)
        if not answer.ok:
            raise DeviceError(answer.name or "ERR", answer.msg, answer.body, verb=verb, request_id=ident,
                              port=self.port)
        return answer

    def _no_answer(self, verb: str, ident: int, timeout: float, ping: bool) -> DeviceTimeout:
        head = f"no answer to {verb} #{ident} from {self.name} ({self.port}, {self.baud} baud) within {timeout:g} s"
        if ping and verb not in ("PING", "HELLO"):
            try:
                self._call("PING", {}, timeout, ping=False)
                head += ("; it answers PING, so it is alive: the request line was lost on the way, or the firmware "
                         f"hangs in {verb}")
            except DeviceTimeout:
                head += ("; it does not answer PING either: the device hangs, rebooted without a banner, or the "
                         "port no longer reaches it")
            except HarnessError as exc:
                head += f"; PING failed too: {exc}"
        return DeviceTimeout(f"{head}\n--- device log (last {LOG_TAIL} lines) ---\n{self._log_tail()}",
                             expected=f"answer to {verb} #{ident}")

    # --------------------------------------------------------------------------------------- handshake

    def _handshake(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        hellos: list[int] = []
        with self._cond:
            start_bytes, start_boots = self.bytes_received, self._boot_count
        while True:
            with self._cond:
                ident, data = self._core.hello()
                boots = self._boot_count
            hellos.append(ident)
            self._write(data)
            wait = min(HELLO_RETRY_S, deadline - time.monotonic())

            def done():
                for h in hellos:
                    answer = self._answers.pop(h, None)
                    if answer is not None and not answer.ok:
                        return answer
                if self._core.ready:
                    return True
                return "boot" if self._boot_count != boots else None

            result = self._wait(done, max(wait, 0.0))
            if isinstance(result, Answer):
                raise HandshakeError(f"{self.name} ({self.port}) refused HELLO: {result.name}: {result.msg}")
            if result is True:
                break
            if time.monotonic() >= deadline:
                with self._cond:
                    for h in hellos:
                        self._core.abandon(h)
                raise HandshakeError(self._handshake_failure(timeout, start_bytes, start_boots))
            # else: unanswered (the firmware may have been starting) or it just booted: say HELLO again
        with self._cond:
            for h in hellos:
                self._answers.pop(h, None)
            self.info = dict(self._core.info or {})
            self.caps = set(self.info.get("caps") or [])
            self._need_handshake = False
            self._handshaken = True

    def _handshake_failure(self, timeout: float, start_bytes: int, start_boots: int) -> str:
        with self._cond:
            got = self.bytes_received - start_bytes
            texts = [line.text for line in self.log[-200:]]
            boots = self._boot_count - start_boots
            reasons = sorted({b.get("reset_reason") or "?" for b in self.boots[-boots:]}) if boots else []
        head = f"no answer to HELLO from {self.port} at {self.baud} baud within {timeout:g} s"
        joined = "\n".join(texts)
        if got == 0 and not texts:
            seen = "nothing arrived at all"
        elif "waiting for download" in joined:
            seen = ("the board is in download mode (it printed 'waiting for download'): release BOOT/IO0 and press "
                    "EN, or use --dut-reset dtr")
        elif texts and sum(t.count("\\x") + t.count("\\u") for t in texts) * 8 > max(1, len(joined)):
            seen = f"{got} bytes arrived but look like noise: probably the wrong --dut-baud (now {self.baud})"
        elif boots > 1:
            seen = f"the device rebooted {boots} times while we waited ({', '.join(reasons)}): a boot loop"
        else:
            seen = (f"{got} bytes of device log arrived but no protocol answer: is the mqtt-harness firmware "
                    "flashed, and is this its console?")
        causes = (f"Likely causes: wrong --dut-baud (now {self.baud}; the firmware's console speed, usually 115200); "
                  f"the firmware is not flashed (mqtt-harness dut flash {self.port} firmware/esp32-dut); another "
                  f"program holds the port (idf.py monitor, screen, minicom){link.holders_hint(self.port)}; the board "
                  "is in download mode or held in reset (press EN, or --dut-reset dtr)")
        tail = "\n".join("  " + t for t in texts[-10:])
        return f"{head}: {seen}. {causes}" + (f"\n--- last lines received ---\n{tail}" if tail else "")

    # ------------------------------------------------------------------------------------------ reset

    def _wait_boot(self, before: int, timeout: float, *, fail: bool = True) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._boot_count <= before:
                if self._port_error is not None:
                    raise self._port_error
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if fail:
                        raise DeviceTimeout(f"no BOOT from {self.name} ({self.port}) within {timeout:g} s after the "
                                            f"reset\n--- device log ---\n{self._log_tail()}", expected="BOOT")
                    return False
                self._cond.wait(remaining)
        return True

    def reset(self, timeout: float | None = None) -> dict[str, Any]:
        """Restart the device (the --dut-reset method, else the RESET verb), wait for its BOOT, handshake
        again. Expected, so not an unexpected reboot; the expectation cursors move to the BOOT."""
        timeout = self.handshake_timeout if timeout is None else timeout
        with self._request_lock:
            self._raise_pending()
            with self._cond:
                before = self._boot_count
                self._expect_boot = True
            try:
                if self.reset_mode == "dtr":
                    dtr_reset(self._serial, usb_jtag=self._usb_jtag(), name=self.port)
                elif self.reset_mode == "esptool":
                    self._stop_port()
                    try:
                        self.chip_info = esptool_reset(self.port)
                    finally:
                        self._start_port(link.open_port(self.port, self.baud))
                else:
                    self._ensure_ready()
                    self._need_cap("reset", "use --dut-reset dtr or esptool instead")
                    self._call("RESET", {}, None)
                booted = self._wait_boot(before, timeout, fail=self.reset_mode != "esptool")
            finally:
                with self._cond:
                    self._expect_boot = False
            with self._cond:
                if booted:
                    self._event_cursor, self._message_cursor = self._boot_at
                    self._log_chunks = []
            self._handshake(self.handshake_timeout)
            return self.info

    def expect_reboot(self, timeout: float | None = None, reset_reason: str | None = None) -> dict[str, Any]:
        """Wait for a reboot the test caused on purpose (CRASH, a watchdog test): it is then not a failure.
        Returns the banner. The next request handshakes again."""
        timeout = self.expect_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for index, failure in enumerate(self._failures):
                    if isinstance(failure, DeviceRebooted):
                        del self._failures[index]
                        with contextlib.suppress(ValueError):
                            self.unexpected_reboots.remove(failure.banner)
                        banner = failure.banner
                        break
                else:
                    banner = None
                if banner is not None:
                    break
                if self._port_error is not None:
                    raise self._port_error
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DeviceTimeout(f"no reboot of {self.name} ({self.port}) within {timeout:g} s\n"
                                        f"--- device log ---\n{self._log_tail()}", expected="BOOT")
                self._cond.wait(remaining)
        if reset_reason is not None and banner.get("reset_reason") != reset_reason:
            raise DeviceTimeout(f"{self.name} rebooted with reset_reason {banner.get('reset_reason')}, expected "
                                f"{reset_reason}", expected=reset_reason, received=[str(banner.get("reset_reason"))])
        return banner

    # ------------------------------------------------------------------------------------- the verbs

    def _need_cap(self, cap: str, hint: str = "") -> None:
        if cap not in self.caps:
            shown = " ".join(sorted(self.caps)) or "none"
            raise DeviceError("MISSING_CAP", f"the firmware does not announce '{cap}' (caps: {shown})"
                              + (f"; {hint}" if hint else ""), verb=cap.upper(), port=self.port)

    def _esp(self, verb: str, body: dict[str, Any] | None = None) -> dict:
        """A verb answering {"err": esp_err_t name}: anything but ESP_OK raises DeviceError."""
        answer = self.request(verb, body)
        if answer.get("err") not in (None, "ESP_OK"):
            raise DeviceError("ESP_ERR", f"{verb} returned {answer['err']}", answer, verb=verb, port=self.port)
        return answer

    def ping(self) -> dict:
        return self.request("PING")

    def sysinfo(self) -> dict:
        return self.request("SYSINFO")

    def init(self, config: dict[str, Any]) -> dict:
        return self.request("INIT", {"config": config})

    def config(self, config: dict[str, Any]) -> dict:
        return self._esp("CONFIG", {"config": config})

    def set_uri(self, uri: str) -> dict:
        return self._esp("SET_URI", {"uri": uri})

    def start(self) -> dict:
        return self._esp("START")

    def stop(self) -> dict:
        return self._esp("STOP")

    def disconnect(self) -> dict:
        return self._esp("DISCONNECT")

    def reconnect(self) -> dict:
        return self._esp("RECONNECT")

    def destroy(self) -> dict:
        return self._esp("DESTROY")

    def publish(self, topic: str, payload: bytes | str = b"", qos: int = 0, retain: bool = False) -> int:
        """esp_mqtt_client_publish; returns its msg_id verbatim (-1 failure, -2 outbox full are not raised)."""
        return self._publish("PUBLISH", {"topic": topic, "qos": qos, "retain": retain}, payload)

    def enqueue(self, topic: str, payload: bytes | str = b"", qos: int = 0, retain: bool = False,
                store: bool = True) -> int:
        return self._publish("ENQUEUE", {"topic": topic, "qos": qos, "retain": retain, "store": store}, payload)

    def _publish(self, verb: str, body: dict[str, Any], payload: bytes | str) -> int:
        if isinstance(payload, str):
            payload = payload.encode()
        with self._request_lock:
            self._raise_pending()
            self._ensure_ready()
            if not payload:
                return int(self.request(verb, body)["msg_id"])
            inline = {**body, "payload_b64": b64(payload)}
            if self._core.fits(verb, inline):
                return int(self.request(verb, inline)["msg_id"])
            self._need_cap("blob", f"a {len(payload)}-byte payload does not fit in a {self._core.max_line}-byte "
                                   "line and must travel as a blob")
            self.upload_blob(PUBLISH_BLOB, payload)
            try:
                msg_id = int(self.request(verb, {**body, "blob": PUBLISH_BLOB})["msg_id"])
            except BaseException:
                with contextlib.suppress(HarnessError):
                    self.free_blob(PUBLISH_BLOB)
                raise
            self.free_blob(PUBLISH_BLOB)
            return msg_id

    def subscribe(self, filter_or_list: str | Iterable[Any], qos: int = 0) -> int:
        """One filter with `qos`, or a list of (filter, qos) pairs (a bare filter in the list uses `qos`)."""
        if isinstance(filter_or_list, str):
            topics = [{"filter": filter_or_list, "qos": qos}]
        else:
            topics = [{"filter": item, "qos": qos} if isinstance(item, str) else {"filter": item[0], "qos": item[1]}
                      for item in filter_or_list]
        return int(self.request("SUBSCRIBE", {"topics": topics})["msg_id"])

    def unsubscribe(self, topic: str) -> int:
        return int(self.request("UNSUBSCRIBE", {"topic": topic})["msg_id"])

    def outbox_size(self) -> int:
        return int(self.request("OUTBOX")["size"])

    def state(self) -> str:
        return str(self.request("STATE")["state"])

    def set_time(self, epoch: float) -> dict:
        self._need_cap("set_time")
        return self.request("SET_TIME", {"epoch": int(epoch)})

    def loglevel(self, tag: str, level: str) -> dict:
        self._need_cap("loglevel")
        return self.request("LOGLEVEL", {"tag": tag, "level": level})

    def dns(self, host: str, timeout_ms: int = 5000) -> dict:
        self._need_cap("dns")
        return self.request("DNS", {"host": host, "timeout_ms": timeout_ms},
                            timeout=max(self.request_timeout, timeout_ms / 1000 + 2))

    def tcp_probe(self, host: str, port: int, timeout_ms: int = 3000) -> dict:
        self._need_cap("tcp_probe")
        return self.request("TCP_PROBE", {"host": host, "port": port, "timeout_ms": timeout_ms},
                            timeout=max(self.request_timeout, timeout_ms / 1000 + 2))

    def upload_blob(self, name: str, data: bytes) -> dict:
        """BLOB_BEGIN, CRC-checked BLOB_CHUNKs that fit in max_line, BLOB_END. Returns the BLOB_END answer."""
        with self._request_lock:
            self._need_cap("blob")
            self.request("BLOB_BEGIN", {"name": name, "size": len(data)})
            step = chunk_size(self._core.max_line, overhead=100 + len(name.encode()))
            for offset in range(0, len(data), step):
                piece = data[offset:offset + step]
                answer = self.request("BLOB_CHUNK", {"name": name, "offset": offset, "b64": b64(piece)})
                if answer.get("received") != offset + len(piece):
                    raise DeviceError("CHUNK_LOST", f"blob {name!r}: the device has {answer.get('received')} bytes "
                                      f"after the chunk ending at {offset + len(piece)}", answer, verb="BLOB_CHUNK",
                                      port=self.port)
            return self.request("BLOB_END", {"name": name, "crc32": crc32_hex(data)})

    def free_blob(self, name: str) -> dict:
        return self.request("BLOB_FREE", {"name": name})

    def crash(self, reason: str = "ESP_RST_PANIC") -> None:
        """CRASH (stand-ins only): the device reboots at once without answering. Use expect_reboot() after."""
        with self._request_lock:
            self._raise_pending()
            self._ensure_ready()
            self._need_cap("crash")
            with self._cond:
                ident, data = self._core.request("CRASH", {"reason": reason})
                self._core.abandon(ident)
            self._write(data)

    def write_raw(self, data: bytes) -> None:
        """Bytes as they are, for bad-input tests (no framing, no handshake)."""
        self._write(bytes(data))

    def write(self, text: str | bytes) -> None:
        """One console line, as pytest-embedded's dut.write: the text and a newline. The firmware treats a line
        without the @@ marker as input for nothing (it logs that it ignored it); protocol requests go
        through request() and the typed calls."""
        data = text.encode() if isinstance(text, str) else bytes(text)
        self._write(data if data.endswith(b"\n") else data + b"\n")

    # ------------------------------------------------------------------------------------- expectations

    def mark(self) -> int:
        """A position in `events` for expect_event(since=...) and events_since()."""
        with self._cond:
            return len(self.events)

    def events_since(self, mark: int) -> list[Event]:
        with self._cond:
            return list(self.events[mark:])

    def log_text(self, since: int = 0) -> str:
        """The device log (lines since index `since` of `log`), one line each."""
        with self._cond:
            return "\n".join(line.text for line in self.log[since:])

    def expect_event(self, name: str | None = None, *, timeout: float | None = None, since: int | None = None,
                     **fields: Any) -> Event:
        """The next event named `name` ("CONNECTED" or "MQTT_EVENT_CONNECTED"; None: any) whose fields agree
        (msg_id=5, session_present=True, data=b"..", tls_error="ESP_ERR_..", error_type=.., or a predicate).
        Scans from the cursor (or `since`) and moves the cursor past the match."""
        __tracebackhide__ = True
        full = event_name(name) if name else None
        timeout = self.expect_timeout if timeout is None else timeout
        with self._cond:
            start = self._event_cursor if since is None else since
        scanned = start

        def find():
            nonlocal scanned
            for index in range(scanned, len(self.events)):
                event = self.events[index]
                if (full is None or event.name == full) and event.agrees(**fields):
                    self._event_cursor = max(self._event_cursor, index + 1)
                    return event
            scanned = len(self.events)
            return None

        found = self._wait(find, timeout)
        if found is not None:
            return found
        wanted = " ".join([full or "any event"] + [f"{k}={v!r}" for k, v in fields.items()])
        with self._cond:
            seen = self.events[start:]
            received = [describe(e) for e in seen]
            lines_out = []
            for event, text in list(zip(seen, received))[-EVENTS_SHOWN:]:
                near = event.disagreements(fields) if event.name == full and fields else []
                lines_out.append("  " + text + (f"   <- {'; '.join(near)}" if near else ""))
            problems = self.problems[-5:]
        shown = "\n".join(lines_out) or "  (none)"
        extra = ("\n--- problems ---\n" + "\n".join("  " + p for p in problems)) if problems else ""
        raise DeviceTimeout(
            f"expected {wanted} from {self.name} ({self.port}) within {timeout:g} s\n"
            f"--- received since the cursor ({len(seen)} events) ---\n{shown}{extra}\n"
            f"--- device log (last {LOG_TAIL} lines) ---\n{self._log_tail()}", expected=wanted, received=received)

    def expect_message(self, topic: str | None = None, *, timeout: float | None = None,
                       payload: bytes | str | None = None, since: int | None = None, **fields: Any) -> DataMessage:
        """The next reassembled MQTT message on `topic` (a name, or a filter with + and #) with `payload` and
        fields (qos=1, retain=False...). Same cursor idea as expect_event, over `messages`."""
        __tracebackhide__ = True
        from harness.topics import matches

        timeout = self.expect_timeout if timeout is None else timeout
        if isinstance(payload, str):
            payload = payload.encode()

        def agrees(msg: DataMessage) -> bool:
            if topic is not None:
                if msg.topic is None:
                    return False
                if "+" in topic or "#" in topic:
                    try:
                        if not matches(topic, msg.topic):
                            return False
                    except ValueError:
                        return False
                elif msg.topic != topic:
                    return False
            if payload is not None and msg.payload != payload:
                return False
            return all(field_agrees(v, getattr(msg, k, None)) for k, v in fields.items())

        with self._cond:
            start = self._message_cursor if since is None else since
        scanned = start

        def find():
            nonlocal scanned
            for index in range(scanned, len(self.messages)):
                if agrees(self.messages[index]):
                    self._message_cursor = max(self._message_cursor, index + 1)
                    return self.messages[index]
            scanned = len(self.messages)
            return None

        found = self._wait(find, timeout)
        if found is not None:
            return found
        wanted = " ".join(["message"] + ([f"topic={topic}"] if topic else []) +
                          ([f"payload={payload!r}"] if payload is not None else []) +
                          [f"{k}={v!r}" for k, v in fields.items()])
        with self._cond:
            seen = self.messages[start:]
            received = [describe(m) for m in seen]
            problems = [p for p in self.problems if "DATA" in p][-5:]
        extra = ("\n--- DATA problems ---\n" + "\n".join("  " + p for p in problems)) if problems else ""
        raise DeviceTimeout(
            f"expected {wanted} from {self.name} ({self.port}) within {timeout:g} s\n"
            f"--- messages since the cursor ({len(seen)}) ---\n" + ("\n".join("  " + r for r in received) or "  (none)")
            + extra + f"\n--- device log (last {LOG_TAIL} lines) ---\n{self._log_tail()}",
            expected=wanted, received=received)

    def _log_pending(self) -> str:
        """The log text after the expect() cursor (call with the lock held)."""
        if len(self._log_chunks) > 1:
            self._log_chunks = ["".join(self._log_chunks)]
        return self._log_chunks[0] if self._log_chunks else ""

    def expect(self, pattern: str | bytes | re.Pattern, timeout: float | None = None) -> re.Match:
        """Search the device log since the log cursor for a regex (str or bytes; bytes match the log text
        encoded as UTF-8, invalid bytes appearing as \\xNN); moves the cursor past the match. Complete lines
        only: text without its newline yet is not searched."""
        __tracebackhide__ = True
        timeout = self.expect_timeout if timeout is None else timeout
        regex = pattern if isinstance(pattern, re.Pattern) else re.compile(pattern, re.M)

        def find():
            text = self._log_pending()
            if isinstance(regex.pattern, bytes):
                encoded = text.encode()
                match = regex.search(encoded)
                if match is not None:
                    used = len(encoded[:match.end()].decode("utf-8", "ignore"))
                    self._log_chunks = [text[used:]]
                return match
            match = regex.search(text)
            if match is not None:
                self._log_chunks = [text[match.end():]]
            return match

        found = self._wait(find, timeout)
        if found is not None:
            return found
        with self._cond:
            pending = self._log_pending().splitlines()[-LOG_TAIL:]
        shown = "\n".join("  " + line for line in pending) or "  (nothing)"
        raise DeviceTimeout(f"expected the device log to match {regex.pattern!r} within {timeout:g} s "
                            f"({self.name}, {self.port})\n--- device log since the cursor (last {LOG_TAIL} lines) "
                            f"---\n{shown}", expected=str(regex.pattern), received=pending)

    def expect_exact(self, text: str | bytes, timeout: float | None = None) -> re.Match:
        return self.expect(re.compile(re.escape(text)), timeout)


class _Aio:
    """Every Dut method as a coroutine (run in a worker thread): `await dut.aio.expect_event("CONNECTED")`."""

    def __init__(self, dut: Dut):
        self._dut = dut

    def __getattr__(self, name: str):
        attr = getattr(self._dut, name)
        if not callable(attr):
            return attr

        async def call(*args, **kwargs):
            return await asyncio.to_thread(attr, *args, **kwargs)

        call.__name__ = call.__qualname__ = name
        call.__doc__ = attr.__doc__
        return call


__all__ = ["Dut", "DeviceError", "DeviceTimeout", "HandshakeError", "DeviceRebooted", "EventLost",
           "ProtocolMismatch", "PortError", "PROTO_MAJOR"]
