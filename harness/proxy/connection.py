"""One proxied connection, driven by asyncio: two sockets, two directions, nothing decided here.

Each direction (_Route) owns its fault chain and a schedule of steps; bytes that need no fault go
straight to the other socket. MQTT decisions come from harness.proxy.state.ConnectionState once a
rule exists; until then a Framer follows packet boundaries so decoding can start mid-stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
import time
from collections import deque
from typing import Protocol

from harness.core.codec import Decoder, summary
from harness.core.packets import MQTT_3_1_1, VERSION_NAMES
from harness.errors import ProtocolError
from harness.packet_log import IN, OUT, PacketLog
from harness.proxy import faults as F
from harness.proxy.direction import DIRECTIONS, DOWNSTREAM, UPSTREAM, expand
from harness.proxy.framing import Framer, peek_protocol_level
from harness.proxy.state import Close, ConnectionState, DecodeFailed, Fired, Send
from harness.proxy.tap import Tap, entry_line



class ConnectionHost(Protocol):
    """What a Connection needs from the proxy that accepted it. A protocol rather than an import of
    harness.proxy.proxy, which imports this module: the connection depends on these fields, not on the class."""

    _loop: asyncio.AbstractEventLoop
    _log_lock: threading.Lock
    mqtt: bool
    mode: str
    rules: list
    rng: random.Random
    tap_enabled: bool
    watch_data: bool
    quick_ack: bool
    trace: object
    started_at: float

    def _changed(self) -> None: ...

    def _event(self, conn_id: int, kind: str, text: str) -> None: ...

_HIGH_WATER = 1 << 20  # bytes waiting in one direction's schedule before we stop reading its source
_LOW_WATER = 1 << 18
_SNIFF_LIMIT = 1 << 16  # give up learning the version if the first packet is bigger than this
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only
_MMAP_BAIT = 1 << 20  # bigger than asyncio's 256 KiB read buffer


def keep_reads_off_mmap() -> None:
    """Have glibc serve asyncio's read buffers from the heap: call before a tap starts keeping chunks.

    Each socket read allocates 256 KiB and shrinks it to what arrived. While glibc serves blocks that big
    with mmap (its default until it has freed a bigger mmapped block), every chunk the tap keeps pins a
    mapping of its own: ~6 page faults per round trip (+80 us CPU, half the proxy's) and a page per small
    packet. Freeing one bigger mmapped block raises glibc's threshold for good (M_MMAP_THRESHOLD in
    mallopt(3)); other allocators ignore this. Whether it had happened by chance depended on start-up details
    such as the CLI arguments."""
    bytes(_MMAP_BAIT)


def _abort_with_rst(transport: asyncio.BaseTransport | None) -> None:
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class _Side(asyncio.Protocol):
    """One socket of a connection. `direction` is the direction of the bytes it receives."""

    __slots__ = ("conn", "direction", "transport", "lost", "sock")

    def __init__(self, conn: "Connection", direction: str):
        self.conn = conn
        self.direction = direction
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.sock = None  # set where quick ACKs can be asked for

    def connection_made(self, transport) -> None:
        self.transport = transport
        if _QUICKACK is not None and self.conn.proxy.quick_ack:
            self.sock = transport.get_extra_info("socket")
        if self.direction == UPSTREAM:
            transport.pause_reading()  # the client waits until the broker leg is up

    def data_received(self, data: bytes) -> None:
        self.conn._receive(self.direction, data)
        if self.sock is not None:
            # ACK every read at once. A peer with Nagle on (mosquitto's default, paho) holds its next small write
            # until this data is ACKed; a delayed ACK here, with nothing to piggyback on while the other end
            # waits, stalls that write ~40 ms. The kernel drops quick-ACK mode by itself, so re-arm it per read.
            try:
                self.sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            except OSError:
                self.sock = None  # closed meanwhile

    def eof_received(self) -> None:
        return None  # asyncio closes the transport; connection_lost handles the rest

    def connection_lost(self, exc) -> None:
        self.lost = True
        self.conn._lost(self.direction, exc)
        self.conn.proxy._changed()

    def pause_writing(self) -> None:
        self.conn.routes[_other(self.direction)].set_dest_paused(True)

    def resume_writing(self) -> None:
        self.conn.routes[_other(self.direction)].set_dest_paused(False)


def _other(direction: str) -> str:
    return DOWNSTREAM if direction == UPSTREAM else UPSTREAM


class _Route:
    """One direction of one connection: its fault chain, its schedule of steps, its destination."""

    __slots__ = ("conn", "direction", "chain", "fifo", "fifo_bytes", "dest", "log", "timer", "dest_paused",
                 "source_paused", "delivered", "writes")

    def __init__(self, conn: "Connection", direction: str):
        self.conn = conn
        self.direction = direction
        self.chain = F.Chain()
        self.fifo: deque[F.Step] = deque()
        self.fifo_bytes = 0
        self.dest: asyncio.Transport | None = None
        self.log: PacketLog | None = None  # the destination leg's log (records OUT)
        self.timer: asyncio.TimerHandle | None = None
        self.dest_paused = False
        self.source_paused = False
        self.delivered = 0
        self.writes = 0

    def send(self, data: bytes) -> None:
        """Bytes leaving the proxy in this direction (after rules)."""
        if not self.chain and not self.fifo:
            self._write(data)
            return
        now = time.monotonic()
        self.schedule(self.chain.push(data, now) if self.chain else [F.Step(now, F.DATA, data)])

    def schedule(self, steps: list[F.Step]) -> None:
        for s in steps:
            self.fifo.append(s)
            self.fifo_bytes += len(s.data)
        self.pump()

    def pump(self) -> None:
        fifo = self.fifo
        while fifo:
            if self.chain.blocked:
                break
            step = fifo[0]
            now = time.monotonic()
            if step.due > now:
                if self.timer is None:
                    self.timer = self.conn.loop.call_at(step.due, self._wake)
                break
            fifo.popleft()
            self.fifo_bytes -= len(step.data)
            if step.kind == F.DATA:
                self._write(step.data)
            elif step.kind == F.EOF:
                self.conn.close(step.reason or "closed")
            else:
                self.conn.close(step.reason, reset=step.kind == F.RESET)
        self._flow_control()

    def _wake(self) -> None:
        self.timer = None
        self.pump()

    def _write(self, data: bytes) -> None:
        dest = self.dest
        if dest is None or dest.is_closing():
            return
        if self.log is not None:
            # Before the write: once it is out the peer may react, and a test may read the tap, before this
            # thread runs again (a device suite read a CONNACK-less tap after the device had reported it).
            self.conn._record(self.log, OUT, data)
        dest.write(data)
        self.delivered += len(data)
        self.writes += 1

    def set_dest_paused(self, paused: bool) -> None:
        self.dest_paused = paused
        self._flow_control()

    def _flow_control(self) -> None:
        queued = self.fifo_bytes
        want = self.dest_paused or queued > _HIGH_WATER or (self.source_paused and queued > _LOW_WATER)
        if want != self.source_paused:
            self.source_paused = want
            self.conn._pause_source(self.direction, want)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.fifo.clear()
        self.fifo_bytes = 0


class Connection:
    """One proxied connection. Read its fields from any thread; change it only through the Proxy."""

    def __init__(self, proxy: ConnectionHost, conn_id: int, client_addr: tuple, listen_addr: tuple):
        self.proxy = proxy
        self.loop = proxy._loop
        self.id = conn_id
        self.client_addr = client_addr
        self.listen_addr = listen_addr
        self.upstream_local: tuple | None = None
        self.upstream_addr: tuple | None = None
        self.mqtt = proxy.mqtt
        self.version: int | None = None
        self.client_id: str | None = None
        self.opened_at = time.monotonic()
        self.ready_at: float | None = None
        self.closed_at: float | None = None
        self.close_reason: str | None = None
        self.reset = False
        self.received = {UPSTREAM: 0, DOWNSTREAM: 0}  # bytes read from each source
        self.client = _Side(self, UPSTREAM)
        self.broker = _Side(self, DOWNSTREAM)
        self.routes = {UPSTREAM: _Route(self, UPSTREAM), DOWNSTREAM: _Route(self, DOWNSTREAM)}
        tap = proxy.tap_enabled and self.mqtt
        self.client_log = self._new_log("client") if tap else None
        self.broker_log = self._new_log("broker") if tap else None
        self.routes[UPSTREAM].log = self.broker_log
        self.routes[DOWNSTREAM].log = self.client_log
        self._in_logs = {UPSTREAM: self.client_log, DOWNSTREAM: self.broker_log}
        self.chunks: list[tuple[float, str, int]] | None = [] if proxy.tap_enabled and not self.mqtt else None
        self.state: ConnectionState | None = None
        self._decoding = {UPSTREAM: False, DOWNSTREAM: False}
        self._framers = {UPSTREAM: Framer(), DOWNSTREAM: Framer()}
        self._sniff: Decoder | None = Decoder() if self.mqtt else None
        self._sniffed = bytearray()
        self._fault_draws: dict[str, bool] = {}
        self._fault_timers: dict[str, list[asyncio.TimerHandle]] = {}
        self._later: set[asyncio.TimerHandle] = set()
        self.log = Tap(lambda: (self,), proxy._log_lock)

    def _new_log(self, leg: str) -> PacketLog:
        listener = None
        if self.proxy.trace is not None:
            trace = self.proxy.trace
            t0 = self.proxy.started_at
            listener = lambda entry: trace(entry_line(self.id, leg, entry, t0))  # noqa: E731
        log = PacketLog(name=f"c{self.id}-{leg}", listener=listener)
        log.new_connection(MQTT_3_1_1)
        return log

    # ------------------------------------------------------------------ facts
    @property
    def is_open(self) -> bool:
        return self.closed_at is None

    @property
    def delivered(self) -> dict[str, int]:
        """Bytes written toward each destination (after rules and faults)."""
        return {d: r.delivered for d, r in self.routes.items()}

    @property
    def writes(self) -> dict[str, int]:
        """Socket writes toward each destination (a slicer turns one chunk into many)."""
        return {d: r.writes for d, r in self.routes.items()}

    @property
    def faults(self) -> dict[str, list[str]]:
        """Names of the faults acting on each direction of this connection (after the toxicity draw)."""
        return {d: [t.fault.name for t in r.chain.toxics] for d, r in self.routes.items()}

    def packets(self, direction: str | None = None, kind: type | None = None, stage: str | None = "delivered") -> list:
        """This connection's decoded packets; see Tap.packets."""
        return self.log.packets(direction, kind, stage)

    def info(self) -> dict:
        return {"id": self.id, "client": addr_text(self.client_addr), "listen": addr_text(self.listen_addr),
                "upstream_local": addr_text(self.upstream_local), "upstream": addr_text(self.upstream_addr),
                "client_id": self.client_id,
                "version": VERSION_NAMES.get(self.version) if self.version else None,
                "mode": self.proxy.mode, "open": self.is_open, "close_reason": self.close_reason,
                "reset": self.reset, "received": dict(self.received), "delivered": self.delivered,
                "faults": self.faults,
                "decoding": [d for d in DIRECTIONS if self._decoding[d]],
                "held": len(self.state.held()) if self.state else 0}

    def __repr__(self) -> str:
        state = "open" if self.is_open else f"closed: {self.close_reason}"
        return f"<Connection {self.id} {addr_text(self.client_addr)} client_id={self.client_id!r} {state}>"

    # ------------------------------------------------------------------ data path
    def _record(self, log: PacketLog, direction: str, data: bytes) -> None:
        if log.listener is None:
            log.record(direction, data, time.monotonic())
        else:  # a live trace decodes while recording: keep readers on other threads out
            with self.proxy._log_lock:
                log.record(direction, data, time.monotonic())

    def _receive(self, direction: str, data: bytes) -> None:
        self.received[direction] += len(data)
        if self.proxy.watch_data:
            self.loop.call_soon(self.proxy._changed)  # after this chunk is handled
        if not self.mqtt:
            if self.chunks is not None:
                self.chunks.append((time.monotonic(), direction, len(data)))
            self.routes[direction].send(data)
            return
        log = self._in_logs[direction]
        if log is not None:
            self._record(log, IN, data)
        if self._sniff is not None and direction == UPSTREAM:
            self._sniff_connect(data)
        if self._decoding[direction]:
            self._apply(self.state.receive(direction, data, time.monotonic()))
        elif self.proxy.rules:
            self._start_decoding(direction, data)
        else:
            self._framers[direction].feed(data)
            self.routes[direction].send(data)

    def _start_decoding(self, direction: str, data: bytes) -> None:
        """Rules exist: decode from the next packet boundary on (forward the rest of a packet in progress)."""
        at = self._framers[direction].split(data)
        if at is None:
            self.routes[direction].send(data)
            return
        if at:
            self.routes[direction].send(data[:at])
        if self.state is None:
            self.state = ConnectionState(self.proxy.rules, version=self.version, client_id=self.client_id)
        self._decoding[direction] = True
        if at < len(data):
            self._apply(self.state.receive(direction, data[at:], time.monotonic()))

    def _sniff_connect(self, data: bytes) -> None:
        """Learn version and client id from the CONNECT, so the tap decodes both directions right."""
        self._sniffed += data
        try:
            packets = self._sniff.feed(data)
        except ProtocolError:
            self._learn(peek_protocol_level(bytes(self._sniffed)), None)
            packets = None
        if packets is None or packets or len(self._sniffed) > _SNIFF_LIMIT:
            if packets and packets[0].TYPE == 1:
                cid = packets[0].client_id
                self._learn(packets[0].protocol_level, cid if isinstance(cid, str) else None)
            self._sniff = None
            self._sniffed = bytearray()

    def _learn(self, version: int | None, client_id: str | None) -> None:
        if version in VERSION_NAMES and version != self.version:
            self.version = version
            for log in (self.client_log, self.broker_log):
                if log is not None:
                    log.set_version(version)
        if client_id is not None:
            self.client_id = client_id
        if self.state is not None:
            self.state.learn(version if version in VERSION_NAMES else None, client_id)

    def _apply(self, outputs: list) -> None:
        # Consecutive sends in one direction go out as one write: a chunk of many small packets
        # costs one send() through the proxy, as it did from the sender.
        batch: list[bytes] = []
        batch_dir = None
        for o in outputs:
            kind = type(o)
            if kind is Send and not o.delay:
                if o.direction != batch_dir and batch:
                    self.routes[batch_dir].send(b"".join(batch))
                    batch.clear()
                batch_dir = o.direction
                batch.append(o.data)
                continue
            if kind is Fired:
                self.proxy._event(self.id, "rule", f"{o.rule} ({'+'.join(o.actions) or 'match'}) on "
                                                   f"{o.direction} {summary(o.packet)}")
                continue
            if batch:
                self.routes[batch_dir].send(b"".join(batch))
                batch.clear()
            if kind is Send:
                self._call_later(o.delay, self.routes[o.direction].send, o.data)
            elif kind is Close:
                step = F.Step(time.monotonic(), F.RESET if o.reset else F.CLOSE, reason=o.reason)
                if o.delay:
                    self._call_later(o.delay, self.routes[o.direction].schedule, [step])
                else:
                    self.routes[o.direction].schedule([step])
            elif kind is DecodeFailed:
                self.proxy._event(self.id, "decode_failed", f"{o.direction}: {o.error}; forwarding raw bytes")
        if batch:
            self.routes[batch_dir].send(batch[0] if len(batch) == 1 else b"".join(batch))
        st = self.state
        if st is not None and (st.version != self.version or st.client_id != self.client_id):
            self._learn(st.version, st.client_id)

    def _call_later(self, delay: float, fn, *args) -> None:
        handle: asyncio.TimerHandle | None = None

        def run() -> None:
            self._later.discard(handle)
            if self.is_open:
                fn(*args)
        handle = self.loop.call_later(delay, run)
        self._later.add(handle)

    def _pause_source(self, direction: str, pause: bool) -> None:
        side = self.client if direction == UPSTREAM else self.broker
        t = side.transport
        if t is None or t.is_closing() or self.ready_at is None:
            return
        (t.pause_reading if pause else t.resume_reading)()

    def _lost(self, direction: str, exc: BaseException | None) -> None:
        if self.closed_at is not None:
            return
        who = "client" if direction == UPSTREAM else "broker"
        if exc is not None:
            self.close(f"{who} connection lost: {exc}", reset=isinstance(exc, ConnectionResetError))
            return
        route = self.routes[direction]
        self.routes[_other(direction)].cancel()  # nobody is left to read those bytes
        route.schedule([route.chain.eof(time.monotonic(), f"{who} closed the connection")])

    # ------------------------------------------------------------------ faults
    def start_fault(self, fault: F.Fault) -> None:
        if fault.connection_level or not fault.applies_to(self.id) or self.closed_at is not None:
            return
        draw = self._fault_draws.get(fault.name)
        if draw is None:
            draw = self._fault_draws[fault.name] = F.draw(fault, self.proxy.rng)
        self.stop_fault(fault.name, replacing=True)
        if not draw:
            return
        now = time.monotonic()
        timers = []
        for d in expand(fault.direction):
            route = self.routes[d]
            for step in route.chain.add(fault, self.proxy.rng, now):  # not queued: it fires even behind a blackhole
                timers.append(self.loop.call_at(step.due, self.close, step.reason, step.kind == F.RESET))
            route.pump()
        self._fault_timers[fault.name] = timers

    def stop_fault(self, name: str, replacing: bool = False) -> None:
        for handle in self._fault_timers.pop(name, []):
            handle.cancel()
        dropped = 0
        kind = None
        for route in self.routes.values():
            toxic = route.chain.remove(name)
            if toxic is not None:
                dropped += toxic.dropped
                kind = toxic.fault.type
            route.pump()
        if not replacing:
            self._fault_draws.pop(name, None)
        if kind == "timeout" and dropped and self.is_open:
            self.close(f"timeout fault {name} removed after dropping {dropped} bytes: the streams cannot resume")

    # ------------------------------------------------------------------ closing
    def close(self, reason: str, reset: bool = False) -> None:
        """Close both legs (FIN, and TLS close_notify where TLS ends here), or reset them (RST)."""
        if self.closed_at is not None:
            return
        self.closed_at = time.monotonic()
        self.close_reason = reason
        self.reset = reset
        for handles in self._fault_timers.values():
            for h in handles:
                h.cancel()
        for h in self._later:
            h.cancel()
        self._later.clear()
        for route in self.routes.values():
            route.cancel()
        for side in (self.client, self.broker):
            if reset:
                _abort_with_rst(side.transport)
            elif side.transport is not None:
                side.transport.close()
        self.proxy._event(self.id, "closed", reason + (" (reset)" if reset else ""))


def addr_text(addr: tuple | None) -> str | None:
    if not addr:
        return None
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
