"""The walk: dns, tcp, tls, certificate, client_certificate, mqtt, roundtrip, each timed, stopping at the first
layer that fails. I/O lives here; judging lives in tls_inspect, device_map and advice.

The TLS handshake runs with verification off (so a bad certificate does not hide the TLS facts) and records the
handshake messages; the certificate layer then checks the chain itself. MQTT goes over harness.transport's
streams, encoded and decoded by harness.core.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import ipaddress
import os
import secrets
import socket
import ssl
import time
from dataclasses import dataclass, field, replace
from typing import Any

from harness.core.codec import Decoder, encode
from harness.core.packets import (
    Connack,
    Connect,
    Disconnect,
    Puback,
    Publish,
    Suback,
    Subscribe,
    Subscription,
    parse_version,
)
from harness.core.reason_codes import reason_name
from harness.diagnose import advice, device_map, tls_inspect
from harness.diagnose.layers import Diagnosis, LayerResult
from harness.diagnose.resolver import system_resolve
from harness.errors import (
    ConnectionClosed,
    HarnessError,
    ProtocolError,
    Timeout,
    TlsError,
    WebSocketError,
)
from harness.transport import (
    SocketStream,
    WebSocketStream,
    _load_client_cert,
    _os_reason,
    _SocketProtocol,
)
from harness.url import BrokerUrl, parse_url

TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
RC_311 = {0: "connection accepted", 1: "unacceptable protocol version", 2: "identifier rejected",
          3: "server unavailable", 4: "bad user name or password", 5: "not authorized"}
REFUSAL_CAUSES_311 = {4: "bad_credentials", 5: "not_authorized"}
REFUSAL_CAUSES_5 = {0x86: "bad_credentials", 0x87: "not_authorized"}
CLOSE_WAIT = 2.0  # seconds we wait for the server to close after refusing CONNECT


class UsageError(HarnessError):
    """Options diagnose cannot run with (bad file paths, contradictory flags): exit code 2."""


@dataclass(frozen=True)
class Options:
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    username: str | None = None
    password: str | None = None
    client_id: str | None = None
    alpn: tuple[str, ...] = ()
    sni: str | None = None
    version: str = "3.1.1"
    clock: dt.datetime | None = None  # the device's clock, for certificate validity
    timeout: float = 10.0  # seconds, per layer
    device: str | None = None  # "esp-mqtt" or "espeasy": its view decides failed_layer too
    device_timeout_ms: int | None = None
    tls_version: str | None = None  # pin the client to "1.2" or "1.3", as a device that speaks only that
    topic: str | None = None  # roundtrip topic (default: mqtt-harness/diagnose/<client id>)
    older_idf: bool = False  # esp-tls numbers of older ESP-IDF releases in the device view
    now: dt.datetime | None = None  # the local clock (tests); default: the real one


def device_timeouts(options: Options) -> dict[str, int]:
    """Each device's connect timeout in ms: --device-timeout applies to --device (or to both without --device)."""
    out = dict(device_map.DEFAULT_TIMEOUT_MS)
    if options.device_timeout_ms is not None:
        for name in device_map.DEVICES:
            if options.device in (None, name):
                out[name] = options.device_timeout_ms
    return out


def device_view_active(options: Options) -> bool:
    return options.device is not None or options.device_timeout_ms is not None


@dataclass
class _State:
    url: BrokerUrl
    options: Options
    resolve: Any
    diagnosis: Diagnosis
    addresses: list = field(default_factory=list)
    sock: socket.socket | None = None
    connect_ms: float | None = None
    connected_address: str | None = None
    recorder: tls_inspect.HandshakeRecorder | None = None
    stream: SocketStream | None = None
    chain: tls_inspect.ChainCheck | None = None
    ssl_object: ssl.SSLObject | None = None
    decoder: Decoder | None = None
    pending: list = field(default_factory=list)
    read_task: asyncio.Task | None = None
    connect_sent_at: float | None = None
    alert: int | None = None
    context: dict = field(default_factory=dict)  # values the advice texts use


async def diagnose(url: str | BrokerUrl, options: Options = Options(), *, resolve=None) -> Diagnosis:
    """Walk every layer of a connection to `url`; never raises for a broker problem (UsageError for bad options)."""
    parsed = url if isinstance(url, BrokerUrl) else parse_url(url)
    if parsed.username is not None and options.username is None:
        options = replace(options, username=parsed.username, password=parsed.password)
    diagnosis = Diagnosis(url=parsed.display())
    st = _State(parsed, options, resolve or system_resolve, diagnosis)
    diagnosis.settings = _settings(st)
    if options.alpn and not parsed.tls:
        raise UsageError(f"--alpn needs TLS; {parsed.scheme}:// has none")
    if (options.ca or options.cert or options.sni or options.tls_version) and not parsed.tls:
        diagnosis.notes.append(f"TLS options are ignored for {parsed.scheme}://")
    try:
        for step in (_dns, _tcp, _tls, _certificate, _client_certificate, _mqtt, _roundtrip):
            if not parsed.tls and step in (_tls, _certificate, _client_certificate):
                continue
            result = await step(st)
            if result is None:
                continue
            diagnosis.layers.append(result)
            if not result.ok:
                break
    finally:
        await _close(st)
    _devices(st)
    failed = diagnosis.failed
    if failed is not None:
        diagnosis.causes, diagnosis.fixes = advice.advise(failed.cause, {**st.context, **_base_context(st)})
    return diagnosis


def _settings(st: _State) -> dict[str, Any]:
    o = st.options
    return {"mqtt_version": o.version, "timeout_s": o.timeout, "clock": o.clock.isoformat() if o.clock else None,
            "device": o.device, "device_timeout_ms": device_timeouts(o), "device_view": device_view_active(o),
            "ca": o.ca, "client_certificate": o.cert, "sni": o.sni, "alpn": list(o.alpn) or None,
            "tls_version": o.tls_version}


def _base_context(st: _State) -> dict[str, Any]:
    o = st.options
    return {"host": st.url.host, "port": st.url.port, "address": st.url.address, "scheme": st.url.scheme,
            "url": st.url.display(), "ca": o.ca or "the system store", "device": o.device or "the device",
            "device_timeout": device_timeouts(o).get(o.device or device_map.ESPEASY),
            "connect_ms": round(st.connect_ms) if st.connect_ms is not None else None,
            "alpn": ", ".join(o.alpn) or "(none)", "sni": o.sni or st.url.host,
            "plain_scheme": {"mqtts": "mqtt", "wss": "ws"}.get(st.url.scheme, st.url.scheme),
            "tls_scheme": {"mqtt": "mqtts", "ws": "wss"}.get(st.url.scheme, st.url.scheme)}


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


# ------------------------------------------------------------------------------------------------------ dns

async def _dns(st: _State) -> LayerResult:
    url = st.url
    start = time.perf_counter()
    try:
        ip = ipaddress.ip_address(url.host)
    except ValueError:
        ip = None
    if ip is not None:
        st.addresses = [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                         (url.host, url.port, 0, 0) if ip.version == 6 else (url.host, url.port))]
        return LayerResult("dns", True, _ms(start), {"addresses": [url.host], "lookup": False},
                           f"{url.host} is an IP address: no lookup")
    try:
        async with asyncio.timeout(st.options.timeout):
            addresses = list(await st.resolve(url.host, url.port))
    except TimeoutError:
        return LayerResult("dns", False, _ms(start), {"error": f"no answer within {st.options.timeout:g}s"},
                           f"resolving {url.host!r} timed out", cause="dns_failure")
    except OSError as exc:
        text = exc.strerror if isinstance(exc, socket.gaierror) and exc.strerror else str(exc)
        st.context["dns_error"] = text
        return LayerResult("dns", False, _ms(start), {"error": text}, f"cannot resolve {url.host!r}: {text}",
                           cause="dns_failure")
    if not addresses:
        st.context["dns_error"] = "no addresses"
        return LayerResult("dns", False, _ms(start), {"error": "no addresses"},
                           f"{url.host!r} resolved to no addresses", cause="dns_failure")
    st.addresses = addresses
    shown = [a[1][0] for a in addresses]
    return LayerResult("dns", True, _ms(start), {"addresses": shown, "lookup": True},
                       f"{url.host} -> {', '.join(shown)}")


# ------------------------------------------------------------------------------------------------------ tcp

async def _tcp(st: _State) -> LayerResult:
    loop = asyncio.get_running_loop()
    attempts = []
    start = time.perf_counter()
    for family, sockaddr in st.addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        began = time.perf_counter()
        try:
            async with asyncio.timeout(st.options.timeout):
                await loop.sock_connect(sock, sockaddr)
        except TimeoutError:
            sock.close()
            attempts.append({"address": sockaddr[0], "error": "timed out", "ms": round(_ms(began), 1),
                             "kind": "timeout"})
            continue
        except OSError as exc:
            sock.close()
            kind = "refused" if isinstance(exc, ConnectionRefusedError) else "unreachable"
            attempts.append({"address": sockaddr[0], "error": os.strerror(exc.errno) if exc.errno else str(exc),
                             "errno": errno.errorcode.get(exc.errno or 0), "ms": round(_ms(began), 1),
                             "kind": kind})
            continue
        except BaseException:
            sock.close()
            raise
        st.sock = sock
        st.connect_ms = _ms(began)
        st.connected_address = sockaddr[0]
        attempts.append({"address": sockaddr[0], "ms": round(st.connect_ms, 1), "kind": "connected"})
        break
    total = _ms(start)
    detail: dict[str, Any] = {"attempts": attempts, "connect_ms": round(st.connect_ms, 1) if st.connect_ms else None}
    if st.sock is None:
        kinds = {a["kind"] for a in attempts}
        cause = "tcp_refused" if kinds == {"refused"} else "tcp_timeout" if "timeout" in kinds else "tcp_unreachable"
        what = "; ".join(f"{a['address']}: {a['error']} after {a['ms']:g} ms" for a in attempts)
        st.context["tcp_error"] = what
        return LayerResult("tcp", False, total, detail, f"cannot connect to {st.url.address}: {what}", cause=cause)
    timeouts = device_timeouts(st.options)
    detail["device_timeouts_ms"] = timeouts
    summary = f"connected to {st.connected_address}:{st.url.port} in {st.connect_ms:.1f} ms"
    if device_view_active(st.options):
        name = st.options.device or min(timeouts, key=timeouts.get)
        limit = timeouts[name]
        detail["device"] = name
        detail["device_timeout_ms"] = limit
        if st.connect_ms > limit:
            detail["host_connected"] = True
            suggested = device_map.suggested_espeasy_timeout(st.connect_ms)
            st.context.update(device_timeout=limit, suggested_timeout=suggested or device_map.ESPEASY_TIMEOUT_RANGE[1],
                              device=name)
            return LayerResult("tcp", False, total, detail,
                               f"{summary}, but {name} gives up after {limit} ms: its connect would time out",
                               cause="device_connect_timeout")
        summary += f" (within {name}'s {limit} ms)"
    return LayerResult("tcp", True, total, detail, summary)


# ------------------------------------------------------------------------------------------------------ tls

def _client_context(options: Options) -> ssl.SSLContext:
    """A client context that verifies nothing (the certificate layer judges the chain) and, unlike
    ssl.create_default_context(), does not load the system CA store: that alone takes ~40 ms."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if options.cert is not None:
        for path, what in ((options.cert, "--cert"), (options.key, "--key")):
            if path is not None and not os.path.isfile(path):
                raise UsageError(f"{what} file {path} not found; check the path")
        try:
            _load_client_cert(ctx, options.cert, options.key)
        except TlsError as exc:
            raise UsageError(str(exc).removeprefix("tls: ")) from None
    if options.alpn:
        ctx.set_alpn_protocols(list(options.alpn))
    if options.tls_version:
        ctx.minimum_version = ctx.maximum_version = TLS_VERSIONS[options.tls_version]
    return ctx


async def _tls(st: _State) -> LayerResult:
    loop = asyncio.get_running_loop()
    ctx = _client_context(st.options)
    rec = st.recorder = tls_inspect.HandshakeRecorder()
    rec.install(ctx)
    protocol = _SocketProtocol(loop)
    sni = st.options.sni or st.url.host
    start = time.perf_counter()
    error: BaseException | None = None
    sock, st.sock = st.sock, None
    try:
        async with asyncio.timeout(st.options.timeout):
            await loop.create_connection(lambda: protocol, sock=sock, ssl=ctx, server_hostname=sni,
                                         ssl_handshake_timeout=st.options.timeout + 1,
                                         ssl_shutdown_timeout=st.options.timeout + 1)
    except TimeoutError:
        error = TimeoutError()
        sock.close()
    except OSError as exc:  # ssl.SSLError included
        error = exc
        sock.close()
    ms = _ms(start)
    detail: dict[str, Any] = {"sni": None if _is_ip(sni) else sni, "alpn_offered": list(st.options.alpn) or None,
                              "client_certificate_requested": rec.certificate_request}
    st.context["sni_sent"] = detail["sni"] or "none: the URL host is an IP address"
    if error is None:
        st.stream = SocketStream(protocol, st.url, st.options.timeout, bool(st.options.cert))
        obj = st.ssl_object = st.stream.ssl_object
        cipher = obj.cipher()
        detail.update(version=obj.version(), cipher=cipher[0] if cipher else None,
                      alpn=obj.selected_alpn_protocol())
        summary = f"{obj.version()}, {detail['cipher']}"
        if st.options.alpn:
            summary += f", ALPN {detail['alpn'] or 'none selected'}"
        summary += f", SNI {detail['sni'] or '(not sent: IP address)'}"
        if st.options.alpn and detail["alpn"] is None:
            detail["note"] = "the server ignored ALPN; servers that require it would have refused"
        return LayerResult("tls", True, ms, detail, summary)
    if rec.alerts_received:
        st.alert = rec.alerts_received[-1]
        detail["alert"] = tls_inspect.ALERTS.get(st.alert, st.alert)
    reason = getattr(error, "reason", None) or ""
    detail["error"] = _error_text(error)
    alert = st.alert if st.alert is not None else tls_inspect.ALERT_REASONS.get(reason)
    if alert is not None and st.alert is None:
        st.alert = alert
        detail["alert"] = tls_inspect.ALERTS.get(alert, alert)
    if rec.certificate_request and alert in tls_inspect.CLIENT_CERT_ALERTS | {40}:
        # TLS 1.2: the server judged our certificate (or its absence) inside the handshake.
        st.context["client_cert_alert"] = detail.get("alert")
        st.context["handshake_client_cert_failure"] = True
        detail["note"] = "the server ended the handshake after asking for a client certificate"
        return LayerResult("tls", True, ms, detail, "handshake reached the client certificate; see below")
    if isinstance(error, TimeoutError):
        cause = "tls_timeout"
    elif alert == 70 or reason in ("UNSUPPORTED_PROTOCOL", "NO_PROTOCOLS_AVAILABLE", "TLSV1_ALERT_PROTOCOL_VERSION"):
        cause = "tls_version_mismatch"
    elif alert == 120:
        cause = "alpn_mismatch"
    elif alert == 112:
        cause = "sni_rejected"
    elif reason in ("WRONG_VERSION_NUMBER", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE", "HTTP_REQUEST"):
        cause = "not_tls"
    elif rec.bytes_read == 0:
        # The server hung up without a single TLS byte: most likely not a TLS port. Ask it in plain MQTT.
        cause = "plain_port" if await _answers_plain_mqtt(st) else "tls_closed"
    else:
        cause = "tls_handshake_failed"
    return LayerResult("tls", False, ms, detail, f"TLS handshake failed: {detail['error']}", cause=cause)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLError):
        text = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], str) else str(exc)
        if text.startswith("[") and "] " in text:
            text = text.split("] ", 1)[1]
        return text.rsplit(" (_ssl.c:", 1)[0]
    return _os_reason(exc)


async def _answers_plain_mqtt(st: _State) -> bool:
    """Does the same address answer a plain MQTT CONNECT with a CONNACK? (TLS was sent to a plain port.)"""
    try:
        async with asyncio.timeout(min(st.options.timeout, 3.0)):
            reader, writer = await asyncio.open_connection(st.connected_address, st.url.port)
            try:
                writer.write(encode(Connect(client_id=_client_id(st), keepalive=10), 4))
                data = await reader.read(4)
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return False
    return data[:1] == b"\x20"


async def _answers_tls(st: _State) -> bool:
    """Does the same address complete a TLS handshake? (plain MQTT was sent to a TLS port.)"""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        async with asyncio.timeout(min(st.options.timeout, 3.0)):
            _reader, writer = await asyncio.open_connection(st.connected_address, st.url.port, ssl=ctx,
                                                            server_hostname=st.url.host)
            writer.close()
    except (OSError, TimeoutError):
        return False
    return True


# ---------------------------------------------------------------------------------------------- certificate

async def _certificate(st: _State) -> LayerResult:
    start = time.perf_counter()
    rec = st.recorder
    chain = rec.server_chain
    if not chain and st.ssl_object is not None:
        leaf = st.ssl_object.getpeercert(binary_form=True)
        chain = [leaf] if leaf else []
    try:
        anchors, where = tls_inspect.load_trust(st.options.ca)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read CA certificates from {st.options.ca}: {exc}; --ca must be a PEM file") from None
    now = st.options.now or dt.datetime.now(dt.UTC)
    host = st.options.sni or st.url.host
    check = tls_inspect.check_chain(chain, host, anchors, trust_source=where, now=now, clock=st.options.clock)
    if not check.trusted and st.options.ca:
        system, _ = tls_inspect.load_trust(None)
        check = tls_inspect.check_chain(chain, host, anchors, trust_source=where, now=now, clock=st.options.clock,
                                        system_anchors=system)
    st.chain = check
    detail = check.to_json()
    detail["local_clock"] = now.isoformat(timespec="seconds")
    detail["device_clock"] = st.options.clock.isoformat() if st.options.clock else None
    leaf = check.chain[0] if check.chain else None
    if leaf:
        st.context.update(subject=leaf["subject"], issuer=leaf["issuer"], not_after=leaf["not_after"],
                          not_before=leaf["not_before"],
                          cert_names=", ".join(leaf["sans"]["dns"] + leaf["sans"]["ip"]) or leaf["subject"])
    st.context["public_issuer"] = check.public_issuer
    st.context["clock"] = st.options.clock.isoformat() if st.options.clock else None
    ms = _ms(start)
    if check.ok:
        summary = f"{leaf['subject']} issued by {leaf['issuer']}; trusted via {where}; valid until " \
                  f"{leaf['not_after'][:10]}; matches {host!r}"
        if st.options.clock:
            summary += f"; valid at the device clock {st.options.clock.isoformat()}"
        return LayerResult("certificate", True, ms, detail, summary)
    st.context["problem"] = check.problems[0]["text"]
    summary = "; ".join(p["text"] for p in check.problems)
    return LayerResult("certificate", False, ms, detail, summary, cause=check.cause)


# ---------------------------------------------------------------------------------------- client_certificate

async def _client_certificate(st: _State) -> LayerResult:
    rec = st.recorder
    start = time.perf_counter()
    sent = rec.client_certificate_sent
    detail: dict[str, Any] = {"requested": rec.certificate_request, "sent": sent}
    if st.context.get("handshake_client_cert_failure"):
        detail["alert"] = st.context.get("client_cert_alert")
        cause = "client_cert_rejected" if sent else "client_cert_required"
        return LayerResult("client_certificate", False, _ms(start), detail,
                           _client_cert_text(cause, detail.get("alert")), cause=cause)
    if not rec.certificate_request:
        summary = "the server did not ask for a client certificate"
        if st.options.cert:
            summary += "; --cert was not sent"
        return LayerResult("client_certificate", True, _ms(start), detail, summary)
    if st.ssl_object.version() != "TLSv1.3":
        return LayerResult("client_certificate", True, _ms(start), detail,
                           "requested; " + ("the server accepted ours (handshake finished)" if sent else
                                            "none sent, and the server accepted that (optional)"))
    # TLS 1.3: the server judges our certificate after our Finished. Its verdict is a session ticket (accepted),
    # an alert or a close (refused), or, from servers that send no tickets, its answer to our first bytes.
    ticket = asyncio.Event()
    rec.on_ticket = ticket.set
    if rec.tickets:
        ticket.set()
    if st.url.ws:
        first = asyncio.ensure_future(_ws_upgrade(st))
    else:
        with contextlib.suppress(ConnectionClosed, Timeout):  # the read below sees the close
            await _send_connect(st)
        first = st.read_task = asyncio.ensure_future(st.stream.read(timeout=st.options.timeout))
    waiter = asyncio.ensure_future(ticket.wait())
    try:
        await asyncio.wait([first, waiter], timeout=st.options.timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if ticket.is_set() and not (first.done() and first.exception() is not None):
        detail["verdict"] = "session ticket"
        return LayerResult("client_certificate", True, _ms(start), detail,
                           "requested and accepted" if sent else "requested; none sent, and the server went on")
    if not first.done():
        detail["verdict"] = "none within the timeout"
        return LayerResult("client_certificate", True, _ms(start), detail,
                           "requested; the server gave no verdict yet (see mqtt)")
    exc = first.exception()
    if exc is None and (st.url.ws or first.result()):
        detail["verdict"] = "answered"
        return LayerResult("client_certificate", True, _ms(start), detail,
                           "requested and accepted" if sent else "requested; none sent, and the server answered")
    if rec.alerts_received:
        st.alert = rec.alerts_received[-1]
        detail["alert"] = tls_inspect.ALERTS.get(st.alert, st.alert)
    detail["error"] = str(exc) if exc is not None else "the server closed the connection"
    cause = "client_cert_rejected" if sent else "client_cert_required"
    st.read_task = None
    return LayerResult("client_certificate", False, _ms(start), detail, _client_cert_text(cause, detail.get("alert")),
                       cause=cause)


def _client_cert_text(cause: str, alert) -> str:
    said = f" (alert {alert})" if alert else " (connection closed)"
    if cause == "client_cert_required":
        return "the server requires a client certificate and none was sent" + said
    return "the server refused our client certificate" + said


# ----------------------------------------------------------------------------------------------------- mqtt

def _client_id(st: _State) -> str:
    if "client_id" not in st.context:
        st.context["client_id"] = st.options.client_id or f"mh-diag-{secrets.token_hex(4)}"
    return st.context["client_id"]


async def _send_connect(st: _State) -> None:
    if st.connect_sent_at is not None:
        return
    version = parse_version(st.options.version)
    o = st.options
    password = o.password.encode() if isinstance(o.password, str) else o.password
    packet = Connect(client_id=_client_id(st), clean=True, keepalive=30, username=o.username, password=password,
                     protocol_level=version)
    st.stream.write(encode(packet, version))
    st.connect_sent_at = time.perf_counter()
    await st.stream.drain(timeout=st.options.timeout)
    _quick_ack(st)


def _quick_ack(st: _State) -> None:
    # Called once CONNECT is on the wire (sending data puts Linux in delayed-ACK mode): ACK what comes next at
    # once. mosquitto sends its second TLS 1.3 session ticket after our CONNECT and, with Nagle on, holds its
    # CONNACK until that ticket is ACKed: ~40 ms of delayed ACK that would show as MQTT latency (tcpdump).
    sock = st.stream.socket if st.stream is not None else None
    if sock is not None and hasattr(socket, "TCP_QUICKACK"):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)


async def _ws_upgrade(st: _State) -> None:
    if isinstance(st.stream, WebSocketStream):
        return
    protocol = st.stream._protocol
    stream = WebSocketStream(protocol, st.url, st.options.timeout, bool(st.options.cert))
    st.stream = stream
    await stream._upgrade(())


async def _next_packet(st: _State, deadline: float):
    """The next MQTT packet from the server; raises Timeout, ConnectionClosed (b"" -> closed) or ProtocolError."""
    while not st.pending:
        if st.read_task is not None:
            task, st.read_task = st.read_task, None
            remaining = max(0.0, deadline - time.monotonic())
            done, _ = await asyncio.wait([task], timeout=remaining)
            if not done:
                task.cancel()
                raise Timeout("no answer")
            data = task.result()
        else:
            data = await st.stream.read(timeout=max(0.001, deadline - time.monotonic()))
        if not data:
            raise ConnectionClosed("the server closed the connection")
        st.context["received"] = st.context.get("received", b"") + data[:16]
        st.pending.extend(st.decoder.feed(data))
    return st.pending.pop(0)


async def _mqtt(st: _State) -> LayerResult:
    start = time.perf_counter()
    version = parse_version(st.options.version)
    st.decoder = Decoder(version)
    detail: dict[str, Any] = {"version": st.options.version, "client_id": _client_id(st),
                              "username": st.options.username}
    if st.stream is None:  # plain mqtt:// or ws://
        protocol = _SocketProtocol(asyncio.get_running_loop())
        sock, st.sock = st.sock, None
        await asyncio.get_running_loop().create_connection(lambda: protocol, sock=sock)
        st.stream = SocketStream(protocol, st.url, st.options.timeout, False)
    if st.url.ws:
        try:
            async with asyncio.timeout(st.options.timeout):
                await _ws_upgrade(st)
        except (WebSocketError, TimeoutError, ConnectionClosed) as exc:
            detail["error"] = str(exc) or "timed out"
            return LayerResult("mqtt", False, _ms(start), detail, f"WebSocket upgrade failed: {detail['error']}",
                               cause="websocket_rejected")
        detail["websocket"] = {"path": st.url.path, "subprotocol": getattr(st.stream, "subprotocol", None)}
    try:
        await _send_connect(st)
    except (ConnectionClosed, Timeout):
        pass  # the read below says what happened
    deadline = time.monotonic() + st.options.timeout
    try:
        packet = await _next_packet(st, deadline)
    except Timeout:
        detail["error"] = f"no CONNACK within {st.options.timeout:g}s"
        return LayerResult("mqtt", False, _ms(start), detail, detail["error"], cause="no_connack")
    except ConnectionClosed as exc:
        detail["error"] = str(exc)
        cause = await _closed_cause(st)
        return LayerResult("mqtt", False, _ms(start), detail,
                           f"the server closed the connection before CONNACK ({exc})", cause=cause)
    except ProtocolError as exc:
        detail["error"] = str(exc)
        cause = "tls_port" if _looks_like_tls(st.context.get("received", b"")) else "not_mqtt"
        return LayerResult("mqtt", False, _ms(start), detail, f"the server did not answer in MQTT: {exc}",
                           cause=cause)
    ms = (time.perf_counter() - (st.connect_sent_at or start)) * 1000
    if not isinstance(packet, Connack):
        detail["error"] = f"first packet was {type(packet).__name__}, not CONNACK"
        return LayerResult("mqtt", False, ms, detail, detail["error"], cause="not_mqtt")
    code = packet.reason_code
    name = reason_name(code) if version >= 5 else RC_311.get(code, f"return code {code}")
    detail.update(reason_code=code, reason=name, session_present=packet.session_present)
    if version >= 5 and packet.properties:
        detail["properties"] = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in packet.properties.items()
                                if isinstance(v, (int, str, bytes))}
    st.context.update(connack_code=code, connack_name=name)
    if code == 0:
        return LayerResult("mqtt", True, ms, detail, f"CONNACK {name} (0x00), session present "
                           f"{int(packet.session_present)}")
    detail["closed_after_refusal"] = await _closed_within(st, CLOSE_WAIT)
    table = REFUSAL_CAUSES_5 if version >= 5 else REFUSAL_CAUSES_311
    cause = table.get(code, "connack_refused")
    return LayerResult("mqtt", False, ms, detail, f"CONNACK refused: {name} (0x{code:02X})", cause=cause)


def _looks_like_tls(data: bytes) -> bool:
    return len(data) >= 2 and data[0] in (0x15, 0x16) and data[1] == 0x03


async def _closed_cause(st: _State) -> str:
    if st.url.tls:
        return "closed_before_connack"
    if _looks_like_tls(st.context.get("received", b"")) or await _answers_tls(st):
        return "tls_port"
    return "closed_before_connack"


async def _closed_within(st: _State, seconds: float) -> bool:
    try:
        while True:
            data = await st.stream.read(timeout=seconds)
            if not data:
                return True
    except ConnectionClosed:
        return True
    except Timeout:
        return False


# ------------------------------------------------------------------------------------------------ roundtrip

async def _roundtrip(st: _State) -> LayerResult:
    start = time.perf_counter()
    version = parse_version(st.options.version)
    topic = st.options.topic or f"mqtt-harness/diagnose/{_client_id(st)}"
    payload = b"mqtt-harness diagnose " + secrets.token_hex(4).encode()
    detail: dict[str, Any] = {"topic": topic}
    deadline = time.monotonic() + st.options.timeout
    st.context["topic"] = topic
    try:
        st.stream.write(encode(Subscribe(1, [Subscription(topic, qos=1)]), version))
        while True:
            packet = await _next_packet(st, deadline)
            if isinstance(packet, Suback):
                break
        detail["subscribe_ms"] = round(_ms(start), 2)
        detail["suback"] = list(packet.reason_codes)
        if not packet.reason_codes or packet.reason_codes[0] >= 0x80:
            return LayerResult("roundtrip", False, _ms(start), detail,
                               f"SUBSCRIBE to {topic!r} refused (SUBACK {detail['suback']})", cause="subscribe_refused")
        sent = time.perf_counter()
        st.stream.write(encode(Publish(topic, payload, qos=1, packet_id=2), version))
        got_ack = got_msg = None
        while got_ack is None or got_msg is None:
            packet = await _next_packet(st, deadline)
            if isinstance(packet, Puback) and packet.packet_id == 2:
                got_ack = packet
                detail["puback_ms"] = round(_ms(sent), 2)
                if packet.reason_code >= 0x80:
                    return LayerResult("roundtrip", False, _ms(start), detail,
                                       f"PUBLISH refused (PUBACK {reason_name(packet.reason_code)})",
                                       cause="publish_refused")
            elif isinstance(packet, Publish) and packet.topic == topic and packet.payload == payload:
                got_msg = packet
                detail["receive_ms"] = round(_ms(sent), 2)
                if packet.qos and packet.packet_id is not None:
                    st.stream.write(encode(Puback(packet.packet_id), version))
    except Timeout:
        detail["error"] = f"timed out after {st.options.timeout:g}s"
        return LayerResult("roundtrip", False, _ms(start), detail,
                           f"the message did not come back within {st.options.timeout:g}s", cause="no_message")
    except (ConnectionClosed, ProtocolError) as exc:
        detail["error"] = str(exc)
        return LayerResult("roundtrip", False, _ms(start), detail, f"connection failed during the roundtrip: {exc}",
                           cause="roundtrip_failed")
    with_disconnect = encode(Disconnect(), version)
    st.stream.write(with_disconnect)
    return LayerResult("roundtrip", True, _ms(start), detail,
                       f"subscribe {detail['subscribe_ms']:.1f} ms, publish+receive {detail['receive_ms']:.1f} ms")


async def _close(st: _State) -> None:
    if st.read_task is not None and not st.read_task.done():
        st.read_task.cancel()
    if st.stream is not None:
        try:
            await st.stream.close(timeout=0.5)
        except (HarnessError, OSError):
            st.stream.abort()
    if st.sock is not None:
        st.sock.close()


# --------------------------------------------------------------------------------------------------- devices

def _devices(st: _State) -> None:
    d = st.diagnosis
    failed = d.failed
    timeouts = device_timeouts(st.options)
    flags = st.chain.flags if st.chain is not None else 0
    connack = st.context.get("connack_code")
    out = {}
    for name in device_map.DEVICES:
        limit = timeouts[name]
        cause = None
        partial = None
        if failed is not None and failed.cause != "device_connect_timeout":
            cause = failed.cause
        elif st.connect_ms is not None and st.connect_ms > limit:
            cause = "device_connect_timeout"
        elif failed is not None:  # the walk stopped at tcp for the other device's timeout
            partial = f"passes tcp ({st.connect_ms:.0f} ms < {limit} ms); later layers were not walked"
        if name == device_map.ESP_MQTT:
            report = device_map.esp_mqtt_report(cause, flags=flags, connack_code=connack,
                                                older_idf=st.options.older_idf, connect_ms=st.connect_ms,
                                                timeout_ms=limit)
        else:
            report = device_map.espeasy_report(cause, alert=st.alert, connect_ms=st.connect_ms, timeout_ms=limit)
        report["timeout_ms"] = limit
        if partial:
            report.update(would_connect=None, summary=partial)
        if cause == "device_connect_timeout":
            report["connect_ms"] = round(st.connect_ms, 1)
        out[name.replace("-", "_")] = report
        if failed is None and cause == "device_connect_timeout":
            d.notes.append(f"{name} at its {limit} ms connect timeout would fail at tcp ({report.get('summary')}); "
                           f"rerun with --device {name} to see the fix")
    d.device = out
