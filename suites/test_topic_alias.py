"""MQTT 5 Topic Aliases sent by the client, across several packets and connections: a later PUBLISH that maps an
alias to a new topic (§3.3.2.3.4: the receiver updates its mapping), and mappings that end with their Network
Connection. One-packet cases (alias 0, above the maximum) are in test_malformed.py; the broker's own aliases
towards us and the simple set-then-use case are in test_mqtt5.py."""

from __future__ import annotations

import pytest

from harness.core.packets import Publish
from harness.client import Client
from harness.core.codec import summary
from harness.expect import collect, expect_closed, expect_nothing, expect_packet, received

pytestmark = pytest.mark.v5_only

PROTOCOL_ERROR, TOPIC_ALIAS_INVALID = 0x82, 0x94


def alias_maximum_or_skip(client: Client) -> None:
    if not client.connack.properties.get("topic_alias_maximum"):
        pytest.skip("the broker accepts no topic aliases (Topic Alias Maximum absent or 0)")


async def expect_protocol_error(client: Client) -> None:
    """The broker closes the connection; a DISCONNECT it sends first says Protocol Error or Topic Alias invalid."""
    __tracebackhide__ = True
    await expect_closed(client)
    sent = client.server_disconnect
    assert sent is None or sent.reason_code in (PROTOCOL_ERROR, TOPIC_ALIAS_INVALID), (
        f"broker sent {summary(sent)}; an unknown Topic Alias is a Protocol Error (0x82, or 0x94 Topic Alias invalid)")


@pytest.mark.spec("MQTT-3.3.2-12", "§3.3.2.3.4")
async def test_alias_remapped_by_a_later_publish_resolves_to_the_new_topic(client_factory, topic):
    watch = await client_factory(name="watch")
    await watch.subscribe([(topic + "first", 0), (topic + "second", 0)])
    pub = await client_factory(name="pub")
    alias_maximum_or_skip(pub)
    # Raw PUBLISHes (QoS 0, so no acks to account for): our client's alias bookkeeping would never remap.
    await pub.send(Publish(topic + "first", b"1", properties={"topic_alias": 1}))
    await pub.send(Publish("", b"2", properties={"topic_alias": 1}))
    await pub.send(Publish(topic + "second", b"3", properties={"topic_alias": 1}))  # same alias, new topic
    await pub.send(Publish("", b"4", properties={"topic_alias": 1}))
    for topic_name, payload in [("first", b"1"), ("first", b"2"), ("second", b"3"), ("second", b"4")]:
        await expect_packet(watch, Publish, topic=topic + topic_name, payload=payload)
    await expect_nothing(watch, after=pub)
    assert not pub.is_closed, "the broker closed the connection of a client that remapped a Topic Alias"


@pytest.mark.spec("MQTT-3.3.2-7", "MQTT-4.13.1-1")
async def test_topic_alias_mapping_is_not_carried_over_to_a_new_connection(client_factory, topic):
    """An alias set on the first connection is unknown on the second: a PUBLISH with only that alias is a Protocol
    Error there (§3.3.2.3.4), never a delivery to the first connection's topic."""
    watch = await client_factory(name="watch")
    await watch.subscribe(topic + "a", qos=1)
    pub = await client_factory(name="pub")
    alias_maximum_or_skip(pub)
    await pub.send(Publish(topic + "a", b"sets", properties={"topic_alias": 1}))
    await expect_packet(watch, Publish, topic=topic + "a", payload=b"sets")
    await pub.reconnect()
    alias_maximum_or_skip(pub)
    await pub.send(Publish("", b"old alias", properties={"topic_alias": 1}))
    await expect_protocol_error(pub)
    await expect_nothing(watch)
    assert [m.payload for m in received(watch, Publish)] == [b"sets"]


@pytest.mark.spec("MQTT-3.3.2-12", "§3.3.2.3.4")
async def test_topic_alias_mappings_of_two_connections_are_separate(client_factory, topic):
    """The same alias number on two connections names each connection's own topic."""
    watch = await client_factory(name="watch")
    await watch.subscribe([(topic + "one", 0), (topic + "two", 0)])
    one = await client_factory(name="one")
    two = await client_factory(name="two")
    alias_maximum_or_skip(one)
    await one.send(Publish(topic + "one", b"one sets", properties={"topic_alias": 1}))
    await two.send(Publish(topic + "two", b"two sets", properties={"topic_alias": 1}))
    await one.ping()
    await two.ping()  # both mappings are in place before either is used
    await one.send(Publish("", b"one uses", properties={"topic_alias": 1}))
    await two.send(Publish("", b"two uses", properties={"topic_alias": 1}))
    got = sorted((m.topic, m.payload) for m in await collect(watch, 4, after=[one, two]))
    assert got == sorted([(topic + "one", b"one sets"), (topic + "one", b"one uses"),
                          (topic + "two", b"two sets"), (topic + "two", b"two uses")])
