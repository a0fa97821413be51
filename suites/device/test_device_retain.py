"""Retained messages the device publishes: the flag on the wire, the broker keeping it, and clearing it with an
empty retained message."""

from __future__ import annotations

import pytest

from harness.core.packets import Publish
from harness.expect import expect_nothing, expect_packet

from harness.device.wire import EVENT_TIMEOUT, start_device, wait_device_sent

pytestmark = [pytest.mark.device, pytest.mark.v311_only]


@pytest.mark.spec("MQTT-3.3.1-5")
async def test_retained_publish_carries_the_flag_and_is_kept_for_later_subscribers(
        dut, wire, device_config, client_factory, topic):
    await start_device(dut, device_config())
    mark = dut.mark()
    msg_id = await dut.aio.publish(topic + "state", b"on", qos=1, retain=True)
    await dut.aio.expect_event("PUBLISHED", msg_id=msg_id, timeout=EVENT_TIMEOUT, since=mark)
    [sent] = await wait_device_sent(wire, Publish)
    assert sent.retain, "retain=true was requested but the device's PUBLISH has RETAIN 0"
    late = await client_factory()
    await late.subscribe(topic + "state", qos=1)
    await expect_packet(late, Publish, topic=topic + "state", payload=b"on", retain=True)
    await dut.aio.publish(topic + "state", b"", qos=1, retain=True)  # leave no retained message behind


@pytest.mark.spec("MQTT-3.3.1-10", "MQTT-3.3.1-11")
async def test_empty_retained_publish_clears_the_retained_message(dut, wire, device_config, client_factory, topic):
    await start_device(dut, device_config())
    mark = dut.mark()
    first = await dut.aio.publish(topic + "state", b"on", qos=1, retain=True)
    await dut.aio.expect_event("PUBLISHED", msg_id=first, timeout=EVENT_TIMEOUT, since=mark)
    clear = await dut.aio.publish(topic + "state", b"", qos=1, retain=True)
    await dut.aio.expect_event("PUBLISHED", msg_id=clear, timeout=EVENT_TIMEOUT, since=mark)
    sent = await wait_device_sent(wire, Publish, 2)
    assert [(p.payload, p.retain) for p in sent] == [(b"on", True), (b"", True)]
    late = await client_factory()
    await late.subscribe(topic + "state", qos=1)
    await expect_nothing(late)  # the SUBACK came back: a retained message would have arrived before it
