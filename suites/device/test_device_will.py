"""The device's will: published by the broker when the device vanishes, not when it disconnects cleanly."""

from __future__ import annotations

import pytest

from harness.core.packets import Disconnect, Publish
from harness.expect import expect_nothing, expect_packet

from harness.device.wire import EVENT_TIMEOUT, start_device, wait_device_sent, will

pytestmark = [pytest.mark.device, pytest.mark.v311_only]


@pytest.mark.spec("MQTT-3.1.2-8", "MQTT-3.1.2-16")
async def test_will_is_published_when_the_device_vanishes(dut, wire, device_config, client_factory, topic):
    watcher = await client_factory()
    await watcher.subscribe(topic + "status", qos=1)
    await start_device(dut, device_config(last_will=will(topic + "status", b"lost", qos=1), disable_auto_reconnect=True))
    wire.close_connection(wire.connections[-1].id, reset=True)  # the device's link drops without a DISCONNECT
    await expect_packet(watcher, Publish, topic=topic + "status", payload=b"lost")


@pytest.mark.spec("MQTT-3.1.2-10", "MQTT-3.14.4-3")
async def test_no_will_after_the_device_disconnects_cleanly(dut, wire, device_config, client_factory, topic):
    watcher = await client_factory()
    await watcher.subscribe(topic + "status", qos=1)
    await start_device(dut, device_config(last_will=will(topic + "status", b"lost", qos=1), disable_auto_reconnect=True))
    mark = dut.mark()
    await dut.aio.disconnect()
    await wait_device_sent(wire, Disconnect)
    await dut.aio.expect_event("DISCONNECTED", timeout=EVENT_TIMEOUT, since=mark)
    await wire.wait_closed_async(wire.connections[-1].id)
    await expect_nothing(watcher)
