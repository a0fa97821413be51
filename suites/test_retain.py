"""Retained messages: stored, replaced, cleared, sent on subscribe (v5: per Retain Handling), the RETAIN flag on
delivery (v5: Retain As Published), their QoS, and wildcard subscriptions. Every retained message a test sets is
cleared when it ends."""

from __future__ import annotations

import contextlib
from typing import AsyncIterator

import pytest

from harness.client import Client
from harness.core.packets import Publish
from harness.errors import HarnessError
from harness.expect import collect, expect_nothing, expect_packet

pytestmark = pytest.mark.requires(retain=True)


class Retained:
    """Publishes retained messages and remembers their topics, so that they can be cleared."""

    def __init__(self, publisher: Client):
        self.publisher = publisher
        self.topics: set[str] = set()

    async def put(self, topic: str, payload: bytes, qos: int = 1, client: Client | None = None) -> None:
        """Publish a retained message (from `client`, default: the own publisher) and wait for its ack."""
        self.topics.add(topic)
        await (client or self.publisher).publish(topic, payload, qos=qos, retain=True)
        if not qos:
            await (client or self.publisher).ping()  # the broker has handled it


@contextlib.asynccontextmanager
async def retaining(client_factory) -> AsyncIterator[Retained]:
    """A Retained publisher; on exit, every topic it set is cleared (best effort: after a failure the broker may
    be gone, and the topics are unique to the test anyway)."""
    retained = Retained(await client_factory(name="retainer"))
    try:
        yield retained
    finally:
        with contextlib.suppress(HarnessError, OSError):
            cleaner = retained.publisher
            if not cleaner.connected:
                cleaner = await client_factory(name="cleaner")
            for name in sorted(retained.topics):
                await cleaner.publish(name, b"", qos=1, retain=True)


def _qos(qos: int):
    return pytest.param(qos, id=str(qos), marks=[pytest.mark.requires(qos2=True)] if qos == 2 else [])


# ---------------------------------------------------------------------------------------------- store and send

@pytest.mark.spec("MQTT-3.3.1-5", v311=["MQTT-3.3.1-6", "MQTT-3.3.1-8"], v5=["MQTT-3.3.1-9", "§3.3.1.3"])
async def test_retained_message_is_sent_to_a_new_subscription_with_retain_1(client_factory, topic):
    async with retaining(client_factory) as retained:
        await retained.put(topic + "a", b"kept")
        sub = await client_factory()
        await sub.subscribe(topic + "a", qos=1)
        await expect_packet(sub, Publish, topic=topic + "a", payload=b"kept", retain=True)
        await expect_nothing(sub)


@pytest.mark.spec("MQTT-3.3.1-5", v311="MQTT-3.3.1-6")
async def test_newer_retained_message_replaces_the_stored_one(client_factory, topic):
    async with retaining(client_factory) as retained:
        await retained.put(topic + "a", b"old")
        await retained.put(topic + "a", b"new")
        sub = await client_factory()
        await sub.subscribe(topic + "a", qos=1)
        await expect_packet(sub, Publish, topic=topic + "a", payload=b"new", retain=True)
        await expect_nothing(sub)


@pytest.mark.spec(v311="MQTT-3.3.1-7", v5="MQTT-3.3.1-5")
async def test_qos0_retained_message_discards_the_stored_one(client_factory, topic):
    async with retaining(client_factory) as retained:
        await retained.put(topic + "a", b"old", qos=1)
        await retained.put(topic + "a", b"new", qos=0)
        sub = await client_factory()
        await sub.subscribe(topic + "a", qos=1)
        # the server SHOULD keep the QoS 0 message but MAY discard it (3.1.1 §3.3.1.3, 5 §3.3.1.3); the old one
        # MUST be gone
        old = [m for m in await collect(sub, 0) if m.payload == b"old"]
        assert not old, f"the replaced retained message was sent: {old}"


@pytest.mark.spec(v311="MQTT-3.3.1-10", v5="MQTT-3.3.1-6")
async def test_empty_retained_publish_is_forwarded_to_subscribers(client_factory, topic):
    async with retaining(client_factory) as retained:
        sub = await client_factory()
        await sub.subscribe(topic + "a", qos=1)
        await retained.put(topic + "a", b"")
        await expect_packet(sub, Publish, topic=topic + "a", payload=b"")


@pytest.mark.spec(v311="MQTT-3.3.1-10", v5="MQTT-3.3.1-6")
async def test_empty_retained_publish_clears_the_retained_message(client_factory, topic):
    async with retaining(client_factory) as retained:
        await retained.put(topic + "a", b"kept")
        await retained.put(topic + "a", b"")
        sub = await client_factory()
        await sub.subscribe(topic + "a", qos=1)
        await expect_nothing(sub)


@pytest.mark.spec(v311="MQTT-3.3.1-11", v5="MQTT-3.3.1-7")
async def test_empty_retained_message_is_not_stored(client_factory, topic):
    async with retaining(client_factory) as retained:
        await retained.put(topic + "a", b"")
        sub = await client_factory()
        await sub.subscribe(topic + "a", qos=1)
        await expect_nothing(sub)


@pytest.mark.spec(v311="MQTT-3.3.1-12", v5="MQTT-3.3.1-8")
async def test_non_retained_publish_leaves_the_retained_message(client_factory, topic):
    async with retaining(client_factory) as retained:
        await retained.put(topic + "a", b"kept")
        await retained.publisher.publish(topic + "a", b"passing", qos=1)
        sub = await client_factory()
        await sub.subscribe(topic + "a", qos=1)
        await expect_packet(sub, Publish, topic=topic + "a", payload=b"kept", retain=True)
        await expect_nothing(sub)


@pytest.mark.spec(v311="MQTT-3.1.2-7", v5="§4.1")
async def test_retained_message_outlives_the_publisher_session(client_factory, topic, mqtt_version):
    """Retained messages are not part of the session: a clean-session reset of the publisher keeps them."""
    options = {"properties": {"session_expiry_interval": 300}} if mqtt_version == "5" else {}
    async with retaining(client_factory) as retained:
        pub = await client_factory(clean=False, **options)
        await retained.put(topic + "a", b"kept", client=pub)
        await pub.reconnect(clean=True)  # discards the session
        if mqtt_version == "5":
            await pub.disconnect(properties={"session_expiry_interval": 0})  # and the new one with it
        sub = await client_factory()
        await sub.subscribe(topic + "a", qos=1)
        await expect_packet(sub, Publish, topic=topic + "a", payload=b"kept", retain=True)


# ------------------------------------------------------------------------------------- RETAIN flag on delivery

@pytest.mark.spec(v311="MQTT-3.3.1-9", v5="MQTT-3.3.1-12")
async def test_live_delivery_of_a_retained_publish_has_retain_0(client_factory, topic):
    async with retaining(client_factory) as retained:
        sub = await client_factory()
        await sub.subscribe(topic + "a", qos=1)  # v5: Retain As Published 0
        await retained.put(topic + "a", b"live")
        await expect_packet(sub, Publish, topic=topic + "a", payload=b"live", retain=False)


@pytest.mark.spec("MQTT-3.3.1-13")
@pytest.mark.v5_only
async def test_retain_as_published_keeps_the_retain_flag_of_the_publish(client_factory, topic):
    async with retaining(client_factory) as retained:
        sub = await client_factory()
        await sub.subscribe(topic + "a", qos=1, retain_as_published=True)
        await retained.put(topic + "a", b"retained")
        await expect_packet(sub, Publish, topic=topic + "a", payload=b"retained", retain=True)
        await retained.publisher.publish(topic + "a", b"plain", qos=1)
        await expect_packet(sub, Publish, topic=topic + "a", payload=b"plain", retain=False)


# ---------------------------------------------------------------------------------------------------------- QoS

@pytest.mark.spec(v311=["MQTT-3.3.1-5", "MQTT-3.8.4-6"], v5="MQTT-3.8.4-8")
@pytest.mark.parametrize("sub_qos", [0, 1, 2], ids=lambda q: f"sub{q}")
@pytest.mark.parametrize("stored_qos", [_qos(0), _qos(1), _qos(2)])
async def test_retained_message_qos_is_the_minimum_of_stored_and_granted_qos(client_factory, topic, stored_qos,
                                                                             sub_qos):
    async with retaining(client_factory) as retained:
        await retained.put(topic + "a", b"kept", qos=stored_qos)
        sub = await client_factory()
        granted = (await sub.subscribe(topic + "a", qos=sub_qos)).reason_codes[0]
        assert granted <= sub_qos, f"SUBACK granted QoS {granted} for a QoS {sub_qos} subscription"
        if stored_qos == 0:  # a broker MAY discard a QoS 0 retained message (§3.3.1.3 in 3.1.1 and 5)
            got = await collect(sub, 0)
            assert all(m.qos == 0 for m in got), got
        else:
            await expect_packet(sub, Publish, topic=topic + "a", payload=b"kept", retain=True,
                                qos=min(stored_qos, granted))


# ------------------------------------------------------------------------------------- sent again on subscribe

@pytest.mark.spec(v311="MQTT-3.8.4-3", v5=["MQTT-3.3.1-9", "MQTT-3.8.4-4"])
async def test_resubscribing_resends_retained_messages(client_factory, topic):
    async with retaining(client_factory) as retained:
        await retained.put(topic + "a", b"kept")
        sub = await client_factory()
        for _ in range(2):  # v5: Retain Handling 0
            await sub.subscribe(topic + "a", qos=1)
            await expect_packet(sub, Publish, topic=topic + "a", payload=b"kept", retain=True)
        await expect_nothing(sub)


@pytest.mark.spec(v5="MQTT-3.3.1-10")
@pytest.mark.v5_only
async def test_retain_handling_1_sends_retained_messages_only_for_a_new_subscription(client_factory, topic):
    async with retaining(client_factory) as retained:
        await retained.put(topic + "a", b"kept")
        sub = await client_factory()
        await sub.subscribe(topic + "a", qos=1, retain_handling=1)
        await expect_packet(sub, Publish, topic=topic + "a", payload=b"kept", retain=True)
        await sub.subscribe(topic + "a", qos=1, retain_handling=1)  # the subscription exists now
        await expect_nothing(sub)


@pytest.mark.spec(v5="MQTT-3.3.1-11")
@pytest.mark.v5_only
async def test_retain_handling_2_never_sends_retained_messages(client_factory, topic):
    async with retaining(client_factory) as retained:
        await retained.put(topic + "a", b"kept")
        sub = await client_factory()
        await sub.subscribe(topic + "a", qos=1, retain_handling=2)
        await expect_nothing(sub)
        await retained.publisher.publish(topic + "a", b"live", qos=1)  # the subscription itself works
        await expect_packet(sub, Publish, topic=topic + "a", payload=b"live")


# ---------------------------------------------------------------------------------------------------- wildcards

@pytest.mark.spec(v311="MQTT-3.3.1-6", v5="MQTT-3.3.1-9")
@pytest.mark.requires(wildcards=True)
@pytest.mark.parametrize("pattern, matching", [
    ("a/#", ["a/x", "a/y/z"]),
    ("+/x", ["a/x", "b/x"]),
])
async def test_wildcard_subscription_receives_every_matching_retained_message(client_factory, topic, pattern,
                                                                              matching):
    async with retaining(client_factory) as retained:
        for name in ("a/x", "a/y/z", "b/x"):
            await retained.put(topic + name, name.encode())
        sub = await client_factory()
        await sub.subscribe(topic + pattern, qos=1)
        got = await collect(sub, len(matching))
        assert sorted(m.topic for m in got) == sorted(topic + name for name in matching)
        assert all(m.retain for m in got)
