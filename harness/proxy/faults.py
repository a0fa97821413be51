"""Stream faults: Toxiproxy's toxics, plus a healable blackhole, as plain objects.

A Fault is configuration (type, direction, attributes, toxicity, which connections). Per connection
and direction, the faults that apply form a Chain of toxic states. The chain turns a chunk that arrived
at time t into Steps, each due at an absolute time: forward these bytes, close, reset, or pass on the
end of the stream. The asyncio driver waits until each step is due and does it; it decides nothing.

Units follow Toxiproxy so its JSON can be reused: milliseconds, KB/s (1 KB = 1000 bytes) and, for
the slicer's delay only, microseconds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import NamedTuple

from harness.proxy.direction import BOTH, parse_direction

# Step kinds.
DATA, CLOSE, RESET, EOF = "data", "close", "reset", "eof"


class Step(NamedTuple):
    due: float  # absolute time (time.monotonic clock)
    kind: str
    data: bytes = b""
    reason: str = ""


# type -> {attribute: default}; None marks a required attribute.
FAULT_TYPES: dict[str, dict[str, object]] = {
    "latency": {"latency": 0, "jitter": 0},
    "bandwidth": {"rate": 0},
    "slicer": {"average_size": None, "size_variation": 0, "delay": 0},
    "limit_data": {"bytes": None},
    "reset_peer": {"timeout": 0},
    "timeout": {"timeout": 0},
    "blackhole": {},
    "slow_close": {"delay": 0},
    # Connection-level: they act on new connections, not on streams.
    "refuse": {"mode": "closed"},
    "accept_delay": {"delay": 0},
}
CONNECTION_LEVEL = frozenset({"refuse", "accept_delay"})
REFUSE_MODES = ("closed", "reset")


@dataclass
class Fault:
    """One fault. `direction` is upstream (client->broker), downstream (broker->client) or both;
    `connection` limits it to one connection id (None: every connection, now and later).

    `toxicity` is the probability that the fault applies to a given connection, drawn once per
    connection as Toxiproxy does (so 0.1 means a tenth of the connections, not of the chunks).
    """

    type: str
    direction: str = BOTH
    attributes: dict = field(default_factory=dict)
    toxicity: float = 1.0
    connection: int | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if self.type not in FAULT_TYPES:
            raise ValueError(f"unknown fault type {self.type!r}; known: {', '.join(FAULT_TYPES)}")
        self.direction = parse_direction(self.direction)
        spec = FAULT_TYPES[self.type]
        unknown = set(self.attributes) - set(spec)
        if unknown:
            allowed = ", ".join(spec) or "none"
            raise ValueError(f"{self.type} fault has no attribute(s) {', '.join(sorted(unknown))}; "
                             f"its attributes: {allowed}")
        attrs = {}
        for key, default in spec.items():
            value = self.attributes.get(key, default)
            if value is None:
                raise ValueError(f"{self.type} fault needs the attribute {key!r}")
            if key == "mode":
                if value not in REFUSE_MODES:
                    raise ValueError(f"refuse mode {value!r} is not one of {', '.join(REFUSE_MODES)}")
            elif not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{self.type} attribute {key} must be a number >= 0, not {value!r}")
            attrs[key] = value
        if self.type == "slicer" and attrs["average_size"] < 1:
            raise ValueError("slicer average_size must be at least 1 byte")
        if self.type == "refuse" and attrs["mode"] == "closed" and self.toxicity != 1.0:
            raise ValueError("refuse mode 'closed' shuts the listener for everyone, so toxicity must be 1; "
                             "use mode 'reset' to refuse a share of the connections")
        self.attributes = attrs
        if not 0.0 <= float(self.toxicity) <= 1.0:
            raise ValueError(f"toxicity must be between 0 and 1, not {self.toxicity!r}")
        if self.connection is not None and self.type in CONNECTION_LEVEL:
            raise ValueError(f"{self.type} acts on new connections; it cannot target connection {self.connection}")

    @property
    def connection_level(self) -> bool:
        return self.type in CONNECTION_LEVEL

    def applies_to(self, connection_id: int) -> bool:
        return self.connection is None or self.connection == connection_id

    @classmethod
    def from_dict(cls, data: dict) -> "Fault":
        """Build from a dict: Toxiproxy's toxic JSON ({"type", "stream", "toxicity", "attributes"}) or the
        flat form ({"type": "latency", "latency": 100, "direction": "upstream"})."""
        if not isinstance(data, dict) or "type" not in data:
            raise ValueError(f"a fault is a mapping with a 'type' key, got {data!r}")
        data = dict(data)
        kind = data.pop("type")
        direction = data.pop("direction", None) or data.pop("stream", None) or BOTH
        attributes = dict(data.pop("attributes", None) or {})
        toxicity = data.pop("toxicity", 1.0)
        connection = data.pop("connection", None)
        name = data.pop("name", "") or ""
        attributes.update(data)  # flat form: what is left are attributes
        return cls(kind, direction, attributes, toxicity, connection, name)

    def to_dict(self) -> dict:
        return {"name": self.name, "type": self.type, "direction": self.direction, "toxicity": self.toxicity,
                "connection": self.connection, "attributes": dict(self.attributes)}


# ------------------------------------------------------------------------------------ builders

def latency(latency: float, jitter: float = 0, **kw) -> Fault:
    """Delay every chunk by `latency` ms (+/- uniform `jitter` ms); order is kept."""
    return Fault("latency", attributes={"latency": latency, "jitter": jitter}, **kw)


def bandwidth(rate: float, **kw) -> Fault:
    """Limit to `rate` KB/s (1 KB = 1000 bytes); 0 = unlimited, as in Toxiproxy."""
    return Fault("bandwidth", attributes={"rate": rate}, **kw)


def slicer(average_size: int, size_variation: int = 0, delay: float = 0, **kw) -> Fault:
    """Cut chunks into pieces of average_size +/- size_variation bytes, `delay` microseconds apart."""
    return Fault("slicer", attributes={"average_size": average_size, "size_variation": size_variation,
                                       "delay": delay}, **kw)


def limit_data(nbytes: int, **kw) -> Fault:
    """Forward `nbytes` bytes (per direction, counted from when the fault starts), then close the connection."""
    return Fault("limit_data", attributes={"bytes": nbytes}, **kw)


def reset_peer(timeout: float = 0, **kw) -> Fault:
    """On the next chunk, wait `timeout` ms and reset both sides (RST: SO_LINGER 0); the chunk is dropped."""
    return Fault("reset_peer", attributes={"timeout": timeout}, **kw)


def timeout(timeout: float = 0, **kw) -> Fault:
    """Drop all data; close the connection after `timeout` ms (0: never). Removing the fault closes the
    connections whose data it dropped, since their byte streams cannot resume."""
    return Fault("timeout", attributes={"timeout": timeout}, **kw)


def blackhole(**kw) -> Fault:
    """Stop delivering, keeping the bytes (as TCP would keep retransmitting); removing it heals the
    same connection and the held bytes flow on."""
    return Fault("blackhole", **kw)


def slow_close(delay: float, **kw) -> Fault:
    """Pass on the end of the stream (FIN) `delay` ms late."""
    return Fault("slow_close", attributes={"delay": delay}, **kw)


def refuse(mode: str = "closed", **kw) -> Fault:
    """Refuse new connections. 'closed' shuts the listening socket (clients get ECONNREFUSED);
    'reset' accepts and resets each new connection (honours toxicity)."""
    return Fault("refuse", attributes={"mode": mode}, **kw)


def accept_delay(delay: float, **kw) -> Fault:
    """Leave each new connection unserved for `delay` ms: the TCP handshake completes (the kernel does
    it), but nothing is read or forwarded and the broker is not dialled until then."""
    return Fault("accept_delay", attributes={"delay": delay}, **kw)


# ------------------------------------------------------------------------------ toxic states

class _Toxic:
    """Per connection and direction state of one fault. on_data maps one input step to output steps."""

    blocks = False  # a blackhole: the direction delivers nothing while it is present

    def __init__(self, fault: Fault, rng: random.Random, now: float):
        self.fault = fault
        self.a = fault.attributes
        self.rng = rng
        self.dropped = 0  # bytes discarded (timeout, reset_peer, limit_data)

    def on_data(self, data: bytes, t: float) -> list[Step]:
        return [Step(t, DATA, data)]

    def on_eof(self, t: float) -> float:
        return t

    def timers(self, now: float) -> list[Step]:
        """Steps that fire on their own, independent of data (e.g. timeout's close)."""
        return []


class _Latency(_Toxic):
    def __init__(self, fault, rng, now):
        super().__init__(fault, rng, now)
        self.last = 0.0

    def on_data(self, data, t):
        delay = self.a["latency"]
        jitter = self.a["jitter"]
        if jitter:
            delay += self.rng.uniform(-jitter, jitter)
        due = max(t + max(delay, 0) / 1000.0, self.last)  # jitter never reorders bytes
        self.last = due
        return [Step(due, DATA, data)]


class _Bandwidth(_Toxic):
    def __init__(self, fault, rng, now):
        super().__init__(fault, rng, now)
        self.free = 0.0  # when the "link" is free again

    def on_data(self, data, t):
        rate = self.a["rate"]
        if rate <= 0:
            return [Step(t, DATA, data)]
        start = max(t, self.free)
        self.free = start + len(data) / (rate * 1000.0)
        return [Step(self.free, DATA, data)]


class _Slicer(_Toxic):
    def __init__(self, fault, rng, now):
        super().__init__(fault, rng, now)
        self.last = 0.0

    def on_data(self, data, t):
        avg, var, delay = self.a["average_size"], self.a["size_variation"], self.a["delay"] / 1e6
        out = []
        due = max(t, self.last)
        pos = 0
        while pos < len(data):
            size = max(1, int(avg + (self.rng.randint(-var, var) if var else 0)))
            out.append(Step(due, DATA, data[pos:pos + size]))
            pos += size
            due += delay
        self.last = due - delay if out else self.last
        return out


class _LimitData(_Toxic):
    def __init__(self, fault, rng, now):
        super().__init__(fault, rng, now)
        self.sent = 0
        self.done = False

    def on_data(self, data, t):
        if self.done:
            self.dropped += len(data)
            return []
        room = self.a["bytes"] - self.sent
        if len(data) < room:
            self.sent += len(data)
            return [Step(t, DATA, data)]
        self.done = True
        self.sent += room
        self.dropped += len(data) - room
        steps = [Step(t, DATA, data[:room])] if room else []
        return steps + [Step(t, CLOSE, reason=f"limit_data: {self.a['bytes']} bytes passed")]


class _ResetPeer(_Toxic):
    def __init__(self, fault, rng, now):
        super().__init__(fault, rng, now)
        self.fired = False

    def on_data(self, data, t):
        self.dropped += len(data)
        if self.fired:
            return []
        self.fired = True
        return [Step(t + self.a["timeout"] / 1000.0, RESET, reason="reset_peer")]


class _Timeout(_Toxic):
    def on_data(self, data, t):
        self.dropped += len(data)
        return []

    def timers(self, now):
        ms = self.a["timeout"]
        return [Step(now + ms / 1000.0, CLOSE, reason=f"timeout: closed after {ms:g} ms")] if ms else []


class _Blackhole(_Toxic):
    blocks = True


class _SlowClose(_Toxic):
    def on_eof(self, t):
        return t + self.a["delay"] / 1000.0


_STATES = {"latency": _Latency, "bandwidth": _Bandwidth, "slicer": _Slicer, "limit_data": _LimitData,
           "reset_peer": _ResetPeer, "timeout": _Timeout, "blackhole": _Blackhole, "slow_close": _SlowClose}


class Chain:
    """The faults acting on one direction of one connection, in the order they were added."""

    __slots__ = ("toxics",)

    def __init__(self) -> None:
        self.toxics: list[_Toxic] = []

    def __bool__(self) -> bool:
        return bool(self.toxics)

    @property
    def blocked(self) -> bool:
        return any(t.blocks for t in self.toxics)

    def add(self, fault: Fault, rng: random.Random, now: float) -> list[Step]:
        """Start `fault` on this stream; returns its timer steps. Replaces a fault of the same name in place."""
        state = _STATES[fault.type](fault, rng, now)
        for i, t in enumerate(self.toxics):
            if t.fault.name == fault.name:
                self.toxics[i] = state
                break
        else:
            self.toxics.append(state)
        return state.timers(now)

    def remove(self, name: str) -> _Toxic | None:
        for i, t in enumerate(self.toxics):
            if t.fault.name == name:
                return self.toxics.pop(i)
        return None

    def push(self, data: bytes, now: float) -> list[Step]:
        steps = [Step(now, DATA, data)]
        for toxic in self.toxics:
            out: list[Step] = []
            for step in steps:
                if step.kind == DATA:
                    out += toxic.on_data(step.data, step.due)
                else:
                    out.append(step)
            steps = out
            if not steps:
                break
        return steps

    def eof(self, now: float, reason: str = "") -> Step:
        t = now
        for toxic in self.toxics:
            t = toxic.on_eof(t)
        return Step(t, EOF, reason=reason)


def draw(fault: Fault, rng: random.Random) -> bool:
    """Does this fault apply to a new connection? One draw per connection and fault."""
    return fault.toxicity >= 1.0 or rng.random() < fault.toxicity
