"""The virtual device's network I/O: non-blocking TCP connects, TLS over memory BIOs, TCP probes.

Performs the Open/Send/Close/Probe actions of the firmware on real loopback sockets registered with the
driver's selector and reports back to the firmware (transport_connected/failed/closed, received, probe_done).
What a failure *means* to an ESP32 comes from transport.py; this module only observes sockets and ssl.

TLS is fixed at 1.2, as ESP-IDF's default mbedTLS build. Certificate dates are checked against the device clock
(OpenSSL's own time check is switched off); the chain and the host name are OpenSSL's, so a broker sees the
alert a device would send for those."""

from __future__ import annotations

import errno
import os
import selectors
import socket
import ssl
import tempfile
from dataclasses import dataclass, field
from typing import Callable

from harness.device.virtual import espmqtt
from harness.device.virtual import firmware as fw
from harness.device.virtual import transport as T

X509_V_FLAG_NO_CHECK_TIME = 0x200000
MBEDTLS_ERR_SSL_TIMEOUT = 0x6800
MBEDTLS_ERR_NET_CONN_RESET = 0x0050
_RECV = 65536


@dataclass(eq=False)
class _Conn:
    conn: int
    sock: socket.socket
    deadline: int  # ms: connect or handshake must be done by then
    host: str
    tls: T.TlsSettings | None
    phase: str = "tcp"  # tcp | tls | open
    ssl: ssl.SSLObject | None = None
    inbio: ssl.MemoryBIO | None = None
    outbio: ssl.MemoryBIO | None = None
    outbuf: bytearray = field(default_factory=bytearray)


@dataclass(eq=False)
class _Probe:
    token: int
    sock: socket.socket
    started: int
    deadline: int


class Net:
    def __init__(self, selector: selectors.BaseSelector, firmware: fw.Firmware, *,
                 clock_ms: Callable[[], int]):
        self.sel = selector
        self.fw = firmware
        self.clock_ms = clock_ms
        self.conns: dict[int, _Conn] = {}
        self.probes: dict[int, _Probe] = {}

    # ------------------------------------------------------------------ actions

    def perform(self, action, now: int) -> None:
        if isinstance(action, espmqtt.Open):
            self._open(action, now)
        elif isinstance(action, espmqtt.Send):
            self._send(action.conn, action.data, now)
        elif isinstance(action, espmqtt.Close):
            self._close(action.conn, flush=True)
        elif isinstance(action, fw.Probe):
            self._probe(action, now)
        elif isinstance(action, fw.ResetNet):
            self.close_all()

    def close_all(self) -> None:
        for conn in list(self.conns):
            self._close(conn, flush=False)
        for probe in list(self.probes.values()):
            self._drop_probe(probe)

    def _open(self, a: espmqtt.Open, now: int) -> None:
        family = socket.AF_INET6 if ":" in a.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        c = _Conn(a.conn, sock, now + a.timeout_ms, a.host, a.tls)
        self.conns[a.conn] = c
        code = sock.connect_ex((a.address, a.port))
        if code not in (0, errno.EINPROGRESS):
            self._fail(c, T.connect_failure(errno.errorcode.get(code, str(code))), now)
            return
        self.sel.register(sock, selectors.EVENT_WRITE, c)

    def _probe(self, p: fw.Probe, now: int) -> None:
        family = socket.AF_INET6 if ":" in p.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        probe = _Probe(p.token, sock, now, now + p.timeout_ms)
        self.probes[p.token] = probe
        code = sock.connect_ex((p.address, p.port))
        if code not in (0, errno.EINPROGRESS):
            self._probe_result(probe, code, now)
            return
        self.sel.register(sock, selectors.EVENT_WRITE, probe)

    # ------------------------------------------------------------------ readiness

    def ready(self, key: selectors.SelectorKey, mask: int, now: int) -> None:
        obj = key.data
        if isinstance(obj, _Probe):
            self._probe_result(obj, obj.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR), now)
            return
        c: _Conn = obj
        if c.phase == "tcp":
            code = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self._fail(c, T.connect_failure(errno.errorcode.get(code, str(code))), now)
            elif c.tls is not None:
                self._start_tls(c, now)
            else:
                self._opened(c, now)
            return
        if mask & selectors.EVENT_WRITE and not self._flush(c, now):
            return
        if mask & selectors.EVENT_READ and c.conn in self.conns:
            self._readable(c, now)

    def check_timeouts(self, now: int) -> None:
        for c in list(self.conns.values()):
            if c.phase == "tcp" and now >= c.deadline:
                self._fail(c, T.connect_timeout(), now)
            elif c.phase == "tls" and now >= c.deadline:
                self._fail(c, T.handshake_failure(MBEDTLS_ERR_SSL_TIMEOUT), now)
        for probe in list(self.probes.values()):
            if now >= probe.deadline:
                self._drop_probe(probe)
                self.fw.probe_done(probe.token, connected=False, errno_code=None, timed_out=True,
                                   elapsed_ms=now - probe.started, now=now)

    def next_deadline(self) -> int | None:
        times = [c.deadline for c in self.conns.values() if c.phase != "open"]
        times += [p.deadline for p in self.probes.values()]
        return min(times) if times else None

    # ------------------------------------------------------------------ TLS

    def _start_tls(self, c: _Conn, now: int) -> None:
        problem = T.pem_problem(c.tls)
        if problem is not None:
            self._fail(c, problem, now)
            return
        try:
            ctx = _context(c.tls)
        except (ssl.SSLError, ValueError) as exc:
            self._fail(c, T.setup_failure("ESP_ERR_MBEDTLS_X509_CRT_PARSE_FAILED", f"loading PEM failed: {exc}",
                                          0x2180), now)
            return
        c.inbio, c.outbio = ssl.MemoryBIO(), ssl.MemoryBIO()
        name = None if c.tls.skip_cn_check else (c.tls.common_name or c.host)
        c.ssl = ctx.wrap_bio(c.inbio, c.outbio, server_hostname=name)
        c.phase = "tls"
        self._modify(c, selectors.EVENT_READ)
        self._handshake(c, now)

    def _handshake(self, c: _Conn, now: int) -> None:
        try:
            c.ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._pump_tls(c, now)
            return
        except ssl.SSLCertVerificationError as exc:
            flags = T.flags_for_verify_code(exc.verify_code) | self._own_checks(c, _leaf_of_failed(c.ssl), now)
            self._fail(c, T.handshake_failure(T.CERT_VERIFY_FAILED, flags), now)
            return
        except ssl.SSLError as exc:
            self._fail(c, T.handshake_failure(T.stack_err_for_ssl_error(exc.reason, str(exc))), now)
            return
        leaf = c.ssl.getpeercert(binary_form=True)
        flags = self._own_checks(c, leaf, now)
        if flags:
            self._fail(c, T.handshake_failure(T.CERT_VERIFY_FAILED, flags), now)
            return
        if not self._pump_tls(c, now):
            return
        self._opened(c, now)

    def _own_checks(self, c: _Conn, leaf: bytes | None, now: int) -> int:
        if not leaf:
            return 0
        name = None if c.tls.skip_cn_check else (c.tls.common_name or c.host)
        return T.check_peer_certificate(leaf, expected_host=name, epoch=self.fw.epoch(now))

    def _pump_tls(self, c: _Conn, now: int) -> bool:
        """Move TLS records from the BIO to the socket. False if the connection died."""
        data = c.outbio.read()
        if data:
            c.outbuf += data
        return self._flush(c, now)

    # ------------------------------------------------------------------ data

    def _opened(self, c: _Conn, now: int) -> None:
        c.phase = "open"
        self._modify(c, selectors.EVENT_READ | (selectors.EVENT_WRITE if c.outbuf else 0))
        self.fw.transport_connected(c.conn, now)

    def _send(self, conn: int, data: bytes, now: int) -> None:
        c = self.conns.get(conn)
        if c is None or c.phase != "open":
            return
        if c.ssl is not None:
            c.ssl.write(data)
            self._pump_tls(c, now)
        else:
            c.outbuf += data
            self._flush(c, now)

    def _flush(self, c: _Conn, now: int) -> bool:
        while c.outbuf:
            try:
                sent = c.sock.send(c.outbuf)
            except BlockingIOError:
                break
            except OSError as exc:
                self._died(c, T.read_failure(errno.errorcode.get(exc.errno or 0, "EIO")), now)
                return False
            del c.outbuf[:sent]
        if c.conn in self.conns:
            self._modify(c, selectors.EVENT_READ | (selectors.EVENT_WRITE if c.outbuf else 0))
        return True

    def _readable(self, c: _Conn, now: int) -> None:
        try:
            data = c.sock.recv(_RECV)
        except BlockingIOError:
            return
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, "EIO")
            if c.phase == "tls":
                self._fail(c, T.handshake_failure(MBEDTLS_ERR_NET_CONN_RESET), now)
            else:
                self._died(c, T.read_failure(name), now)
            return
        if c.ssl is None:
            if data:
                self.fw.received(c.conn, data, now)
            else:
                self._died(c, T.closed_by_fin(), now)
            return
        if data:
            c.inbio.write(data)
        else:
            c.inbio.write_eof()
        if c.phase == "tls":
            if not data:
                self._fail(c, T.handshake_failure(0x7280), now)  # MBEDTLS_ERR_SSL_CONN_EOF
            else:
                self._handshake(c, now)
            return
        plain = bytearray()
        ended: T.Failure | None = None
        while True:
            try:
                chunk = c.ssl.read(_RECV)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                ended = T.closed_by_fin()
                break
            except ssl.SSLError as exc:
                ended = T.Failure(None, stack_err=T.stack_err_for_ssl_error(exc.reason, str(exc)),
                                  logs=(("E", "esp-tls-mbedtls", f"read error :-0x{0x7780:x}:"),))
                break
            if not chunk:
                ended = T.closed_by_fin()
                break
            plain += chunk
        if plain:
            self.fw.received(c.conn, bytes(plain), now)
        if c.conn in self.conns:
            self._pump_tls(c, now)  # TLS may owe the peer a record
        if ended is not None and c.conn in self.conns:
            self._died(c, ended, now)

    # ------------------------------------------------------------------ endings

    def _fail(self, c: _Conn, failure: T.Failure, now: int) -> None:
        """The transport could not be opened."""
        if c.outbio is not None:
            c.outbuf += c.outbio.read()  # the alert we owe the peer
        self._close(c.conn, flush=True)
        self.fw.transport_failed(c.conn, failure, now)

    def _died(self, c: _Conn, failure: T.Failure, now: int) -> None:
        self._close(c.conn, flush=False)
        self.fw.transport_closed(c.conn, failure, now)

    def _close(self, conn: int, *, flush: bool) -> None:
        c = self.conns.pop(conn, None)
        if c is None:
            return
        self._unregister(c.sock)
        if flush and c.outbuf:  # e.g. DISCONNECT, or a TLS alert: worth a short blocking write
            try:
                c.sock.settimeout(0.5)
                c.sock.sendall(c.outbuf)
            except OSError:
                pass
        c.sock.close()

    def _probe_result(self, probe: _Probe, code: int, now: int) -> None:
        self._drop_probe(probe)
        self.fw.probe_done(probe.token, connected=code == 0, errno_code=code or None, timed_out=False,
                           elapsed_ms=now - probe.started, now=now)

    def _drop_probe(self, probe: _Probe) -> None:
        self.probes.pop(probe.token, None)
        self._unregister(probe.sock)
        probe.sock.close()

    def _modify(self, c: _Conn, events: int) -> None:
        try:
            key = self.sel.get_key(c.sock)
        except KeyError:
            self.sel.register(c.sock, events, c)
            return
        if key.events != events:
            self.sel.modify(c.sock, events, c)

    def _unregister(self, sock: socket.socket) -> None:
        try:
            self.sel.unregister(sock)
        except (KeyError, ValueError):
            pass


def _context(s: T.TlsSettings) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = not s.skip_cn_check
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= X509_V_FLAG_NO_CHECK_TIME
    pem = s.ca_pem
    if pem.lstrip().startswith(b"-----"):
        ctx.load_verify_locations(cadata=pem.decode("ascii", "replace"))
    else:
        ctx.load_verify_locations(cadata=pem)
    if s.alpn:
        ctx.set_alpn_protocols(list(s.alpn))
    if s.client_cert_pem is not None:
        # ssl loads certificates from files only: a private directory, gone right after.
        with tempfile.TemporaryDirectory(prefix="mqtt-harness-vdev-") as tmp:
            cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
            for path, data in ((cert, s.client_cert_pem), (key, s.client_key_pem)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
            ctx.load_cert_chain(cert, key, password=s.key_password)
    return ctx


def _leaf_of_failed(sslobj: ssl.SSLObject) -> bytes | None:
    """The peer's certificate after a failed verification (OpenSSL keeps the unverified chain)."""
    try:
        chain = sslobj._sslobj.get_unverified_chain()  # private in 3.11/3.12, public from 3.13
        if chain:
            return chain[0].public_bytes(ssl._ssl.ENCODING_DER)
    except (AttributeError, ValueError, ssl.SSLError):
        pass
    return None
