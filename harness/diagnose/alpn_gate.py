"""An ALPN-routing front end: a TCP relay in front of a TLS listener that reads the client's ClientHello (plain
text on the wire) and, when none of the offered ALPN protocols is one it serves, answers as an ALPN-enforcing TLS
server does: a fatal no_application_protocol alert (RFC 7301 §3.2), then closes. Otherwise it relays the
connection, ClientHello included, to the TLS listener behind it. AWS IoT Core routes port 443 like this.

CPython's ssl module cannot refuse on ALPN (its server picks no protocol and carries on), hence this gate.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from harness.diagnose.slow_listener import _pump

NO_APPLICATION_PROTOCOL = 120
ALERT = bytes([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, NO_APPLICATION_PROTOCOL])  # TLS record: fatal alert 120


def client_hello_alpn(record: bytes) -> list[str] | None:
    """ALPN protocols offered in a TLS ClientHello record; None if the bytes are not a ClientHello."""
    try:
        if record[0] != 0x16 or record[5] != 0x01:
            return None
        body = record[9:5 + int.from_bytes(record[3:5], "big")]
        pos = 2 + 32
        pos += 1 + body[pos]  # session id
        pos += 2 + int.from_bytes(body[pos:pos + 2], "big")  # cipher suites
        pos += 1 + body[pos]  # compression methods
        end = pos + 2 + int.from_bytes(body[pos:pos + 2], "big")
        pos += 2
        while pos + 4 <= end:
            kind, size = int.from_bytes(body[pos:pos + 2], "big"), int.from_bytes(body[pos + 2:pos + 4], "big")
            data = body[pos + 4:pos + 4 + size]
            pos += 4 + size
            if kind == 16:  # application_layer_protocol_negotiation
                names, i = [], 2
                while i < len(data):
                    n = data[i]
                    names.append(data[i + 1:i + 1 + n].decode("ascii", "replace"))
                    i += 1 + n
                return names
        return []
    except IndexError:
        return None


class AlpnGate:
    def __init__(self, upstream: tuple[str, int], protocols: list[str], host: str = "127.0.0.1"):
        self.upstream = upstream
        self.protocols = list(protocols)
        self.host = host
        self.port: int | None = None
        self.refused = 0
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> "AlpnGate":
        self._sock = socket.create_server((self.host, 0))
        self._sock.settimeout(0.1)
        self.port = self._sock.getsockname()[1]
        t = threading.Thread(target=self._run, daemon=True, name=f"alpn-gate-{self.port}")
        t.start()
        self._threads.append(t)
        return self

    def url(self) -> str:
        return f"mqtts://{self.host}:{self.port}"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            record = b""
            while len(record) < 5 or len(record) < 5 + int.from_bytes(record[3:5], "big"):
                data = conn.recv(65536)
                if not data:
                    conn.close()
                    return
                record += data
            offered = client_hello_alpn(record)
            if offered is not None and not set(offered) & set(self.protocols):
                self.refused += 1
                conn.sendall(ALERT)
                conn.close()
                return
            up = socket.create_connection(self.upstream, timeout=10)
            up.sendall(record)
            conn.settimeout(None)
            up.settimeout(None)
            other = threading.Thread(target=_pump, args=(up, conn), daemon=True)
            other.start()
            _pump(conn, up)
            other.join()
        except OSError:
            with contextlib.suppress(OSError):
                conn.close()

    def stop(self) -> None:
        self._stop.set()
        if self._sock is not None:
            self._sock.close()
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> "AlpnGate":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
