"""A device pty as raw bytes (lines.py framing on both sides), for tests of what the driver itself never sends:
bad lines, repeated ids."""

from __future__ import annotations

import os
import select
import termios
import time
import tty

from harness.device.lines import Malformed, parse_frame, split_log_prefix, strip_eol

EVENT_TIMEOUT = 10.0


class RawLink:
    """The pty as bytes: lines out, lines in (lines.py framing), for what the driver must never send."""

    def __init__(self, path: str):
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self.fd, termios.TCSANOW)  # not TCSAFLUSH: that would drop the BOOT already waiting
        self.buf = b""
        self.lines: list[bytes] = []

    def close(self):
        os.close(self.fd)

    def send(self, data: bytes):
        os.write(self.fd, data)

    def _pump(self, timeout: float):
        r, _, _ = select.select([self.fd], [], [], timeout)
        if r:
            self.buf += os.read(self.fd, 65536)
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            self.lines.append(strip_eol(line))

    def messages(self):
        out = []
        for line in self.lines:
            _, frame = split_log_prefix(line)
            if frame is not None:
                out.append(parse_frame(frame))
        return out

    def wait(self, pred, timeout: float = EVENT_TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for msg in self.messages():
                if not isinstance(msg, Malformed) and pred(msg):
                    return msg
            self._pump(min(0.2, max(0.0, deadline - time.monotonic())))
        raise AssertionError(f"no matching line within {timeout} s; got:\n"
                             + "\n".join(line.decode(errors="replace")[:200] for line in self.lines[-20:]))

    def answers(self, ident: int):
        return [m for m in self.messages() if not isinstance(m, Malformed) and m.id == ident
                and m.kind in ("OK", "ERR")]
