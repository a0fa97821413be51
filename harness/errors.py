"""Error hierarchy shared by the core, the client and the drivers.

Connection failures say which layer failed (DNS, TCP, TLS, WebSocket, MQTT) so that a user
reading one line knows where to look.
"""

from __future__ import annotations


class HarnessError(Exception):
    """Base of every error the harness raises on purpose."""


class ProtocolError(HarnessError):
    """Bytes or a packet that break the MQTT spec.

    `statement` is the OASIS statement ID (e.g. "MQTT-1.5.4-1"), `data` the offending bytes.
    """

    def __init__(self, message: str, statement: str | None = None, data: bytes = b"", reason_code: int = 0x81):
        self.statement = statement
        self.data = bytes(data)
        self.reason_code = reason_code  # v5: 0x81 Malformed Packet or 0x82 Protocol Error
        if not statement:
            text = message
        elif statement.startswith("MQTT-"):
            text = f"[{statement}] {message}"
        else:  # a spec section: the rule has no tagged statement
            text = f"{message} (spec {statement})"
        if data:
            shown = self.data[:64].hex(" ")
            text += f" (bytes: {shown}{' …' if len(self.data) > 64 else ''})"
        super().__init__(text)


class ConnectError(HarnessError):
    """Could not establish an MQTT session. Subclasses name the layer that failed."""

    layer = "connect"

    def __init__(self, message: str, url: str | None = None):
        self.url = url
        super().__init__(f"{self.layer}: {message}" + (f" ({url})" if url else ""))


class UrlError(ConnectError):
    layer = "url"


class DnsError(ConnectError):
    layer = "dns"


class TcpError(ConnectError):
    layer = "tcp"


class TlsError(ConnectError):
    layer = "tls"


class WebSocketError(ConnectError):
    layer = "websocket"


class MqttConnectError(ConnectError):
    """The broker answered CONNECT with a refusal, or closed the connection before CONNACK."""

    layer = "mqtt"

    def __init__(self, message: str, url: str | None = None, reason_code: int | None = None):
        self.reason_code = reason_code
        super().__init__(message, url)


class ConnectionClosed(HarnessError):
    """The peer closed the connection (or it was reset) while we waited for something."""


class Timeout(HarnessError, TimeoutError):
    """A wait ran out. The message says what was awaited and for how long."""
