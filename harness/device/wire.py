"""What device suites use to check a device against the wire (suites/device): config builders, waits on the
proxy's tap, barriers. The fixtures that hand these out are in suites/device/conftest.py.

    config = build_config(uri=..., keepalive=2)   an esp_mqtt_client_config_t as JSON (flat names or dotted paths)
    await start_device(dut, config)               INIT + START, then the CONNECTED event
    device_sent(wire, Publish)                    what the device sent, decoded, oldest first
"""

from __future__ import annotations

import asyncio
import copy
import time
from typing import Any

from harness.proxy.direction import DOWNSTREAM, UPSTREAM
from harness.proxy.tap import RECEIVED
from harness.proxy.threaded import ThreadedProxy

# Timeouts of device tests: a real board on Wi-Fi answers in tens of milliseconds; these leave room for a
# loaded CI runner. They bound waits for events, never pace a test.
EVENT_TIMEOUT = 10.0
# Defaults the suites give the device so a failure shows within seconds; each test overrides what it is about.
KEEPALIVE = 30  # seconds: long enough that no PINGREQ lands in a test that is not about keepalive
RECONNECT_MS = 300
NETWORK_TIMEOUT_MS = 3000

# Flat names for the config fields tests set most, and where they sit in esp_mqtt_client_config_t.
FIELDS = {
    "uri": "broker.address.uri",
    "ca": "broker.verification.certificate",
    "skip_cert_common_name_check": "broker.verification.skip_cert_common_name_check",
    "common_name": "broker.verification.common_name",
    "client_id": "credentials.client_id",
    "username": "credentials.username",
    "password": "credentials.authentication.password",
    "cert": "credentials.authentication.certificate",
    "key": "credentials.authentication.key",
    "keepalive": "session.keepalive",
    "disable_clean_session": "session.disable_clean_session",
    "protocol_ver": "session.protocol_ver",
    "last_will": "session.last_will",
    "retransmit_ms": "session.message_retransmit_timeout",
    "reconnect_timeout_ms": "network.reconnect_timeout_ms",
    "timeout_ms": "network.timeout_ms",
    "disable_auto_reconnect": "network.disable_auto_reconnect",
    "buffer_size": "buffer.size",
    "outbox_limit": "outbox.limit",
}


def _set(config: dict, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = config
    for name in parents:
        node = node.setdefault(name, {})
    if value is None:
        node.pop(leaf, None)
    else:
        node[leaf] = value


def build_config(base: dict | None = None, **fields) -> dict:
    """An esp_mqtt_client_config_t JSON: flat FIELDS names, or dotted paths given as {"a.b": v} in `base`'s
    place. A None value removes the field (the device then uses esp-mqtt's default)."""
    config = copy.deepcopy(base or {})
    for name, value in fields.items():
        path = FIELDS.get(name)
        if path is None:
            raise TypeError(f"device_config: unknown field {name!r}; known: {', '.join(FIELDS)} "
                            "(or pass raw={'dotted.path': value})")
        _set(config, path, value)
    return config


def will(topic: str, payload: bytes = b"gone", qos: int = 1, retain: bool = False) -> dict:
    from harness.device.lines import b64

    return {"topic": topic, "msg_b64": b64(payload), "qos": qos, "retain": retain}


def device_url(wire: ThreadedProxy, dut_host: str, scheme: str = "mqtt") -> str:
    host, port = wire.address
    return f"{scheme}://{dut_host if host in ('0.0.0.0', '::') else host}:{port}"


async def start_device(dut, config: dict, *, timeout: float = EVENT_TIMEOUT):
    """INIT and START the device's client; return its MQTT_EVENT_CONNECTED event."""
    await dut.aio.init(config)
    mark = dut.mark()
    await dut.aio.start()
    return await dut.aio.expect_event("CONNECTED", timeout=timeout, since=mark)


def device_entries(wire: ThreadedProxy, kind: type | None = None, connection: int | None = None):
    """Tap entries of packets the device sent, as it sent them (before any rule), oldest first."""
    return wire.tap.select(UPSTREAM, kind, stage=RECEIVED, connection=connection)


def device_sent(wire: ThreadedProxy, kind: type | None = None, connection: int | None = None) -> list:
    return [e.packet for e in device_entries(wire, kind, connection) if e.packet is not None]


def device_got(wire: ThreadedProxy, kind: type | None = None, connection: int | None = None) -> list:
    """Packets the device was given (after the proxy's rules), oldest first."""
    return wire.tap.packets(DOWNSTREAM, kind, connection=connection)


async def wait_device_sent(wire: ThreadedProxy, kind: type, count: int = 1, *, match=None,
                           timeout: float = EVENT_TIMEOUT, connection: int | None = None) -> list:
    """Wait until the device has sent `count` packets of `kind` (matching `match`); return them."""
    def ready():
        found = [p for p in device_sent(wire, kind, connection) if match is None or match(p)]
        return found if len(found) >= count else None
    return await wire.wait_until_async(ready, timeout, f"{count} {kind.__name__} from the device")


async def wire_barrier(wire: ThreadedProxy, dut, *, timeout: float = EVENT_TIMEOUT) -> None:
    """Everything the device had to say about what happened so far has been said: the device answered a PING over
    serial (so every event before it is read). Wire-level silence is checked by the tests with PINGREQ rounds."""
    await dut.aio.ping()


async def next_ping_round(wire: ThreadedProxy, *, timeout: float = EVENT_TIMEOUT, connection: int | None = None):
    """Wait for the device's next PINGREQ/PINGRESP round trip on the wire: a barrier that proves the device had
    nothing else queued before it (esp-mqtt sends queued packets before its keepalive)."""
    from harness.core.packets import Pingreq, Pingresp

    seen = len(device_sent(wire, Pingreq, connection))
    answered = len(device_got(wire, Pingresp, connection))
    await wire.wait_until_async(
        lambda: len(device_sent(wire, Pingreq, connection)) > seen
        and len(device_got(wire, Pingresp, connection)) > answered, timeout, "a PINGREQ/PINGRESP round trip")


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:])]


async def pace(interval: float) -> None:
    """Spacing of generated traffic (a load pattern, not a wait for an event)."""
    await asyncio.sleep(interval)


def now() -> float:
    return time.monotonic()
