"""MQTT 5 Maximum Packet Size of the client (§3.1.2.11.4): the broker sends nothing larger, drops a message that
would not fit as if it had been delivered, and leaves out optional properties (Reason String, User Property) of
any packet they would push over the limit. The broker's own limit is in test_malformed.py."""

from __future__ import annotations

import pytest

from harness.client import Client
from harness.core.codec import summary
from harness.core.packets import Disconnect, Pubcomp, Publish, Pubrec, Pubrel, Unsuback
from harness.expect import expect_closed, expect_nothing, expect_packet, received
from harness.packet_log import IN

pytestmark = pytest.mark.v5_only

# Fits every acknowledgement with a reason code and an empty property block (at most 7 bytes here), and leaves no
# room for a Reason String of more than a few characters.
TIGHT = 16
# Fits a PUBLISH on a test topic with a short payload (for the flows that need one delivered to us).
ROOMY = 96


def assert_within(client: Client, limit: int) -> None:
    """Every packet the broker sent `client` is at most `limit` bytes, fixed header included."""
    __tracebackhide__ = True
    over = [e for e in client.log.entries if e.direction == IN and len(e.raw) > limit]
    assert not over, (f"the broker sent {len(over[0].raw)} bytes ({summary(over[0].packet) if over[0].packet else '?'})"
                      f" to a client whose Maximum Packet Size is {limit}")
    assert not client.violations, client.violations


async def limited(client_factory, limit: int, **kwargs) -> Client:
    props = {**kwargs.pop("properties", {}), "maximum_packet_size": limit}
    return await client_factory(properties=props, **kwargs)


@pytest.mark.spec("MQTT-3.1.2-24", "MQTT-3.1.2-25")
@pytest.mark.requires(qos1=True)
async def test_message_larger_than_our_maximum_packet_size_is_not_sent(client_factory, topic):
    sub = await limited(client_factory, ROOMY, name="sub")
    pub = await client_factory(name="pub")
    await sub.subscribe(topic + "a", qos=1)
    await pub.publish(topic + "a", b"small before", qos=1)
    await pub.publish(topic + "a", bytes(2 * ROOMY), qos=1)  # cannot fit: discarded for this subscriber
    await pub.publish(topic + "a", b"small after", qos=1)
    await expect_packet(sub, Publish, topic=topic + "a", payload=b"small before")
    await expect_packet(sub, Publish, topic=topic + "a", payload=b"small after")  # delivery goes on
    await expect_nothing(sub, after=pub)
    assert_within(sub, ROOMY)


@pytest.mark.spec("MQTT-3.1.2-25")
@pytest.mark.requires(qos1=True)
async def test_message_too_large_to_send_is_not_resent_on_reconnect(client_factory, topic, persistent, end_session):
    """"Behave as if it had completed sending": the discarded message is not left unacknowledged in the session."""
    sub = await limited(client_factory, ROOMY, name="sub", **persistent)
    pub = await client_factory(name="pub")
    await sub.subscribe(topic + "a", qos=1)
    await pub.publish(topic + "a", bytes(2 * ROOMY), qos=1)
    await pub.publish(topic + "a", b"fits", qos=1)
    await expect_packet(sub, Publish, topic=topic + "a", payload=b"fits")
    await sub.reconnect(clean=False)
    await expect_nothing(sub, after=pub)
    assert [m.payload for m in received(sub, Publish)] == [b"fits"]
    assert_within(sub, ROOMY)
    await end_session(sub)


@pytest.mark.spec("MQTT-3.1.2-24", "MQTT-3.2.2-19", "MQTT-3.2.2-20")
async def test_connack_fits_our_maximum_packet_size(client_factory):
    client = await limited(client_factory, TIGHT)
    assert client.connack.reason_code == 0
    assert_within(client, TIGHT)


@pytest.mark.spec("MQTT-3.1.2-24", "MQTT-3.4.2-2", "MQTT-3.4.2-3")
@pytest.mark.requires(qos1=True)
async def test_puback_fits_our_maximum_packet_size(client_factory, topic):
    """To a topic nobody subscribes to: where a broker would explain its PUBACK (0x10 No matching subscribers)."""
    client = await limited(client_factory, TIGHT)
    await client.publish(topic + "nobody", b"x", qos=1)
    assert_within(client, TIGHT)


@pytest.mark.spec("MQTT-3.1.2-24", "MQTT-3.5.2-2", "MQTT-3.5.2-3", "MQTT-3.7.2-2", "MQTT-3.7.2-3")
@pytest.mark.requires(qos2=True)
async def test_pubrec_and_pubcomp_fit_our_maximum_packet_size(client_factory, topic):
    client = await limited(client_factory, TIGHT)
    ack = await client.publish(topic + "nobody", b"x", qos=2)
    assert isinstance(ack, (Pubcomp, Pubrec)), ack  # a PUBREC only when it refuses the message
    assert_within(client, TIGHT)


@pytest.mark.spec("MQTT-3.1.2-24", "MQTT-3.6.2-2", "MQTT-3.6.2-3")
@pytest.mark.requires(qos2=True)
async def test_pubrel_fits_our_maximum_packet_size(client_factory, topic):
    sub = await limited(client_factory, ROOMY, name="sub")
    pub = await client_factory(name="pub")
    await sub.subscribe(topic + "a", qos=2)
    await pub.publish(topic + "a", b"x", qos=2)
    await expect_packet(sub, Publish, topic=topic + "a", payload=b"x")
    await expect_packet(sub, Pubrel)  # the client answers PUBREC itself
    assert_within(sub, ROOMY)


@pytest.mark.spec("MQTT-3.1.2-24", "MQTT-3.9.2-1", "MQTT-3.9.2-2")
async def test_suback_fits_our_maximum_packet_size(client_factory, topic):
    client = await limited(client_factory, TIGHT)
    await client.subscribe([(topic + "a", 0), (topic + "b", 1), (topic + "c", 2)])
    assert_within(client, TIGHT)


@pytest.mark.spec("MQTT-3.1.2-24", "MQTT-3.11.2-1", "MQTT-3.11.2-2")
async def test_unsuback_fits_our_maximum_packet_size(client_factory, topic):
    """An UNSUBSCRIBE of a filter we never subscribed to: where a broker would explain 0x11 No subscription existed."""
    client = await limited(client_factory, TIGHT)
    unsuback = await client.unsubscribe(topic + "never")
    assert isinstance(unsuback, Unsuback)
    assert_within(client, TIGHT)


@pytest.mark.spec("MQTT-3.1.2-24", "MQTT-3.14.2-3", "MQTT-3.14.2-4")
async def test_disconnect_fits_our_maximum_packet_size(client_factory):
    """A session takeover: the broker closes the first connection, with a DISCONNECT (0x8E) if it sends one."""
    first = await limited(client_factory, TIGHT, name="first")
    await client_factory(name="second", client_id=first.client_id)
    await expect_closed(first)
    assert_within(first, TIGHT)
    for d in received(first, Disconnect):
        assert d.reason_code == 0x8E, summary(d)
