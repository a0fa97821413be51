"""The proxy's packet tap: every packet of every connection, decoded on demand, with timestamps.

Each connection records two harness.packet_log.PacketLog objects, one per leg (client<->proxy and
proxy<->broker); recording costs a list append per chunk, decoding happens when someone reads. A
packet therefore shows up twice: *received* (as its sender sent it, arriving at the proxy) and
*delivered* (as the proxy forwarded it, after rules and faults). Rules and faults are what make the
two differ.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Iterable

from harness.core.codec import summary
from harness.packet_log import IN, OUT, PacketLog
from harness.proxy.direction import DOWNSTREAM, UPSTREAM

RECEIVED, DELIVERED = "received", "delivered"

# (leg, PacketLog direction) -> (stream direction, stage)
_MEANING = {
    ("client", IN): (UPSTREAM, RECEIVED),
    ("broker", OUT): (UPSTREAM, DELIVERED),
    ("broker", IN): (DOWNSTREAM, RECEIVED),
    ("client", OUT): (DOWNSTREAM, DELIVERED),
}
_ARROWS = {(UPSTREAM, RECEIVED): "C>  ", (UPSTREAM, DELIVERED): "  >B",
           (DOWNSTREAM, RECEIVED): "  <B", (DOWNSTREAM, DELIVERED): "C<  "}


@dataclass(slots=True)
class TapEntry:
    time: float  # time.monotonic()
    connection: int
    direction: str  # upstream (client->broker) or downstream
    stage: str  # received or delivered
    packet: object | None  # None when the bytes did not decode
    raw: bytes
    error: str | None = None

    def line(self, t0: float = 0.0) -> str:
        """One line: time, connection, where (C> client to proxy, >B proxy to broker, <B, C<), packet."""
        if self.packet is not None:
            what = summary(self.packet)
        else:
            what = f"UNDECODABLE {self.raw[:48].hex(' ')}: {self.error}"
        return f"{self.time - t0:10.6f} c{self.connection} {_ARROWS[(self.direction, self.stage)]} {what}"

    def to_json(self) -> dict:
        return {"t": self.time, "conn": self.connection, "direction": self.direction, "stage": self.stage,
                "packet": summary(self.packet) if self.packet is not None else None,
                "type": self.packet.TYPE.name if self.packet is not None else None,
                "raw": self.raw.hex(), "error": self.error}


def leg_entries(connection: int, leg: str, log: PacketLog) -> list[TapEntry]:
    out = []
    for e in log.entries:
        direction, stage = _MEANING[(leg, e.direction)]
        out.append(TapEntry(e.time, connection, direction, stage, e.packet, e.raw, e.error))
    return out


def entry_line(connection: int, leg: str, entry, t0: float = 0.0) -> str:
    """The trace line of a PacketLog entry recorded on `leg` of `connection`."""
    direction, stage = _MEANING[(leg, entry.direction)]
    return TapEntry(entry.time, connection, direction, stage, entry.packet, entry.raw, entry.error).line(t0)


class Tap:
    """A view over the logs of some connections (one, or all of a proxy's). Safe to read from any thread."""

    def __init__(self, connections: Callable[[], Iterable], lock: threading.Lock):
        self._connections = connections
        self._lock = lock

    @property
    def entries(self) -> list[TapEntry]:
        """All packets of the connections, both stages, in time order."""
        out: list[TapEntry] = []
        with self._lock:
            for conn in self._connections():
                for leg, log in (("client", conn.client_log), ("broker", conn.broker_log)):
                    if log is not None:
                        out += leg_entries(conn.id, leg, log)
        out.sort(key=lambda e: e.time)
        return out

    def select(self, direction: str | None = None, kind: type | None = None, stage: str | None = DELIVERED,
               connection: int | None = None) -> list[TapEntry]:
        return [e for e in self.entries
                if (direction is None or e.direction == direction) and (stage is None or e.stage == stage)
                and (connection is None or e.connection == connection)
                and (kind is None or isinstance(e.packet, kind))]

    def packets(self, direction: str | None = None, kind: type | None = None, stage: str | None = DELIVERED,
                connection: int | None = None) -> list:
        """Decoded packets, oldest first. stage="delivered" (default): as forwarded by the proxy;
        "received": as the sender sent them; None: both."""
        return [e.packet for e in self.select(direction, kind, stage, connection) if e.packet is not None]

    def format(self) -> str:
        entries = self.entries
        t0 = entries[0].time if entries else 0.0
        return "\n".join(e.line(t0) for e in entries)

    def to_json(self, since: int = 0) -> list[dict]:
        return [e.to_json() for e in self.entries[since:]]
