"""The asyncio driver of the fault-injecting MQTT proxy: sockets, timers and nothing else.

Every decision is made by plain objects: harness.proxy.faults (what happens to bytes and when),
harness.proxy.state (what happens to packets). This module accepts connections, dials the broker,
moves bytes between asyncio Protocols (the fastest forwarding found in the perf lab; TCP_NODELAY is
set on both legs) and carries out the steps those objects return.

With no rules and no faults, a chunk goes straight from one socket to the other: no decoding, no
copy. The packet tap (on by default) adds one list append per chunk and leg.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import ssl
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from harness.core.codec import Decoder, summary
from harness.core.packets import MQTT_3_1_1, VERSION_NAMES
from harness.errors import HarnessError, ProtocolError
from harness.packet_log import IN, OUT, PacketLog
from harness.proxy import faults as F
from harness.proxy.direction import DIRECTIONS, DOWNSTREAM, UPSTREAM, expand
from harness.proxy.framing import Framer, peek_protocol_level
from harness.proxy.rules import Rule
from harness.proxy.state import Close, ConnectionState, DecodeFailed, Fired, Send
from harness.proxy.tap import Tap, entry_line
from harness.transport import TlsOptions, make_ssl_context
from harness.url import BrokerUrl, parse_url

_HIGH_WATER = 1 << 20  # bytes waiting in one direction's schedule before we stop reading its source
_LOW_WATER = 1 << 18
_SNIFF_LIMIT = 1 << 16  # give up learning the version if the first packet is bigger than this


class ProxyError(HarnessError):
    """The proxy cannot do what was asked (bad address, listener cannot reopen, unknown fault...)."""


@dataclass(frozen=True)
class ServerTls:
    """TLS the proxy offers to clients when it terminates TLS. `client_ca` makes client certificates
    mandatory (verified against that CA)."""

    cert: str
    key: str | None = None
    client_ca: str | None = None

    def context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.load_cert_chain(str(self.cert), str(self.key) if self.key else None)
        except (OSError, ssl.SSLError) as exc:
            raise ProxyError(f"cannot load the proxy's server certificate {self.cert} / {self.key}: {exc}; "
                             "pass a PEM certificate and its unencrypted key") from None
        if self.client_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(str(self.client_ca))
        return ctx


@dataclass(frozen=True)
class ProxyEvent:
    time: float
    connection: int | None
    kind: str  # open, closed, refused, upstream_failed, tls_failed, rule, held, released, decode_failed, fault
    detail: str


def parse_endpoint(text: str, what: str = "address") -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port)."""
    text = str(text).strip()
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ProxyError(f"{what} {text!r} is not host:port (e.g. 127.0.0.1:1884, [::1]:1884)")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host:
        raise ProxyError(f"{what} {text!r} has no host; write e.g. 127.0.0.1:{port}")
    return host, int(port)


def upstream_url(upstream: str | BrokerUrl) -> BrokerUrl:
    if isinstance(upstream, BrokerUrl):
        return upstream
    if "://" in str(upstream):
        return parse_url(str(upstream))
    host, port = parse_endpoint(upstream, "upstream")
    return BrokerUrl("mqtt", host, port)


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

    __slots__ = ("conn", "direction", "transport", "lost")

    def __init__(self, conn: "Connection", direction: str):
        self.conn = conn
        self.direction = direction
        self.transport: asyncio.Transport | None = None
        self.lost = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        if self.direction == UPSTREAM:
            transport.pause_reading()  # the client waits until the broker leg is up

    def data_received(self, data: bytes) -> None:
        self.conn._receive(self.direction, data)

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
        dest.write(data)
        self.delivered += len(data)
        self.writes += 1
        if self.log is not None:
            self.conn._record(self.log, OUT, data)

    def set_dest_paused(self, paused: bool) -> None:
        self.dest_paused = paused
        self._flow_control()

    def _flow_control(self) -> None:
        want = self.dest_paused or self.fifo_bytes > _HIGH_WATER or (self.source_paused and self.fifo_bytes > _LOW_WATER)
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

    def __init__(self, proxy: "Proxy", conn_id: int, client_addr: tuple, listen_addr: tuple):
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
        return {"id": self.id, "client": _addr(self.client_addr), "listen": _addr(self.listen_addr),
                "upstream_local": _addr(self.upstream_local), "upstream": _addr(self.upstream_addr),
                "client_id": self.client_id,
                "version": VERSION_NAMES.get(self.version) if self.version else None,
                "mode": self.proxy.mode, "open": self.is_open, "close_reason": self.close_reason,
                "reset": self.reset, "received": dict(self.received), "delivered": self.delivered,
                "faults": self.faults,
                "decoding": [d for d in DIRECTIONS if self._decoding[d]],
                "held": len(self.state.held()) if self.state else 0}

    def __repr__(self) -> str:
        state = "open" if self.is_open else f"closed: {self.close_reason}"
        return f"<Connection {self.id} {_addr(self.client_addr)} client_id={self.client_id!r} {state}>"

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
        for o in outputs:
            kind = type(o)
            if kind is Send:
                if o.delay:
                    self._call_later(o.delay, self.routes[o.direction].send, o.data)
                else:
                    self.routes[o.direction].send(o.data)
            elif kind is Close:
                step = F.Step(time.monotonic(), F.RESET if o.reset else F.CLOSE, reason=o.reason)
                if o.delay:
                    self._call_later(o.delay, self.routes[o.direction].schedule, [step])
                else:
                    self.routes[o.direction].schedule([step])
            elif kind is Fired:
                self.proxy._event(self.id, "rule", f"{o.rule} ({'+'.join(o.actions) or 'match'}) on "
                                                   f"{o.direction} {summary(o.packet)}")
            elif kind is DecodeFailed:
                self.proxy._event(self.id, "decode_failed", f"{o.direction}: {o.error}; forwarding raw bytes")
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
            for step in route.chain.add(fault, self.proxy.rng, now):
                timers.append(self.loop.call_at(step.due, route.schedule, [step]))
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


def _addr(addr: tuple | None) -> str | None:
    if not addr:
        return None
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Proxy:
    """A fault-injecting, MQTT-aware TCP proxy in front of one broker.

    ``upstream`` is ``host:port`` or a broker URL. What the proxy does with TLS and WebSocket follows
    from it and from ``server_tls``:

    * ``mqtt://`` or ``host:port``: plain TCP; MQTT decoded, so rules work. With ``server_tls``, clients
      speak TLS to the proxy (termination) and the broker leg stays plain.
    * ``mqtts://`` without ``server_tls``: TLS pass-through; faults act on the encrypted bytes, no rules,
      the tap records chunk sizes only. With ``server_tls``: TLS terminated on both legs
      (``upstream_tls`` verifies the broker), MQTT decoded.
    * ``ws://`` / ``wss://``: WebSocket pass-through (byte-level faults only).

    ``mqtt=False`` forces pass-through on plain TCP too. ``tap=False`` records nothing. ``seed`` seeds the
    random draws (toxicity, jitter, slicer sizes). ``trace`` is called with one line per packet.
    Methods are not thread-safe: call them on the proxy's event loop (harness.proxy.threaded wraps it).
    """

    def __init__(self, upstream: str | BrokerUrl, listen: str = "127.0.0.1:0", *,
                 server_tls: ServerTls | None = None, upstream_tls: TlsOptions | None = None,
                 mqtt: bool | None = None, tap: bool = True, seed: int | None = None,
                 trace: Callable[[str], None] | None = None, connect_timeout: float = 10.0):
        self.upstream = upstream_url(upstream)
        self.listen_host, self.listen_port = parse_endpoint(listen, "listen address")
        up = self.upstream
        if up.ws and server_tls is not None:
            raise ProxyError("WebSocket upstreams are passed through; the proxy cannot terminate TLS for them "
                             "(drop server_tls, or point the proxy at an mqtt:// or mqtts:// listener)")
        if up.tls and server_tls is None and upstream_tls is not None:
            raise ProxyError("upstream_tls given but TLS is passed through to the broker; give server_tls too "
                             "to terminate TLS at the proxy")
        if not up.tls and upstream_tls is not None:
            raise ProxyError(f"upstream_tls given for a {up.scheme}:// upstream; use an mqtts:// upstream URL")
        passthrough = up.ws or (up.tls and server_tls is None)
        if mqtt and passthrough:
            raise ProxyError("MQTT decoding needs the plaintext: terminate TLS (server_tls) or use a plain upstream")
        self.mqtt = not passthrough if mqtt is None else bool(mqtt)
        self.server_tls = server_tls
        self._server_ctx = server_tls.context() if server_tls is not None else None
        self._upstream_ctx = (make_ssl_context(upstream_tls or TlsOptions())
                              if up.tls and server_tls is not None else None)
        self._upstream_sni = (upstream_tls.server_hostname if upstream_tls else None) or up.host
        self.tap_enabled = tap
        self.trace = trace
        self.connect_timeout = connect_timeout
        self.rng = random.Random(seed)
        self.rules: list[Rule] = []
        self.faults: dict[str, F.Fault] = {}
        self.connections: list[Connection] = []
        self.events: list[ProxyEvent] = []
        self.listeners: list[Callable[[], None]] = []  # called on every event (thread-safe waits hook in here)
        self.watch_data = 0  # while > 0, every chunk received counts as an event (waits on byte counters)
        self.started_at = time.monotonic()
        self.wall_offset = time.time() - time.monotonic()  # monotonic -> epoch, for pcap timestamps
        self._log_lock = threading.Lock()
        self.tap = Tap(lambda: tuple(self.connections), self._log_lock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lsock: socket.socket | None = None
        self._accept_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._waiters: list[asyncio.Future] = []
        self._next_id = 1
        self._closed = False

    # ------------------------------------------------------------------ lifecycle
    @property
    def mode(self) -> str:
        if self.upstream.ws:
            return "websocket-passthrough"
        if self.upstream.tls and self.server_tls is None:
            return "tls-passthrough"
        if self.server_tls is not None:
            return "tls-terminate" if self.upstream.tls else "tls-to-plain"
        return "tcp" if self.mqtt else "tcp-passthrough"

    @property
    def url(self) -> str:
        """The URL clients connect to (scheme and WebSocket path as the upstream's, host:port the proxy's)."""
        scheme = self.upstream.scheme
        if self.server_tls is not None:
            scheme = "mqtts"
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{scheme}://{host}:{self.listen_port}{self.upstream.path if self.upstream.ws else ''}"

    @property
    def address(self) -> tuple[str, int]:
        return self.listen_host, self.listen_port

    async def start(self) -> "Proxy":
        self._loop = asyncio.get_running_loop()
        self.started_at = time.monotonic()
        self.wall_offset = time.time() - time.monotonic()
        self._open_listener()
        return self

    async def close(self) -> None:
        """Stop listening and close every connection."""
        if self._closed:
            return
        self._closed = True
        self._close_listener()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for conn in self.connections:
            conn.close("proxy shut down")
        sides = [s for c in self.connections for s in (c.client, c.broker) if s.transport is not None]
        try:
            await self.wait_until(lambda: all(s.lost for s in sides), 2.0, "closed transports")
        except ProxyError:  # a peer that never finishes a TLS shutdown
            for side in sides:
                if not side.lost:
                    side.transport.abort()

    async def __aenter__(self) -> "Proxy":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def _open_listener(self) -> None:
        family = socket.AF_INET6 if ":" in self.listen_host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.listen_host, self.listen_port))
            sock.listen(256)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise ProxyError(f"cannot listen on {self.listen_host}:{self.listen_port}: {exc.strerror or exc}; "
                             "pick another port (0 picks a free one)") from None
        self.listen_port = sock.getsockname()[1]
        self._lsock = sock
        self._accept_task = self._loop.create_task(self._accept_loop(sock), name=f"proxy-accept-{self.listen_port}")

    def _close_listener(self) -> None:
        if self._accept_task is not None:
            self._accept_task.cancel()
            self._accept_task = None
        if self._lsock is not None:
            self._lsock.close()
            self._lsock = None

    async def _accept_loop(self, lsock: socket.socket) -> None:
        while True:
            try:
                sock, addr = await self._loop.sock_accept(lsock)
            except OSError as exc:
                self._event(None, "accept_failed", str(exc))
                await asyncio.sleep(0.01)  # e.g. EMFILE: back off instead of spinning
                continue
            task = self._loop.create_task(self._serve(sock, addr))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, sock: socket.socket, addr: tuple) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Connection(self, self._next_id, addr, sock.getsockname())
        self._next_id += 1
        self.connections.append(conn)
        delay = 0.0
        for fault in list(self.faults.values()):
            if fault.type == "refuse" and F.draw(fault, self.rng):
                conn.closed_at = time.monotonic()
                conn.close_reason = f"refused by fault {fault.name}"
                conn.reset = True
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
                self._event(conn.id, "refused", conn.close_reason)
                return
            if fault.type == "accept_delay" and F.draw(fault, self.rng):
                delay += fault.attributes["delay"] / 1000.0
        try:
            if delay:
                await asyncio.sleep(delay)  # the fault's own duration: the client waits, unserved
            await self._connect(conn, sock)
        except asyncio.CancelledError:
            if conn.client.transport is None:
                sock.close()
            conn.close("proxy shut down")
            raise
        except Exception as exc:  # noqa: BLE001 - one broken connection must not take the proxy down
            if conn.client.transport is None:
                sock.close()
            conn.close(f"proxy error: {exc!r}")

    async def _connect(self, conn: Connection, sock: socket.socket) -> None:
        loop = self._loop
        try:
            await loop.connect_accepted_socket(lambda: conn.client, sock, ssl=self._server_ctx,
                                               ssl_handshake_timeout=self.connect_timeout if self._server_ctx else None)
        except (OSError, asyncio.TimeoutError) as exc:
            sock.close()
            conn.closed_at = time.monotonic()
            conn.close_reason = f"TLS handshake with the client failed: {exc}"
            self._event(conn.id, "tls_failed", conn.close_reason)
            return
        up = self.upstream
        try:
            async with asyncio.timeout(self.connect_timeout):
                infos = await loop.getaddrinfo(up.host, up.port, type=socket.SOCK_STREAM)
                family, _, _, _, sockaddr = infos[0]
                usock = socket.socket(family, socket.SOCK_STREAM)
                usock.setblocking(False)
                usock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                try:
                    await loop.sock_connect(usock, sockaddr)
                    await loop.create_connection(lambda: conn.broker, sock=usock, ssl=self._upstream_ctx,
                                                 server_hostname=self._upstream_sni if self._upstream_ctx else None)
                except BaseException:
                    usock.close()
                    raise
        except (OSError, asyncio.TimeoutError) as exc:
            reason = f"cannot reach the broker at {up.address}: {exc or type(exc).__name__}"
            conn.close(reason)
            self._event(conn.id, "upstream_failed", reason)
            return
        if conn.closed_at is not None:  # the client went away meanwhile
            conn.broker.transport.close()
            return
        conn.upstream_local = usock.getsockname()
        conn.upstream_addr = usock.getpeername()
        conn.routes[UPSTREAM].dest = conn.broker.transport
        conn.routes[DOWNSTREAM].dest = conn.client.transport
        conn.ready_at = time.monotonic()
        for fault in list(self.faults.values()):
            conn.start_fault(fault)
        conn.client.transport.resume_reading()
        for route in conn.routes.values():
            route._flow_control()
        self._event(conn.id, "open", f"{_addr(conn.client_addr)} -> {up.address}")

    # ------------------------------------------------------------------ events and waiting
    def _event(self, conn_id: int | None, kind: str, detail: str) -> None:
        self.events.append(ProxyEvent(time.monotonic(), conn_id, kind, detail))
        self._changed()

    def _changed(self) -> None:
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
        self._waiters.clear()
        for listener in self.listeners:
            listener()

    async def wait_until(self, predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition"):
        """Wait until predicate() is truthy (checked after every proxy event); returns its value."""
        loop = asyncio.get_running_loop()
        self.watch_data += 1
        try:
            async with asyncio.timeout(timeout):
                while True:
                    value = predicate()
                    if value:
                        return value
                    fut = loop.create_future()
                    self._waiters.append(fut)
                    await fut
        except TimeoutError:
            raise ProxyError(f"proxy: no {what} within {timeout:g}s; recent events: "
                             + "; ".join(f"c{e.connection} {e.kind}: {e.detail}" for e in self.events[-5:])) from None
        finally:
            self.watch_data -= 1

    async def wait_connection(self, count: int = 1, timeout: float = 10.0) -> Connection:
        """Wait until `count` connections have been fully set up; returns the count-th."""
        ready = lambda: [c for c in self.connections if c.ready_at is not None]  # noqa: E731
        await self.wait_until(lambda: len(ready()) >= count, timeout, f"{count} connection(s)")
        return ready()[count - 1]

    # ------------------------------------------------------------------ faults
    def add_fault(self, fault: F.Fault | dict) -> F.Fault:
        """Add a fault, or replace the one with the same name (its state restarts; toxicity draws stay)."""
        if isinstance(fault, dict):
            fault = F.Fault.from_dict(fault)
        if not fault.name:
            base = f"{fault.type}_{fault.direction}" + (f"_c{fault.connection}" if fault.connection else "")
            name, n = base, 2
            while name in self.faults:
                name, n = f"{base}_{n}", n + 1
            fault.name = name
        self.faults[fault.name] = fault
        self._sync_listener()
        for conn in self.connections:
            if conn.ready_at is not None:
                conn.start_fault(fault)
        self._event(fault.connection, "fault", f"added {fault.name}: {fault.type} {fault.direction} {fault.attributes}")
        return fault

    def remove_fault(self, name: str) -> F.Fault:
        fault = self.faults.pop(name, None)
        if fault is None:
            raise KeyError(f"no fault named {name!r}; faults: {', '.join(self.faults) or 'none'}")
        for conn in self.connections:
            conn.stop_fault(name)
        self._sync_listener()
        self._event(fault.connection, "fault", f"removed {name}")
        return fault

    def heal(self) -> list[str]:
        """Remove every fault (blackholes release their bytes on the same connections). Rules stay."""
        names = list(self.faults)
        for name in names:
            self.remove_fault(name)
        return names

    def _sync_listener(self) -> None:
        """A 'refuse' fault in mode 'closed' shuts the listening socket; without one it is open."""
        refused = any(f.type == "refuse" and f.attributes["mode"] == "closed" for f in self.faults.values())
        if refused and self._lsock is not None:
            self._close_listener()
        elif not refused and self._lsock is None and not self._closed:
            self._open_listener()

    # ------------------------------------------------------------------ rules
    def add_rule(self, rule: Rule | dict) -> Rule:
        """Add a rule at the end of the list, or replace the one with the same name in place.
        Open connections start decoding at their next packet boundary."""
        if isinstance(rule, dict):
            rule = Rule.from_dict(rule)
        if not self.mqtt:
            raise ProxyError(f"rules need decoded MQTT, but this proxy is in {self.mode} mode; "
                             "terminate TLS (server_tls) or use a plain upstream")
        for i, r in enumerate(self.rules):
            if r.name == rule.name:
                self.rules[i] = rule
                break
        else:
            self.rules.append(rule)
        return rule

    def remove_rule(self, name: str) -> Rule:
        for i, r in enumerate(self.rules):
            if r.name == name:
                return self.rules.pop(i)
        raise KeyError(f"no rule named {name!r}; rules: {', '.join(r.name for r in self.rules) or 'none'}")

    def clear_rules(self) -> None:
        self.rules.clear()

    def held(self, hold: str | None = None) -> list:
        """Packets held by hold actions (all, or those under `hold`), as (connection id, HeldPacket)."""
        return [(c.id, h) for c in self.connections if c.state is not None for h in c.state.held(hold)]

    def release(self, hold: str, count: int | None = None) -> int:
        """Forward packets held under `hold` (all, or the first `count`), oldest first, on every open connection."""
        total = 0
        for conn in self.connections:
            if conn.state is None or not conn.is_open:
                continue
            outputs, n = conn.state.release(hold, None if count is None else count - total)
            conn._apply(outputs)
            total += n
            if count is not None and total >= count:
                break
        self._event(None, "released", f"{total} packet(s) from hold {hold!r}")
        return total

    # ------------------------------------------------------------------ connections
    def connection(self, conn_id: int | None = None, client_id: str | None = None) -> Connection:
        """A connection by id, or the latest one with this client id."""
        for conn in reversed(self.connections):
            if (conn_id is None or conn.id == conn_id) and (client_id is None or conn.client_id == client_id):
                return conn
        raise KeyError(f"no connection with id={conn_id} client_id={client_id!r}")

    def close_connection(self, conn_id: int, reset: bool = False) -> None:
        self.connection(conn_id).close("closed through the proxy API", reset=reset)

    def write_pcap(self, path: str | Path, connections: list[int] | None = None, server_port: int | None = None) -> Path:
        """Write the decoded connections (all, or those ids) to a pcap file; see harness.proxy.pcap."""
        from harness.proxy.pcap import write_pcap

        chosen = [c for c in self.connections if connections is None or c.id in connections]
        with self._log_lock:
            return write_pcap(path, chosen, wall_offset=self.wall_offset, server_port=server_port)

