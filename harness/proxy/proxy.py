"""The fault-injecting MQTT proxy: its listener, its configuration, and the API to change it live.

Every decision is made by plain objects: harness.proxy.faults (what happens to bytes and when),
harness.proxy.state (what happens to packets); harness.proxy.connection moves the bytes of each
connection between two asyncio Protocols (the fastest forwarding found in the perf lab; TCP_NODELAY
is set on both legs). With no rules and no faults a chunk goes straight from one socket to the
other: no decoding, no copy. The packet tap (on by default) adds one list append per chunk and leg.
A proxy made with ``native=True`` (no tap, rules or faults, ever) hands each connection's sockets to
harness.proxy.native instead, which forwards in C (what `mqtt-harness proxy` does when nothing needs Python).
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from harness.errors import HarnessError
from harness.brokers.ports import release_ports, reserve_ports
from harness.proxy import faults as F
from harness.proxy.connection import Connection, addr_text, keep_reads_off_mmap
from harness.proxy.direction import DOWNSTREAM, UPSTREAM
from harness.proxy.rules import Rule
from harness.proxy.tap import Tap
from harness.transport import TlsOptions, make_ssl_context
from harness.url import BrokerUrl, parse_url


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
    ``native=True`` forwards in C (harness.proxy.native): it needs ``tap=False``, no trace and no TLS
    termination, and the proxy then refuses rules and faults.
    Methods are not thread-safe: call them on the proxy's event loop (harness.proxy.threaded wraps it).
    """

    def __init__(self, upstream: str | BrokerUrl, listen: str = "127.0.0.1:0", *,
                 server_tls: ServerTls | None = None, upstream_tls: TlsOptions | None = None,
                 mqtt: bool | None = None, tap: bool = True, seed: int | None = None,
                 trace: Callable[[str], None] | None = None, connect_timeout: float = 10.0,
                 quick_ack: bool = True, native: bool = False):
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
        if native:
            from harness.proxy import native as N  # here, so `python -m harness.proxy.native` runs it fresh

            if tap or trace is not None or server_tls is not None:
                raise ProxyError("the native forwarder only moves bytes: it needs tap=False, no trace and no TLS "
                                 "termination (on the command line: drop --trace, --pcap, --control and --tls-terminate)")
            why = N.unavailable()
            if why:
                raise ProxyError(f"the native forwarder is not available: {why}")
        self.native = native
        self._stop_native: int | None = None  # an eventfd every native forwarding loop watches
        self._native_threads: set[threading.Thread] = set()
        self.server_tls = server_tls
        self._server_ctx = server_tls.context() if server_tls is not None else None
        self._upstream_ctx = (make_ssl_context(upstream_tls or TlsOptions())
                              if up.tls and server_tls is not None else None)
        self._upstream_sni = (upstream_tls.server_hostname if upstream_tls else None) or up.host
        self.tap_enabled = tap
        self.quick_ack = quick_ack  # off: the kernel's delayed ACKs, as a plain forwarder (socat) has them
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
        self._reserved: list[int] = []  # a port we took from the harness's port registry

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
        if self.tap_enabled:
            keep_reads_off_mmap()
        if self.native and self._stop_native is None:
            self._stop_native = os.eventfd(0, os.EFD_CLOEXEC)
        self.started_at = time.monotonic()
        self.wall_offset = time.time() - time.monotonic()
        if self.listen_port == 0:
            # Through the registry, so a port reserved for a broker about to start is never taken here;
            # it stays ours while a refuse fault has the listener shut.
            self._reserved = reserve_ports(1, host=self.listen_host)
            self.listen_port = self._reserved[0]
        try:
            self._open_listener()
        except ProxyError:
            release_ports(self._reserved)
            raise
        return self

    async def close(self) -> None:
        """Stop listening and close every connection."""
        if self._closed:
            return
        self._closed = True
        self._close_listener()
        release_ports(self._reserved)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._stop_native is not None:
            os.eventfd_write(self._stop_native, 1)  # stays readable: every loop sees it and returns
            try:
                await self.wait_until(lambda: not self._native_threads, 5.0, "native forwarders stopped")
            finally:
                if not self._native_threads:
                    os.close(self._stop_native)
                    self._stop_native = None
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
            if self.native:
                await self._connect_native(conn, sock)
            else:
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

        async def wrap(usock: socket.socket) -> None:
            await loop.create_connection(lambda: conn.broker, sock=usock, ssl=self._upstream_ctx,
                                         server_hostname=self._upstream_sni if self._upstream_ctx else None)
        usock = await self._dial_upstream(conn, wrap)
        if usock is None:
            return
        if conn.closed_at is not None:  # the client went away meanwhile
            conn.broker.transport.close()
            return
        conn.routes[UPSTREAM].dest = conn.broker.transport
        conn.routes[DOWNSTREAM].dest = conn.client.transport
        conn.ready_at = time.monotonic()
        for fault in list(self.faults.values()):
            conn.start_fault(fault)
        conn.client.transport.resume_reading()
        for route in conn.routes.values():
            route._flow_control()
        self._event(conn.id, "open", f"{addr_text(conn.client_addr)} -> {self.upstream.address}")

    async def _dial_upstream(self, conn: Connection, then=None) -> socket.socket | None:
        """A TCP connection to the broker (TCP_NODELAY, non-blocking), passed to `then` within the same
        timeout; None, with the connection closed and an upstream_failed event, when it cannot be had."""
        loop, up = self._loop, self.upstream
        try:
            async with asyncio.timeout(self.connect_timeout):
                infos = await loop.getaddrinfo(up.host, up.port, type=socket.SOCK_STREAM)
                family, _, _, _, sockaddr = infos[0]
                usock = socket.socket(family, socket.SOCK_STREAM)
                usock.setblocking(False)
                usock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                try:
                    await loop.sock_connect(usock, sockaddr)
                    if then is not None:
                        await then(usock)
                except BaseException:
                    usock.close()
                    raise
        except (OSError, asyncio.TimeoutError) as exc:
            reason = f"cannot reach the broker at {up.address}: {str(exc) or type(exc).__name__}"
            conn.close(reason)
            self._event(conn.id, "upstream_failed", reason)
            return None
        conn.upstream_local = usock.getsockname()
        conn.upstream_addr = usock.getpeername()
        return usock

    async def _connect_native(self, conn: Connection, sock: socket.socket) -> None:
        """Dial the broker, then let a thread forward the two sockets in C until one end closes."""
        usock = await self._dial_upstream(conn)
        if usock is None:
            sock.close()
            return
        from harness.proxy import native as N

        conn.ready_at = time.monotonic()
        ack = N.ACK_DELAY_US if self.quick_ack else -1
        loop, stop = self._loop, self._stop_native

        def run() -> None:
            try:
                _, reason, moved = N.forward(sock.fileno(), usock.fileno(), stop, ack)
            except Exception as exc:  # noqa: BLE001 - reported as the connection's close reason
                reason, moved = f"native forwarder failed: {exc!r}", [0, 0]
            try:
                loop.call_soon_threadsafe(self._native_done, conn, thread, sock, usock, reason, moved)
            except RuntimeError:  # the loop is gone (interpreter exit): nothing is left to tell
                sock.close()
                usock.close()

        thread = threading.Thread(target=run, name=f"proxy-native-c{conn.id}", daemon=True)
        self._native_threads.add(thread)
        thread.start()
        self._event(conn.id, "open", f"{addr_text(conn.client_addr)} -> {self.upstream.address} (native)")

    def _native_done(self, conn: Connection, thread: threading.Thread, sock: socket.socket,
                     usock: socket.socket, reason: str, moved: list[int]) -> None:
        sock.close()
        usock.close()
        conn.received = {UPSTREAM: moved[0], DOWNSTREAM: moved[1]}
        thread.join(1.0)  # it has nothing left to do but return: closed means no thread left behind
        self._native_threads.discard(thread)
        conn.close(reason)
        self._changed()

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
        self._refuse_if_native("faults")
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
        self._refuse_if_native("rules")
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

    def _refuse_if_native(self, what: str) -> None:
        if self.native:
            raise ProxyError(f"this proxy forwards natively and cannot apply {what}; create it with native=False "
                             "(on the command line, --rules or --control select the Python forwarder)")

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

    def write_pcap(self, path: str | Path, connections: list[int] | None = None,
                   server_port: int | None = None) -> Path:
        """Write the decoded connections (all, or those ids) to a pcap file; see harness.proxy.pcap."""
        from harness.proxy.pcap import write_pcap

        chosen = [c for c in self.connections if connections is None or c.id in connections]
        with self._log_lock:
            return write_pcap(path, chosen, wall_offset=self.wall_offset, server_port=server_port)

