"""The client_factory fixture: connected reference clients for one test, all closed and logged when it ends."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from harness.brokers.broker import MQTT
from harness.client import Client
from harness.core.codec import summary
from harness.errors import HarnessError
from harness.plugin.brokers import BrokerUnderTest

MISSING: Any = object()
CLOSE_TIMEOUT = 2.0
MAX_LOGGED_PACKETS = 2000  # per client in a report; the rest is summarised in one line


class ClientFactory:
    """`await client_factory(kind="mqtt", version=None, **client_kwargs)` -> a connected harness.client.Client.

    kind       listener kind to connect to: mqtt, mqtts, mqtts-mtls, ws, wss (TLS options come from the broker)
    version    MQTT version; default: the test's mqtt_version
    connect    False returns the client unconnected (call `await client.open()`, e.g. to check a refusal)
    cert       client certificate on mqtts-mtls: "client", "client_untrusted", "client_expired" or None
    name       label in logs and reports (default c1, c2, ...)
    url        connect here instead of the broker's `kind` listener, e.g. a proxy in front of it (TLS options
               still follow `kind`)
    Anything else goes to harness.client.Client (client_id, clean, keepalive, will, properties, manual_acks, ...).
    """

    def __init__(self, broker: BrokerUnderTest, version: str | None, timeout: float):
        self.broker = broker
        self.version = version or "3.1.1"
        self.timeout = timeout
        self.clients: list[Client] = []

    async def __call__(self, kind: str = MQTT, version: str | None = None, *, connect: bool = True,
                       cert: str | None = "client", name: str | None = None, tls: Any = MISSING,
                       url: str | None = None, **kwargs: Any) -> Client:
        for key, value in self.broker.credentials.items():
            kwargs.setdefault(key, value)
        kwargs.setdefault("timeout", self.timeout)
        client = Client(url or self.broker.url(kind), version=version or self.version,
                        tls=self.broker.tls(kind, cert) if tls is MISSING else tls,
                        name=name or f"c{len(self.clients) + 1}", **kwargs)
        self.clients.append(client)
        if connect:
            await client.open()
        return client

    async def close_all(self) -> None:
        """DISCONNECT every client still connected (bounded wait); release the rest."""
        async def close(client: Client) -> None:
            with contextlib.suppress(HarnessError, OSError, asyncio.TimeoutError):
                if client.connected:
                    await asyncio.wait_for(client.disconnect(timeout=CLOSE_TIMEOUT), CLOSE_TIMEOUT)
                else:
                    await asyncio.wait_for(client.close(), CLOSE_TIMEOUT)

        await asyncio.gather(*(close(c) for c in self.clients))


def client_logs(clients: list[Client], *, raw: bool) -> list[dict[str, Any]]:
    """Report ClientLog dicts for `clients`; `raw` adds each packet's bytes (hex), kept for failures."""
    logs = []
    for client in clients:
        entries = client.log.entries
        t0 = entries[0].time if entries else 0.0
        packets = []
        for entry in entries[:MAX_LOGGED_PACKETS]:
            packet = {"t": round(entry.time - t0, 6), "dir": entry.direction, "conn": entry.connection,
                      "packet": summary(entry.packet) if entry.packet is not None else None, "error": entry.error}
            if raw:
                packet["raw"] = entry.raw.hex()
            packets.append(packet)
        if len(entries) > MAX_LOGGED_PACKETS:
            packets.append({"t": round(entries[-1].time - t0, 6), "dir": "in", "conn": 0, "packet": None,
                            "error": f"{len(entries) - MAX_LOGGED_PACKETS} more packets not kept in the report"})
        logs.append({"name": client.name, "client_id": client.client_id, "url": client.url.display(),
                     "mqtt_version": {3: "3.1", 4: "3.1.1", 5: "5"}[client.version], "packets": packets})
    return logs


def format_logs(clients: list[Client]) -> str:
    """Every client's packet log as text, for the terminal on failure."""
    return "\n\n".join(f"--- {c.name} ({c.client_id} at {c.url.display()}) ---\n{c.log.format() or '(no packets)'}"
                       for c in clients)
