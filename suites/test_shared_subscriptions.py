"""MQTT 5 shared subscriptions (§4.8.2) over several packets and connections: No Local is refused on them, the
granted QoS holds, a message in flight to a member stays with that member's session, and a refused one is not
passed on. The basic one-member-per-message case is in test_mqtt5.py."""

from __future__ import annotations

import pytest

from harness.core.codec import summary
from harness.core.packets import Publish, Suback, Subscribe, Subscription
from harness.expect import expect_closed, expect_nothing, expect_packet, received

pytestmark = [pytest.mark.v5_only, pytest.mark.requires(shared_subscriptions=True, qos1=True)]

PROTOCOL_ERROR = 0x82


def share(topic: str, name: str = "a") -> str:
    group = topic.strip("/").replace("/", "-")  # a ShareName has no "/" [MQTT-4.8.2-2]
    return f"$share/{group}/{topic}{name}"


@pytest.mark.spec("MQTT-3.8.3-4", "MQTT-4.13.1-1")
async def test_no_local_on_a_shared_subscription_is_a_protocol_error(client_factory, topic):
    """A Protocol Error: the broker closes the connection (a DISCONNECT first, if any, says 0x82) and grants nothing."""
    client = await client_factory()
    await client.send(Subscribe(1, [Subscription(share(topic), 1, no_local=True)]))
    await expect_closed(client, probe=True)
    granted = [s for s in received(client, Suback) if any(c < 0x80 for c in s.reason_codes)]
    assert not granted, f"the broker granted No Local on a shared subscription: {summary(granted[0])}"
    sent = client.server_disconnect
    assert sent is None or sent.reason_code == PROTOCOL_ERROR, summary(sent)


async def leave_group(member, client_factory) -> None:
    """`member` disconnects (Session Expiry 0: its session ends). A CONNECT with its Client Identifier is answered
    only once the broker has handled that: after it, the broker has no session of `member` to deliver to."""
    await member.disconnect()
    again = await client_factory(name=member.name + "-gone", client_id=member.client_id)
    await again.disconnect()


@pytest.mark.spec("MQTT-4.8.2-3")
async def test_shared_subscription_delivers_at_its_granted_qos(client_factory, topic):
    member = await client_factory(name="member")
    pub = await client_factory(name="pub")
    await member.subscribe(share(topic), qos=0)
    await pub.publish(topic + "a", b"qos1 published", qos=1)
    await expect_packet(member, Publish, topic=topic + "a", payload=b"qos1 published", qos=0)


@pytest.mark.spec("MQTT-4.8.2-4")
async def test_message_in_flight_to_a_member_is_completed_when_it_reconnects(client_factory, topic, persistent,
                                                                             end_session):
    member = await client_factory(name="member", manual_acks=True, **persistent)
    pub = await client_factory(name="pub")
    await member.subscribe(share(topic), qos=1)
    await pub.publish(topic + "a", b"in flight", qos=1)
    first = await expect_packet(member, Publish, topic=topic + "a", payload=b"in flight", qos=1)
    member.abort()  # no PUBACK
    await member.close()
    connack = await member.reconnect(clean=False)
    assert connack.session_present
    again = await expect_packet(member, Publish, topic=topic + "a", payload=b"in flight", qos=1, dup=True,
                                packet_id=first.packet_id)
    member.ack(again)
    await expect_nothing(member)
    await end_session(member)


@pytest.mark.spec("MQTT-4.8.2-5")
async def test_message_of_a_member_whose_session_ended_is_not_sent_to_another(client_factory, topic):
    """One member takes the message and never acknowledges it; its session ends with its connection (Session Expiry
    0). The other member, in the group all along, must not get that message."""
    taker = await client_factory(name="taker", manual_acks=True)
    pub = await client_factory(name="pub")
    await taker.subscribe(share(topic), qos=1)
    await pub.publish(topic + "a", b"taken", qos=1)
    await expect_packet(taker, Publish, topic=topic + "a", payload=b"taken")
    other = await client_factory(name="other")
    await other.subscribe(share(topic), qos=1)
    await leave_group(taker, client_factory)  # the session, and the unacknowledged message with it, ends
    await pub.publish(topic + "a", b"after", qos=1)  # shows the other member is served
    await expect_packet(other, Publish, topic=topic + "a", payload=b"after")
    await expect_nothing(other, after=pub)
    assert [m.payload for m in received(other, Publish)] == [b"after"]


@pytest.mark.spec("MQTT-4.8.2-6", "MQTT-4.4.0-2")
async def test_message_refused_by_a_member_is_not_sent_to_another(client_factory, topic):
    taker = await client_factory(name="taker", manual_acks=True)
    pub = await client_factory(name="pub")
    await taker.subscribe(share(topic), qos=1)
    await pub.publish(topic + "a", b"refused", qos=1)
    message = await expect_packet(taker, Publish, topic=topic + "a", payload=b"refused")
    other = await client_factory(name="other")
    await other.subscribe(share(topic), qos=1)
    taker.ack(message, reason_code=0x80)  # PUBACK 0x80 Unspecified error
    await taker.ping()
    await leave_group(taker, client_factory)  # the refusing member leaves: only `other` is left in the group
    await pub.publish(topic + "a", b"after", qos=1)
    await expect_packet(other, Publish, topic=topic + "a", payload=b"after")
    await expect_nothing(other, after=pub)
    assert [m.payload for m in received(other, Publish)] == [b"after"]
