"""Smoke: the smallest checks that a broker under test speaks MQTT at all. Also the style example for suites."""

from __future__ import annotations

import pytest

from harness.core.packets import Publish
from harness.expect import expect_nothing, expect_packet


@pytest.mark.spec("MQTT-3.2.0-1", v311="MQTT-3.2.2-1", v5="MQTT-3.2.2-2")
async def test_connect_is_accepted(client_factory):
    client = await client_factory()
    assert client.connack.reason_code == 0
    assert not client.connack.session_present  # a clean session never has state to resume


@pytest.mark.spec("MQTT-3.3.2-3", v311="MQTT-7.1.1-1")  # over TCP, an ordered lossless byte stream
async def test_publish_reaches_subscriber(client_factory, topic):
    sub = await client_factory()
    pub = await client_factory()
    await sub.subscribe(topic + "a", qos=1)
    await pub.publish(topic + "a", b"hello", qos=1)
    await expect_packet(sub, Publish, topic=topic + "a", payload=b"hello", qos=1)


@pytest.mark.spec("MQTT-3.3.2-3")
@pytest.mark.requires(wildcards=True)
async def test_no_delivery_outside_the_filter(client_factory, topic):
    sub = await client_factory()
    pub = await client_factory()
    await sub.subscribe(topic + "a/+")
    await pub.publish(topic + "b/x", b"not for you")
    await expect_nothing(sub, after=pub)  # pub's PUBLISH was handled before sub's barrier
