"""Packet boundaries in a byte stream without decoding packets.

The proxy forwards chunks as they come while no rule needs decoded packets; a Framer follows along
so that when a rule is added mid-connection, decoding can start at the next packet boundary.
"""

from __future__ import annotations


class Framer:
    """Tracks where MQTT packets start in one direction of a stream, at a few operations per packet."""

    __slots__ = ("_skip", "_head", "broken")

    def __init__(self) -> None:
        self._skip = 0  # bytes of the current packet still to come
        self._head = b""  # the start of a fixed header split across chunks
        self.broken = False  # not MQTT framing (Remaining Length over 4 bytes): boundaries are unknown

    def feed(self, data: bytes) -> None:
        """Consume a chunk."""
        self.split(data, stop=False)

    def split(self, data: bytes, stop: bool = True) -> int | None:
        """Consume `data` up to the first packet boundary in it and return that offset (0 if a packet
        starts right at data[0]); None if the chunk ends inside the current packet (all consumed).
        With stop=False, consume the whole chunk and return None."""
        if self.broken:
            return None
        n = len(data)
        skip = self._skip
        if skip >= n and not self._head:
            self._skip = skip - n
            return None
        pos = skip
        if self._head:
            # Re-scan the split header with the new bytes; everything after it lies in this chunk.
            joined = self._head + data[:5]
            end, length = _header(joined, 0)
            if end < 0:
                if end == -2:
                    self.broken = True
                    return None
                self._head = joined  # still incomplete (the chunk was tiny)
                return None
            pos = end - len(self._head) + length
            self._head = b""
            if pos >= n:
                self._skip = pos - n
                return None
        if stop:
            self._skip = 0
            return pos
        while pos < n:
            end, length = _header(data, pos)
            if end < 0:
                if end == -2:
                    self.broken = True
                    return None
                self._head = bytes(data[pos:])
                self._skip = 0
                return None
            pos = end + length
        self._skip = pos - n
        return None


def _header(buf, pos: int) -> tuple[int, int]:
    """(offset after the fixed header, remaining length); (-1, 0) if incomplete, (-2, 0) if invalid."""
    value = 0
    for i in range(4):
        j = pos + 1 + i
        if j >= len(buf):
            return -1, 0
        b = buf[j]
        value |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            return j + 1, value
    return -2, 0


def peek_protocol_level(data: bytes) -> int | None:
    """The protocol level of a CONNECT at the start of `data`, read straight from its bytes, or None.

    Used when a CONNECT is malformed elsewhere: the level still tells how to decode the rest.
    """
    if len(data) < 2 or data[0] >> 4 != 1:
        return None
    end, _ = _header(data, 0)
    if end < 0 or end + 2 > len(data):
        return None
    name_len = (data[end] << 8) | data[end + 1]
    at = end + 2 + name_len
    return data[at] if at < len(data) else None
