"""Payloads that are large and binary, both ways: every byte value, and messages larger than the device's MQTT
buffer (esp-mqtt hands them over in pieces) and than a serial line (the protocol chunks them with a CRC)."""

from __future__ import annotations

import os

import pytest

from harness.core.packets import Publish
from harness.expect import expect_packet

from harness.device.wire import EVENT_TIMEOUT, start_device, wait_device_sent

pytestmark = [pytest.mark.device, pytest.mark.v311_only]
SIZES = [pytest.param(256, id="every-byte"), pytest.param(20_000, id="20k")]


def _payload(size: int) -> bytes:
    return bytes(range(256)) if size == 256 else os.urandom(size)


@pytest.mark.spec("MQTT-4.3.2-1")
@pytest.mark.parametrize("size", SIZES)
async def test_binary_payload_from_the_device_arrives_intact(dut, wire, device_config, client_factory, topic, size):
    payload = _payload(size)
    peer = await client_factory()
    await peer.subscribe(topic + "bin", qos=1)
    await start_device(dut, device_config(buffer_size=1024))
    mark = dut.mark()
    msg_id = await dut.aio.publish(topic + "bin", payload, qos=1)
    await dut.aio.expect_event("PUBLISHED", msg_id=msg_id, timeout=EVENT_TIMEOUT, since=mark)
    [sent] = await wait_device_sent(wire, Publish)
    assert sent.payload == payload, f"wire payload differs ({len(sent.payload)} of {size} bytes)"
    await expect_packet(peer, Publish, topic=topic + "bin", payload=payload)


@pytest.mark.spec("MQTT-4.3.2-2")
@pytest.mark.parametrize("size", SIZES)
async def test_binary_payload_to_the_device_is_reported_whole(dut, wire, device_config, client_factory, topic, size):
    payload = _payload(size)
    await start_device(dut, device_config(buffer_size=1024))
    mark = dut.mark()
    sub = await dut.aio.subscribe(topic + "bin", qos=1)
    await dut.aio.expect_event("SUBSCRIBED", msg_id=sub, timeout=EVENT_TIMEOUT, since=mark)
    peer = await client_factory()
    await peer.publish(topic + "bin", payload, qos=1)
    message = await dut.aio.expect_message(topic + "bin", timeout=EVENT_TIMEOUT)
    assert message.payload == payload, f"device reported {len(message.payload)} of {size} bytes"
    pieces = [e for e in message.events]
    if size > 1024:
        assert len(pieces) >= size // 1024, f"a {size}-byte message in a 1024-byte buffer came as {len(pieces)} piece(s)"
