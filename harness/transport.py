"""Byte streams to a broker over TCP, TLS and WebSocket (plain or TLS), behind one Stream API.

open_stream() resolves the host, connects, does the TLS handshake and the WebSocket upgrade. A failure
raises the error of the layer that failed (DnsError, TcpError, TlsError, WebSocketError), and the
message says what to change.

Writes are buffered and sent once per event-loop iteration (or on drain()). A burst of small MQTT
packets then costs one send(), one TLS record or one WebSocket frame instead of one per packet, and
waits no longer than the current iteration.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import errno
import ipaddress
import os
import socket
import ssl
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import ProtocolError as WsProtocolError

from harness.errors import (
    ConnectError,
    ConnectionClosed,
    DnsError,
    ProtocolError,
    TcpError,
    Timeout,
    TlsError,
    UrlError,
    WebSocketError,
)
from harness.url import BrokerUrl

Resolver = Callable[[str, int], Awaitable[list[tuple[int, tuple]]]]
"""``async resolve(host, port) -> [(family, sockaddr), ...]``; raise OSError (e.g. socket.gaierror) on failure."""

WS_SUBPROTOCOL = "mqtt"
_READ_HIGH_WATER = 1 << 20  # stop reading the socket while this many received bytes wait for read()
_RAW_READ = 1 << 18
_CLIENT_CERT_HINT = "if the listener requires a client certificate, pass --cert FILE --key FILE (cert=/key= from Python)"


class TlsConnectionClosed(TlsError, ConnectionClosed):
    """The connection failed after the TLS handshake for a TLS reason: an alert, or a reset before any data
    while we sent no client certificate (TLS 1.3 servers check it only after our side of the handshake).

    Both a ConnectionClosed (read loops catch it) and a TlsError (the message names the TLS cause).
    """


@dataclass(frozen=True)
class TlsOptions:
    """TLS settings. The defaults verify the broker against the system CA store."""

    ca: str | None = None  # PEM file or directory of the CAs to trust; None = system store
    cert: str | None = None  # client certificate (PEM) for mutual TLS; may also hold the key
    key: str | None = None  # client private key (PEM, unencrypted)
    server_hostname: str | None = None  # name sent as SNI and checked against the certificate; default: URL host
    alpn: Sequence[str] | None = None
    insecure_skip_hostname_check: bool = False  # verify the chain but accept any name
    insecure_no_verify: bool = False  # accept any certificate at all


def make_ssl_context(opts: TlsOptions) -> ssl.SSLContext:
    """Build a client SSLContext. Unreadable or mismatched files raise TlsError naming the file and the fix."""
    if opts.ca is None:
        ctx = ssl.create_default_context()
    else:
        if not os.path.exists(opts.ca):
            raise TlsError(
                f"CA file {opts.ca} not found; pass the PEM file of the CA that signed the broker certificate"
            )
        where = {"capath": opts.ca} if os.path.isdir(opts.ca) else {"cafile": opts.ca}
        try:
            ctx = ssl.create_default_context(**where)
        except ssl.SSLError as e:
            raise TlsError(
                f"cannot load CA certificates from {opts.ca}: {_ssl_reason(e)}; it must hold PEM certificates"
            ) from None
    if opts.insecure_no_verify or opts.insecure_skip_hostname_check:
        ctx.check_hostname = False
    if opts.insecure_no_verify:
        ctx.verify_mode = ssl.CERT_NONE
    if opts.key is not None and opts.cert is None:
        raise TlsError(f"client key {opts.key} given without a certificate; pass --cert FILE as well (cert= from Python)")
    if opts.cert is not None:
        for path, what in ((opts.cert, "client certificate"), (opts.key, "client key")):
            if path is not None and not os.path.isfile(path):
                raise TlsError(f"{what} file {path} not found; check the path")
        _load_client_cert(ctx, opts.cert, opts.key)
    if opts.alpn:
        ctx.set_alpn_protocols(list(opts.alpn))
    return ctx


class _EncryptedKey(Exception):
    pass


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal and hang a test run.
    raise _EncryptedKey


def _load_client_cert(ctx: ssl.SSLContext, cert: str, key: str | None) -> None:
    files = f"{cert} / {key}" if key else cert
    try:
        ctx.load_cert_chain(cert, key, password=_no_passphrase)
    except _EncryptedKey:
        raise TlsError(
            f"client key {key or cert} is encrypted; the harness takes no passphrase, so decrypt it "
            "(openssl pkey -in KEY -out KEY.plain)"
        ) from None
    except ssl.SSLError as e:
        if e.reason == "KEY_VALUES_MISMATCH":
            raise TlsError(
                f"client key {key or cert} does not match certificate {cert}; pass the key made with this certificate"
            ) from None
        raise TlsError(
            f"cannot load client certificate {files}: {_ssl_reason(e)}; both must be PEM "
            "(certificate first) and the key unencrypted"
        ) from None


_FLUSH_AT = 64 * 1024  # bytes buffered by write() before they go out without waiting for the loop
_GATHER_MIN = 1024  # mean piece size from which a flush sends the pieces as they are (sendmsg) instead of joining
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


class _ByteQueue:
    """Received bytes not yet read, kept as the chunks they came in; joined only when a read spans several."""

    __slots__ = ("_chunks", "size")

    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()
        self.size = 0

    def append(self, data: bytes) -> None:
        self._chunks.append(data)
        self.size += len(data)

    def take(self, limit: int) -> bytes:
        chunks = self._chunks
        if self.size <= limit:
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
            self.size = 0
            return data
        parts = []
        need = limit
        while need:
            chunk = chunks[0]
            if len(chunk) <= need:
                parts.append(chunks.popleft())
                need -= len(chunk)
            else:
                parts.append(chunk[:need])
                chunks[0] = chunk[need:]
                need = 0
        self.size -= limit
        return b"".join(parts)


class _SocketProtocol(asyncio.Protocol):
    """asyncio callbacks -> state the stream reads. Wakes at most one reader and one drainer."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = _ByteQueue()
        self.bytes_received = 0
        self.eof = False
        self.lost = False
        self.error: BaseException | None = None
        self.reading_paused = False
        self.writing_paused = False
        self.read_waiter: asyncio.Future | None = None
        self.drain_waiter: asyncio.Future | None = None
        self.closed = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received.append(data)
        self.bytes_received += len(data)
        _wake(self.read_waiter)
        if self.received.size > _READ_HIGH_WATER and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    def take(self, limit: int) -> bytes:
        data = self.received.take(limit)
        if self.reading_paused and self.received.size <= _READ_HIGH_WATER // 2:
            self.reading_paused = False
            self.transport.resume_reading()
        return data

    def eof_received(self) -> None:
        self.eof = True  # returning None lets asyncio close our side too: MQTT has no half-close
        _wake(self.read_waiter)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        self.error = exc
        _wake(self.read_waiter)
        _wake(self.drain_waiter)
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        _wake(self.drain_waiter)


def _wake(waiter: asyncio.Future | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


async def _wait(waiter: asyncio.Future, timeout: float | None, what: str) -> None:
    if timeout is None:
        await waiter
        return
    try:
        async with asyncio.timeout(timeout):
            await waiter
    except TimeoutError:
        raise Timeout(f"{what} timed out after {timeout:g}s") from None


class Stream(abc.ABC):
    """A connected byte stream to a broker: MQTT bytes in, MQTT bytes out.

    One task reads and one task writes at a time.
    """

    @abc.abstractmethod
    async def read(self, max_bytes: int = 65536, *, timeout: float | None = None) -> bytes:
        """Wait for data and return 1..max_bytes bytes, or b"" once the peer has closed the stream.

        Raises ConnectionClosed if the connection was reset or failed, Timeout if `timeout` passes first.
        """

    @abc.abstractmethod
    def write(self, data: bytes) -> None:
        """Queue bytes without blocking. They go out at the end of this event-loop iteration or on drain()."""

    def writelines(self, pieces: list[bytes]) -> None:
        """write() of the pieces joined; a stream may send them without joining (no copy of large ones)."""
        self.write(b"".join(pieces))

    def flush(self) -> None:
        """Send what write() queued now instead of at the end of this event-loop iteration."""

    @abc.abstractmethod
    async def drain(self, *, timeout: float | None = None) -> None:
        """Send queued bytes; wait while the socket's send buffer is full. Raises ConnectionClosed once closed."""

    @abc.abstractmethod
    async def close(self, *, timeout: float | None = None) -> None:
        """Close gracefully: send what is queued, then close (TLS close_notify, WebSocket close frame).

        Falls back to abort() if the peer does not finish within `timeout` (default: the open timeout).
        """

    @abc.abstractmethod
    def abort(self) -> None:
        """Drop the connection now, discarding queued bytes; TCP sends a RST (SO_LINGER 0)."""

    @property
    @abc.abstractmethod
    def local_address(self) -> tuple: ...

    @property
    @abc.abstractmethod
    def peer_address(self) -> tuple: ...

    @property
    @abc.abstractmethod
    def is_tls(self) -> bool: ...

    @property
    @abc.abstractmethod
    def ssl_object(self) -> ssl.SSLObject | None:
        """The TLS session (cipher, version, ALPN, peer certificate); None without TLS."""

    @property
    @abc.abstractmethod
    def close_reason(self) -> str | None:
        """Why the stream ended, with a hint where one helps; None while it is open. For error messages."""


class SocketStream(Stream):
    """MQTT over TCP or TLS."""

    def __init__(self, protocol: _SocketProtocol, url: BrokerUrl, timeout: float, client_cert: bool) -> None:
        self._protocol = protocol
        self._transport = protocol.transport
        self._loop = asyncio.get_running_loop()
        self._url = url
        self._timeout = timeout
        self._client_cert = client_cert
        self._closed_locally = False
        self._out: list[bytes] = []
        self._out_size = 0
        self._local = self._transport.get_extra_info("sockname")
        self._peer = self._transport.get_extra_info("peername")
        self._ssl = self._transport.get_extra_info("ssl_object")
        # Plain TCP only: the socket itself, for scatter/gather sends while asyncio's buffer is empty.
        self._sock: socket.socket | None = None

    async def read(self, max_bytes: int = 65536, *, timeout: float | None = None) -> bytes:
        p = self._protocol
        if not p.received.size and not (p.eof or p.lost):
            if p.read_waiter is not None:
                raise RuntimeError("read() called while another read() is waiting")
            p.read_waiter = self._loop.create_future()
            try:
                await _wait(p.read_waiter, timeout, f"read from {self._url.address}")
            finally:
                p.read_waiter = None
        if p.received.size:
            return p.take(max_bytes)
        if p.error is not None:
            raise self._lost_error()
        return b""

    def write(self, data: bytes) -> None:
        if type(data) is not bytes:
            data = bytes(data)
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(data)
        self._out_size += len(data)
        if self._out_size >= _FLUSH_AT:  # a long burst without yielding: don't hold it all back
            self._flush()

    def writelines(self, pieces: list[bytes]) -> None:
        if not self._out:
            self._loop.call_soon(self._flush)
        out = self._out
        for data in pieces:
            if type(data) is not bytes:
                data = bytes(data)
            out.append(data)
            self._out_size += len(data)
        if self._out_size >= _FLUSH_AT:
            self._flush()

    def flush(self) -> None:
        if self._out:
            self._flush()

    def _flush(self) -> None:
        out = self._out
        if out and not self._transport.is_closing():
            if (self._sock is not None and self._out_size >= _GATHER_MIN * len(out) and len(out) > 1
                    and not self._transport.get_write_buffer_size()):
                self._gather(out)
            else:
                self._send(out[0] if len(out) == 1 else b"".join(out))
        out.clear()
        self._out_size = 0

    def _gather(self, out: list[bytes]) -> None:
        """sendmsg() the pieces straight from where they are; what the kernel does not take now goes to
        asyncio's buffer, which then sends it (and everything after it: the next flush sees it non-empty)."""
        sock = self._sock
        i = sent = 0
        try:
            while i < len(out):
                batch = out[i:i + _IOV_MAX]
                sent = sock.sendmsg(batch)
                if sent < sum(map(len, batch)):
                    break
                i += len(batch)
                sent = 0
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sent = 0  # asyncio's write below meets the same error and closes the transport as usual
        while i < len(out) and sent >= len(out[i]):
            sent -= len(out[i])
            i += 1
        if i >= len(out):
            return
        rest = out[i:]
        if sent:
            rest[0] = memoryview(rest[0])[sent:]
        self._transport.write(b"".join(rest))

    def _send(self, data: bytes) -> None:
        self._transport.write(data)

    async def drain(self, *, timeout: float | None = None) -> None:
        self._flush()
        p = self._protocol
        if p.writing_paused and not p.lost:
            p.drain_waiter = self._loop.create_future()
            try:
                await _wait(p.drain_waiter, timeout, f"sending to {self._url.address}")
            finally:
                p.drain_waiter = None
        if p.lost or self._transport.is_closing():
            raise self._lost_error()

    async def close(self, *, timeout: float | None = None) -> None:
        if self._protocol.lost:
            return
        self._flush()
        self._closed_locally = True
        self._transport.close()
        done, _ = await asyncio.wait([self._protocol.closed], timeout=self._timeout if timeout is None else timeout)
        if not done:
            self.abort()

    def abort(self) -> None:
        self._out.clear()
        self._closed_locally = True
        if self._protocol.lost:
            return
        sock = self._transport.get_extra_info("socket")
        if sock is not None:
            # If the socket is already shut down this fails; abort() still closes it, just without the RST.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._transport.abort()

    @property
    def local_address(self) -> tuple:
        return self._local

    @property
    def peer_address(self) -> tuple:
        return self._peer

    @property
    def is_tls(self) -> bool:
        return self._ssl is not None

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        return self._ssl

    @property
    def socket(self) -> Any:
        """The underlying socket (asyncio's TransportSocket), for socket options."""
        return self._transport.get_extra_info("socket")

    @property
    def close_reason(self) -> str | None:
        p = self._protocol
        if not (p.eof or p.lost):
            return None
        if p.error is not None:
            return str(self._lost_error())
        if self._closed_locally and not p.eof:
            return "closed by us"
        return f"{self._url.address} closed the connection" + self._silent_tls_hint()

    def _silent_tls_hint(self) -> str:
        # A TLS 1.3 server checks the client certificate after our handshake has finished; a broker that
        # then hangs up without an alert looks like an ordinary close.
        if self.is_tls and not self._protocol.bytes_received and not self._client_cert:
            return f" right after the TLS handshake, before sending anything; {_CLIENT_CERT_HINT}"
        return ""

    def _lost_error(self) -> ConnectionClosed:
        exc = self._protocol.error
        if isinstance(exc, ssl.SSLError):
            return TlsConnectionClosed(_tls_failure(exc, self._client_cert), self._url.display())
        if exc is None:
            return ConnectionClosed(f"connection to {self._url.address} is closed")
        text = f"connection to {self._url.address} lost: {_os_reason(exc)}"
        if hint := self._silent_tls_hint():
            # Seen with mosquitto: its certificate_required alert is lost when it resets the connection.
            return TlsConnectionClosed(text + hint, self._url.display())
        return ConnectionClosed(text)


class WebSocketStream(SocketStream):
    """MQTT over WebSocket: each flush of write() is one binary frame; read() returns frame payloads in order.

    Pings are answered and close frames returned while read() runs, which the MQTT client always has pending.
    """

    def __init__(self, protocol: _SocketProtocol, url: BrokerUrl, timeout: float, client_cert: bool) -> None:
        super().__init__(protocol, url, timeout, client_cert)
        self._ws = WSConnection(ConnectionType.CLIENT)
        self._payload = _ByteQueue()
        self._ws_close: CloseConnection | None = None  # the close frame received (code 1006: none, TCP closed)
        self.subprotocol: str | None = None

    async def _upgrade(self, headers: Sequence[tuple[str, str]]) -> None:
        url = self._url
        request = Request(
            host=url.address,
            target=url.path,
            subprotocols=[WS_SUBPROTOCOL],
            extra_headers=[(k.encode(), v.encode()) for k, v in headers],
        )
        self._transport.write(self._ws.send(request))
        while True:
            try:
                data = await SocketStream.read(self, _RAW_READ)
            except ConnectionClosed as e:
                data, reset = b"", f" ({e})"
            else:
                reset = ""
            if not data:
                raise WebSocketError(
                    f"{url.address} closed the connection during the WebSocket upgrade of {url.path}{reset}; "
                    "check that this port is a WebSocket listener and the path is right",
                    url.display(),
                )
            try:
                self._ws.receive_data(data)
                for event in self._ws.events():
                    if isinstance(event, AcceptConnection):
                        self._accepted(event)
                        self._handle_events()  # frames that came with the 101 response
                        return
                    if isinstance(event, RejectConnection):
                        raise self._rejected(event)
            except WsProtocolError as e:
                raise WebSocketError(
                    f"bad answer from {url.address} to the WebSocket upgrade: {e}; "
                    "check that this port is a WebSocket listener, not plain MQTT or TLS",
                    url.display(),
                ) from None

    def _accepted(self, event: AcceptConnection) -> None:
        if event.subprotocol != WS_SUBPROTOCOL:
            raise WebSocketError(
                f"{self._url.address} accepted the WebSocket upgrade without selecting the {WS_SUBPROTOCOL!r} "
                f"subprotocol (Sec-WebSocket-Protocol: {event.subprotocol or 'missing'}); "
                "MQTT over WebSocket requires it [MQTT-6.0.0-4]; enable MQTT on this WebSocket listener",
                self._url.display(),
            )
        self.subprotocol = event.subprotocol

    def _rejected(self, event: RejectConnection) -> WebSocketError:
        body = b"".join(e.data for e in self._ws.events() if isinstance(e, RejectData))
        text = body[:200].decode("utf-8", "replace").strip()
        hint = {
            400: f"the broker may not accept the {WS_SUBPROTOCOL!r} subprotocol or this WebSocket version",
            401: "the listener wants HTTP authentication; pass it in ws_headers",
            403: "the listener refuses this client; check its access rules and headers",
            404: f"no WebSocket endpoint at {self._url.path}; check the path in the URL",
            426: "the listener wants a different WebSocket version",
        }.get(event.status_code, "check the URL path and that this port is a WebSocket listener")
        return WebSocketError(
            f"{self._url.address} refused the WebSocket upgrade of {self._url.path} with HTTP {event.status_code}"
            + (f" ({text!r})" if text else "")
            + f"; {hint}",
            self._url.display(),
        )

    async def read(self, max_bytes: int = 65536, *, timeout: float | None = None) -> bytes:
        if not self._payload.size and self._ws_close is None:
            if timeout is None:
                await self._receive_frames()
            else:
                try:
                    async with asyncio.timeout(timeout):
                        await self._receive_frames()
                except TimeoutError:
                    raise Timeout(f"read from {self._url.address} timed out after {timeout:g}s") from None
        if self._payload.size:
            return self._payload.take(max_bytes)
        return b""

    async def _receive_frames(self) -> None:
        while not self._payload.size and self._ws_close is None:
            data = await SocketStream.read(self, _RAW_READ)
            self._ws.receive_data(data or None)  # None: TCP closed without a close frame
            self._handle_events()

    def _handle_events(self) -> None:
        for event in self._ws.events():
            if isinstance(event, BytesMessage):
                self._payload.append(bytes(event.data))
            elif isinstance(event, Ping):
                self._transport.write(self._ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self._ws_close = event
                if self._ws.state is ConnectionState.REMOTE_CLOSING:
                    self._transport.write(self._ws.send(event.response()))
            elif isinstance(event, TextMessage):
                self.abort()
                raise ProtocolError(
                    f"{self._url.address} sent a WebSocket text frame; MQTT data must travel in binary frames",
                    statement="MQTT-6.0.0-1",
                    data=event.data.encode()[:64],
                )

    def _send(self, data: bytes) -> None:
        if self._ws.state is ConnectionState.OPEN:
            self._transport.write(self._ws.send(Message(data=data)))

    async def close(self, *, timeout: float | None = None) -> None:
        if self._protocol.lost:
            return
        timeout = self._timeout if timeout is None else timeout
        self._flush()
        self._closed_locally = True
        if self._ws.state is ConnectionState.OPEN:
            self._transport.write(self._ws.send(CloseConnection(code=1000)))
            try:
                async with asyncio.timeout(timeout):
                    while self._ws.state is not ConnectionState.CLOSED:
                        self._payload = _ByteQueue()  # nobody reads data that arrives while closing
                        await self._receive_frames()
            except (TimeoutError, ConnectionClosed, ProtocolError):
                pass  # the TCP close below still runs (or aborts)
        await super().close(timeout=timeout)

    @property
    def close_reason(self) -> str | None:
        if self._ws_close is None or self._closed_locally:
            return super().close_reason
        code, reason = int(self._ws_close.code), self._ws_close.reason
        if code == 1006:
            return f"{self._url.address} closed the TCP connection without a WebSocket close frame"
        return f"{self._url.address} closed the WebSocket (code {code}" + (f" {reason!r})" if reason else ")")


async def open_stream(
    url: BrokerUrl,
    *,
    tls: TlsOptions | None = None,
    timeout: float = 10.0,
    resolve: Resolver | None = None,
    ws_headers: Sequence[tuple[str, str]] = (),
) -> Stream:
    """Connect to `url` and return a Stream carrying raw MQTT bytes.

    `tls` applies to mqtts:// and wss:// (default: verify against the system CA store). `timeout` bounds
    the whole open: name resolution, TCP connect, TLS handshake and WebSocket upgrade. `resolve` replaces
    DNS (tests must pass a stub); it is not called for IP literals. `ws_headers` are extra HTTP headers
    for the WebSocket upgrade.
    """
    if tls is not None and not url.tls:
        raise UrlError(f"TLS options given for a {url.scheme}:// URL; use mqtts:// or wss://, or drop the TLS options")
    if ws_headers and not url.ws:
        raise UrlError(f"WebSocket headers given for a {url.scheme}:// URL; use ws:// or wss://, or drop the headers")
    ctx = make_ssl_context(tls or TlsOptions()) if url.tls else None
    shown = url.display()
    loop = asyncio.get_running_loop()
    # What runs now, so that a timeout names the layer it hit.
    step: tuple[type[Exception], str, str] = (DnsError, f"resolving {url.host!r}", "check DNS, or use an IP address")
    stream: SocketStream | None = None
    try:
        async with asyncio.timeout(timeout):
            addresses = await _resolve(url, resolve or _system_resolve)
            step = (TcpError, f"connecting to {url.address}", "the host may be down, or a firewall drops packets")
            sock = await _connect(url, addresses)
            protocol = _SocketProtocol(loop)
            if ctx is not None:
                step = (TlsError, f"TLS handshake with {url.address}", "check that this port speaks TLS")
            try:
                await loop.create_connection(
                    lambda: protocol,
                    sock=sock,
                    ssl=ctx,
                    server_hostname=((tls and tls.server_hostname) or url.host) if ctx else None,
                    # asyncio's own limits stay above ours, so our timeout is the one that fires.
                    ssl_handshake_timeout=timeout + 1 if ctx else None,
                    ssl_shutdown_timeout=timeout + 1 if ctx else None,
                )
            except OSError as e:  # ssl.SSLError included
                raise _handshake_error(e, url, tls) from None
            client_cert = bool(tls and tls.cert)
            if not url.ws:
                plain = SocketStream(protocol, url, timeout, client_cert)
                if ctx is None and hasattr(sock, "sendmsg"):
                    plain._sock = sock
                return plain
            stream = WebSocketStream(protocol, url, timeout, client_cert)
            step = (
                WebSocketError,
                f"WebSocket upgrade of {url.address}{url.path}",
                "check that this is a WebSocket port",
            )
            await stream._upgrade(ws_headers)
            return stream
    except TimeoutError:
        if stream is not None:
            stream.abort()
        error, what, hint = step
        raise error(f"{what} timed out after {timeout:g}s; {hint}", shown) from None
    except BaseException:
        if stream is not None:
            stream.abort()
        raise


async def _system_resolve(host: str, port: int) -> list[tuple[int, tuple]]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [(family, sockaddr) for family, _type, _proto, _name, sockaddr in infos]


async def _resolve(url: BrokerUrl, resolve: Resolver) -> list[tuple[int, tuple]]:
    try:
        ip = ipaddress.ip_address(url.host)
    except ValueError:
        pass
    else:
        return [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, (url.host, url.port))]
    try:
        addresses = await resolve(url.host, url.port)
    except OSError as e:
        raise DnsError(
            f"cannot resolve {url.host!r}: {_os_reason(e)}; check the host name, or use an IP address", url.display()
        ) from None
    if not addresses:
        raise DnsError(
            f"{url.host!r} resolved to no addresses; check the host name, or use an IP address", url.display()
        )
    return list(addresses)


async def _connect(url: BrokerUrl, addresses: list[tuple[int, tuple]]) -> socket.socket:
    """Connect to each address in turn; return the first connected socket (TCP_NODELAY set)."""
    loop = asyncio.get_running_loop()
    failures: list[tuple[str, OSError]] = []
    for family, sockaddr in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            # MQTT sends small packets and waits for answers: Nagle plus delayed ACK would add ~40 ms stalls.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, sockaddr)
            return sock
        except OSError as e:
            sock.close()
            failures.append((sockaddr[0], e))
        except BaseException:
            sock.close()
            raise
    if all(isinstance(e, ConnectionRefusedError) for _, e in failures):
        hint = "is the broker running and listening on that port?"
    else:
        hint = "check the host, the port and the network"
    if len(failures) == 1 and failures[0][0] == url.host:
        why = _os_reason(failures[0][1])
    else:
        why = ", ".join(f"{ip}: {_os_reason(e)}" for ip, e in failures)
    raise TcpError(f"cannot connect to {url.address}: {why}; {hint}", url.display())


def _handshake_error(exc: BaseException, url: BrokerUrl, tls: TlsOptions | None) -> ConnectError:
    shown = url.display()
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TlsError(_verify_failure(exc, tls or TlsOptions()), shown)
    if isinstance(exc, ssl.SSLError):
        return TlsError(_tls_failure(exc, bool(tls and tls.cert), tls), shown)
    if url.tls:
        return TlsError(
            f"connection closed during the TLS handshake ({_os_reason(exc)}); {_CLIENT_CERT_HINT}; "
            "also check that this port speaks TLS",
            shown,
        )
    return TcpError(f"connection to {url.address} failed: {_os_reason(exc)}", shown)


# OpenSSL verify codes (X509_V_ERR_*) that have a clear fix.
_VERIFY_HINTS = {
    9: "the certificate is not valid yet; check this machine's clock",
    10: "renew the broker certificate, or check this machine's clock",
    18: "the broker uses a self-signed certificate; trust it with --ca FILE (ca= from Python)",
    19: "pass the CA that signed the broker certificate with --ca FILE (ca= from Python)",
    20: "pass the CA that signed the broker certificate with --ca FILE (ca= from Python)",
    21: "pass the CA that signed the broker certificate with --ca FILE (ca= from Python)",
}


def _verify_failure(exc: ssl.SSLCertVerificationError, tls: TlsOptions) -> str:
    message = (exc.verify_message or _ssl_reason(exc)).rstrip(".")
    if exc.verify_code in (62, 64):  # hostname / IP address mismatch; the message names what we checked
        hint = ("connect using a name the certificate lists, name it with --sni NAME, or skip the name check with "
                "--insecure (server_hostname= / insecure_skip_hostname_check= from Python)")
    else:
        hint = _VERIFY_HINTS.get(exc.verify_code, "check the broker certificate chain")
        if exc.verify_code in (19, 20, 21) and tls.ca:
            hint = f"the CA in {tls.ca} did not sign the broker certificate; pass the right CA with --ca FILE (ca= from Python)"
    return f"certificate verification failed: {message}; {hint}"


# TLS alerts a server sends about the client certificate.
_CLIENT_CERT_ALERTS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    "SSLV3_ALERT_BAD_CERTIFICATE",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED",
    "SSLV3_ALERT_CERTIFICATE_REVOKED",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
    "TLSV1_ALERT_UNKNOWN_CA",
    "TLSV1_ALERT_ACCESS_DENIED",
}


def _tls_failure(exc: ssl.SSLError, client_cert: bool, tls: TlsOptions | None = None) -> str:
    """Describe a TLS failure (in or after the handshake) and what to change."""
    reason = exc.reason or ""
    said = _ssl_reason(exc)
    if reason in _CLIENT_CERT_ALERTS:
        if client_cert:
            return (
                f"server rejected the client certificate ({said}); check that the listener trusts its CA "
                "and that it has not expired"
            )
        return f"server rejected the connection: it requires a client certificate ({said}); pass --cert FILE --key FILE (cert=/key= from Python)"
    if reason == "SSLV3_ALERT_HANDSHAKE_FAILURE":
        return (
            f"server aborted the TLS handshake ({said}); {_CLIENT_CERT_HINT}; "
            "otherwise the TLS versions or cipher suites do not match"
        )
    if reason == "TLSV1_ALERT_NO_APPLICATION_PROTOCOL":
        offered = list(tls.alpn) if tls and tls.alpn else []
        return f"server accepts none of the ALPN protocols we offered {offered} ({said})"
    if reason in ("WRONG_VERSION_NUMBER", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE"):
        return f"the server did not answer in TLS ({said}); is this a plain port? use mqtt:// or ws:// for it"
    if reason in ("TLSV1_ALERT_PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL", "NO_PROTOCOLS_AVAILABLE"):
        return f"no TLS version in common with the server ({said})"
    if reason == "UNEXPECTED_EOF_WHILE_READING":
        return f"connection closed during the TLS handshake; {_CLIENT_CERT_HINT}; also check that this port speaks TLS"
    return f"TLS failed: {said}"


def _ssl_reason(exc: ssl.SSLError) -> str:
    # "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required (_ssl.c:2580)" -> the words.
    text = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], str) else str(exc)
    if text.startswith("[") and "] " in text:
        text = text.split("] ", 1)[1]
    return text.rsplit(" (_ssl.c:", 1)[0]


_ERRNO_OF = {
    ConnectionResetError: errno.ECONNRESET,
    ConnectionAbortedError: errno.ECONNABORTED,
    ConnectionRefusedError: errno.ECONNREFUSED,
    BrokenPipeError: errno.EPIPE,
}


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror) and exc.strerror:
        text = exc.strerror
    elif isinstance(exc, OSError) and (exc.errno or type(exc) in _ERRNO_OF):
        # asyncio's own texts ("Connect call failed ...", or none at all) hide the cause.
        text = os.strerror(exc.errno or _ERRNO_OF[type(exc)])
    else:
        text = str(exc) or type(exc).__name__
    return text[0].lower() + text[1:]
