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
"""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import Any, Callable, Iterable

from harness.client import Client
from harness.core.codec import summary
from harness.core.packets import Disconnect, Pingresp, Publish, Pubrel
from harness.errors import ConnectionClosed, HarnessError, Timeout
from harness.packet_log import IN, LogEntry

# What expect_nothing() treats as "something arrived" by default: packets the broker sends on its own accord.
UNSOLICITED = (Publish, Disconnect)
_cursors: "weakref.WeakKeyDictionary[Client, int]" = weakref.WeakKeyDictionary()
_events: "weakref.WeakKeyDictionary[Client, asyncio.Event]" = weakref.WeakKeyDictionary()
_SHOWN = 12  # packets listed as "received instead"


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
    Fails with ExpectationFailed showing the expectation, what arrived instead, and the packet log."""
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
            if entry.direction == IN and isinstance(entry.packet, kind) and _agrees(entry.packet, fields, match):
                _cursors[client] = index + 1
                return entry.packet
        scanned = len(entries)
        if client.is_closed:
            reason = await client.wait_closed(0)
            _fail(client, f"{client.name}: expected {expected}, but the connection closed ({reason})",
                  expected, entries[start:], kind, fields)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            _fail(client, f"{client.name}: expected {expected} within {timeout:g}s", expected, entries[start:],
                  kind, fields)
        event.clear()
        try:
            await asyncio.wait_for(event.wait(), remaining)
        except asyncio.TimeoutError:
            pass


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
              f"nothing ({shown}), then PINGRESP", unexpected, None, {})


async def collect(client: Client, count: int, *, after: Client | Iterable[Client] = (),
                  timeout: float | None = None) -> list[Publish]:
    """Wait until `count` PUBLISH packets arrived since the last expectation (or `timeout` passed), then take a
    PINGREQ barrier (`after` clients ping first, as in expect_nothing) and return every PUBLISH received since the
    last expectation, up to the barrier, in order. For checks on a whole set of deliveries (order, duplicates,
    which topics): arriving short is not a failure here, the caller's assertion says what is missing."""
    __tracebackhide__ = True
    timeout = client.timeout if timeout is None else timeout
    deadline = time.monotonic() + timeout
    start = scanned = _cursors.get(client, 0)
    arrived = 0
    event = _event(client)
    while not client.is_closed:
        entries = _entries(client)
        arrived += sum(1 for e in entries[scanned:] if e.direction == IN and isinstance(e.packet, Publish))
        scanned = len(entries)
        remaining = deadline - time.monotonic()
        if arrived >= count or remaining <= 0:
            break
        event.clear()
        try:
            await asyncio.wait_for(event.wait(), remaining)
        except asyncio.TimeoutError:
            pass
    entries, barrier = await _barrier(client, after, timeout, f"expected {count} PUBLISH and a PINGRESP")
    return [e.packet for e in entries[start:barrier] if e.direction == IN and isinstance(e.packet, Publish)]


async def expect_closed(client: Client, *, timeout: float | None = None) -> str:
    """Wait until the broker closes the connection; return the close reason."""
    __tracebackhide__ = True
    try:
        return await client.wait_closed(timeout)
    except Timeout as exc:
        entries = _entries(client)
        _fail(client, f"{client.name}: expected the broker to close the connection: {exc}", "connection closed",
              entries[_cursors.get(client, 0):], None, {})


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


def _fail(client: Client, headline: str, expected: str, entries: list[LogEntry], kind: type | None,
          fields: dict[str, Any]):
    __tracebackhide__ = True
    received = [e for e in entries if e.direction == IN]
    same_kind = [e for e in received if kind is not None and isinstance(e.packet, kind)]
    shown = same_kind or received
    actual = []
    for e in shown[:_SHOWN]:
        line = summary(e.packet) if e.packet is not None else f"UNDECODABLE {e.raw[:32].hex(' ')} ({e.error})"
        diff = _mismatches(e.packet, fields) if e.packet is not None and same_kind else []
        actual.append(line + (f"   <- {'; '.join(diff)}" if diff else ""))
    if len(shown) > _SHOWN:
        actual.append(f"... and {len(shown) - _SHOWN} more")
    if same_kind:
        what = "received instead"
    else:
        what = "received since the last expectation" + (" (none of that kind)" if kind is not None else "")
    body = "\n".join(f"  {line}" for line in actual) or "  (nothing)"
    raise ExpectationFailed(f"{headline}\n  expected: {expected}\n{what}:\n{body}", client=client,
                            expected=expected, actual=actual)
