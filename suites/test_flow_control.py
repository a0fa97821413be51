"""MQTT 5 flow control (§4.9) of the broker as sender, over many packets on one connection: its send quota starts
at our Receive Maximum, QoS 2 flows hold it until PUBCOMP, and at quota 0 the broker still answers everything else.
The basic Receive Maximum cases (RECEIVE_MAXIMUM 2, QoS 1) are in test_mqtt5.py."""

from __future__ import annotations

import pytest

from harness.core.packets import Pubcomp, Publish, Pubrec, Pubrel, Suback, Unsuback
from harness.expect import expect_nothing, expect_packet

pytestmark = pytest.mark.v5_only


async def quota_of_one(client_factory, topic: str, qos: int, count: int):
    """A subscriber with Receive Maximum 1 acknowledging by hand, and `count` messages published to it."""
    sub = await client_factory(name="sub", manual_acks=True, properties={"receive_maximum": 1})
    pub = await client_factory(name="pub")
    await sub.subscribe(topic + "a", qos=qos)
    for n in range(count):
        await pub.publish(topic + "a", b"%d" % n, qos=qos)
    return sub, pub


@pytest.mark.spec("MQTT-4.9.0-1", "MQTT-4.9.0-2")
@pytest.mark.requires(qos1=True)
async def test_receive_maximum_1_allows_one_unacknowledged_qos1_message(client_factory, topic):
    sub, pub = await quota_of_one(client_factory, topic, 1, 3)
    for n in range(3):
        message = await expect_packet(sub, Publish, topic=topic + "a", payload=b"%d" % n, qos=1)
        await expect_nothing(sub, after=pub)  # the quota is 0 until this one is acknowledged
        sub.ack(message)


@pytest.mark.spec("MQTT-4.9.0-2", "§4.9")
@pytest.mark.requires(qos2=True)
async def test_qos2_message_holds_the_send_quota_until_pubcomp(client_factory, topic):
    """A PUBREC does not give the quota back; the PUBCOMP that ends the flow does (§4.9)."""
    sub, pub = await quota_of_one(client_factory, topic, 2, 2)
    first = await expect_packet(sub, Publish, topic=topic + "a", payload=b"0", qos=2)
    sub.ack(first)  # PUBREC
    await expect_packet(sub, Pubrel, packet_id=first.packet_id)
    await expect_nothing(sub, after=pub)  # quota still 0: the flow is not complete
    sub.complete(first.packet_id)  # PUBCOMP
    second = await expect_packet(sub, Publish, topic=topic + "a", payload=b"1", qos=2)
    sub.ack(second)
    await expect_packet(sub, Pubrel, packet_id=second.packet_id)
    sub.complete(second.packet_id)


@pytest.mark.spec("MQTT-4.9.0-3", "MQTT-3.3.4-10")
@pytest.mark.requires(qos1=True)
async def test_broker_answers_other_packets_while_its_send_quota_is_zero(client_factory, topic):
    sub, pub = await quota_of_one(client_factory, topic, 1, 2)
    held = await expect_packet(sub, Publish, topic=topic + "a", payload=b"0")
    # Quota 0 towards sub: its own SUBSCRIBE, UNSUBSCRIBE, PINGREQ and QoS 1 PUBLISH are still answered.
    suback = await sub.subscribe(topic + "other", qos=1)
    assert isinstance(suback, Suback) and suback.reason_codes == [1]
    assert isinstance(await sub.unsubscribe(topic + "other"), Unsuback)
    await sub.ping()
    await sub.publish(topic + "elsewhere", b"from sub", qos=1)  # waits for the broker's PUBACK
    sub.ack(held)
    await expect_packet(sub, Publish, topic=topic + "a", payload=b"1")


@pytest.mark.spec("MQTT-4.9.0-3")
@pytest.mark.requires(qos2=True)
async def test_broker_completes_our_qos2_flow_while_its_send_quota_is_zero(client_factory, topic):
    """Our QoS 2 PUBLISH to the broker gets PUBREC and PUBCOMP while the broker's quota towards us is 0."""
    sub, pub = await quota_of_one(client_factory, topic, 1, 2)
    await expect_packet(sub, Publish, topic=topic + "a", payload=b"0")
    sub.publish_nowait(topic + "elsewhere", b"qos2 from sub", qos=2)
    pubrec = await expect_packet(sub, Pubrec)
    sub.release(pubrec.packet_id)  # manual acks: we send the PUBREL
    await expect_packet(sub, Pubcomp, packet_id=pubrec.packet_id)
    await expect_nothing(sub, after=pub)
