"""MQTT 5 QoS flows with reason codes and message expiry, over several packets and connections: the broker's
acknowledgements use their packet's reason codes, a failing PUBACK/PUBREC ends a delivery for good, a refused QoS
2 packet id starts a new message, and message expiry never cuts a QoS 2 flow short (either direction)."""

from __future__ import annotations

import asyncio

import pytest

from harness.core.codec import summary
from harness.core.packets import Puback, Pubcomp, Publish, Pubrec, Pubrel
from harness.core.reason_codes import ALLOWED
from harness.expect import ExpectationFailed, collect, expect_nothing, expect_packet, received
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


async def refused_qos2_publish(client, topic: str) -> tuple[int, list[int]] | None:
    """Get the broker to answer a QoS 2 PUBLISH with PUBREC 0x80 or above; returns (its packet id, the packet ids of
    flows left open that the caller must release), or None if the broker refused none. Two ways: a payload that is
    not the UTF-8 its Payload Format Indicator says (0x99, where the broker validates), and one QoS 2 flow more
    than the broker's Receive Maximum (0x97 Quota exceeded, where it answers that rather than DISCONNECT 0x93)."""
    await client.send(Publish(topic + "a", b"\xff\xfe", qos=2, packet_id=1,
                              properties={"payload_format_indicator": 1}))
    try:
        rec = await expect_packet(client, Pubrec, packet_id=1)
    except ExpectationFailed:
        # DISCONNECT 0x99 instead of PUBREC 0x99 is allowed too (§3.3.2.3.2 lets the receiver choose; ejabberd
        # does): no refused flow to go on with.
        if client.is_closed and getattr(client.server_disconnect, "reason_code", None) == 0x99:
            return None
        raise
    if rec.reason_code >= 0x80:
        return 1, []
    await client.send(Pubrel(1))
    await expect_packet(client, Pubcomp, packet_id=1)
    quota = client.connack.properties.get("receive_maximum", 65535)
    if quota > 100:
        return None
    open_ids = list(range(1, quota + 1))
    for pid in open_ids:  # fill the quota: no PUBREL yet
        await client.send(Publish(topic + "a", b"fill %d" % pid, qos=2, packet_id=pid))
    for pid in open_ids:
        await expect_packet(client, Pubrec, packet_id=pid)
    await client.send(Publish(topic + "a", b"over quota", qos=2, packet_id=quota + 1))
    await client.ping()
    over = [p for p in received(client, Pubrec) if p.packet_id == quota + 1]
    if client.is_closed or not over or over[0].reason_code < 0x80:
        return None
    return quota + 1, open_ids


@pytest.mark.spec("MQTT-4.3.3-9")
@QOS2
async def test_packet_id_refused_with_pubrec_0x80_starts_a_new_message(client_factory, topic):
    """After a PUBREC of 0x80 or above, the next PUBLISH with that packet id is a new message (delivered once
    completed), not a resend of the refused one."""
    watch = await client_factory(name="watch")
    await watch.subscribe(topic + "a", qos=2)
    client = await client_factory(name="client")
    # Raw packets: our session would never reuse a packet id this way.
    refused = await refused_qos2_publish(client, topic)
    if refused is None:
        pytest.skip("the broker refused none of our QoS 2 PUBLISHes with a PUBREC (it may accept the payload, and "
                    "close on an exceeded quota): no failing PUBREC to test what follows")
    pid, open_ids = refused
    for other in open_ids:  # complete the flows that filled the quota: there is room again
        await client.send(Pubrel(other))
        await expect_packet(client, Pubcomp, packet_id=other)
    await client.send(Publish(topic + "a", b"new message", qos=2, packet_id=pid))
    second = await expect_packet(client, Pubrec, packet_id=pid)
    assert second.reason_code < 0x80, f"the broker refused a valid message: {summary(second)}"
    await client.send(Pubrel(pid))
    await expect_packet(client, Pubcomp, packet_id=pid)
    # The fills, and on that route the accepted first message, reach the watcher too; the refused one must not.
    expected = 1 + len(open_ids) + (1 if open_ids else 0)
    payloads = [m.payload for m in await collect(watch, expected, after=client)]
    assert payloads.count(b"new message") == 1 and b"over quota" not in payloads, payloads
