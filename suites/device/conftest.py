"""Device suites: the device under test (--dut) talks to the broker under test through our proxy (`wire`), whose tap
is the ground truth for what the device really sent; the reference client is its peer. The device's own events
(MQTT_EVENT_*) are checked against that wire view. Helpers: harness.device.wire.

    dut.aio.<verb>(...)              any Dut method, awaited (harness.device.serial_driver.Dut)
    config = device_config(...)      an esp_mqtt_client_config_t as JSON, pointed at the wire
    await connect_device(...)        configure, start, wait for CONNECTED
"""

from __future__ import annotations

import hashlib

import pytest

from harness.device.wire import (
    KEEPALIVE, NETWORK_TIMEOUT_MS, RECONNECT_MS, _set, build_config, device_url, start_device,
)
from harness.proxy.fixtures import proxy  # noqa: F401 - the `proxy` fixture `wire` builds on
from harness.proxy.threaded import ThreadedProxy


@pytest.fixture
def dut_host(request) -> str:
    return request.config.getoption("dut_host")


@pytest.fixture
def wire(proxy, broker, dut_host) -> ThreadedProxy:  # noqa: F811 - the imported fixture
    """Our proxy in front of the broker's plain MQTT listener, listening where the device can reach it."""
    return proxy(broker.url("mqtt"), listen=f"{dut_host}:0")


@pytest.fixture
def device_client_id(request) -> str:
    digest = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:10]
    return f"dut-{digest}"


@pytest.fixture
def device_config(wire, dut_host, device_client_id):
    """`device_config(**fields)` -> config dict pointed at `wire`, with a per-test client id, short reconnect and
    network timeouts, and keepalive 30 s; any field can be overridden (None: leave it to esp-mqtt's default)."""
    def make(raw: dict | None = None, **fields) -> dict:
        defaults = {"uri": device_url(wire, dut_host), "client_id": device_client_id, "keepalive": KEEPALIVE,
                    "reconnect_timeout_ms": RECONNECT_MS, "timeout_ms": NETWORK_TIMEOUT_MS}
        config = build_config(**{**defaults, **fields})
        for path, value in (raw or {}).items():
            _set(config, path, value)
        return config
    return make


@pytest.fixture
def connect_device(dut, device_config):
    """`await connect_device(**fields)`: configure, start and wait for CONNECTED (returns the event)."""
    async def go(raw: dict | None = None, **fields):
        return await start_device(dut, device_config(raw, **fields))
    return go
