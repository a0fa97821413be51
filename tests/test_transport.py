"""harness.url and harness.transport against real sockets, real TLS and a wsproto WebSocket server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import re
import socket
import ssl
import struct
from types import SimpleNamespace

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from harness.errors import (
    ConnectionClosed,
    DnsError,
    ProtocolError,
    TcpError,
    Timeout,
    TlsError,
    UrlError,
    WebSocketError,
)
from harness.transport import Stream, TlsOptions, make_ssl_context, open_stream
from harness.url import BrokerUrl, parse_url

pytestmark = pytest.mark.timeout(30)

SHORT = 0.3  # for tests that wait on purpose for a timeout to fire


def async_test(fn):
    """Run an async test in a fresh event loop, bounded."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        return asyncio.run(asyncio.wait_for(fn(*args, **kwargs), 20))

    return run


# ---------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    "text, scheme, port, path",
    [
        ("mqtt://localhost", "mqtt", 1883, ""),
        ("mqtts://localhost", "mqtts", 8883, ""),
        ("ws://localhost", "ws", 80, "/mqtt"),
        ("wss://localhost", "wss", 443, "/mqtt"),
        ("MQTT://localhost:1884/", "mqtt", 1884, ""),
        ("ws://localhost:9001/", "ws", 9001, "/"),
        ("wss://localhost/ws?token=1", "wss", 443, "/ws?token=1"),
    ],
)
def test_parse_defaults(text, scheme, port, path):
    url = parse_url(text)
    assert (url.scheme, url.host, url.port, url.path) == (scheme, "localhost", port, path)
    assert url.tls == (scheme in ("mqtts", "wss"))
    assert url.ws == (scheme in ("ws", "wss"))


def test_parse_credentials_ipv6_and_display():
    url = parse_url("mqtts://us%3Aer:p%40ss%2Fw@[::1]:8884")
    assert (url.host, url.port, url.username, url.password) == ("::1", 8884, "us:er", "p@ss/w")
    assert url.address == "[::1]:8884"
    assert url.display() == "mqtts://us%3Aer:***@[::1]:8884"
    assert "p@ss" not in repr(url) and "p@ss" not in str(url)
    assert parse_url("mqtt://Broker.Example:1883").host == "broker.example"
    assert parse_url("mqtt://user@h").password is None
    assert parse_url("mqtt://@h").username is None


@pytest.mark.parametrize(
    "text, says",
    [
        ("", "empty"),
        ("localhost:1883", "no scheme"),
        ("tcp://localhost", "use mqtt://"),
        ("ssl://localhost", "use mqtts://"),
        ("gopher://localhost", "supported: mqtt://, mqtts://, ws://, wss://"),
        ("mqtt://", "no host"),
        ("mqtt://:1883", "no host"),
        ("mqtt://u:pw@", "no host"),
        ("mqtt://::1:1883", "needs brackets"),
        ("mqtt://[::1", "malformed"),
        ("mqtt://host:0", "bad port '0'"),
        ("mqtt://host:65536", "bad port '65536'"),
        ("mqtt://host:http", "bad port 'http'"),
        ("mqtt://host:", "empty port"),
        ("mqtt://host/topic", "only ws:// and wss://"),
        ("mqtt://host#x", "fragment"),
        ("mqtt://bad host", "not a valid host name"),
    ],
)
def test_parse_errors(text, says):
    with pytest.raises(UrlError, match=f"^url: .*{_re(says)}"):
        parse_url(text)


def test_parse_error_hides_password():
    with pytest.raises(UrlError) as caught:
        parse_url("mqtt://user:s3cret@host:99999")
    assert "s3cret" not in str(caught.value) and "***" in str(caught.value)


def _re(text: str) -> str:
    return re.escape(text)


# ---------------------------------------------------------------- certificates


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, broker/client certificates from it, and a second CA nobody trusts; PEM files on disk."""
    folder = tmp_path_factory.mktemp("pki")
    ca, rogue = trustme.CA(), trustme.CA()
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    pki = SimpleNamespace(
        ca=ca,
        server=ca.issue_cert("broker.test", "127.0.0.1"),
        other_name=ca.issue_cert("other.test"),
        expired=ca.issue_cert("127.0.0.1", not_before=past, not_after=past + datetime.timedelta(days=1)),
        rogue_server=rogue.issue_cert("127.0.0.1"),
        ca_file=str(folder / "ca.pem"),
        rogue_ca_file=str(folder / "rogue-ca.pem"),
    )
    ca.cert_pem.write_to_path(pki.ca_file)
    rogue.cert_pem.write_to_path(pki.rogue_ca_file)
    for name, issuer in (("client", ca), ("rogue_client", rogue), ("other_client", ca)):
        leaf = issuer.issue_cert(f"{name.replace('_', '-')}.test")
        leaf.cert_chain_pems[0].write_to_path(folder / f"{name}.pem")
        leaf.private_key_pem.write_to_path(folder / f"{name}.key")
        setattr(pki, f"{name}_cert", str(folder / f"{name}.pem"))
        setattr(pki, f"{name}_key", str(folder / f"{name}.key"))
    key = serialization.load_pem_private_key((folder / "client.key").read_bytes(), None)
    pki.encrypted_key = str(folder / "encrypted.key")
    with open(pki.encrypted_key, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            )
        )
    pki.garbage = str(folder / "garbage.pem")
    with open(pki.garbage, "w") as f:
        f.write("not a certificate\n")
    return pki


def server_tls(leaf, *, client_ca=None, max_version=None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(ctx)
    if client_ca is not None:
        client_ca.configure_trust(ctx)
        ctx.verify_mode = ssl.CERT_REQUIRED
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


# ---------------------------------------------------------------- servers


@contextlib.asynccontextmanager
async def serve(handler, tls: ssl.SSLContext | None = None):
    """Serve `handler(reader, writer)` on 127.0.0.1; yields the port. Handlers still running at the end are stopped."""
    handlers: set[asyncio.Task] = set()

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())
        try:
            await handler(reader, writer)
        except asyncio.CancelledError:
            pass  # stopped below; a cancelled handler task would make asyncio log an error
        finally:
            writer.close()

    server = await asyncio.start_server(run, "127.0.0.1", 0, ssl=tls)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers)
        await server.wait_closed()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accept and say nothing until the client goes away."""
    await reader.read()
    writer.close()


def abort_with_rst(writer: asyncio.StreamWriter) -> None:
    writer.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


def tls_echo(ctx: ssl.SSLContext, *, reset: bool = False):
    """A TLS echo server on a memory BIO. Unlike asyncio's TLS server, it sends its alert when the handshake
    fails (as brokers on OpenSSL do) before closing. With `reset`, it sends a RST right after the handshake,
    as mosquitto does (TLS 1.3) when the client sent no certificate."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing, server_side=True)

        async def flush() -> None:
            if outgoing.pending:
                writer.write(outgoing.read())
                await writer.drain()

        async def receive() -> bool:
            await flush()
            data = await reader.read(65536)
            incoming.write(data)
            return bool(data)

        try:
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    if not await receive():
                        return
            if reset:
                await flush()
                await reader.readexactly(1)  # the client's first bytes are unread when we reset
                abort_with_rst(writer)
                return
            while True:
                try:
                    data = tls.read(65536)
                except ssl.SSLWantReadError:
                    if not await receive():
                        return
                    continue
                if not data:
                    return
                tls.write(data)
                await flush()
        except ssl.SSLError:
            await flush()  # the alert
            while await reader.read(65536):  # close only after the client did, so no RST overtakes the alert
                pass
        except ConnectionError:
            pass
        finally:
            writer.close()

    return handle


def ws_echo(seen: SimpleNamespace, *, require: str = "mqtt", select: str | None = "mqtt", frame: int = 7000):
    """A WebSocket server: upgrades only clients offering `require`, answers with `select`,
    pings once, and echoes each binary message back re-cut into frames of at most `frame` bytes.
    b"text please" gets a text frame back, b"close please" a close frame (1001), b"drop please" a TCP close."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        try:
            while data := await reader.read(65536):
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, Request):
                        seen.request = event
                        if require not in event.subprotocols:
                            writer.write(ws.send(RejectConnection(status_code=400, has_body=True)))
                            writer.write(ws.send(RejectData(data=b"subprotocol required")))
                        else:
                            writer.write(ws.send(AcceptConnection(subprotocol=select)))
                            writer.write(ws.send(Ping(payload=b"are you there")))
                    elif isinstance(event, Pong):
                        seen.pong = event.payload
                    elif isinstance(event, BytesMessage):
                        seen.messages += 1
                        await respond(ws, writer, bytes(event.data))
                    elif isinstance(event, CloseConnection):
                        if ws.state is ConnectionState.REMOTE_CLOSING:  # the client closed first
                            writer.write(ws.send(event.response()))
                        return
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def respond(ws: WSConnection, writer: asyncio.StreamWriter, data: bytes) -> None:
        if data == b"text please":
            writer.write(ws.send(TextMessage(data="hello")))
        elif data == b"close please":
            writer.write(ws.send(CloseConnection(code=1001, reason="going away")))
        elif data == b"drop please":
            writer.transport.close()
        else:
            for i in range(0, len(data), frame):
                writer.write(ws.send(Message(data=data[i : i + frame])))
                await writer.drain()

    seen.messages = 0
    seen.pong = None
    return handle


async def stub_resolve(host: str, port: int) -> list[tuple[int, tuple]]:
    """Stands in for DNS: only broker.test exists."""
    if host == "broker.test":
        return [(socket.AF_INET, ("127.0.0.1", port))]
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


async def no_dns(host: str, port: int) -> list[tuple[int, tuple]]:
    raise AssertionError(f"resolver called for {host}")


async def read_exactly(stream: Stream, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = await stream.read(timeout=10)
        assert chunk, f"EOF after {len(data)} of {n} bytes"
        data += chunk
    return bytes(data)


async def round_trip(stream: Stream, payload: bytes = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00") -> None:
    stream.write(payload[:3])
    stream.write(bytearray(payload[3:]))
    await stream.drain()
    assert await read_exactly(stream, len(payload)) == payload


def nodelay(stream) -> bool:
    return bool(stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


# ---------------------------------------------------------------- TCP


@async_test
async def test_tcp_round_trip():
    async with serve(echo) as port:
        stream = await open_stream(parse_url(f"mqtt://127.0.0.1:{port}"), timeout=5, resolve=no_dns)
        assert not stream.is_tls and stream.ssl_object is None
        assert stream.peer_address[1] == port and stream.local_address[0] == "127.0.0.1"
        assert nodelay(stream)
        await round_trip(stream)
        payload = bytes(range(256)) * 4096  # 1 MiB through the read buffer's flow control
        stream.write(payload)
        assert await read_exactly(stream, len(payload)) == payload
        assert stream.close_reason is None
        await stream.close()
        assert stream.close_reason == "closed by us"


@async_test
async def test_tcp_stub_resolver_success():
    async with serve(echo) as port:
        stream = await open_stream(parse_url(f"mqtt://broker.test:{port}"), timeout=5, resolve=stub_resolve)
        await round_trip(stream)
        await stream.close()


@async_test
async def test_dns_failure_names_the_host():
    with pytest.raises(DnsError, match=r"^dns: cannot resolve 'nowhere\.test': name or service not known"):
        await open_stream(parse_url("mqtt://nowhere.test"), timeout=5, resolve=stub_resolve)


@async_test
async def test_refused_port_names_host_and_port():
    with socket.socket() as held:  # bound but not listening: connections to it are refused
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        with pytest.raises(
            TcpError, match=rf"cannot connect to 127\.0\.0\.1:{port}: connection refused; is the broker"
        ):
            await open_stream(parse_url(f"mqtt://127.0.0.1:{port}"), timeout=5)


@async_test
async def test_read_returns_eof_when_peer_closes():
    async with serve(hang_up) as port:
        stream = await open_stream(parse_url(f"mqtt://127.0.0.1:{port}"), timeout=5)
        assert await stream.read(timeout=5) == b""
        assert stream.close_reason == f"127.0.0.1:{port} closed the connection"
        with pytest.raises(ConnectionClosed):
            await stream.drain()


@async_test
async def test_read_raises_connection_closed_on_reset():
    async def reset(reader, writer):
        writer.write(b"last words")
        await writer.drain()
        await reader.readexactly(1)  # wait until the client has read the data and poked us
        abort_with_rst(writer)

    async with serve(reset) as port:
        stream = await open_stream(parse_url(f"mqtt://127.0.0.1:{port}"), timeout=5)
        assert await read_exactly(stream, 10) == b"last words"
        stream.write(b"!")
        with pytest.raises(ConnectionClosed, match=rf"127\.0\.0\.1:{port} lost: connection reset by peer"):
            await stream.read(timeout=5)


@async_test
async def test_abort_resets_and_close_is_graceful():
    ended: asyncio.Queue = asyncio.Queue()

    async def watch(reader, writer):
        try:
            ended.put_nowait(await reader.read())
        except ConnectionResetError as e:
            ended.put_nowait(e)
        writer.close()

    async with serve(watch) as port:
        url = parse_url(f"mqtt://127.0.0.1:{port}")
        stream = await open_stream(url, timeout=5)
        stream.write(b"bye")
        await stream.close()
        assert await asyncio.wait_for(ended.get(), 5) == b"bye"

        stream = await open_stream(url, timeout=5)
        stream.write(b"never sent")  # abort() discards queued bytes
        stream.abort()
        assert isinstance(await asyncio.wait_for(ended.get(), 5), ConnectionResetError)
        assert await stream.read() == b""


@async_test
async def test_read_timeout():
    async with serve(silent) as port:
        stream = await open_stream(parse_url(f"mqtt://127.0.0.1:{port}"), timeout=5)
        with pytest.raises(Timeout, match=rf"read from 127\.0\.0\.1:{port} timed out after 0\.3s"):
            await stream.read(timeout=SHORT)
        stream.abort()


@async_test
async def test_drain_waits_while_the_peer_does_not_read():
    gate = asyncio.Event()

    async def stalled(reader, writer):
        await gate.wait()
        writer.close()

    async with serve(stalled) as port:
        stream = await open_stream(parse_url(f"mqtt://127.0.0.1:{port}"), timeout=5)
        chunk = bytes(1 << 20)
        with pytest.raises(Timeout, match="sending to"):
            for _ in range(256):  # far beyond what the kernel buffers on loopback
                stream.write(chunk)
                await stream.drain(timeout=SHORT)
        stream.abort()
        gate.set()


def test_options_must_fit_the_url():
    with pytest.raises(UrlError, match="use mqtts:// or wss://"):
        asyncio.run(open_stream(parse_url("mqtt://127.0.0.1:1"), tls=TlsOptions(), timeout=1))
    with pytest.raises(UrlError, match="use ws:// or wss://"):
        asyncio.run(open_stream(parse_url("mqtts://127.0.0.1:1"), ws_headers=[("a", "b")], timeout=1))


# ---------------------------------------------------------------- TLS


@async_test
async def test_tls_round_trip(pki):
    async with serve(tls_echo(server_tls(pki.server))) as port:
        stream = await open_stream(parse_url(f"mqtts://127.0.0.1:{port}"), tls=TlsOptions(ca=pki.ca_file), timeout=5)
        assert stream.is_tls and stream.ssl_object.version() in ("TLSv1.2", "TLSv1.3")
        assert ("IP Address", "127.0.0.1") in stream.ssl_object.getpeercert()["subjectAltName"]
        assert nodelay(stream)
        await round_trip(stream)
        await stream.close()


@async_test
async def test_tls_verifies_the_name_from_the_stub_resolver(pki):
    async with serve(tls_echo(server_tls(pki.server))) as port:
        url = parse_url(f"mqtts://broker.test:{port}")
        stream = await open_stream(url, tls=TlsOptions(ca=pki.ca_file), timeout=5, resolve=stub_resolve)
        await round_trip(stream)
        await stream.close()


@async_test
async def test_tls_unknown_ca(pki):
    async with serve(tls_echo(server_tls(pki.rogue_server))) as port:
        url = parse_url(f"mqtts://127.0.0.1:{port}")
        with pytest.raises(TlsError, match=r"^tls: certificate verification failed: unable to get local issuer.*--ca FILE"):
            await open_stream(url, tls=TlsOptions(ca=pki.ca_file), timeout=5)


@async_test
async def test_tls_hostname_mismatch_and_skip(pki):
    async with serve(tls_echo(server_tls(pki.other_name))) as port:
        url = parse_url(f"mqtts://127.0.0.1:{port}")
        with pytest.raises(TlsError, match=r"certificate verification failed: IP address mismatch.*'127\.0\.0\.1'"):
            await open_stream(url, tls=TlsOptions(ca=pki.ca_file), timeout=5)
        with pytest.raises(TlsError, match=r"Hostname mismatch.*--sni NAME.*--insecure"):
            await open_stream(url, tls=TlsOptions(ca=pki.ca_file, server_hostname="broker.test"), timeout=5)

        stream = await open_stream(url, tls=TlsOptions(ca=pki.ca_file, server_hostname="other.test"), timeout=5)
        await round_trip(stream)
        await stream.close()
        stream = await open_stream(url, tls=TlsOptions(ca=pki.ca_file, insecure_skip_hostname_check=True), timeout=5)
        await round_trip(stream)
        await stream.close()
        # Skipping the name check still checks the chain.
        with pytest.raises(TlsError, match="certificate verification failed"):
            await open_stream(url, tls=TlsOptions(ca=pki.rogue_ca_file, insecure_skip_hostname_check=True), timeout=5)
        stream = await open_stream(url, tls=TlsOptions(ca=pki.rogue_ca_file, insecure_no_verify=True), timeout=5)
        await round_trip(stream)
        await stream.close()


@async_test
async def test_tls_expired_certificate(pki):
    async with serve(tls_echo(server_tls(pki.expired))) as port:
        with pytest.raises(TlsError, match="certificate has expired; renew"):
            await open_stream(parse_url(f"mqtts://127.0.0.1:{port}"), tls=TlsOptions(ca=pki.ca_file), timeout=5)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
@async_test
async def test_mutual_tls(pki, version):
    # With TLS 1.2 the server refuses during the handshake; with 1.3 only after it, on our first read.
    async def connect_and_echo(opts: TlsOptions) -> None:
        stream = await open_stream(url, tls=opts, timeout=5)
        try:
            await round_trip(stream)
        finally:
            stream.abort()

    async with serve(tls_echo(server_tls(pki.server, client_ca=pki.ca, max_version=version))) as port:
        url = parse_url(f"mqtts://127.0.0.1:{port}")
        with pytest.raises(TlsError, match="client certificate.*pass --cert FILE --key FILE"):
            await connect_and_echo(TlsOptions(ca=pki.ca_file))
        with pytest.raises(TlsError, match="server rejected the client certificate"):
            await connect_and_echo(TlsOptions(ca=pki.ca_file, cert=pki.rogue_client_cert, key=pki.rogue_client_key))
        await connect_and_echo(TlsOptions(ca=pki.ca_file, cert=pki.client_cert, key=pki.client_key))


@async_test
async def test_tls_closed_after_handshake_hints_at_client_cert(pki):
    async with serve(hang_up, server_tls(pki.server, max_version=ssl.TLSVersion.TLSv1_3)) as port:
        stream = await open_stream(parse_url(f"mqtts://127.0.0.1:{port}"), tls=TlsOptions(ca=pki.ca_file), timeout=5)
        assert await stream.read(timeout=5) == b""
        assert "right after the TLS handshake" in stream.close_reason and "--cert FILE --key FILE" in stream.close_reason


@async_test
async def test_tls_reset_after_handshake_hints_at_client_cert(pki):
    async with serve(tls_echo(server_tls(pki.server), reset=True)) as port:
        stream = await open_stream(parse_url(f"mqtts://127.0.0.1:{port}"), tls=TlsOptions(ca=pki.ca_file), timeout=5)
        stream.write(b"\x10")
        with pytest.raises(TlsError, match="reset by peer right after the TLS handshake.*client certificate") as caught:
            await stream.read(timeout=5)
        assert isinstance(caught.value, ConnectionClosed)


@async_test
async def test_tls_handshake_timeout(pki):
    async with serve(silent) as port:
        with pytest.raises(TlsError, match=rf"TLS handshake with 127\.0\.0\.1:{port} timed out after 0\.3s"):
            await open_stream(parse_url(f"mqtts://127.0.0.1:{port}"), tls=TlsOptions(ca=pki.ca_file), timeout=SHORT)


@async_test
async def test_tls_to_a_port_that_hangs_up(pki):
    async with serve(hang_up) as port:
        with pytest.raises(TlsError, match="closed during the TLS handshake"):
            await open_stream(parse_url(f"mqtts://127.0.0.1:{port}"), tls=TlsOptions(ca=pki.ca_file), timeout=5)


@async_test
async def test_tls_to_a_plain_port(pki):
    async def plain(reader, writer):
        await reader.read(1)
        writer.write(b"\x20\x02\x00\x00" * 4)  # a CONNACK, as a plain MQTT broker would send
        await writer.drain()
        await reader.read()
        writer.close()

    async with serve(plain) as port:
        with pytest.raises(TlsError, match="did not answer in TLS"):
            await open_stream(parse_url(f"mqtts://127.0.0.1:{port}"), tls=TlsOptions(ca=pki.ca_file), timeout=5)


def test_ssl_context_file_errors(pki, tmp_path):
    missing = str(tmp_path / "missing.pem")
    cases = [
        (TlsOptions(ca=missing), f"CA file {missing} not found"),
        (TlsOptions(ca=pki.garbage), f"cannot load CA certificates from {pki.garbage}: no certificate"),
        (TlsOptions(key=pki.client_key), "given without a certificate; pass --cert FILE"),
        (TlsOptions(cert=missing, key=pki.client_key), f"client certificate file {missing} not found"),
        (
            TlsOptions(cert=pki.client_cert, key=pki.other_client_key),
            f"client key {pki.other_client_key} does not match",
        ),
        (TlsOptions(cert=pki.client_cert, key=pki.encrypted_key), f"client key {pki.encrypted_key} is encrypted"),
        (TlsOptions(cert=pki.client_cert), f"cannot load client certificate {pki.client_cert}"),
    ]
    for opts, says in cases:
        with pytest.raises(TlsError, match=_re(says)):
            make_ssl_context(opts)
    ctx = make_ssl_context(TlsOptions(ca=pki.ca_file, cert=pki.client_cert, key=pki.client_key, alpn=["mqtt"]))
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


# ---------------------------------------------------------------- WebSocket


@async_test
async def test_ws_round_trip():
    seen = SimpleNamespace()
    async with serve(ws_echo(seen, frame=1000)) as port:
        url = parse_url(f"ws://127.0.0.1:{port}")
        stream = await open_stream(url, timeout=5, ws_headers=[("X-Test", "yes")])
        assert stream.subprotocol == "mqtt" and not stream.is_tls
        assert seen.request.host == f"127.0.0.1:{port}" and seen.request.target == "/mqtt"
        assert (b"x-test", b"yes") in seen.request.extra_headers
        await round_trip(stream)  # two writes, one frame; the echo comes back as several frames
        assert seen.messages == 1 and seen.pong == b"are you there"
        payload = bytes(range(256)) * 4096
        stream.write(payload)
        assert await read_exactly(stream, len(payload)) == payload
        await stream.close()
        assert stream.close_reason == "closed by us"


@async_test
async def test_wss_round_trip(pki):
    seen = SimpleNamespace()
    async with serve(ws_echo(seen), server_tls(pki.server)) as port:
        url = parse_url(f"wss://broker.test:{port}/ws")
        stream = await open_stream(url, tls=TlsOptions(ca=pki.ca_file), timeout=5, resolve=stub_resolve)
        assert stream.is_tls and seen.request.target == "/ws"
        payload = bytes(range(256)) * 4096
        stream.write(payload)
        assert await read_exactly(stream, len(payload)) == payload
        await stream.close()


@async_test
async def test_ws_subprotocol_refused():
    async with serve(ws_echo(SimpleNamespace(), require="mqttv3.1")) as port:
        with pytest.raises(
            WebSocketError, match=r"refused the WebSocket upgrade of /mqtt with HTTP 400 \('subprotocol"
        ):
            await open_stream(parse_url(f"ws://127.0.0.1:{port}"), timeout=5)


@async_test
async def test_ws_missing_subprotocol():
    async with serve(ws_echo(SimpleNamespace(), select=None)) as port:
        with pytest.raises(WebSocketError, match=r"without selecting the 'mqtt' subprotocol.*missing"):
            await open_stream(parse_url(f"ws://127.0.0.1:{port}"), timeout=5)


@async_test
async def test_ws_to_a_non_websocket_port():
    async with serve(echo) as port:  # echoes our HTTP request back: not an HTTP response
        with pytest.raises(WebSocketError, match="bad answer .* to the WebSocket upgrade"):
            await open_stream(parse_url(f"ws://127.0.0.1:{port}"), timeout=5)
    async with serve(hang_up) as port:
        with pytest.raises(WebSocketError, match="closed the connection during the WebSocket upgrade"):
            await open_stream(parse_url(f"ws://127.0.0.1:{port}"), timeout=5)


@async_test
async def test_ws_upgrade_timeout():
    async with serve(silent) as port:
        with pytest.raises(WebSocketError, match=r"WebSocket upgrade of 127\.0\.0\.1:\d+/mqtt timed out after 0\.3s"):
            await open_stream(parse_url(f"ws://127.0.0.1:{port}"), timeout=SHORT)


@async_test
async def test_ws_close_frame_from_server():
    async with serve(ws_echo(SimpleNamespace())) as port:
        stream = await open_stream(parse_url(f"ws://127.0.0.1:{port}"), timeout=5)
        stream.write(b"close please")
        assert await stream.read(timeout=5) == b""
        assert stream.close_reason == f"127.0.0.1:{port} closed the WebSocket (code 1001 'going away')"
        await stream.close()


@async_test
async def test_ws_tcp_close_without_close_frame():
    async with serve(ws_echo(SimpleNamespace())) as port:
        stream = await open_stream(parse_url(f"ws://127.0.0.1:{port}"), timeout=5)
        stream.write(b"drop please")
        assert await stream.read(timeout=5) == b""
        assert stream.close_reason == f"127.0.0.1:{port} closed the TCP connection without a WebSocket close frame"
        await stream.close()


@async_test
async def test_ws_text_frame_is_a_protocol_error():
    async with serve(ws_echo(SimpleNamespace())) as port:
        stream = await open_stream(parse_url(f"ws://127.0.0.1:{port}"), timeout=5)
        stream.write(b"text please")
        with pytest.raises(ProtocolError, match=r"^\[MQTT-6\.0\.0-1\] .*text frame"):
            await stream.read(timeout=5)


@async_test
async def test_ws_read_timeout():
    async with serve(ws_echo(SimpleNamespace())) as port:
        stream = await open_stream(parse_url(f"ws://127.0.0.1:{port}"), timeout=5)
        with pytest.raises(Timeout, match="timed out after 0.3s"):
            await stream.read(timeout=SHORT)
        await stream.close()


def test_broker_url_is_frozen():
    url = parse_url("mqtt://h")
    with pytest.raises(AttributeError):
        url.port = 1  # type: ignore[misc]
    assert isinstance(url, BrokerUrl)
