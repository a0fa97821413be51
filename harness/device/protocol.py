"""The host side of docs/dut-protocol.md as a sans-IO state machine (in the manner of h11/wsproto).

    proto = DeviceProtocol()
    ident, data = proto.hello()              # bytes to write; nothing is sent here
    for item in proto.receive_data(chunk, now=time.time()):
        ...                                  # LogLine, Boot, Answer, Event, DataMessage, EventGap, ...

No port, no thread, no clock: bytes and the time go in, items and bytes come out. The driver
(serial_driver.Dut) decides what to raise; this module only says what happened. Every received byte ends up
in some item: protocol lines decoded, everything else as LogLine, so nothing the device said is lost.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Any, Union

from harness import __version__
from harness.device import lines
from harness.device.lines import DEFAULT_MAX_LINE, PROTO_MAJOR, Message

MAX_ID = 2147483647
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")  # ESP-IDF colours its log (CONFIG_LOG_COLORS)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_KEEP_ABANDONED = 64


def clean_text(raw: bytes) -> str:
    """Printable text of a line: invalid UTF-8 and control bytes as \\xNN escapes, ANSI colours removed, so the
    text is safe for a report and a regex while showing what arrived."""
    text = raw.decode("utf-8", "backslashreplace")
    if "\x1b" in text:
        text = _ANSI.sub("", text)
    return _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}", text)


def event_name(name: str) -> str:
    """"CONNECTED" -> "MQTT_EVENT_CONNECTED"; full names pass through."""
    name = name.upper()
    return name if name.startswith("MQTT_EVENT_") else "MQTT_EVENT_" + name


# ---------------------------------------------------------------------------------------------------- items


@dataclass(frozen=True, slots=True)
class LogLine:
    """A line of device log (or the text before a marker). `note` says what the host did to it, e.g. cut it."""

    at: float
    text: str
    raw: bytes = b""
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Boot:
    """A BOOT banner: the device (re)started."""

    banner: dict[str, Any]
    at: float = 0.0

    @property
    def reset_reason(self) -> str | None:
        return self.banner.get("reset_reason")

    @property
    def proto(self) -> Any:
        return self.banner.get("proto")


@dataclass(frozen=True, slots=True)
class Answer:
    """OK or ERR to request `id` (`verb` is what the host asked)."""

    id: int
    ok: bool
    body: dict[str, Any]
    verb: str | None = None
    at: float = 0.0

    @property
    def name(self) -> str | None:
        """The ERR name (BAD_ARGS, ESP_ERR...), None for OK."""
        return None if self.ok else str(self.body.get("name", "ERR"))

    @property
    def msg(self) -> str:
        return str(self.body.get("msg") or "")


@dataclass(frozen=True, slots=True)
class Event:
    """One EVT line: an esp-mqtt event with every field of esp_mqtt_event_t in `body`."""

    seq: int
    t_ms: int | None
    name: str
    body: dict[str, Any]
    at: float = 0.0

    @property
    def short(self) -> str:
        """"CONNECTED" for "MQTT_EVENT_CONNECTED"."""
        return self.name.removeprefix("MQTT_EVENT_")

    @property
    def msg_id(self) -> int | None:
        return self.body.get("msg_id")

    @property
    def topic(self) -> str | None:
        """The topic (topic_b64 decoded if the device had to send it that way), None if the event has none."""
        if self.body.get("topic") is not None:
            return self.body["topic"]
        raw = self.topic_bytes
        return None if raw is None else raw.decode("utf-8", "backslashreplace")

    @property
    def topic_bytes(self) -> bytes | None:
        if self.body.get("topic_b64") is not None:
            return _unb64_or_empty(self.body["topic_b64"])
        topic = self.body.get("topic")
        return None if topic is None else topic.encode()

    @property
    def data(self) -> bytes:
        """This event's data bytes (one piece of a long DATA message; see DataMessage for the whole)."""
        return _unb64_or_empty(self.body.get("data_b64"))

    @property
    def error_handle(self) -> dict[str, Any] | None:
        return self.body.get("error_handle") or None

    @property
    def tls_error(self) -> str | None:
        """The esp_tls_last_esp_err name (ESP_ERR_MBEDTLS_SSL_HANDSHAKE_FAILED...), None if there is none."""
        err = (self.error_handle or {}).get("esp_tls_last_esp_err") or {}
        name = err.get("name")
        return None if name in (None, "ESP_OK") and not err.get("code") else name

    @property
    def property(self) -> dict[str, Any]:
        """The MQTT 5 properties esp-mqtt set ({} for none)."""
        return self.body.get("property") or {}

    def get(self, name: str, default: Any = None) -> Any:
        """A field by name: the convenience properties (data, topic, tls_error...), then the body, then inside
        error_handle (error_type, connect_return_code...) and the MQTT 5 properties."""
        if name in _EVENT_PROPS:
            value = getattr(self, name)
            return default if value is None else value
        for where in (self.body, self.error_handle or {}, self.property):
            if name in where:
                return where[name]
        return default

    def agrees(self, **fields: Any) -> bool:
        return not self.disagreements(fields)

    def disagreements(self, fields: dict[str, Any]) -> list[str]:
        """'field: wanted X, got Y' for every field that does not agree (see field_agrees)."""
        out = []
        for key, wanted in fields.items():
            got = self.get(key)
            if not field_agrees(wanted, got):
                out.append(f"{key}: wanted {wanted!r}, got {got!r}")
        return out


_EVENT_PROPS = frozenset({"short", "msg_id", "topic", "topic_bytes", "data", "error_handle", "tls_error"})


def field_agrees(wanted: Any, got: Any) -> bool:
    """Compare an expected field with a received one. A callable is a predicate; a name compares with a
    {"code","name"} object's name (connect_return_code="MQTT_CONNECTION_REFUSE_NOT_AUTHORIZED"), a number with
    its code; bools compare as bools (so session_present=True does not accept 1)."""
    if callable(wanted) and not isinstance(wanted, type):
        return bool(wanted(got))
    if isinstance(got, dict) and not isinstance(wanted, dict):
        if isinstance(wanted, str):
            return got.get("name") == wanted
        if isinstance(wanted, int) and not isinstance(wanted, bool):
            return got.get("code") == wanted
    if isinstance(wanted, bool) or isinstance(got, bool):
        return type(wanted) is type(got) and wanted == got
    return wanted == got


@dataclass(frozen=True, slots=True)
class DataMessage:
    """A received MQTT message: the pieces of MQTT_EVENT_DATA reassembled and CRC-checked."""

    topic: str | None
    payload: bytes
    qos: int | None
    retain: bool | None
    dup: bool | None
    msg_id: int | None
    events: tuple[Event, ...] = ()
    at: float = 0.0

    @property
    def property(self) -> dict[str, Any]:
        return self.events[0].property if self.events else {}


@dataclass(frozen=True, slots=True)
class DataError:
    """DATA pieces that do not make a message: CRC mismatch, a lost or out-of-order piece."""

    why: str
    msg_id: int | None = None
    topic: str | None = None
    expected_crc: str | None = None
    got_crc: str | None = None
    payload: bytes = b""
    at: float = 0.0


@dataclass(frozen=True, slots=True)
class Malformed:
    """A line with the marker that is not a valid device message (it is also given as a LogLine)."""

    text: str
    why: str
    at: float = 0.0


@dataclass(frozen=True, slots=True)
class StrayAnswer:
    """An answer the host cannot pair with a request it is waiting for."""

    text: str
    why: str
    at: float = 0.0
    id: int | None = None


@dataclass(frozen=True, slots=True)
class EventGap:
    """Event `got` arrived when `expected` was next: the lines in between were lost."""

    expected: int
    got: int
    at: float = 0.0

    @property
    def missing(self) -> list[int]:
        return list(range(self.expected, self.got))


@dataclass(frozen=True, slots=True)
class VersionMismatch:
    """The device announced (or answered with) another major protocol version."""

    device: Any
    host: int
    where: str
    text: str = ""
    at: float = 0.0


Item = Union[LogLine, Boot, Answer, Event, DataMessage, DataError, Malformed, StrayAnswer, EventGap,
             VersionMismatch]


def _unb64_or_empty(text: Any) -> bytes:
    if not isinstance(text, str):
        return b""
    try:
        return lines.unb64(text)
    except (ValueError, base64.binascii.Error):
        return b""


# ---------------------------------------------------------------------------------------------------- state


@dataclass(slots=True)
class _Partial:
    first: Event
    total: int
    buf: bytearray = field(default_factory=bytearray)
    events: list[Event] = field(default_factory=list)


class DeviceProtocol:
    """Host-side protocol state: line splitting, request ids, handshake, event numbering, DATA reassembly.

    State a driver reads: `ready` (HELLO answered OK with our major version), `info` (that answer: every
    banner field), `banner` (the last BOOT), `max_line`, `mismatch` (a VersionMismatch, or None),
    `outstanding` ({id: verb} awaiting an answer)."""

    def __init__(self, *, max_line: int = DEFAULT_MAX_LINE, host: str = f"mqtt-harness {__version__}"):
        self.max_line = max_line
        self.host = host
        self.ready = False
        self.info: dict[str, Any] | None = None
        self.banner: dict[str, Any] | None = None
        self.mismatch: VersionMismatch | None = None
        self.outstanding: dict[int, str] = {}
        self._abandoned: dict[int, str] = {}
        self._hellos: set[int] = set()  # every HELLO since the last handshake: any answer completes it
        self._quiet: set[int] = set()  # HELLOs made redundant by another one's answer
        self._next_id = 1
        self._next_seq: int | None = None  # None: opened mid-run, the first event sets the numbering
        self._partial: _Partial | None = None
        self._buf = bytearray()
        self._scanned = 0
        self._line_at: float | None = None
        self._cutting = False

    # ------------------------------------------------------------------------------------------- sending

    def hello(self) -> tuple[int, bytes]:
        """A HELLO request. Send it again if unanswered: HELLO changes nothing on the device."""
        ident, data = self.request("HELLO", {"proto": PROTO_MAJOR, "host": self.host})
        self._hellos.add(ident)
        return ident, data

    def request(self, verb: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
        """(id, line) for a request; the id is outstanding until its answer arrives or abandon(id)."""
        if verb != "HELLO" and not self.ready:
            raise RuntimeError(f"{verb} before the handshake: send hello() and wait for its answer first")
        ident = self._next_id
        self._next_id = 1 if ident >= MAX_ID else ident + 1
        self.outstanding[ident] = verb
        return ident, lines.encode_message(Message(kind=verb, body=body or {}, id=ident))

    def fits(self, verb: str, body: dict[str, Any]) -> bool:
        """Does the request line fit in the device's max_line?"""
        line = lines.encode_message(Message(kind=verb, body=body, id=MAX_ID))
        return len(line) - 1 <= self.max_line

    def abandon(self, ident: int) -> None:
        """The host stopped waiting for `ident`: a late answer is reported, not matched."""
        verb = self.outstanding.pop(ident, None)
        if verb is not None:
            self._abandoned[ident] = verb
            while len(self._abandoned) > _KEEP_ABANDONED:
                del self._abandoned[next(iter(self._abandoned))]

    # ----------------------------------------------------------------------------------------- receiving

    def receive_data(self, data: bytes, now: float) -> list[Item]:
        """Feed bytes as read; get the items of every line they complete."""
        items: list[Item] = []
        if not data:
            return items
        if self._line_at is None:
            self._line_at = now
        self._buf += data
        limit = max(self.max_line, DEFAULT_MAX_LINE)
        while self._buf:
            nl = self._buf.find(b"\n", self._scanned)
            if self._cutting:  # the rest of an over-long line: dropped up to its newline
                if nl < 0:
                    self._buf.clear()
                    self._scanned = 0
                    break
                del self._buf[:nl + 1]
                self._cutting = False
                self._scanned = 0
                self._line_at = now
                continue
            if nl < 0:
                if len(self._buf) > limit + 1:  # +1: a "\r" may still be followed by its "\n"
                    items += self._cut(bytes(self._buf[:limit]), limit)
                    self._buf.clear()
                    self._cutting = True
                    self._scanned = 0
                else:
                    self._scanned = len(self._buf)
                break
            line = lines.strip_eol(bytes(self._buf[:nl + 1]))
            del self._buf[:nl + 1]
            self._scanned = 0
            at, self._line_at = self._line_at, now
            if len(line) > limit:
                items += self._cut(line[:limit], limit, at)
            else:
                items += self._line(line, at if at is not None else now)
        if not self._buf and not self._cutting:
            self._line_at = None
        return items

    def flush(self, now: float, note: str = "incomplete line: no newline arrived") -> list[Item]:
        """The partial line in the buffer as a LogLine (the port closed or was lost), so it is not lost."""
        raw = bytes(self._buf)
        at = self._line_at if self._line_at is not None else now
        self._buf.clear()
        self._scanned = 0
        self._line_at = None
        self._cutting = False
        if not raw:
            return []
        return [LogLine(at, clean_text(raw), raw, note)]

    def _cut(self, raw: bytes, limit: int, at: float | None = None) -> list[Item]:
        at = self._line_at if at is None else at
        at = 0.0 if at is None else at
        note = f"line longer than max_line ({limit} bytes): kept the first {limit} bytes, dropped the rest"
        text = clean_text(raw)
        items: list[Item] = [LogLine(at, text, raw, note)]
        if lines.split_log_prefix(raw)[1] is not None:
            items.append(Malformed(text, f"protocol line longer than max_line ({limit} bytes): cut", at))
        return items

    def _line(self, raw: bytes, at: float) -> list[Item]:
        prefix, frame = lines.split_log_prefix(raw)
        if frame is None:
            return [LogLine(at, clean_text(raw), raw)]
        items: list[Item] = []
        if prefix:
            items.append(LogLine(at, clean_text(prefix), prefix, "log text before a protocol marker"))
        msg = lines.parse_frame(frame)
        text = clean_text(frame)
        if isinstance(msg, lines.Malformed):
            return items + self._malformed(frame, msg.why, at)
        if msg.major != PROTO_MAJOR and msg.kind not in ("BOOT", "OK", "ERR"):  # those say it themselves
            items += self._version(msg.major, f"a {msg.kind} line", text, at)
            return items + self._malformed(frame, f"a protocol {msg.major} line; this host reads {PROTO_MAJOR}", at)
        if msg.kind == "BOOT":
            return items + self._boot(msg, text, at)
        if msg.kind in ("OK", "ERR"):
            return items + self._answer(msg, text, at)
        if msg.kind == "EVT":
            return items + self._event(msg, frame, at)
        return items + self._malformed(frame, f"kind {msg.kind} is not one a device sends (BOOT, OK, ERR, EVT)", at)

    def _malformed(self, frame: bytes, why: str, at: float) -> list[Item]:
        text = clean_text(frame)
        return [LogLine(at, text, frame, f"malformed protocol line: {why}"), Malformed(text, why, at)]

    def _version(self, device: Any, where: str, text: str, at: float) -> list[Item]:
        if self.mismatch is not None:  # said once; every later line of that device would repeat it
            return []
        self.mismatch = VersionMismatch(device, PROTO_MAJOR, where, text, at)
        self.ready = False
        return [self.mismatch]

    def _boot(self, msg: Message, text: str, at: float) -> list[Item]:
        items: list[Item] = []
        banner = msg.body
        self.banner = banner
        self.ready = False
        self._next_seq = 1
        for ident in list(self.outstanding):  # a rebooted device answers nothing it was asked before...
            if ident not in self._hellos:  # ...except a HELLO still in its receive buffer: that is welcome
                self.abandon(ident)
        if self._partial is not None:
            items.append(self._incomplete("the device rebooted", at))
        if isinstance(banner.get("max_line"), int) and banner["max_line"] >= lines.MIN_MAX_LINE:
            self.max_line = banner["max_line"]
        proto = banner.get("proto", msg.major)
        if msg.major == PROTO_MAJOR and proto == PROTO_MAJOR:
            self.mismatch = None  # new firmware, new chance
        else:
            items += self._version(proto if proto != PROTO_MAJOR else msg.major, "the BOOT banner", text, at)
        items.append(Boot(banner, at))
        return items

    def _answer(self, msg: Message, text: str, at: float) -> list[Item]:
        ok = msg.kind == "OK"
        ident = msg.id
        if ident is None:
            # ERR LINE_TOO_LONG comes with id '-' when the id was lost; we send one request at a time
            if not ok and len(self.outstanding) == 1:
                ident = next(iter(self.outstanding))
            else:
                return [StrayAnswer(text, "answer without an id to no request", at)]
        verb = self.outstanding.pop(ident, None)
        if verb is None:
            if ident in self._quiet:  # a repeated HELLO's answer after another one completed the handshake
                self._quiet.discard(ident)
                return []
            if not ok and msg.body.get("name") == "PROTO_VERSION":
                return self._version(msg.body.get("proto", msg.major), "an ERR PROTO_VERSION answer", text, at)
            if ident in self._abandoned:
                late = self._abandoned.pop(ident)
                return [StrayAnswer(text, f"late answer to {late} #{ident} (the host had stopped waiting)", at,
                                    ident)]
            return [StrayAnswer(text, f"answer to no request (id {ident})", at, ident)]
        answer = Answer(ident, ok, msg.body, verb, at)
        items: list[Item] = [answer]
        if not ok and msg.body.get("name") == "PROTO_VERSION":
            items += self._version(msg.body.get("proto", msg.major), "an ERR PROTO_VERSION answer", text, at)
        elif verb == "HELLO" and ok:
            items += self._hello_ok(msg, text, at)
        return items

    def _hello_ok(self, msg: Message, text: str, at: float) -> list[Item]:
        proto = msg.body.get("proto", msg.major)
        if proto != PROTO_MAJOR or msg.major != PROTO_MAJOR:
            return self._version(proto if proto != PROTO_MAJOR else msg.major, "the HELLO answer", text, at)
        self.ready = True
        self.mismatch = None
        self.info = msg.body
        for ident in self._hellos:  # the other HELLOs' answers would be noise
            if self.outstanding.pop(ident, None) is not None:
                self._quiet.add(ident)
        self._hellos.clear()
        if isinstance(msg.body.get("max_line"), int) and msg.body["max_line"] >= lines.MIN_MAX_LINE:
            self.max_line = msg.body["max_line"]
        return []

    def _event(self, msg: Message, frame: bytes, at: float) -> list[Item]:
        body = msg.body
        seq, name = body.get("seq"), body.get("event")
        if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(name, str):
            return self._malformed(frame, "EVT needs a numeric 'seq' and an 'event' name", at)
        for key in ("data_b64", "topic_b64"):
            if key in body and body[key] is not None:
                try:
                    lines.unb64(body[key])
                except (ValueError, TypeError, AttributeError):
                    return self._malformed(frame, f"{key} is not base64", at)
        items: list[Item] = []
        expected = self._next_seq
        if expected is not None and seq != expected:
            if seq > expected:
                items.append(EventGap(expected, seq, at))
            else:
                items.append(Malformed(clean_text(frame), f"event seq {seq} after {expected - 1}: a repeated line, "
                                                          "or a reboot whose BOOT line was lost", at))
        self._next_seq = seq + 1
        event = Event(seq, body.get("t_ms"), name, body, at)
        items.append(event)
        if name == "MQTT_EVENT_DATA":
            items += self._data(event, at)
        return items

    # -------------------------------------------------------------------------------------------- DATA

    def _incomplete(self, why: str, at: float) -> DataError:
        part, self._partial = self._partial, None
        assert part is not None
        return DataError(f"DATA msg_id={part.first.msg_id} topic={part.first.topic!r} incomplete: {why} after "
                         f"{len(part.buf)} of {part.total} bytes", part.first.msg_id, part.first.topic,
                         payload=bytes(part.buf), at=at)

    def _data(self, event: Event, at: float) -> list[Item]:
        items: list[Item] = []
        offset = event.get("current_data_offset") or 0
        data = event.data
        total = event.get("total_data_len")
        if not isinstance(total, int):
            total = offset + len(data)
        if offset == 0:
            if self._partial is not None:
                items.append(self._incomplete("the next message began", at))
            self._partial = _Partial(event, total)
        part = self._partial
        if part is None or offset != len(part.buf) or total != part.total:
            have = "no message in progress" if part is None else f"expected offset {len(part.buf)} of {part.total}"
            first = part.first if part is not None else event
            self._partial = None
            items.append(DataError(f"DATA piece at offset {offset} (total {total}) of msg_id={first.msg_id} does "
                                   f"not follow: {have}; a piece was lost", first.msg_id, first.topic, at=at))
            return items
        part.buf += data
        part.events.append(event)
        if len(part.buf) < part.total:
            return items
        self._partial = None
        first, payload = part.first, bytes(part.buf)
        if len(payload) > part.total:
            items.append(DataError(f"DATA msg_id={first.msg_id} topic={first.topic!r}: {len(payload)} bytes, more "
                                   f"than total_data_len {part.total}", first.msg_id, first.topic,
                                   payload=payload, at=at))
            return items
        sent = event.get("crc32")
        got = lines.crc32_hex(payload)
        if sent is None:
            items.append(Malformed(f"EVT #{event.seq}", "the last DATA piece carries no crc32", at))
        elif _crc_value(sent) != int(got, 16):
            items.append(DataError(f"CRC mismatch in DATA msg_id={first.msg_id} topic={first.topic!r}: the device "
                                   f"says {sent}, the {len(payload)} reassembled bytes give {got}",
                                   first.msg_id, first.topic, str(sent), got, payload, at))
            return items
        items.append(DataMessage(first.topic, payload, first.get("qos"), first.get("retain"), first.get("dup"),
                                 first.msg_id, tuple(part.events), at))
        return items


def _crc_value(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value & 0xFFFFFFFF
    if isinstance(value, str):
        try:
            return int(value, 16) & 0xFFFFFFFF
        except ValueError:
            return None
    return None
