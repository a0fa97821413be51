"""QoS 0, 1 and 2 in both directions: the device as sender (what it put on the wire, what it reported) and as
receiver (its acks on the wire, the DATA it reported), exactly once at QoS 2."""

from __future__ import annotations

import pytest

from harness.core.packets import Puback, Pubcomp, Publish, Pubrec, Pubrel
from harness.expect import expect_nothing, expect_packet
from harness.proxy import DOWNSTREAM, when

from harness.device.wire import EVENT_TIMEOUT, device_got, device_sent, start_device, wait_device_sent, wire_barrier

pytestmark = [pytest.mark.device, pytest.mark.v311_only]
QOS = [pytest.param(q, id=f"qos{q}") for q in (0, 1, 2)]


@pytest.mark.spec("MQTT-4.3.1-1", "MQTT-4.3.2-1", "MQTT-4.3.3-1", "MQTT-3.3.1-2")
@pytest.mark.parametrize("qos", QOS)
async def test_device_publish_reaches_the_peer_once_at_its_qos(dut, wire, device_config, client_factory, topic, qos):
    peer = await client_factory()
    await peer.subscribe(topic + "up", qos=2)
    await start_device(dut, device_config())
    mark = dut.mark()
    msg_id = await dut.aio.publish(topic + "up", b"from-device", qos=qos)
    [sent] = await wait_device_sent(wire, Publish)
    assert (sent.qos, sent.dup, sent.payload) == (qos, False, b"from-device")
    if qos == 0:
        assert msg_id == 0, f"esp_mqtt_client_publish at QoS 0 returns 0 when connected, got {msg_id}"
    else:
        assert msg_id > 0 and sent.packet_id == msg_id, f"returned msg_id {msg_id}, wire packet id {sent.packet_id}"
        await dut.aio.expect_event("PUBLISHED", msg_id=msg_id, timeout=EVENT_TIMEOUT, since=mark)
    await expect_packet(peer, Publish, topic=topic + "up", payload=b"from-device", qos=qos)
    await expect_nothing(peer)
    if qos == 2:
        assert [p.packet_id for p in device_sent(wire, Pubrel)] == [msg_id]


@pytest.mark.spec("MQTT-4.3.2-2", "MQTT-4.3.3-2")
@pytest.mark.parametrize("qos", QOS)
async def test_device_receives_at_its_subscription_qos_and_acknowledges(
        dut, wire, device_config, client_factory, topic, qos):
    await start_device(dut, device_config())
    mark = dut.mark()
    sub_id = await dut.aio.subscribe(topic + "down", qos=qos)
    await dut.aio.expect_event("SUBSCRIBED", msg_id=sub_id, timeout=EVENT_TIMEOUT, since=mark)
    peer = await client_factory()
    await peer.publish(topic + "down", b"to-device", qos=qos)
    message = await dut.aio.expect_message(topic + "down", timeout=EVENT_TIMEOUT)
    assert (message.payload, message.qos) == (b"to-device", qos)
    if qos:
        [given] = [p for p in device_got(wire, Publish)]
        ack = Puback if qos == 1 else Pubrec
        [acked] = await wait_device_sent(wire, ack)
        assert acked.packet_id == given.packet_id
    if qos == 2:
        [done] = await wait_device_sent(wire, Pubcomp)
        assert done.packet_id == given.packet_id


@pytest.mark.spec("MQTT-4.3.3-2")
async def test_qos2_publish_resent_before_pubrel_is_delivered_to_the_application_once(
        dut, wire, device_config, client_factory, topic):
    wire.add_rule(when("PUBLISH", direction=DOWNSTREAM, qos=2, scope="global", times=1).duplicate(dup=True))
    await start_device(dut, device_config())
    mark = dut.mark()
    sub_id = await dut.aio.subscribe(topic + "once", qos=2)
    await dut.aio.expect_event("SUBSCRIBED", msg_id=sub_id, timeout=EVENT_TIMEOUT, since=mark)
    peer = await client_factory()
    await peer.publish(topic + "once", b"exactly-once", qos=2)
    await wait_device_sent(wire, Pubcomp)
    assert len(device_got(wire, Publish)) == 2, "the proxy should have handed the device the PUBLISH twice"
    await wire_barrier(wire, dut)
    data = [m for m in dut.messages if m.topic == topic + "once"]
    assert len(data) == 1, f"QoS 2 message reached the application {len(data)} times"


@pytest.mark.spec("§4.3")
async def test_publish_return_values_while_disconnected(dut, wire, device_config, client_factory, topic):
    """esp-mqtt's contract: QoS 0 while disconnected is lost (-1); QoS 1 is queued (its msg_id) and sent once
    the client connects."""
    peer = await client_factory()
    await peer.subscribe(topic + "queued", qos=1)
    await dut.aio.init(device_config())
    assert await dut.aio.publish(topic + "queued", b"lost", qos=0) == -1
    queued = await dut.aio.publish(topic + "queued", b"kept", qos=1)
    assert queued > 0
    mark = dut.mark()
    await dut.aio.start()
    await dut.aio.expect_event("PUBLISHED", msg_id=queued, timeout=EVENT_TIMEOUT, since=mark)
    await expect_packet(peer, Publish, topic=topic + "queued", payload=b"kept")
    await expect_nothing(peer)


@pytest.mark.spec("§4.3")
async def test_publish_over_the_outbox_limit_returns_minus_two(dut, wire, device_config, topic):
    await dut.aio.init(device_config(outbox_limit=64))
    assert await dut.aio.publish(topic + "big", b"x" * 200, qos=1) == -2
    assert await dut.aio.outbox_size() == 0
