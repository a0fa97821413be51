"""Framing of device-protocol lines (docs/dut-protocol.md §2), shared by the host and the device sides.

    @@<major> <id> <KIND> <json>\n

Pure functions over bytes: no port, no clock. A line without the marker is device log; a line with the
marker that does not parse is a Malformed (kept as log by the host, answered with ERR by a device)."""

from __future__ import annotations

import base64
import json
import re
import zlib
from dataclasses import dataclass, field
from typing import Any

PROTO_MAJOR = 1
PROTO_MINOR = 0
MARKER = b"@@"
DEFAULT_MAX_LINE = 4096
MIN_MAX_LINE = 1024
DEVICE_KINDS = frozenset({"BOOT", "OK", "ERR", "EVT"})
_FRAME = re.compile(rb"@@(\d{1,3}) (-|\d{1,10}) ([A-Z][A-Z0-9_]{0,31}) (.*)$", re.S)
_MARKER_AT = re.compile(rb"@@\d{1,3} ")


@dataclass(frozen=True, slots=True)
class Message:
    """One protocol line: `id` is None for '-' (BOOT, EVT)."""

    kind: str
    body: dict[str, Any] = field(default_factory=dict)
    id: int | None = None
    major: int = PROTO_MAJOR


@dataclass(frozen=True, slots=True)
class Malformed:
    """A line that carries the marker but is not a valid message; `why` says what is wrong."""

    text: str
    why: str


def encode_message(msg: Message) -> bytes:
    """The line for `msg`, with its newline."""
    body = json.dumps(msg.body, separators=(",", ":"), ensure_ascii=False)
    ident = "-" if msg.id is None else str(msg.id)
    return f"@@{msg.major} {ident} {msg.kind} {body}\n".encode()


def split_log_prefix(line: bytes) -> tuple[bytes, bytes | None]:
    """(log text before the marker, the framed part or None). The marker may sit anywhere in a line."""
    m = _MARKER_AT.search(line)
    if m is None:
        return line, None
    return line[:m.start()], line[m.start():]


def parse_frame(frame: bytes) -> Message | Malformed:
    """Parse a framed part (starting at the marker; no newline)."""
    text = frame.decode("utf-8", "replace")
    m = _FRAME.match(frame)
    if m is None:
        return Malformed(text, "not '@@<major> <id|-> <KIND> <json>'")
    major, ident, kind, raw = int(m[1]), m[2], m[3].decode(), m[4]
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return Malformed(text, f"JSON does not parse: {exc}")
    if not isinstance(body, dict):
        return Malformed(text, "JSON is not an object")
    return Message(kind=kind, body=body, id=None if ident == b"-" else int(ident), major=major)


def strip_eol(line: bytes) -> bytes:
    if line.endswith(b"\n"):
        line = line[:-1]
    if line.endswith(b"\r"):
        line = line[:-1]
    return line


def crc32_hex(data: bytes) -> str:
    return f"0x{zlib.crc32(data) & 0xFFFFFFFF:08x}"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def chunk_size(max_line: int, overhead: int = 160) -> int:
    """Raw bytes per chunk so that base64 of them plus `overhead` bytes of framing fits in `max_line`."""
    return max(48, (max_line - overhead) // 4 * 3)
