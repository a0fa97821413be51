"""Errors of the device half. Each message names the port and says what to try, in the CLI's terms
(--dut, --dut-baud, --dut-reset)."""

from __future__ import annotations

from typing import Any

from harness.errors import HarnessError


class DeviceError(HarnessError):
    """The device answered ERR (or an esp-mqtt call failed: name "ESP_ERR", `err` holds the esp_err_t name)."""

    def __init__(self, name: str, msg: str = "", body: dict[str, Any] | None = None, *, verb: str | None = None,
                 request_id: int | None = None, port: str | None = None):
        self.name = name
        self.msg = msg
        self.body = dict(body or {})
        self.verb = verb
        self.request_id = request_id
        self.port = port
        what = f"{verb} #{request_id}" if verb else "request"
        where = f" on {port}" if port else ""
        err = self.body.get("err")
        detail = f"{name} ({err})" if err and err != name else name
        super().__init__(f"{what} failed{where}: {detail}" + (f": {msg}" if msg else ""))

    @property
    def err(self) -> str | None:
        return self.body.get("err")


class DeviceTimeout(HarnessError, AssertionError):
    """A wait for the device ran out: an answer, an event, a message or a log pattern. An AssertionError, so
    pytest shows it as a test failure with the expected-vs-received text."""

    def __init__(self, message: str, *, expected: str = "", received: list[str] | None = None):
        super().__init__(message)
        self.expected = expected
        self.received = list(received or [])


class HandshakeError(HarnessError):
    """The device did not complete HELLO: silent, wrong baud, not flashed, busy port, download mode."""


class DeviceRebooted(HarnessError):
    """A BOOT the host did not ask for: the device panicked, hit a watchdog or browned out."""

    def __init__(self, message: str, *, reset_reason: str | None = None, banner: dict | None = None):
        super().__init__(message)
        self.reset_reason = reset_reason
        self.banner = dict(banner or {})


class EventLost(HarnessError):
    """The event numbering skipped: protocol lines were lost on the serial line."""

    def __init__(self, message: str, *, missing: list[int]):
        super().__init__(message)
        self.missing = list(missing)


class ProtocolMismatch(HarnessError):
    """The device speaks another major version of docs/dut-protocol.md."""

    def __init__(self, message: str, *, device: Any = None, host: int | None = None):
        super().__init__(message)
        self.device = device
        self.host = host


class PortError(HarnessError):
    """The serial port cannot be found, opened, or came back too late after it was lost."""
