"""SUBSCRIBE and UNSUBSCRIBE across several packets: a repeated filter replaces its subscription, several filters
in one SUBSCRIBE act as a sequence of SUBSCRIBEs, acknowledgements carry their request's packet id and valid
codes, an UNSUBSCRIBE lets a QoS 2 delivery under way finish, and how the broker answers each QoS and sends QoS 0.
Topic matching and invalid filters are in test_topics.py."""

from __future__ import annotations

import pytest

from harness.core.codec import encode, summary
from harness.core.packets import (
    MQTT_5, Puback, Pubcomp, Publish, Pubrec, Pubrel, Suback, Subscribe, Subscription, Unsuback, Unsubscribe,
)
from harness.core.reason_codes import ALLOWED
from harness.expect import collect, expect_nothing, expect_packet
from harness.packet_log import IN

QOS1 = pytest.mark.requires(qos1=True)
QOS2 = pytest.mark.requires(qos2=True)


@pytest.mark.spec("MQTT-3.8.4-3")
@QOS1
async def test_subscribing_again_to_a_filter_replaces_its_subscription(client_factory, topic):
    """The same filter at QoS 0 and then QoS 1: one subscription, now QoS 1 (one copy per message, at QoS 1)."""
    sub = await client_factory(name="sub")
    pub = await client_factory(name="pub")
    await sub.subscribe(topic + "a", qos=0)
    await sub.subscribe(topic + "a", qos=1)
    await pub.publish(topic + "a", b"x", qos=1)
    await expect_packet(sub, Publish, topic=topic + "a", payload=b"x", qos=1)
    await expect_nothing(sub, after=pub)


@pytest.mark.spec(v311="MQTT-3.8.4-4", v5="MQTT-3.8.4-5")
@QOS2
async def test_several_filters_in_one_subscribe_act_as_a_sequence_of_subscribes(client_factory, topic):
    """[(a, 0), (b, 1), (a, 2)]: one SUBACK with three codes; a is subscribed once, at QoS 2 (the later one
    replaced the earlier, as two SUBSCRIBEs would), b at QoS 1."""
    sub = await client_factory(name="sub")
    pub = await client_factory(name="pub")
    await sub.send(Subscribe(0x0101, [Subscription(topic + "a", 0), Subscription(topic + "b", 1),
                                      Subscription(topic + "a", 2)]))
    suback = await expect_packet(sub, Suback, packet_id=0x0101)
    assert suback.reason_codes == [0, 1, 2], summary(suback)
    await expect_nothing(sub, kinds=(Suback,))  # one SUBACK for the three
    await pub.publish(topic + "a", b"to a", qos=2)
    await pub.publish(topic + "b", b"to b", qos=2)
    got = await collect(sub, 2, after=pub)
    assert [(m.topic, m.qos) for m in got] == [(topic + "a", 2), (topic + "b", 1)], [summary(m) for m in got]


@pytest.mark.spec(v311=["MQTT-2.3.1-7", "MQTT-3.9.3-2"], v5=["MQTT-2.2.1-6", "MQTT-3.9.3-2"])
async def test_suback_and_unsuback_carry_their_request_packet_ids_and_valid_codes(client_factory, topic):
    client = await client_factory()
    await client.send(Subscribe(0xBEEF, [Subscription(topic + n, q) for n, q in (("a", 0), ("b", 1), ("c", 2))]))
    suback = await expect_packet(client, Suback, packet_id=0xBEEF)
    await client.send(Unsubscribe(0xCAFE, [topic + "a", topic + "never"]))
    unsuback = await expect_packet(client, Unsuback, packet_id=0xCAFE)
    allowed = ALLOWED[9] if client.version >= MQTT_5 else {0x00, 0x01, 0x02, 0x80}
    assert len(suback.reason_codes) == 3 and set(suback.reason_codes) <= allowed, summary(suback)
    if client.version >= MQTT_5:
        assert len(unsuback.reason_codes) == 2 and set(unsuback.reason_codes) <= ALLOWED[11], summary(unsuback)


@pytest.mark.spec(v311="MQTT-3.8.3-2", v5="§3.2.2.3.11")
@pytest.mark.requires(wildcards=False)
@pytest.mark.parametrize("pattern", ["+", "#"], ids=["single_level", "multi_level"])
async def test_broker_without_wildcard_support_refuses_wildcard_filters(client_factory, topic, pattern):
    """3.1.1: a failure return code 0x80; MQTT 5: 0xA2 Wildcard Subscriptions not supported (or the connection
    closed, which refuses it too)."""
    client = await client_factory()
    await client.send(Subscribe(1, [Subscription(topic + pattern, 0)]))
    try:
        suback = await expect_packet(client, Suback, packet_id=1)
    except AssertionError:
        assert client.is_closed, "the broker neither answered nor closed"
        return
    refusals = {0xA2, 0x80} if client.version >= MQTT_5 else {0x80}
    assert suback.reason_codes[0] in refusals, f"the broker granted a wildcard filter: {summary(suback)}"


@pytest.mark.spec("MQTT-3.10.4-3")
@QOS2
async def test_unsubscribe_lets_a_qos2_delivery_under_way_finish(client_factory, topic):
    """The broker sent a QoS 2 PUBLISH; we UNSUBSCRIBE before answering it. Our PUBREC still gets its PUBREL."""
    sub = await client_factory(name="sub", manual_acks=True)
    pub = await client_factory(name="pub")
    await sub.subscribe(topic + "a", qos=2)
    await pub.publish(topic + "a", b"under way", qos=2)
    message = await expect_packet(sub, Publish, topic=topic + "a", payload=b"under way", qos=2)
    await sub.unsubscribe(topic + "a")
    sub.ack(message)  # PUBREC after the subscription is gone
    await expect_packet(sub, Pubrel, packet_id=message.packet_id)
    sub.complete(message.packet_id)
    await expect_nothing(sub, after=pub)


@pytest.mark.spec("MQTT-3.10.4-3")
@QOS1
async def test_unsubscribe_keeps_an_unacknowledged_qos1_delivery(client_factory, topic, persistent, end_session):
    """The broker sent a QoS 1 PUBLISH; we UNSUBSCRIBE and leave without a PUBACK. The delivery it started is
    completed: the PUBLISH is resent when the session resumes."""
    sub = await client_factory(name="sub", manual_acks=True, **persistent)
    pub = await client_factory(name="pub")
    await sub.subscribe(topic + "a", qos=1)
    await pub.publish(topic + "a", b"under way", qos=1)
    first = await expect_packet(sub, Publish, topic=topic + "a", payload=b"under way", qos=1)
    await sub.unsubscribe(topic + "a")
    connack = await sub.reconnect(clean=False)
    assert connack.session_present
    again = await expect_packet(sub, Publish, topic=topic + "a", payload=b"under way", dup=True,
                                packet_id=first.packet_id)
    sub.ack(again)
    await expect_nothing(sub, after=pub)
    await end_session(sub)


@pytest.mark.spec("MQTT-3.3.4-1")
@QOS2
async def test_broker_answers_each_publish_as_its_qos_says(client_factory, topic):
    """QoS 0: nothing; QoS 1: PUBACK; QoS 2: PUBREC, then PUBCOMP for our PUBREL (Table 3.4 / §3.3.4)."""
    client = await client_factory()
    await client.publish(topic + "a", b"0", qos=0)
    assert isinstance(await client.publish(topic + "a", b"1", qos=1), Puback)
    assert isinstance(await client.publish(topic + "a", b"2", qos=2), Pubcomp)  # after PUBREC and our PUBREL
    await client.ping()
    acks = [type(e.packet).__name__ for e in client.log.entries
            if e.direction == IN and isinstance(e.packet, (Puback, Pubrec, Pubcomp))]
    assert acks == ["Puback", "Pubrec", "Pubcomp"], acks  # and nothing for QoS 0


@pytest.mark.spec(v311="MQTT-2.3.1-5", v5="MQTT-2.2.1-2")
async def test_qos0_delivery_has_no_packet_identifier(client_factory, topic):
    """Checked on the bytes: the delivered PUBLISH is exactly as long as a QoS 0 PUBLISH of that topic and payload
    (a Packet Identifier would add two bytes that a lenient reader takes for payload)."""
    sub = await client_factory(name="sub")
    pub = await client_factory(name="pub")
    await sub.subscribe(topic + "a", qos=0)
    await pub.publish(topic + "a", b"qos 0", qos=0)
    message = await expect_packet(sub, Publish, topic=topic + "a", payload=b"qos 0", qos=0)
    assert message.packet_id in (None, 0), summary(message)
    [raw] = [e.raw for e in sub.log.entries if e.direction == IN and e.packet is message]
    expected = encode(Publish(topic + "a", b"qos 0", qos=0, properties=message.properties), sub.version)
    assert len(raw) == len(expected), f"delivered {raw.hex(' ')}; a QoS 0 PUBLISH is {expected.hex(' ')}"


@pytest.mark.spec(v5="MQTT-2.2.2-1")
@pytest.mark.v5_only
async def test_packets_without_properties_carry_a_property_length_of_0(client_factory, topic):
    """CONNACK, SUBACK, UNSUBACK and a PUBLISH from the broker, each re-encoded from what was decoded (with the
    properties it did carry, none by default): the byte counts agree, so each one has its Property Length field
    (a 0 byte when there are no properties) where the spec puts it."""
    sub = await client_factory(name="sub")
    pub = await client_factory(name="pub")
    await sub.subscribe(topic + "a", qos=0)
    await pub.publish(topic + "a", b"no properties", qos=0)
    await expect_packet(sub, Publish, topic=topic + "a", payload=b"no properties")
    await sub.unsubscribe(topic + "a")
    checked = 0
    for e in sub.log.entries:
        if e.direction == IN and type(e.packet).__name__ in ("Connack", "Suback", "Unsuback", "Publish"):
            again = encode(e.packet, MQTT_5)
            assert len(e.raw) == len(again), f"{summary(e.packet)}: {e.raw.hex(' ')}; with its fields: {again.hex(' ')}"
            checked += 1
    assert checked == 4, sub.log.format()  # an undecodable one is not among them
    assert not sub.violations, sub.violations  # e.g. a SUBACK short of reason codes: one was read as the length


# ------------------------------------------------------------- MQTT 5: options and identifiers replaced on update

def skip_without_subscription_identifiers(client) -> None:
    if client.connack.properties.get("subscription_identifier_available", 1) == 0:
        pytest.skip("the broker announces Subscription Identifier Available 0")


@pytest.mark.spec(v5=["MQTT-3.8.4-3", "MQTT-3.3.4-3"])
@pytest.mark.v5_only
@QOS1
async def test_resubscribing_with_a_new_subscription_identifier_replaces_the_old_one(client_factory, topic):
    sub = await client_factory(name="sub")
    skip_without_subscription_identifiers(sub)
    pub = await client_factory(name="pub")
    await sub.subscribe(topic + "a", qos=1, properties={"subscription_identifier": [7]})
    await pub.publish(topic + "a", b"first", qos=1)
    await expect_packet(sub, Publish, payload=b"first", properties={"subscription_identifier": [7]})
    await sub.subscribe(topic + "a", qos=1, properties={"subscription_identifier": [8]})
    await pub.publish(topic + "a", b"second", qos=1)
    second = await expect_packet(sub, Publish, payload=b"second")
    assert second.properties.get("subscription_identifier") == [8], summary(second)
    await expect_nothing(sub, after=pub)  # one subscription: one copy


@pytest.mark.spec(v5=["MQTT-3.8.4-3", "MQTT-3.3.4-3"])
@pytest.mark.v5_only
@QOS1
async def test_resubscribing_without_a_subscription_identifier_removes_it(client_factory, topic):
    sub = await client_factory(name="sub")
    skip_without_subscription_identifiers(sub)
    pub = await client_factory(name="pub")
    await sub.subscribe(topic + "a", qos=1, properties={"subscription_identifier": [7]})
    await sub.subscribe(topic + "a", qos=1)  # the new subscription has no identifier
    await pub.publish(topic + "a", b"x", qos=1)
    message = await expect_packet(sub, Publish, payload=b"x")
    assert "subscription_identifier" not in message.properties, summary(message)


@pytest.mark.spec(v5=["MQTT-3.8.4-3", "MQTT-3.8.3-3"])
@pytest.mark.v5_only
@QOS1
async def test_resubscribing_with_no_local_stops_our_own_messages(client_factory, topic):
    """The replaced subscription's options are the new ones: No Local 1 after No Local 0."""
    client = await client_factory()
    await client.subscribe(topic + "a", qos=1)
    await client.publish(topic + "a", b"mine, delivered", qos=1)
    await expect_packet(client, Publish, payload=b"mine, delivered")
    await client.subscribe(topic + "a", qos=1, no_local=True)
    await client.publish(topic + "a", b"mine, not delivered", qos=1)
    await expect_nothing(client)
