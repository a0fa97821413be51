"""ClientHello gates: an ALPN-routing or SNI-routing front end: a TCP relay in front of a TLS listener that reads the client's ClientHello (plain
text on the wire) and, when none of the offered ALPN protocols is one it serves, answers as an ALPN-enforcing TLS
server does: a fatal no_application_protocol alert (RFC 7301 §3.2), then closes. Otherwise it relays the
connection, ClientHello included, to the TLS listener behind it. AWS IoT Core routes port 443 like this.

With `server_names`, the gate refuses a ClientHello whose SNI is missing or not one of them with a fatal
unrecognized_name alert (RFC 6066 §3), as SNI-routed cloud brokers turn away clients that connect by IP address.

CPython's ssl module cannot refuse on ALPN (its server picks no protocol and carries on), hence this gate.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from harness.diagnose.serving import ThreadedServer

from harness.diagnose.slow_listener import _pump

NO_APPLICATION_PROTOCOL = 120
UNRECOGNIZED_NAME = 112


def alert_record(description: int) -> bytes:
    return bytes([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, description])  # TLS record: a fatal alert


ALERT = alert_record(NO_APPLICATION_PROTOCOL)


def client_hello_alpn(record: bytes) -> list[str] | None:
    """ALPN protocols offered in a TLS ClientHello record; None if the bytes are not a ClientHello."""
    ext = client_hello_extensions(record)
    if ext is None:
        return None
    data = ext.get(16)
    if data is None:
        return []
    names, i = [], 2
    while i < len(data):
        n = data[i]
        names.append(data[i + 1:i + 1 + n].decode("ascii", "replace"))
        i += 1 + n
    return names


def client_hello_sni(record: bytes) -> str | None:
    """The host name a ClientHello names (server_name extension), or None."""
    data = (client_hello_extensions(record) or {}).get(0)
    if not data or len(data) < 5 or data[2] != 0:
        return None
    n = int.from_bytes(data[3:5], "big")
    return data[5:5 + n].decode("ascii", "replace")


def client_hello_extensions(record: bytes) -> dict[int, bytes] | None:
    """Extension type -> data of a TLS ClientHello record; None if the bytes are not a ClientHello."""
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
        out = {}
        while pos + 4 <= end:
            kind, size = int.from_bytes(body[pos:pos + 2], "big"), int.from_bytes(body[pos + 2:pos + 4], "big")
            out[kind] = body[pos + 4:pos + 4 + size]
            pos += 4 + size
        return out
    except IndexError:
        return None


class AlpnGate(ThreadedServer):
    name = "alpn-gate"

    def __init__(self, upstream: tuple[str, int], protocols: list[str] | None = None, host: str = "127.0.0.1", *,
                 server_names: list[str] | None = None):
        self.upstream = upstream
        self.protocols = list(protocols) if protocols is not None else None  # None: ALPN not checked
        self.server_names = list(server_names) if server_names is not None else None  # None: SNI not checked
        self.host = host
        self.port: int | None = None
        self.refused = 0

    def start(self) -> AlpnGate:
        self._listen()
        return self

    def url(self) -> str:
        return f"mqtts://{self.host}:{self.port}"

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
            refuse = None
            if self.server_names is not None and client_hello_sni(record) not in self.server_names:
                refuse = UNRECOGNIZED_NAME
            offered = client_hello_alpn(record)
            if self.protocols is not None and offered is not None and not set(offered) & set(self.protocols):
                refuse = NO_APPLICATION_PROTOCOL
            if refuse is not None:
                self.refused += 1
                conn.sendall(alert_record(refuse))
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

    def __enter__(self) -> AlpnGate:
        return self.start()

