"""The asyncio reference client: a thin driver over harness.core.session.ClientSession.

It owns the socket (via harness.transport), the clock and the waiting; every protocol decision
is the session's. Every wait takes a timeout. Besides the usual calls it can send any packet or
raw bytes, withhold acks (manual_acks=True), go silent (keepalive without pings) or drop the
connection without DISCONNECT.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections import deque
from typing import Callable, Iterable

from harness.core.codec import encode, summary
from harness.core.packets import (
    Connack, Connect, Disconnect, Pingresp, Publish, Suback, Subscription, Unsuback, Will, parse_version,
)
from harness.core.reason_codes import reason_name
from harness.core.session import (
    ClientSession, KeepaliveTimeout, PublishDone, SessionConfig, SessionDiscarded, State, Violation,
)
from harness.errors import (
    ConnectionClosed, HarnessError, MqttConnectError, ProtocolError, Timeout, TlsError,
)
from harness.packet_log import IN, OUT, PacketLog
from harness.transport import TlsOptions, open_stream
from harness.url import BrokerUrl, parse_url

_ids = itertools.count(1)
DEFAULT_TIMEOUT = 10.0
_READ_ALL = 1 << 24  # take whatever has arrived in one read: a smaller limit slices (copies) large chunks


def unique_client_id(prefix: str = "mh") -> str:
    """Short (<= 23 chars, as MQTT 3.1 and some brokers require) and unique per process and call."""
    return f"{prefix}-{os.getpid() % 100000}-{next(_ids)}"[:23]


CREDENTIAL_FIELDS = frozenset({"username", "password", "username_flag", "password_flag"})


class Client:
    """One MQTT client connection (and its session, which survives reconnects)."""

    def __init__(self, url: str | BrokerUrl, *, version: str | int = "3.1.1", client_id: str | None = None,
                 clean: bool = True, keepalive: int = 60, will: Will | None = None,
                 username: str | None = None, password: str | bytes | None = None,
                 properties: dict | None = None, tls: TlsOptions | None = None,
                 ca: str | None = None, cert: str | None = None, key: str | None = None,
                 max_inflight: int | None = None, manual_acks: bool = False, auto_ping: bool = True,
                 log: bool = True, resolve=None, timeout: float = DEFAULT_TIMEOUT, name: str | None = None):
        self.url = url if isinstance(url, BrokerUrl) else parse_url(url)
        if username is None and self.url.username is not None:
            username = self.url.username
            if password is None and self.url.password is not None:
                password = self.url.password
        if isinstance(password, str):
            password = password.encode()
        if tls is None and (ca or cert or key):
            tls = TlsOptions(ca=ca, cert=cert, key=key)
        self.tls = tls
        self.version = parse_version(version)
        self.session = ClientSession(SessionConfig(
            version=self.version, client_id=unique_client_id() if client_id is None else client_id, clean=clean,
            keepalive=keepalive, username=username, password=password, will=will,
            properties=dict(properties or {}), max_inflight=max_inflight, manual_acks=manual_acks))
        self.auto_ping = auto_ping
        self.timeout = timeout
        self.resolve = resolve
        self.name = name or self.session.config.client_id
        self.log = PacketLog(enabled=log, name=self.name)
        self.violations: list[Violation] = []
        self.discarded: list[SessionDiscarded] = []
        self.server_disconnect = None  # the DISCONNECT the server sent, if any
        self.closed_at: float | None = None  # time.monotonic() when the connection closed, for timing tests
        self._stream = None
        self._reader: asyncio.Task | None = None
        self._timer: asyncio.Task | None = None
        self._messages: deque[Publish] = deque()
        self._waiters: list[tuple[Callable[[object], bool], asyncio.Future]] = []
        self._acks: dict[int, asyncio.Future] = {}
        self._closed: asyncio.Event | None = None
        self._close_reason: str | None = None
        self._close_error: Exception | None = None
        self._wakeup: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None  # set when no QoS 1/2 publish is in flight

    # ------------------------------------------------------------------ construction
    @classmethod
    async def connect(cls, url: str | BrokerUrl, *, timeout: float = DEFAULT_TIMEOUT, **kwargs) -> "Client":
        """Create a client and open the connection; raises a ConnectError subclass naming the layer."""
        client = cls(url, timeout=timeout, **kwargs)
        await client.open(timeout=timeout)
        return client

    @property
    def login(self) -> dict:
        """The user name and password this client's CONNECT carries (only those set), for hand-built CONNECTs."""
        config = self.session.config
        return {k: v for k, v in (("username", config.username), ("password", config.password)) if v is not None}

    def connect_packet(self, **fields) -> Connect:
        """A valid CONNECT for this client (its client id, version and login), with `fields` changed. A test that
        sets any credential field or flag gets exactly those: the login is left out."""
        login = {} if fields.keys() & CREDENTIAL_FIELDS else self.login
        return Connect(**{"client_id": self.client_id, "protocol_level": self.version, **login, **fields})

    @property
    def client_id(self) -> str:
        return self.session.config.client_id

    @property
    def connected(self) -> bool:
        return self._stream is not None and self.session.state is State.CONNECTED

    @property
    def connack(self) -> Connack | None:
        return self.session.connack

    async def open_raw(self, timeout: float | None = None) -> None:
        """Open the transport and start reading, without sending CONNECT: for tests that send their own first
        packet with send() or send_raw() (a malformed CONNECT, or no CONNECT at all)."""
        timeout = self.timeout if timeout is None else timeout
        if self._stream is not None:
            raise HarnessError("already connected; call disconnect() or abort() first")
        self._stream = await open_stream(self.url, tls=self.tls, timeout=timeout, resolve=self.resolve)
        self._closed = asyncio.Event()
        self._close_reason = None
        self._close_error = None
        self.server_disconnect = None
        self.closed_at = None
        self._wakeup = asyncio.Event()
        self.log.new_connection(self.version)
        self._reader = asyncio.create_task(self._read_loop(), name=f"mqtt-read-{self.name}")

    async def open(self, timeout: float | None = None, clean: bool | None = None) -> Connack:
        """Open the transport, send CONNECT and wait for CONNACK. Also used to reconnect."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        await self.open_raw(timeout)
        if clean is not None:
            self.session.config.clean = clean
        connack_future = self._expect(lambda p: isinstance(p, Connack))
        self.session.connect(time.monotonic())
        self._flush()
        try:
            connack = await self._wait(connack_future, deadline - time.monotonic(), "CONNACK")
        except ConnectionClosed as exc:
            await self._teardown()
            if isinstance(self._close_error, TlsError):
                raise self._close_error from None  # e.g. the server's alert about our certificate
            if self.url.tls and not self.log.packets(IN):
                # Closed or reset right after the handshake, before a single byte: with TLS 1.3 that is how a
                # rejected (or missing) client certificate shows when the server's alert is lost to a reset.
                cause = ("the server most likely rejected the client certificate" if self.tls and self.tls.cert
                         else "if the listener requires a client certificate, pass --cert FILE --key FILE (cert=/key= from Python)")
                raise TlsError(f"connection closed right after the TLS handshake, before CONNACK ({exc}); {cause}",
                               self.url.display()) from None
            raise MqttConnectError(f"broker closed the connection before CONNACK ({exc})",
                                   self.url.display()) from None
        except Timeout:
            await self._teardown()
            raise Timeout(f"no CONNACK from {self.url.display()} within {timeout:g}s") from None
        if connack.reason_code != 0:
            await self._teardown()
            code = connack.reason_code
            if self.version >= 5 and code == 1:  # a 3.1.x CONNACK: see the codec's legacy_refusal
                raise MqttConnectError("broker answered with an MQTT 3.1.1 CONNACK refusing the protocol version "
                                       "(return code 1): it does not support MQTT 5; use version 3.1.1",
                                       self.url.display(), reason_code=code)
            name = reason_name(code) if self.version >= 5 else _RC_311.get(code, f"return code {code}")
            raise MqttConnectError(f"broker refused the connection: {name} (0x{code:02X})",
                                   self.url.display(), reason_code=code)
        if self.auto_ping:
            self._timer = asyncio.create_task(self._keepalive_loop(), name=f"mqtt-keepalive-{self.name}")
        return connack

    async def reconnect(self, clean: bool | None = None, timeout: float | None = None) -> Connack:
        """Drop the current connection if any (no DISCONNECT) and open a new one, keeping session state."""
        if self._stream is not None:
            self.abort()
            await self._teardown()
        return await self.open(timeout=timeout, clean=clean)

    # ------------------------------------------------------------------ I/O loops
    def _flush(self) -> None:
        pieces = self.session.take_output()
        if pieces and self._stream is not None:
            # Pieces, not joined: a large payload goes from the caller's bytes to the socket uncopied.
            self.log.record(OUT, pieces[0] if len(pieces) == 1 else pieces, time.monotonic())
            self._stream.writelines(pieces)

    async def _read_loop(self) -> None:
        stream = self._stream
        session = self.session
        log = self.log
        reason = "connection closed by the broker"
        try:
            while True:
                data = await stream.read(_READ_ALL)
                if not data:
                    break
                now = time.monotonic()
                log.record(IN, data, now)
                try:
                    events = session.receive_data(data, now)
                except ProtocolError as exc:
                    self._dispatch(exc.events)
                    reason = f"broker sent a malformed packet: {exc}"
                    self.violations.append(Violation(exc.statement or "", str(exc)))
                    stream.abort()
                    break
                self._dispatch(events)
                if session._out:
                    self._flush()
        except ConnectionClosed as exc:
            reason = str(exc) or "connection reset"
            self._close_error = exc
        except asyncio.CancelledError:
            reason = "client closed the connection"
            raise
        except OSError as exc:
            reason = f"connection error: {exc}"
        finally:
            self._on_closed(reason)

    def _dispatch(self, events: list) -> None:
        for ev in events:
            kind = type(ev)
            if kind is Publish:
                self._messages.append(ev)
                self._wakeup.set()
                continue
            if kind is PublishDone:
                fut = self._acks.pop(ev.packet_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(ev.ack)
                if not self.session.outgoing and self._idle is not None:
                    self._idle.set()
                continue
            if kind is Violation:
                self.violations.append(ev)
                continue
            if kind is SessionDiscarded:
                self.discarded.append(ev)
                for pid in ev.packet_ids:
                    fut = self._acks.pop(pid, None)
                    if fut is not None and not fut.done():
                        fut.set_exception(ConnectionClosed(f"packet id {pid} discarded: the broker had no session"))
                continue
            if kind is Disconnect:
                self.server_disconnect = ev
            if self._waiters:
                for item in list(self._waiters):
                    match, fut = item
                    if not fut.done() and match(ev):
                        fut.set_result(ev)
                        self._waiters.remove(item)

    def _on_closed(self, reason: str) -> None:
        self._close_reason = reason
        if self.closed_at is None:
            self.closed_at = time.monotonic()
        self.session.connection_lost()
        if self._closed is not None:
            self._closed.set()
        if self._wakeup is not None:
            self._wakeup.set()
        err = ConnectionClosed(reason)
        for _, fut in self._waiters:
            if not fut.done():
                fut.set_exception(err)
        self._waiters.clear()
        for fut in self._acks.values():
            if not fut.done():
                fut.set_exception(err)
        self._acks.clear()
        if self._timer is not None:
            self._timer.cancel()

    async def _keepalive_loop(self) -> None:
        session = self.session
        while True:
            deadline = session.next_deadline()
            if deadline is None:
                return
            delay = deadline - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # models elapsed time: the keepalive interval itself
                continue
            for ev in session.poll(time.monotonic()):
                if isinstance(ev, KeepaliveTimeout):
                    self._stream.abort()
                    self._on_closed(f"no PINGRESP within {ev.waited:.1f}s: broker considered dead")
                    return
            self._flush()

    async def _teardown(self) -> None:
        for task in (self._timer, self._reader):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):  # noqa: BLE001 - already recorded by _on_closed
                    pass
        self._timer = self._reader = None
        if self._stream is not None:
            await self._stream.close()
            self._stream = None

    # ------------------------------------------------------------------ waiting
    def _expect(self, match: Callable[[object], bool]) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((match, fut))
        return fut

    async def _wait(self, fut: asyncio.Future, timeout: float | None, what: str):
        timeout = self.timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(fut, max(timeout, 0))
        except asyncio.TimeoutError:
            self._waiters = [w for w in self._waiters if w[1] is not fut]
            raise Timeout(f"{self.name}: no {what} within {timeout:g}s") from None

    def _require_connection(self):
        if self._stream is None or self._closed.is_set():
            raise ConnectionClosed(f"{self.name}: not connected ({self._close_reason or 'never opened'})")

    # ------------------------------------------------------------------ calls
    async def subscribe(self, topic: str | Iterable, qos: int = 0, *, no_local: bool = False,
                        retain_as_published: bool = False, retain_handling: int = 0,
                        properties: dict | None = None, timeout: float | None = None) -> Suback:
        """Subscribe to one filter (str) or several (Subscription objects or (filter, qos) pairs)."""
        self._require_connection()
        if isinstance(topic, str):
            subs = [Subscription(topic, qos, no_local, retain_as_published, retain_handling)]
        else:
            subs = [s if isinstance(s, Subscription) else Subscription(s[0], s[1]) for s in topic]
        packet = self.session.subscribe(subs, properties, time.monotonic())
        fut = self._expect(lambda p, pid=packet.packet_id: isinstance(p, Suback) and p.packet_id == pid)
        self._flush()
        return await self._wait(fut, timeout, f"SUBACK for packet id {packet.packet_id}")

    async def unsubscribe(self, topics: str | list[str], *, properties: dict | None = None,
                          timeout: float | None = None) -> Unsuback:
        self._require_connection()
        filters = [topics] if isinstance(topics, str) else list(topics)
        packet = self.session.unsubscribe(filters, properties, time.monotonic())
        fut = self._expect(lambda p, pid=packet.packet_id: isinstance(p, Unsuback) and p.packet_id == pid)
        self._flush()
        return await self._wait(fut, timeout, f"UNSUBACK for packet id {packet.packet_id}")

    def publish_nowait(self, topic: str, payload: bytes | str = b"", qos: int = 0, retain: bool = False,
                       properties: dict | None = None, use_alias: bool = False,
                       track: bool = True) -> asyncio.Future | None:
        """Queue a PUBLISH without waiting. For QoS 1/2, returns a future for the final ack (unless
        track=False: then wait for all with wait_acked())."""
        if isinstance(payload, str):
            payload = payload.encode()
        packet = self.session.publish(topic, payload, qos, retain, properties, time.monotonic(), use_alias)
        fut = None
        if qos:
            if track:
                fut = asyncio.get_running_loop().create_future()
                self._acks[packet.packet_id] = fut
            if self.session.pending:
                # The window is full: what it let out goes now, not after the caller's loop of publishes
                # (until the loop yields, the broker would sit idle with nothing to acknowledge).
                if self._stream is not None:
                    self._stream.flush()
                return fut
        self._flush()
        return fut

    async def wait_acked(self, timeout: float | None = None) -> None:
        """Wait until no QoS 1/2 PUBLISH of ours is in flight or waiting for the window."""
        timeout = self.timeout if timeout is None else timeout
        if self._idle is None:
            self._idle = asyncio.Event()
        while self.session.outgoing:
            self._require_connection()
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except asyncio.TimeoutError:
                raise Timeout(f"{self.name}: {len(self.session.outgoing)} QoS 1/2 publish(es) still unacknowledged "
                              f"after {timeout:g}s") from None

    async def publish(self, topic: str, payload: bytes | str = b"", qos: int = 0, retain: bool = False,
                      properties: dict | None = None, use_alias: bool = False, timeout: float | None = None):
        """Publish; for QoS 1/2 wait for PUBACK / PUBCOMP (or a failing PUBREC) and return it."""
        self._require_connection()
        fut = self.publish_nowait(topic, payload, qos, retain, properties, use_alias)
        if fut is None:
            await self.drain(timeout)
            return None
        return await self._wait(fut, timeout, f"acknowledgement of QoS {qos} PUBLISH to {topic!r}")

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until the transport accepted our buffered bytes (flow control)."""
        if self._stream is not None:
            try:
                await asyncio.wait_for(self._stream.drain(), self.timeout if timeout is None else timeout)
            except asyncio.TimeoutError:
                raise Timeout(f"{self.name}: socket did not drain") from None

    async def receive(self, timeout: float | None = None) -> Publish:
        """The next PUBLISH the broker sent us (every copy, duplicates included)."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while not self._messages:
            if self._closed is not None and self._closed.is_set():
                raise ConnectionClosed(f"{self.name}: {self._close_reason} (while waiting for a message)")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Timeout(f"{self.name}: no PUBLISH received within {timeout:g}s")
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                pass
        return self._messages.popleft()

    def pending_messages(self) -> list[Publish]:
        """Messages received but not yet taken with receive()."""
        return list(self._messages)

    async def wait_for(self, kind: type, match: Callable[[object], bool] | None = None,
                       timeout: float | None = None):
        """Wait for the next received packet of `kind` (and `match`), other than PUBLISH."""
        self._require_connection()
        fut = self._expect(lambda p: isinstance(p, kind) and (match is None or match(p)))
        return await self._wait(fut, timeout, kind.__name__.upper())

    async def ping(self, timeout: float | None = None) -> Pingresp:
        """PINGREQ/PINGRESP round trip. Also a barrier: everything the broker sent before its
        PINGRESP has been received when this returns."""
        self._require_connection()
        fut = self._expect(lambda p: isinstance(p, Pingresp))
        self.session.ping(time.monotonic())
        self._flush()
        return await self._wait(fut, timeout, "PINGRESP")

    async def send(self, packet) -> None:
        """Send any packet exactly as given (no session bookkeeping)."""
        self._require_connection()
        self.session.send_packet(packet, time.monotonic())
        self._flush()

    async def send_raw(self, data: bytes) -> None:
        """Send arbitrary bytes (malformed packets, partial packets)."""
        self._require_connection()
        self.session.send_raw(bytes(data), time.monotonic())
        self._flush()

    def ack(self, message: Publish, *, reason_code: int = 0, properties: dict | None = None) -> None:
        """In manual-ack mode: send the PUBACK or PUBREC for a received message (v5: with a reason code and
        properties, e.g. {"reason_string": ...})."""
        self.session.ack(message, time.monotonic(), reason_code=reason_code, properties=properties)
        self._flush()

    def release(self, packet_id: int) -> None:
        """In manual-ack mode: send PUBREL for our QoS 2 PUBLISH."""
        self.session.release(packet_id, time.monotonic())
        self._flush()

    def complete(self, packet_id: int) -> None:
        """In manual-ack mode: send PUBCOMP for a received PUBREL."""
        self.session.complete(packet_id, time.monotonic())
        self._flush()

    def go_silent(self) -> None:
        """Stop sending PINGREQs (the connection stays open): for keepalive tests."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def wait_closed(self, timeout: float | None = None) -> str:
        """Wait until the connection is closed (by the broker, usually). Returns the reason."""
        timeout = self.timeout if timeout is None else timeout
        if self._closed is None:
            return self._close_reason or "never opened"
        if self._closed.is_set():  # asyncio.wait_for(..., 0) would time out even on a set event
            return self._close_reason
        try:
            await asyncio.wait_for(self._closed.wait(), timeout)
        except asyncio.TimeoutError:
            raise Timeout(f"{self.name}: connection still open after {timeout:g}s") from None
        return self._close_reason

    @property
    def is_closed(self) -> bool:
        return self._closed is None or self._closed.is_set()

    async def disconnect(self, reason_code: int = 0, properties: dict | None = None,
                         timeout: float | None = None) -> None:
        """Normal DISCONNECT, then close the transport."""
        if self._stream is not None and not self._closed.is_set():
            self.session.disconnect(reason_code, properties, time.monotonic())
            self._flush()
            try:
                await self.drain(timeout)
            except (Timeout, ConnectionError, ConnectionClosed):
                pass  # the broker may close first; the DISCONNECT is in the log either way
        await self._teardown()
        if self._closed is not None and not self._closed.is_set():
            self._on_closed("client sent DISCONNECT")

    def abort(self) -> None:
        """Drop the connection at once without DISCONNECT (an abnormal close: the will fires)."""
        if self._stream is not None:
            self._stream.abort()

    async def close(self) -> None:
        """Release everything without sending DISCONNECT (after abort, or in cleanup)."""
        self.abort()
        await self._teardown()

    async def __aenter__(self) -> "Client":
        if self._stream is None:
            await self.open()
        return self

    async def __aexit__(self, *exc) -> None:
        if self._stream is not None and not self.is_closed:
            await self.disconnect()
        else:
            await self._teardown()

    def format_log(self) -> str:
        return self.log.format()


_RC_311 = {1: "unacceptable protocol version", 2: "identifier rejected", 3: "server unavailable",
           4: "bad user name or password", 5: "not authorized"}

__all__ = ["Client", "unique_client_id", "Will", "Subscription", "TlsOptions", "summary", "encode"]
