"""Assertions for suite tests that explain themselves: what packet was expected, what arrived, and the client's
packet log.

    pub_ack = await expect_packet(client, Puback, packet_id=1)
    msg = await expect_packet(sub, Publish, topic=topic + "a", qos=1, payload=b"x")
    await expect_nothing(sub, after=pub)  # no PUBLISH (or DISCONNECT) arrived: PINGREQ barriers, no sleeping
    reason = await expect_closed(client)  # the broker closed the connection
    [disconnect] = received(client, Disconnect)  # what arrived so far, whatever the position
    messages = await collect(sub, 500, after=pub)  # wait for 500 PUBLISH, barrier, all PUBLISH since the position

Each function reads the client's packet log (so the client must keep one: the default) from a position it keeps
per client: a packet, once matched, is not matched again, and expect_nothing() looks at everything received since
the last expectation. `mark(client)` moves that position to the end (everything so far is accounted for). These
positions are independent of Client.receive(): use one style per client in a test.

Failing at once. expect_packet() waits up to its timeout for the packet, but fails as soon as what arrived rules it
out, so a wrong answer costs a round trip, not the whole timeout:
- the connection closed (checked whenever the client closes, not only when bytes arrive);
- the broker sent a DISCONNECT on the client's current connection and it is not the expected packet: nothing may
  follow a DISCONNECT on that connection [MQTT-3.14.4-1, MQTT-3.14.4-2];
- a CONNACK that disagrees, when a CONNACK is expected: one per connection [MQTT-3.2.0-2];
- an acknowledgement of the expected kind carrying the expected `packet_id` (PUBACK, PUBREC, PUBREL, PUBCOMP,
  SUBACK, UNSUBACK) whose other fields disagree, once it answers the last request with that packet id the client
  sent on this connection (as many such answers as requests): the broker answers each request once, so no other
  can come. An ack of another packet id, or a PUBLISH, never rules anything out: more of those may follow.
Packets of an earlier connection rule nothing out (the client may have reconnected since). Everything else waits
for the timeout, as before. A test against a broker that keeps those statements passes exactly when it passed
before; only failures come sooner. expect_closed(unless=...) and collect(idle=...) end early in the same spirit
(see each); expect_nothing() and collect() also end at once when the connection closes.

A failure's first line (the report's reason) names what was expected and the received packet that came closest,
decoded (`decoded()`: type, packet id, topic, QoS, flags, reason codes with their names, properties and a payload
preview), with the fields that differ.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import weakref
from typing import Any, Callable, Iterable

from harness.client import Client
from harness.core.packets import (
    Connack, Disconnect, Pingreq, Pingresp, Puback, Pubcomp, Publish, Pubrec, Pubrel, Suback, Subscribe, Unsuback,
    Unsubscribe,
)
from harness.core.reason_codes import ConnackReturnCode, reason_name
from harness.errors import ConnectionClosed, HarnessError, Timeout
from harness.packet_log import IN, LogEntry

# What expect_nothing() treats as "something arrived" by default: packets the broker sends on its own accord.
UNSOLICITED = (Publish, Disconnect)
_cursors: "weakref.WeakKeyDictionary[Client, int]" = weakref.WeakKeyDictionary()
_events: "weakref.WeakKeyDictionary[Client, asyncio.Event]" = weakref.WeakKeyDictionary()
_SHOWN = 12  # packets listed as "received instead"
_PREVIEW = 32  # payload bytes shown in a decoded packet


class ExpectationFailed(AssertionError):
    """A packet expectation that did not hold. `expected` and `actual` (codec summaries) feed the report."""

    def __init__(self, message: str, *, client: Client, expected: str, actual: list[str]):
        log = client.log.format() or "(no packets)"
        super().__init__(f"{message}\n--- packet log of {client.name} ({client.url}) ---\n{log}")
        self.client_name = client.name
        self.expected = expected
        self.actual = actual


def received(client: Client, kind: type = object) -> list:
    """Every packet of `kind` the client received so far (all its connections), without moving the expectation
    position: for checks on what a broker may or may not have sent, e.g. an optional DISCONNECT before a close."""
    return [e.packet for e in _entries(client) if e.direction == IN and isinstance(e.packet, kind)]


def mark(client: Client) -> None:
    """Treat everything the client received so far as accounted for."""
    _cursors[client] = len(_entries(client))


async def expect_packet(client: Client, kind: type, match: Callable[[Any], bool] | dict | None = None, *,
                        timeout: float | None = None, **fields: Any) -> Any:
    """Wait for the next received packet of `kind` whose `fields` (and `match`: a predicate or a dict of fields)
    agree; return it. Fields compare with ==, except `properties`, which must contain the given items.
    Fails with ExpectationFailed showing the expectation, what arrived instead, and the packet log: after `timeout`,
    or at once when the connection closes or a received packet rules the expectation out (module docstring)."""
    __tracebackhide__ = True
    if isinstance(match, dict):
        fields, match = {**match, **fields}, None
    expected = _describe(kind, fields, match)
    timeout = client.timeout if timeout is None else timeout
    deadline = time.monotonic() + timeout
    start = _cursors.get(client, 0)
    event = _event(client)
    scanned = start
    while True:
        entries = _entries(client)
        for index in range(scanned, len(entries)):
            entry = entries[index]
            if entry.direction != IN or entry.packet is None:
                continue
            if isinstance(entry.packet, kind) and _agrees(entry.packet, fields, match):
                _cursors[client] = index + 1
                return entry.packet
            why = _rules_out(client, entries, index, kind, fields)
            if why:
                _fail(client, f"{client.name}: expected {expected}, but {why}", expected, entries[start:index + 1],
                      kind, fields, match, shown=entry.packet)
        scanned = len(entries)
        if client.is_closed:
            reason = await client.wait_closed(0)
            _fail(client, f"{client.name}: expected {expected}, but the connection closed ({reason})",
                  expected, entries[start:], kind, fields, match)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            _fail(client, f"{client.name}: expected {expected} within {timeout:g}s", expected, entries[start:],
                  kind, fields, match)
        await _news(client, event, remaining)


async def expect_nothing(client: Client, kinds: tuple[type, ...] = UNSOLICITED, *,
                         after: Client | Iterable[Client] = (), timeout: float | None = None) -> None:
    """Assert that the broker sent none of `kinds` since the last expectation, up to now: a PINGREQ is sent and
    everything the broker sent before its PINGRESP is checked (no sleeping). Undecodable bytes count too.

    `after`: clients whose packets sent so far (e.g. a PUBLISH that must not arrive here) the broker must have
    handled first. Each one pings before `client` does: a broker answers a connection's packets in order, but
    packets of different connections may be handled in any order."""
    __tracebackhide__ = True
    shown = "/".join(k.__name__.upper() for k in kinds)
    start = _cursors.get(client, 0)
    entries, barrier = await _barrier(client, after, timeout, f"expected no {shown} and a PINGRESP")
    unexpected = [e for e in entries[start:barrier]
                  if e.direction == IN and (e.packet is None or isinstance(e.packet, kinds))]
    if unexpected:
        _fail(client, f"{client.name}: expected no {shown} before the PINGRESP barrier, got {len(unexpected)}",
              f"nothing ({shown}), then PINGRESP", unexpected, None, {}, shown=unexpected[0].packet or unexpected[0])


async def collect(client: Client, count: int, *, after: Client | Iterable[Client] = (),
                  timeout: float | None = None, idle: float | None = None) -> list[Publish]:
    """Wait until `count` PUBLISH packets arrived since the last expectation (or `timeout` passed, or the connection
    closed), then take a PINGREQ barrier (`after` clients ping first, as in expect_nothing) and return every PUBLISH
    received since the last expectation, up to the barrier, in order. For checks on a whole set of deliveries
    (order, duplicates, which topics): arriving short is not a failure here, the caller's assertion says what is
    missing. `idle`: also stop waiting once no PUBLISH arrived for this long (a long `timeout` for a big burst then
    bounds the whole delivery, `idle` each next message, so one that is never coming does not hold up the rest)."""
    __tracebackhide__ = True
    timeout = client.timeout if timeout is None else timeout
    deadline = time.monotonic() + timeout
    start = scanned = _cursors.get(client, 0)
    arrived = 0
    last_arrival = time.monotonic()
    event = _event(client)
    while not client.is_closed:
        entries = _entries(client)
        new = sum(1 for e in entries[scanned:] if e.direction == IN and isinstance(e.packet, Publish))
        if new:
            arrived, last_arrival = arrived + new, time.monotonic()
        scanned = len(entries)
        until = deadline if idle is None else min(deadline, last_arrival + idle)
        remaining = until - time.monotonic()
        if arrived >= count or remaining <= 0:
            break
        await _news(client, event, remaining)
    entries, barrier = await _barrier(client, after, timeout, f"expected {count} PUBLISH and a PINGRESP")
    return [e.packet for e in entries[start:barrier] if e.direction == IN and isinstance(e.packet, Publish)]


# expect_closed(probe=True): how long a connection may stay open before the PINGREQ probe, and how long after the
# broker answered it. Every passing close in the suites' runs on the seven local brokers (2026-12-07, -n 2) came
# within 0.11 s of the packet; aedes and amqtt answer a PINGREQ that arrives just behind a packet they then close for,
# hence the grace after the PINGRESP.
PROBE_AFTER = 0.5
PROBE_GRACE = 1.0


async def expect_closed(client: Client, *, timeout: float | None = None, unless: tuple[type, ...] = (),
                        probe: bool = False) -> str:
    """Wait until the broker closes the connection; return the close reason. `unless`: kinds of packet that would
    answer what the broker must close the connection for (the PUBACK of a PUBLISH it must refuse): one received
    since the last expectation fails at once, as the broker acted on the packet instead of closing.

    `probe`: for a connected client whose last bytes were complete packets (never a keepalive test: a PINGREQ resets
    the timer; never a packet still missing bytes: the PINGREQ would complete it). If the connection is still open
    PROBE_AFTER s after the call, a PINGREQ goes out; once the broker has answered it with PINGRESP it has read past
    the packet it had to close for, and the close must follow within PROBE_GRACE s. A broker that closes waits no
    longer than before; one that keeps the connection open is told so in about 1.5 s instead of the full timeout.
    Without `probe`, nothing received decides it early."""
    __tracebackhide__ = True
    timeout = client.timeout if timeout is None else timeout
    deadline = time.monotonic() + timeout
    start = _cursors.get(client, 0)
    event = _event(client)
    probe_at = time.monotonic() + PROBE_AFTER if probe else None
    probed = answered_at = None  # log index of the probe; when its PINGRESP was seen
    while not client.is_closed:
        entries = _entries(client)
        answered = [e for e in entries[start:] if e.direction == IN and isinstance(e.packet, unless)] if unless else []
        if answered:
            _fail(client, f"{client.name}: expected the broker to close the connection, but it answered instead",
                  "connection closed", entries[start:], None, {}, shown=answered[0].packet)
        now = time.monotonic()
        if probe_at is not None and probed is None and now >= probe_at:
            probed = len(entries)
            await client.send(Pingreq())
            continue
        if probed is not None and answered_at is None and any(
                e.direction == IN and isinstance(e.packet, Pingresp) for e in entries[probed:]):
            answered_at = now
            deadline = min(deadline, now + PROBE_GRACE)
        remaining = deadline - now
        if remaining <= 0:
            if answered_at is not None:
                _fail(client, f"{client.name}: expected the broker to close the connection: still open "
                      f"{PROBE_AFTER:g}s later, it answered a PINGREQ and kept the connection open {PROBE_GRACE:g}s "
                      f"more",
                      "connection closed", entries[start:], None, {})
            _fail(client, f"{client.name}: expected the broker to close the connection: {client.name}: connection "
                  f"still open after {timeout:g}s", "connection closed", entries[start:], None, {})
        if probe_at is not None and probed is None:
            remaining = min(remaining, probe_at - now)
        await _news(client, event, remaining)
    return await client.wait_closed(0)


async def expect_redelivered(client: Client, first: Publish) -> Publish:
    """`first` (an unacknowledged QoS 1/2 PUBLISH) arrives again on the resumed session with the same packet id and
    DUP 1; its flow is then completed (PUBACK, or PUBREC, PUBREL, PUBCOMP). Returns the resent copy."""
    __tracebackhide__ = True
    again = await expect_packet(client, Publish, topic=first.topic, qos=first.qos, payload=first.payload,
                                packet_id=first.packet_id, dup=True)
    client.ack(again)
    if first.qos == 2:
        await expect_packet(client, Pubrel, packet_id=first.packet_id)
        client.complete(first.packet_id)
    return again


# ---------------------------------------------------------------------------------------------------- internals

async def _barrier(client: Client, after: Client | Iterable[Client], timeout: float | None,
                   failure: str) -> tuple[list[LogEntry], int]:
    """PINGREQ round trips (`after` clients first, then `client`); returns the log and the index of `client`'s
    PINGRESP, and moves the expectation position past it."""
    __tracebackhide__ = True
    for other in [after] if isinstance(after, Client) else after:
        await other.ping(timeout=timeout)
    start = _cursors.get(client, 0)
    sent_at = len(_entries(client))
    try:
        await client.ping(timeout=timeout)
    except (ConnectionClosed, Timeout) as exc:
        _fail(client, f"{client.name}: {failure}, but {exc}", "PINGRESP", _entries(client)[start:], None, {})
    entries = _entries(client)
    barrier = next(i for i in range(sent_at, len(entries))
                   if entries[i].direction == IN and isinstance(entries[i].packet, Pingresp))
    _cursors[client] = barrier + 1
    return entries, barrier


def _entries(client: Client) -> list[LogEntry]:
    if not client.log.enabled:
        raise HarnessError(f"{client.name} keeps no packet log (log=False); harness.expect reads it")
    return client.log.entries


def _event(client: Client) -> asyncio.Event:
    """An event set whenever the client's log records bytes (chained with any listener already there)."""
    event = _events.get(client)
    if event is None:
        event = _events[client] = asyncio.Event()
        previous = client.log.listener

        def listener(entry: LogEntry) -> None:
            event.set()
            if previous is not None:
                previous(entry)

        client.log.listener = listener
    return event


def _same(actual: Any, wanted: Any) -> bool:
    if isinstance(wanted, str) and isinstance(actual, (bytes, bytearray)):
        wanted = wanted.encode()
    return actual == wanted


def _mismatches(packet: Any, fields: dict[str, Any]) -> list[str]:
    out = []
    for name, wanted in fields.items():
        actual = getattr(packet, name, None)
        if name == "properties":
            missing = {k: v for k, v in wanted.items() if actual.get(k) != v}
            if missing:
                out.append(f"properties: expected {missing}, got {actual}")
        elif not _same(actual, wanted):
            out.append(f"{name}: expected {wanted!r}, got {actual!r}")
    return out


def _agrees(packet: Any, fields: dict[str, Any], match: Callable[[Any], bool] | None) -> bool:
    return not _mismatches(packet, fields) and (match is None or bool(match(packet)))


def _describe(kind: type, fields: dict[str, Any], match: Callable | None) -> str:
    parts = [f"{k}={v!r}" for k, v in fields.items()]
    if match is not None:
        parts.append(f"matching {getattr(match, '__name__', 'predicate')}")
    return f"{kind.__name__.upper()}({', '.join(parts)})"


async def _news(client: Client, event: asyncio.Event, timeout: float) -> None:
    """Wait until the client's log records bytes or its connection closes, or `timeout` passes."""
    event.clear()
    if client.is_closed:
        return
    waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(client.wait_closed(timeout + 1))]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


# What a request with a packet id is answered with: (the request as the client sends it, the answer's kind).
_ANSWERS: dict[type, Callable[[Any], bool]] = {
    Puback: lambda p: isinstance(p, Publish) and p.qos == 1,
    Pubrec: lambda p: isinstance(p, Publish) and p.qos == 2,
    Pubrel: lambda p: isinstance(p, Pubrec),
    Pubcomp: lambda p: isinstance(p, Pubrel),
    Suback: lambda p: isinstance(p, Subscribe),
    Unsuback: lambda p: isinstance(p, Unsubscribe),
}


def _rules_out(client: Client, entries: list[LogEntry], index: int, kind: type, fields: dict[str, Any]) -> str:
    """Why the received packet entries[index] (which does not agree with the expectation) means the expected
    packet cannot come any more on this connection; "" if it still can (the rules are in the module docstring)."""
    entry = entries[index]
    packet, connection = entry.packet, entry.connection
    if connection != client.log.connection:
        return ""
    if isinstance(packet, Disconnect):
        return f"the broker sent {decoded(packet)}, which ends the connection [MQTT-3.14.4-1]"
    if not isinstance(packet, kind):
        return ""
    if kind is Connack:
        return f"the connection's one CONNACK is {decoded(packet)} [MQTT-3.2.0-2]"
    request = _ANSWERS.get(kind)
    if request is None or "packet_id" not in fields or packet.packet_id != fields["packet_id"]:
        return ""
    pid = packet.packet_id
    sent = sum(1 for e in entries if e.connection == connection and e.direction != IN and e.packet is not None
               and request(e.packet) and getattr(e.packet, "packet_id", None) == pid)
    answers = sum(1 for e in entries[:index + 1] if e.connection == connection and e.direction == IN
                  and isinstance(e.packet, kind) and e.packet.packet_id == pid)
    if answers < sent:
        return ""  # the same packet id was sent again (e.g. a DUP resend): its answer may still be the expected one
    return f"the broker answered packet id {pid} with {decoded(packet)} and owes no other {kind.__name__.upper()} for it"


def decoded(packet: Any) -> str:
    """One packet, decoded, with its fields named as expect_packet's keywords: type, packet id, topic, QoS, flags,
    reason code(s) with their names, properties, and the first bytes of the payload."""
    if packet is None:
        return "nothing"
    if isinstance(packet, LogEntry):  # bytes that did not decode
        return f"UNDECODABLE {packet.raw[:_PREVIEW].hex(' ')} ({packet.error})"
    parts = []
    payload = None
    for f in dataclasses.fields(packet):
        name, value = f.name, getattr(packet, f.name)
        if name == "payload":
            payload = value
        elif name == "properties":
            if value:
                parts.append(f"properties={value!r}")
        elif value is None or (name in ("reserved", "reserved_flags") and not value):
            continue  # absent (QoS 0 packet id, no user name) or the must-be-zero bits being zero
        elif name == "reason_code":
            parts.append(f"reason_code={_code(packet, value)}")
        elif name == "reason_codes":
            parts.append("reason_codes=[" + ", ".join(f"0x{c:02X} {reason_name(c)}" for c in value) + "]")
        elif name == "password":
            parts.append(f"password=({len(value)} B)")
        elif name == "will":
            parts.append(f"will={decoded(value)}")
        else:
            parts.append(f"{name}={value!r}")
    if payload is not None:
        more = "..." if len(payload) > _PREVIEW else ""
        parts.append(f"payload={bytes(payload[:_PREVIEW])!r}{more} ({len(payload)} B)")
    name = getattr(getattr(packet, "TYPE", None), "name", None) or type(packet).__name__.upper()
    return f"{name}({', '.join(parts)})"


def _code(packet: Any, code: int) -> str:
    if isinstance(packet, Connack) and 0 < code <= max(ConnackReturnCode):  # an MQTT 3.1.x return code
        return f"{code} {ConnackReturnCode(code).name}"
    return f"0x{code:02X} {reason_name(code)}"


def _fail(client: Client, headline: str, expected: str, entries: list[LogEntry], kind: type | None,
          fields: dict[str, Any], match: Callable[[Any], bool] | None = None, *, shown: Any = None):
    __tracebackhide__ = True
    received = [e for e in entries if e.direction == IN]
    same_kind = [e for e in received if kind is not None and isinstance(e.packet, kind)]
    listed = same_kind or received
    actual = []
    for e in listed[:_SHOWN]:
        diff = _differences(e.packet, fields, match) if e.packet is not None and same_kind else []
        actual.append(decoded(e.packet if e.packet is not None else e) + (f"   <- {'; '.join(diff)}" if diff else ""))
    if len(listed) > _SHOWN:
        actual.append(f"... and {len(listed) - _SHOWN} more")
    if same_kind:
        what = "received instead"
    else:
        what = "received since the last expectation" + (" (none of that kind)" if kind is not None else "")
    # The reason line names one received packet, decoded: the one that ruled the expectation out, else the
    # closest of the expected kind (fewest differing fields), else the last one received.
    if shown is None and same_kind:
        shown = min((e.packet for e in same_kind), key=lambda p: len(_differences(p, fields, match)))
    elif shown is None and received:
        shown = received[-1].packet if received[-1].packet is not None else received[-1]
    if shown is None:
        headline += "; received nothing" + (" since the last expectation" if kind is None else "")
    else:
        diff = _differences(shown, fields, match) if kind is not None and isinstance(shown, kind) else []
        headline += f"; received {decoded(shown)}" + (f" ({'; '.join(diff)})" if diff else "")
    body = "\n".join(f"  {line}" for line in actual) or "  (nothing)"
    raise ExpectationFailed(f"{headline}\n  expected: {expected}\n{what}:\n{body}", client=client,
                            expected=expected, actual=actual)


def _differences(packet: Any, fields: dict[str, Any], match: Callable[[Any], bool] | None) -> list[str]:
    out = _mismatches(packet, fields)
    if match is not None and not match(packet):
        out.append(f"not matching {getattr(match, '__name__', 'predicate')}")
    return out
