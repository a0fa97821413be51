"""A packet log: every byte chunk in and out with a monotonic timestamp, decoded on demand.

Recording is one list append per socket read or write (of the chunk itself, never a copy), so
logging costs the client almost nothing; decoding into packets happens only when someone reads the log. A packet that spans
chunks takes the timestamp of the chunk that completed it.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.core.codec import Decoder, summary
from harness.errors import ProtocolError

IN, OUT = "in", "out"


@dataclass(slots=True)
class LogEntry:
    time: float
    direction: str  # "in" (from the peer) or "out" (sent by us)
    packet: object | None  # None when the bytes did not decode
    raw: bytes
    connection: int = 0
    error: str | None = None

    def line(self, t0: float = 0.0) -> str:
        arrow = "<-" if self.direction == IN else "->"
        what = summary(self.packet) if self.packet is not None else f"UNDECODABLE {self.raw[:48].hex(' ')}: {self.error}"
        return f"{self.time - t0:10.6f} c{self.connection} {arrow} {what}"


class PacketLog:
    def __init__(self, enabled: bool = True, name: str = "", listener=None):
        self.enabled = enabled
        self.name = name
        self.listener = listener  # called with each new LogEntry as it is recorded (live traces)
        self._chunks: list[tuple[float, str, bytes, int]] = []
        self._entries: list[LogEntry] = []
        self._decoders: dict[tuple[int, str], Decoder] = {}
        self._versions: dict[int, int] = {}
        self._done = 0  # chunks already decoded
        self.connection = 0

    def new_connection(self, version: int) -> None:
        """Start a new connection segment; its bytes are decoded at `version`."""
        self.connection += 1
        self._versions[self.connection] = version

    def record(self, direction: str, data: bytes | list[bytes], now: float) -> None:
        """One chunk as written or read; `data` may be a list of pieces written together (joined only
        when the log is read, so recording never copies a payload)."""
        if self.enabled and data:
            self._chunks.append((now, direction, data, self.connection))
            if self.listener is not None:
                seen = len(self._entries)
                for entry in self.entries[seen:]:
                    self.listener(entry)

    def set_version(self, version: int) -> None:
        """The version changed mid-connection (e.g. learned from a CONNECT by a proxy)."""
        self._versions[self.connection] = version

    @property
    def entries(self) -> list[LogEntry]:
        chunks = self._chunks
        while self._done < len(chunks):
            now, direction, data, conn = chunks[self._done]
            self._done += 1
            if type(data) is list:
                data = b"".join(data)
            key = (conn, direction)
            dec = self._decoders.get(key)
            if dec is None:
                dec = self._decoders[key] = Decoder(self._versions.get(conn, 4))
            if dec.error is not None:
                self._entries.append(LogEntry(now, direction, None, data, conn, "after an earlier decode error"))
                continue
            try:
                for packet, raw in dec.feed_raw(data):
                    self._entries.append(LogEntry(now, direction, packet, raw, conn))
            except ProtocolError as exc:
                for packet, raw in exc.decoded_raw:
                    self._entries.append(LogEntry(now, direction, packet, raw, conn))
                self._entries.append(LogEntry(now, direction, None, exc.data or data, conn, str(exc)))
        return self._entries

    def __len__(self) -> int:
        return len(self.entries)

    def packets(self, direction: str | None = None, kind: type | None = None, since: int = 0) -> list:
        return [e.packet for e in self.entries[since:]
                if (direction is None or e.direction == direction)
                and e.packet is not None and (kind is None or isinstance(e.packet, kind))]

    def format(self, since: int = 0) -> str:
        entries = self.entries
        t0 = entries[0].time if entries else 0.0
        return "\n".join(e.line(t0) for e in entries[since:])

    def to_json(self) -> list[dict]:
        """For reports: one dict per packet."""
        return [{"t": e.time, "dir": e.direction, "conn": e.connection,
                 "packet": summary(e.packet) if e.packet is not None else None,
                 "raw": e.raw.hex(), "error": e.error} for e in self.entries]
