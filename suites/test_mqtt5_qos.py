"""MQTT 5 QoS flows with reason codes and message expiry, over several packets and connections: the broker's
acknowledgements use their packet's reason codes, a failing PUBACK/PUBREC ends a delivery for good, a refused QoS
2 packet id starts a new message, and message expiry never cuts a QoS 2 flow short (either direction)."""

from __future__ import annotations

import asyncio

import pytest

from harness.core.codec import summary
from harness.core.packets import Puback, Pubcomp, Publish, Pubrec, Pubrel
from harness.core.reason_codes import ALLOWED
from harness.expect import expect_nothing, expect_packet, received
from harness.packet_log import IN

pytestmark = pytest.mark.v5_only
QOS2 = pytest.mark.requires(qos2=True)
SHORT_EXPIRY = 1  # s: a Message Expiry Interval meant to pass during the test


def from_broker(client, kind) -> list:
    return [e.packet for e in client.log.entries if e.direction == IN and isinstance(e.packet, kind)]


@pytest.mark.spec("MQTT-3.4.2-1", "MQTT-3.5.2-1", "MQTT-3.6.2-1")
@QOS2
async def test_broker_acknowledgements_use_their_packets_reason_codes(client_factory, topic):
    """With and without subscribers (0x10 No matching subscribers is the usual non-zero code)."""
    client = await client_factory(name="client")
    await client.subscribe(topic + "mine", qos=2)
    for name in ("nobody", "mine"):
        await client.publish(topic + name, b"1", qos=1)
        await client.publish(topic + name, b"2", qos=2)
    await expect_packet(client, Publish, topic=topic + "mine", payload=b"1")
    await expect_packet(client, Publish, topic=topic + "mine", payload=b"2")
    await client.ping()
    assert not client.violations, client.violations  # the decoder checks each code against §2.4 too
    for kind, number in ((Puback, 4), (Pubrec, 5), (Pubrel, 6), (Pubcomp, 7)):
        packets = from_broker(client, kind)
        assert packets, f"no {kind.__name__.upper()} from the broker"
        for p in packets:
            assert p.reason_code in ALLOWED[number], summary(p)


@pytest.mark.spec("MQTT-4.4.0-2")
@pytest.mark.requires(qos1=True)
async def test_message_refused_with_puback_0x80_is_not_resent_on_reconnect(client_factory, topic, persistent,
                                                                           end_session):
    sub = await client_factory(name="sub", manual_acks=True, **persistent)
    pub = await client_factory(name="pub")
    await sub.subscribe(topic + "a", qos=1)
    await pub.publish(topic + "a", b"refused", qos=1)
    message = await expect_packet(sub, Publish, topic=topic + "a", payload=b"refused")
    sub.ack(message, reason_code=0x80)  # Unspecified error: acknowledged all the same
    await sub.ping()
    connack = await sub.reconnect(clean=False)
    assert connack.session_present
    await expect_nothing(sub, after=pub)
    assert [m.payload for m in received(sub, Publish)] == [b"refused"]
    await end_session(sub)


@pytest.mark.spec("MQTT-4.4.0-2")
@QOS2
async def test_message_refused_with_pubrec_0x80_is_not_resent_nor_released(client_factory, topic, persistent,
                                                                           end_session):
    sub = await client_factory(name="sub", manual_acks=True, **persistent)
    pub = await client_factory(name="pub")
    await sub.subscribe(topic + "a", qos=2)
    await pub.publish(topic + "a", b"refused", qos=2)
    message = await expect_packet(sub, Publish, topic=topic + "a", payload=b"refused")
    sub.ack(message, reason_code=0x80)  # a failing PUBREC ends the flow: no PUBREL follows
    await expect_nothing(sub, kinds=(Publish, Pubrel), after=pub)
    connack = await sub.reconnect(clean=False)
    assert connack.session_present
    await expect_nothing(sub, kinds=(Publish, Pubrel), after=pub)
    assert [m.payload for m in received(sub, Publish)] == [b"refused"]
    await end_session(sub)


@pytest.mark.spec("MQTT-4.3.3-7")
@QOS2
async def test_qos2_message_sent_before_it_expired_is_resent_after(client_factory, topic, persistent, end_session,
                                                                   timer_slack):
    """The broker sent the PUBLISH; its expiry then passes with no PUBREC. On reconnect the broker resends it (it
    may not apply expiry to a message whose PUBLISH went out)."""
    sub = await client_factory(name="sub", manual_acks=True, **persistent)
    pub = await client_factory(name="pub")
    await sub.subscribe(topic + "a", qos=2)
    await pub.publish(topic + "a", b"sent", qos=2, properties={"message_expiry_interval": SHORT_EXPIRY})
    first = await expect_packet(sub, Publish, topic=topic + "a", payload=b"sent")
    await sub.close()  # no PUBREC
    await asyncio.sleep(SHORT_EXPIRY + timer_slack)  # models the subscriber's absence past the message's expiry
    connack = await sub.reconnect(clean=False)
    assert connack.session_present
    again = await expect_packet(sub, Publish, topic=topic + "a", payload=b"sent", dup=True, packet_id=first.packet_id)
    sub.ack(again)
    await expect_packet(sub, Pubrel, packet_id=first.packet_id)
    sub.complete(first.packet_id)
    await end_session(sub)


@pytest.mark.spec("MQTT-4.3.3-13")
@QOS2
async def test_broker_completes_our_qos2_flow_after_the_message_expired(client_factory, topic, timer_slack):
    """We publish QoS 2 with a short expiry and send PUBREL only after it passed: the broker still answers PUBCOMP."""
    client = await client_factory(manual_acks=True)
    client.publish_nowait(topic + "a", b"expires", qos=2, properties={"message_expiry_interval": SHORT_EXPIRY})
    pubrec = await expect_packet(client, Pubrec)
    await asyncio.sleep(SHORT_EXPIRY + timer_slack)  # models a slow publisher: the message expires in between
    client.release(pubrec.packet_id)
    await expect_packet(client, Pubcomp, packet_id=pubrec.packet_id)


@pytest.mark.spec("MQTT-4.3.3-7", "MQTT-4.4.0-1")
@QOS2
async def test_qos2_pubrel_owed_after_the_message_expired_is_resent(client_factory, topic, persistent, end_session,
                                                                    timer_slack):
    """We sent PUBREC; the message's expiry passes before the PUBREL reaches us. On reconnect the broker resends the
    PUBREL: the flow under way is not cut short by expiry."""
    sub = await client_factory(name="sub", manual_acks=True, **persistent)
    pub = await client_factory(name="pub")
    await sub.subscribe(topic + "a", qos=2)
    await pub.publish(topic + "a", b"sent", qos=2, properties={"message_expiry_interval": SHORT_EXPIRY})
    message = await expect_packet(sub, Publish, topic=topic + "a", payload=b"sent")
    sub.ack(message)  # PUBREC
    await expect_packet(sub, Pubrel, packet_id=message.packet_id)
    await sub.close()  # no PUBCOMP
    await asyncio.sleep(SHORT_EXPIRY + timer_slack)  # models the subscriber's absence past the message's expiry
    connack = await sub.reconnect(clean=False)
    assert connack.session_present
    await expect_packet(sub, Pubrel, packet_id=message.packet_id)
    sub.complete(message.packet_id)
    await end_session(sub)
