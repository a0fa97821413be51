"""MQTT 5 features: properties forwarded unaltered (user properties, request/response, payload format, content
type), message expiry, topic aliases both ways, Receive Maximum flow control, No Local, subscription identifiers,
properties on acknowledgements, CONNACK properties that match the broker's behaviour, and shared subscriptions.
Assigned Client Identifiers are in test_connect.py."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from harness.client import Client
from harness.core.packets import Publish
from harness.expect import collect, expect_closed, expect_nothing, expect_packet, received
from harness.packet_log import OUT

pytestmark = pytest.mark.v5_only

WILDCARDS = pytest.mark.requires(wildcards=True)
SHORT_EXPIRY = 1  # Message Expiry Interval (s) of a message meant to expire while its subscriber is away
LONG_EXPIRY = 60


def sent_publishes(client: Client) -> list[Publish]:
    """The PUBLISH packets the client sent, as on the wire (an aliased topic is empty there)."""
    return [e.packet for e in client.log.entries if e.direction == OUT and isinstance(e.packet, Publish)]


async def away_subscriber(client_factory, persistent: dict, topic_filter: str) -> Client:
    """A subscriber (QoS 1) whose session outlives its connection, disconnected: messages queue for it."""
    sub = await client_factory(name="sub", **persistent)
    await sub.subscribe(topic_filter, qos=1)
    await sub.disconnect()
    return sub


async def come_back(sub: Client) -> None:
    """Reconnect to the session the broker kept."""
    connack = await sub.open(clean=False)
    assert connack.session_present, "the broker did not keep the session (it has a Session Expiry Interval)"


# ------------------------------------------------------------------------------------- properties forwarded

@pytest.mark.spec("MQTT-3.3.2-17", "MQTT-3.3.2-18")
async def test_user_properties_are_forwarded_unaltered_and_in_order(client_factory, topic):
    sub = await client_factory()
    pub = await client_factory()
    await sub.subscribe(topic + "a", qos=1)
    # Not sorted, a repeated name, and a value that differs only in case: order and duplicates must survive.
    pairs = [("zeta", "1"), ("alpha", "2"), ("zeta", "3"), ("Alpha", "ä ∆ 𝄞"), ("empty", "")]
    await pub.publish(topic + "a", b"x", qos=1, properties={"user_property": pairs})
    await expect_packet(sub, Publish, topic=topic + "a", properties={"user_property": pairs})


@pytest.mark.spec("MQTT-3.3.2-15", "MQTT-3.3.2-16")
async def test_response_topic_and_correlation_data_are_forwarded_unaltered(client_factory, topic):
    requester = await client_factory(name="requester")
    responder = await client_factory(name="responder")
    await responder.subscribe(topic + "request", qos=1)
    await requester.subscribe(topic + "response", qos=1)
    correlation = bytes(range(256))  # binary data, not UTF-8
    await requester.publish(topic + "request", b"ping", qos=1,
                            properties={"response_topic": topic + "response", "correlation_data": correlation})
    request = await expect_packet(responder, Publish, topic=topic + "request",
                                  properties={"response_topic": topic + "response", "correlation_data": correlation})
    # The responder answers as the pattern intends: to the Response Topic, echoing the Correlation Data.
    props = request.properties
    await responder.publish(props["response_topic"], b"pong", qos=1,
                            properties={"correlation_data": props["correlation_data"]})
    await expect_packet(requester, Publish, topic=topic + "response", payload=b"pong",
                        properties={"correlation_data": correlation})


@pytest.mark.spec("MQTT-3.3.2-4", "MQTT-3.3.2-20")
async def test_payload_format_indicator_and_content_type_are_forwarded_unaltered(client_factory, topic):
    sub = await client_factory()
    pub = await client_factory()
    await sub.subscribe(topic + "a", qos=1)
    props = {"payload_format_indicator": 1, "content_type": "application/json; charset=utf-8"}
    await pub.publish(topic + "a", '{"ok": "✓"}'.encode(), qos=1, properties=props)
    await expect_packet(sub, Publish, topic=topic + "a", properties=props)


# ----------------------------------------------------------------------------------------------- message expiry

@pytest.mark.spec("MQTT-3.3.2-5")
async def test_expired_message_is_not_delivered_to_a_returning_subscriber(client_factory, topic, timer_slack,
                                                                        persistent, end_session):
    sub = await away_subscriber(client_factory, persistent, topic + "a")
    pub = await client_factory(name="pub")
    await pub.publish(topic + "a", b"expires", qos=1, properties={"message_expiry_interval": SHORT_EXPIRY})
    await pub.publish(topic + "a", b"lasts", qos=1, properties={"message_expiry_interval": LONG_EXPIRY})
    # Models the subscriber's absence: the first message's expiry passes meanwhile, on a whole-second clock too.
    await asyncio.sleep(SHORT_EXPIRY + timer_slack)
    await come_back(sub)
    await expect_packet(sub, Publish, topic=topic + "a", payload=b"lasts")
    await expect_nothing(sub)
    assert [p.payload for p in received(sub, Publish)] == [b"lasts"], "the expired message was delivered"
    await end_session(sub)


@pytest.mark.spec("MQTT-3.3.2-6")
async def test_remaining_expiry_interval_is_decremented_on_delivery(client_factory, topic, timer_slack, persistent,
                                                                   end_session):
    sub = await away_subscriber(client_factory, persistent, topic + "a")
    pub = await client_factory(name="pub")
    await pub.publish(topic + "a", b"waits", qos=1, properties={"message_expiry_interval": LONG_EXPIRY})
    published = time.monotonic()
    away = SHORT_EXPIRY + timer_slack
    await asyncio.sleep(away)  # models the time the message waits in the broker
    await come_back(sub)
    message = await expect_packet(sub, Publish, topic=topic + "a", payload=b"waits")
    waited = time.monotonic() - published
    remaining = message.properties.get("message_expiry_interval")
    # Whole seconds on the wire, rounded either way: the message waited `waited` s (> away) in the broker.
    assert remaining is not None and LONG_EXPIRY - math.ceil(waited) - 1 <= remaining <= LONG_EXPIRY - math.floor(
        away), f"Message Expiry Interval {remaining} after waiting {waited:.1f} s of {LONG_EXPIRY}"
    await end_session(sub)


# ------------------------------------------------------------------------------------------------ topic aliases

@pytest.mark.spec("MQTT-3.3.2-12")
async def test_broker_resolves_a_topic_alias_set_by_the_client(client_factory, topic):
    sub = await client_factory(name="sub")
    pub = await client_factory(name="pub")
    if not pub.connack.properties.get("topic_alias_maximum"):
        pytest.skip("the broker accepts no topic aliases (Topic Alias Maximum absent or 0)")
    await sub.subscribe(topic + "a", qos=1)
    await pub.publish(topic + "a", b"sets", qos=1, use_alias=True)
    await pub.publish(topic + "a", b"uses", qos=1, use_alias=True)
    sent = sent_publishes(pub)
    assert [(p.topic, p.properties.get("topic_alias")) for p in sent] == [(topic + "a", 1), ("", 1)]
    await expect_packet(sub, Publish, topic=topic + "a", payload=b"sets")
    await expect_packet(sub, Publish, topic=topic + "a", payload=b"uses")


@pytest.mark.spec("MQTT-3.3.2-11", "MQTT-3.1.2-26")
async def test_broker_topic_aliases_stay_within_our_maximum(client_factory, topic):
    """The broker may use aliases towards a client that allows them; never above the client's maximum."""
    sub = await client_factory(name="sub", properties={"topic_alias_maximum": 2})
    pub = await client_factory(name="pub")
    await sub.subscribe([(topic + name, 1) for name in "abcd"])
    expected = [(topic + name, f"{name}{round_}".encode()) for round_ in range(3) for name in "abcd"]
    for name, payload in expected:
        await pub.publish(name, payload, qos=1)
    got = [await sub.receive() for _ in expected]  # the client resolves aliases into topics
    assert [(m.topic, m.payload) for m in got] == expected
    aliases = [p.properties["topic_alias"] for p in received(sub, Publish) if "topic_alias" in p.properties]
    assert all(1 <= a <= 2 for a in aliases), f"Topic Aliases above our maximum 2: {aliases}"
    assert not sub.violations, sub.violations


@pytest.mark.spec("MQTT-3.1.2-27")
async def test_broker_sends_no_topic_alias_to_a_client_that_allows_none(client_factory, topic):
    sub = await client_factory(name="sub")  # no Topic Alias Maximum: 0
    pub = await client_factory(name="pub")
    await sub.subscribe(topic + "a", qos=1)
    for n in range(5):
        await pub.publish(topic + "a", b"%d" % n, qos=1)
    for n in range(5):
        await expect_packet(sub, Publish, topic=topic + "a", payload=b"%d" % n)
    aliased = [p for p in received(sub, Publish) if "topic_alias" in p.properties]
    assert not aliased, f"the broker sent a Topic Alias: {aliased[0]}"


# ------------------------------------------------------------------------------------ Receive Maximum (ours)

RECEIVE_MAXIMUM = 2


async def flow_controlled(client_factory, topic: str, count: int) -> tuple[Client, Client]:
    """A subscriber that allows RECEIVE_MAXIMUM unacknowledged QoS 1 messages and acknowledges by hand, and a
    publisher that has sent it `count` (each acknowledged by the broker)."""
    sub = await client_factory(name="sub", manual_acks=True, properties={"receive_maximum": RECEIVE_MAXIMUM})
    pub = await client_factory(name="pub")
    await sub.subscribe(topic + "a", qos=1)
    for n in range(count):
        await pub.publish(topic + "a", b"%d" % n, qos=1)
    return sub, pub


@pytest.mark.spec("MQTT-3.3.4-9", "MQTT-3.3.4-10")
async def test_broker_sends_no_more_than_our_receive_maximum_unacknowledged(client_factory, topic):
    sub, pub = await flow_controlled(client_factory, topic, RECEIVE_MAXIMUM + 3)
    # The broker has every message; up to the quota may come (fewer is allowed: ejabberd keeps one in flight),
    # then nothing. Its PINGRESP is not held back (MQTT-3.3.4-10).
    held = await collect(sub, RECEIVE_MAXIMUM, after=pub)
    assert [(m.topic, m.payload, m.qos) for m in held] == [
        (topic + "a", b"%d" % n, 1) for n in range(len(held))], held
    assert 1 <= len(held) <= RECEIVE_MAXIMUM, f"{len(held)} unacknowledged, Receive Maximum {RECEIVE_MAXIMUM}"


@pytest.mark.spec("MQTT-3.3.4-9")
async def test_acknowledging_a_message_releases_the_next(client_factory, topic):
    sub, pub = await flow_controlled(client_factory, topic, RECEIVE_MAXIMUM + 3)
    held = await collect(sub, RECEIVE_MAXIMUM, after=pub)  # the broker's window: the quota, or fewer
    assert [m.payload for m in held] == [b"%d" % n for n in range(len(held))] and held, held
    sub.ack(held[0])
    more = await expect_packet(sub, Publish, payload=b"%d" % len(held))  # one slot freed: exactly one more
    await expect_nothing(sub)
    for message in [*held[1:], more]:
        sub.ack(message)
    for n in range(len(held) + 1, RECEIVE_MAXIMUM + 3):
        sub.ack(await expect_packet(sub, Publish, payload=b"%d" % n))


# ------------------------------------------------------------------------------------------------------ No Local

@pytest.mark.spec("MQTT-3.8.3-3")
async def test_no_local_subscription_gets_none_of_its_own_messages(client_factory, topic):
    client = await client_factory(name="client")
    other = await client_factory(name="other")
    await client.subscribe(topic + "a", qos=1, no_local=True)
    await other.subscribe(topic + "a", qos=1)
    await client.publish(topic + "a", b"mine", qos=1)
    await expect_packet(other, Publish, topic=topic + "a", payload=b"mine")  # routed: others get it
    await other.publish(topic + "a", b"theirs", qos=1)
    await expect_packet(client, Publish, topic=topic + "a", payload=b"theirs")  # and it still gets others'
    await expect_nothing(client)
    assert [p.payload for p in received(client, Publish)] == [b"theirs"]


# ------------------------------------------------------------------------------------- subscription identifiers

def skip_without_subscription_identifiers(client: Client) -> None:
    if client.connack.properties.get("subscription_identifier_available", 1) == 0:
        pytest.skip("the broker announces Subscription Identifier Available 0")


@pytest.mark.spec("MQTT-3.3.4-3")
async def test_subscription_identifier_is_sent_with_the_message(client_factory, topic):
    sub = await client_factory(name="sub")
    skip_without_subscription_identifiers(sub)
    pub = await client_factory(name="pub")
    await sub.subscribe(topic + "a", qos=1, properties={"subscription_identifier": [268_435_455]})  # the maximum
    await pub.publish(topic + "a", b"x", qos=1)
    await expect_packet(sub, Publish, topic=topic + "a", properties={"subscription_identifier": [268_435_455]})


@pytest.mark.spec("MQTT-3.3.4-3", "MQTT-3.3.4-4", "MQTT-3.3.4-5")
@WILDCARDS
async def test_overlapping_subscriptions_send_every_subscription_identifier(client_factory, topic):
    """One copy carries both identifiers (in any order), or each copy carries its own subscription's."""
    sub = await client_factory(name="sub")
    skip_without_subscription_identifiers(sub)
    pub = await client_factory(name="pub")
    await sub.subscribe(topic + "a/+", qos=1, properties={"subscription_identifier": [2]})
    await sub.subscribe(topic + "a/#", qos=1, properties={"subscription_identifier": [3]})
    await sub.subscribe(topic + "a/b", qos=1)  # no identifier: adds none
    await pub.publish(topic + "a/b", b"x", qos=1)
    copies = await collect(sub, 1, after=pub)  # every copy the broker sent, up to a PINGREQ barrier
    ids = [sorted(m.properties.get("subscription_identifier", [])) for m in copies]
    if len(copies) == 1:
        assert ids == [[2, 3]], f"one copy must carry both identifiers, got {ids}"
    else:
        assert sorted(ids) == [[], [2], [3]], f"each copy must carry its own subscription's identifier, got {ids}"


# ---------------------------------------------------------------------------------- properties on acknowledgements

@pytest.mark.spec("§3.4.2.2")
async def test_broker_accepts_reason_string_and_user_property_on_puback(client_factory, topic):
    """A PUBACK may carry a Reason String and User Properties. The broker must count it as the acknowledgement:
    with a Receive Maximum of 1, the next message comes only once it has."""
    sub = await client_factory(name="sub", manual_acks=True, properties={"receive_maximum": 1})
    pub = await client_factory(name="pub")
    await sub.subscribe(topic + "a", qos=1)
    await pub.publish(topic + "a", b"1", qos=1)
    await pub.publish(topic + "a", b"2", qos=1)
    first = await expect_packet(sub, Publish, payload=b"1")
    sub.ack(first, properties={"reason_string": "processed", "user_property": [("by", "test")]})
    await expect_packet(sub, Publish, payload=b"2")
    await expect_nothing(sub)


# ----------------------------------------------------------------------------- CONNACK properties vs behaviour

@pytest.mark.spec("MQTT-3.2.2-9", "MQTT-3.2.2-10")
async def test_connack_maximum_qos_matches_what_the_broker_accepts(client_factory, topic):
    """Every QoS up to the announced Maximum QoS (2 when absent) is accepted; SUBSCRIBE at any QoS is accepted
    and granted at most the maximum."""
    client = await client_factory()
    maximum = client.connack.properties.get("maximum_qos", 2)
    suback = await client.subscribe([(topic + "q0", 0), (topic + "q1", 1), (topic + "q2", 2)])
    assert suback.reason_codes == [min(q, maximum) for q in range(3)], f"SUBACK {suback.reason_codes}"
    for qos in range(1, maximum + 1):
        ack = await client.publish(topic + "q2", b"%d" % qos, qos=qos)
        assert ack.reason_code < 0x80, f"QoS {qos} PUBLISH refused: {ack}"
        await expect_packet(client, Publish, topic=topic + "q2", qos=qos)


@pytest.mark.spec("MQTT-3.3.1-5", "§3.2.2.3.5")
async def test_connack_retain_available_matches_behaviour(client_factory, topic):
    """Retain Available 1 (or absent): a retained message is stored for later subscribers. 0: a retained
    PUBLISH is a Protocol Error (DISCONNECT 0x9A Retain not supported)."""
    pub = await client_factory(name="pub")
    if pub.connack.properties.get("retain_available", 1) == 0:
        await pub.send(Publish(topic + "r", b"kept", qos=1, retain=True, packet_id=1))
        await expect_closed(pub)
        if pub.server_disconnect is not None:
            assert pub.server_disconnect.reason_code == 0x9A, f"DISCONNECT {pub.server_disconnect}"
        return
    await pub.publish(topic + "r", b"kept", qos=1, retain=True)
    sub = await client_factory(name="sub")
    await sub.subscribe(topic + "r", qos=1)
    await expect_packet(sub, Publish, topic=topic + "r", payload=b"kept", retain=True)
    await pub.publish(topic + "r", b"", qos=1, retain=True)  # clear it


@pytest.mark.spec("§3.2.2.3.11")
@WILDCARDS
async def test_connack_wildcard_subscription_available_matches_behaviour(client_factory, topic):
    """Wildcard Subscription Available 1 (or absent): wildcard filters are granted and match."""
    sub = await client_factory(name="sub")
    if sub.connack.properties.get("wildcard_subscription_available", 1) == 0:
        pytest.fail("the broker announces Wildcard Subscription Available 0, yet its profile claims wildcards")
    pub = await client_factory(name="pub")
    suback = await sub.subscribe(topic + "w/+", qos=1)
    assert suback.reason_codes == [1], f"SUBACK {suback.reason_codes}"
    await pub.publish(topic + "w/x", b"x", qos=1)
    await expect_packet(sub, Publish, topic=topic + "w/x")


# ------------------------------------------------------------------------------------------ shared subscriptions

@pytest.mark.spec("§4.8.2", "MQTT-4.8.2-1", "MQTT-4.8.2-2")
@pytest.mark.requires(shared_subscriptions=True)
async def test_shared_subscription_delivers_each_message_to_one_member(client_factory, topic):
    """Messages matching `$share/{ShareName}/{filter}` go to one session of the group each; an ordinary
    subscription to the same filter still gets every one."""
    members = [await client_factory(name=f"member{n}") for n in (1, 2)]
    if members[0].connack.properties.get("shared_subscription_available", 1) == 0:
        pytest.fail("the broker announces Shared Subscription Available 0, yet its profile claims them")
    everyone = await client_factory(name="everyone")
    pub = await client_factory(name="pub")
    for member in members:
        await member.subscribe(f"$share/grp/{topic}s", qos=1)
    await everyone.subscribe(topic + "s", qos=1)
    payloads = [b"%d" % n for n in range(10)]
    for payload in payloads:
        await pub.publish(topic + "s", payload, qos=1)
    for payload in payloads:
        await expect_packet(everyone, Publish, topic=topic + "s", payload=payload)
    for member in members:
        await member.ping()  # every copy the broker sent it is in before the PINGRESP
    shared = sorted(p.payload for member in members for p in received(member, Publish))
    assert shared == sorted(payloads), f"the group got {shared}; each message once was {sorted(payloads)}"
