"""Will messages: published when a connection ends without a DISCONNECT (dropped, or closed by the broker for a
protocol error), not after a normal DISCONNECT; Will Retain and Will QoS; MQTT 5: DISCONNECT with Will Message
(0x04), the Will Delay Interval (and a reconnect cancelling it), a session ending before the delay, and the will
properties. The will on a keepalive timeout is in test_keepalive."""

from __future__ import annotations

import time

import pytest

from harness.client import Client
from harness.core.packets import Connect, Publish, Will
from harness.expect import expect_closed, expect_nothing, expect_packet, received

LONG_DELAY = 300  # a Will Delay Interval no test waits for


async def watch(client_factory, topic: str, qos: int = 0) -> Client:
    """A client subscribed to `topic`, where the will goes."""
    watcher = await client_factory(name="watcher")
    await watcher.subscribe(topic, qos=qos)
    return watcher


def arrival(client: Client, packet) -> float:
    """When `packet` (as returned by expect_packet) arrived, from the client's packet log."""
    return next(e.time for e in client.log.entries if e.packet is packet)


# ------------------------------------------------------------------------------------------------ when the will is sent

@pytest.mark.spec("MQTT-3.1.2-8", v5="MQTT-3.1.2-7")  # v5: stored with the session, published from there
async def test_will_is_published_when_the_connection_drops(client_factory, topic):
    watcher = await watch(client_factory, topic + "will")
    willer = await client_factory(name="willer", will=Will(topic + "will", b"gone"))
    willer.abort()  # no DISCONNECT
    await expect_packet(watcher, Publish, topic=topic + "will", payload=b"gone")


@pytest.mark.spec(v311="MQTT-3.1.2-12", v5="§3.1.2.5")
async def test_no_will_is_published_for_a_connection_without_one(client_factory, topic):
    """Will Flag 0, then the connection drops: no message on any topic the client used (it published and
    subscribed there, so a broker inventing a will from either would show)."""
    watcher = await watch(client_factory, topic + "#")
    client = await client_factory(name="no-will")  # no will
    await client.subscribe(topic + "mine", qos=1)
    await client.publish(topic + "mine", b"live", qos=1)
    await expect_packet(watcher, Publish, topic=topic + "mine", payload=b"live")
    client.abort()  # no DISCONNECT: a will, if there were one, would go now
    await client.wait_closed()
    await client.reconnect()  # the broker has handled the dropped connection before it answers this CONNECT
    await expect_nothing(watcher, after=client)


@pytest.mark.spec("MQTT-3.1.2-10", "MQTT-3.14.4-3")
async def test_will_is_not_published_after_disconnect(client_factory, topic):
    watcher = await watch(client_factory, topic + "will")
    willer = await client_factory(name="willer", will=Will(topic + "will", b"must not be sent"))
    await willer.disconnect()
    # A connection opened after the DISCONNECT reached the broker: its round trip comes after the broker read it.
    barrier = await client_factory(name="barrier")
    await expect_nothing(watcher, after=barrier)


@pytest.mark.parametrize("violation", [
    pytest.param("second_connect", marks=pytest.mark.spec("MQTT-3.1.0-2")),
    pytest.param("publish_qos_3", marks=pytest.mark.spec("MQTT-3.3.1-4")),
])
@pytest.mark.spec("MQTT-3.1.2-8")
async def test_will_is_published_when_the_broker_closes_for_a_protocol_error(client_factory, topic, violation):
    watcher = await watch(client_factory, topic + "will")
    willer = await client_factory(name="willer", will=Will(topic + "will", b"protocol error"))
    if violation == "second_connect":
        await willer.send(Connect(willer.client_id, protocol_level=willer.version, **willer.login))
    else:
        await willer.send(Publish(topic + "other", b"x", qos=3, packet_id=1))  # both QoS bits set
    await expect_closed(willer)
    await expect_packet(watcher, Publish, topic=topic + "will", payload=b"protocol error")


@pytest.mark.v5_only
@pytest.mark.spec(v5=["MQTT-3.1.2-8", "MQTT-3.1.2-10"])
async def test_disconnect_with_will_message_publishes_the_will(client_factory, topic):
    watcher = await watch(client_factory, topic + "will")
    willer = await client_factory(name="willer", will=Will(topic + "will", b"asked for"))
    await willer.disconnect(reason_code=0x04)  # Disconnect with Will Message
    await expect_packet(watcher, Publish, topic=topic + "will", payload=b"asked for")


# ------------------------------------------------------------------------------------------------ retain and QoS

@pytest.mark.requires(retain=True)
@pytest.mark.spec(v311="MQTT-3.1.2-17", v5="MQTT-3.1.2-15")
async def test_will_retain_publishes_a_retained_message(client_factory, topic):
    watcher = await watch(client_factory, topic + "will")
    willer = await client_factory(name="willer", will=Will(topic + "will", b"retained will", retain=True))
    willer.abort()
    await expect_packet(watcher, Publish, topic=topic + "will", payload=b"retained will")  # it has been published
    late = await watch(client_factory, topic + "will")
    await expect_packet(late, Publish, topic=topic + "will", payload=b"retained will", retain=True)
    await late.publish(topic + "will", b"", retain=True)  # leave no retained message behind


@pytest.mark.spec(v311="MQTT-3.1.2-16", v5="MQTT-3.1.2-14")
async def test_will_without_retain_is_not_retained(client_factory, topic):
    watcher = await watch(client_factory, topic + "will")
    willer = await client_factory(name="willer", will=Will(topic + "will", b"not retained"))
    willer.abort()
    await expect_packet(watcher, Publish, topic=topic + "will", payload=b"not retained")
    late = await watch(client_factory, topic + "will")
    await expect_nothing(late)


@pytest.mark.parametrize("will_qos,sub_qos", [
    pytest.param(1, 0, id="will1-sub0"),
    pytest.param(1, 2, id="will1-sub2", marks=pytest.mark.requires(qos2=True)),
    pytest.param(2, 1, id="will2-sub1", marks=pytest.mark.requires(qos2=True)),
    pytest.param(2, 2, id="will2-sub2", marks=pytest.mark.requires(qos2=True)),
])
@pytest.mark.requires(qos1=True)
@pytest.mark.spec("MQTT-3.1.2-9", v311="MQTT-3.8.4-6", v5="MQTT-3.8.4-8")
async def test_will_is_delivered_at_the_lower_of_will_qos_and_granted_qos(client_factory, topic, will_qos, sub_qos):
    watcher = await client_factory(name="watcher")
    granted = (await watcher.subscribe(topic + "will", qos=sub_qos)).reason_codes[0]
    willer = await client_factory(name="willer", will=Will(topic + "will", b"qos", qos=will_qos))
    willer.abort()
    await expect_packet(watcher, Publish, topic=topic + "will", payload=b"qos", qos=min(will_qos, granted))


# ------------------------------------------------------------------------------------------------ MQTT 5 Will Delay

@pytest.mark.v5_only
@pytest.mark.spec(v5="MQTT-3.1.2-8")
async def test_will_delay_interval_delays_the_will(client_factory, topic, persistent, keepalive_seconds, timer_slack,
                                                   end_session):
    """Not before the delay; after it, the spec sets no deadline: the wait allows the usual timer slack plus the
    client's wait timeout."""
    delay = keepalive_seconds  # the short interval of timing tests (--keepalive-seconds)
    watcher = await watch(client_factory, topic + "will")
    willer = await client_factory(name="willer", will=Will(topic + "will", b"delayed",
                                                           properties={"will_delay_interval": delay}),
                                  **persistent)  # the session outlives the delay, so the delay decides
    willer.abort()
    dropped_at = time.monotonic()  # the broker sees the close at this moment or later
    will = await expect_packet(watcher, Publish, topic=topic + "will", payload=b"delayed",
                               timeout=delay + timer_slack + watcher.timeout)
    waited = arrival(watcher, will) - dropped_at
    assert waited >= delay, f"the will came {waited:.2f}s after the close, before its Will Delay Interval {delay}s"
    await end_session(willer)


@pytest.mark.v5_only
@pytest.mark.spec(v5=["MQTT-3.1.3-9", "MQTT-3.1.2-8"])
async def test_will_is_not_published_when_the_client_reconnects_within_the_delay(
        client_factory, topic, persistent, keepalive_seconds, timer_slack, end_session):
    """Two clients with the same Will Delay drop together; one comes back at once. The other's will shows that the
    delay has passed by the broker's own clock; the returning client's will must not have been sent by then."""
    delay = keepalive_seconds  # the short interval of timing tests; reconnecting takes milliseconds
    watcher = await watch(client_factory, topic + "+")
    clients = {}
    for name in ("returning", "away"):
        clients[name] = await client_factory(name=name, will=Will(topic + name, name.encode(),
                                                                  properties={"will_delay_interval": delay}),
                                             **persistent)
    for client in clients.values():
        client.abort()
    back = await client_factory(name="back", client_id=clients["returning"].client_id, **persistent)
    await expect_packet(watcher, Publish, topic=topic + "away", timeout=delay + timer_slack + watcher.timeout)
    await expect_nothing(watcher, after=back)
    assert topic + "returning" not in [p.topic for p in received(watcher, Publish)], (
        "the will was published although the client reconnected within the Will Delay Interval")
    await end_session(back)
    await end_session(clients["away"])


@pytest.mark.v5_only
@pytest.mark.spec(v5="MQTT-3.1.2-8")
async def test_will_is_published_when_the_session_ends_before_the_delay(client_factory, topic):
    watcher = await watch(client_factory, topic + "will")
    willer = await client_factory(name="willer", will=Will(topic + "will", b"session over",
                                                           properties={"will_delay_interval": LONG_DELAY}),
                                  properties={"session_expiry_interval": 0})  # the session ends with the connection
    willer.abort()
    await expect_packet(watcher, Publish, topic=topic + "will", payload=b"session over")


# ----------------------------------------------------------------------------------------------- MQTT 5 will properties

@pytest.mark.v5_only
@pytest.mark.parametrize("properties", [
    pytest.param({"payload_format_indicator": 1}, id="payload_format_indicator",
                 marks=pytest.mark.spec(v5="MQTT-3.3.2-4")),
    pytest.param({"content_type": "text/plain; charset=utf-8"}, id="content_type",
                 marks=pytest.mark.spec(v5="MQTT-3.3.2-20")),
    pytest.param({"response_topic": "reply"}, id="response_topic", marks=pytest.mark.spec(v5="MQTT-3.3.2-15")),
    pytest.param({"correlation_data": b"\x00\x01mh"}, id="correlation_data",
                 marks=pytest.mark.spec(v5="MQTT-3.3.2-16")),
    pytest.param({"user_property": [("k", "1"), ("a", "2"), ("k", "3")]}, id="user_property",
                 marks=pytest.mark.spec(v5=["MQTT-3.3.2-17", "MQTT-3.3.2-18", "MQTT-3.1.3-10"])),
])
async def test_will_property_is_forwarded_unaltered(client_factory, topic, properties):
    if "response_topic" in properties:
        properties = {"response_topic": topic + properties["response_topic"]}
    watcher = await watch(client_factory, topic + "will")
    willer = await client_factory(name="willer", will=Will(topic + "will", b"with properties",
                                                           properties=properties))
    willer.abort()
    await expect_packet(watcher, Publish, topic=topic + "will", payload=b"with properties", properties=properties)


@pytest.mark.v5_only
@pytest.mark.spec(v5="MQTT-3.3.2-6")
async def test_will_message_expiry_interval_is_forwarded_less_the_time_waited(client_factory, topic):
    watcher = await watch(client_factory, topic + "will")
    willer = await client_factory(name="willer", will=Will(topic + "will", b"expiring",
                                                           properties={"message_expiry_interval": LONG_DELAY}))
    willer.abort()
    will = await expect_packet(watcher, Publish, topic=topic + "will", payload=b"expiring")
    remaining = will.properties.get("message_expiry_interval")
    assert remaining is not None and 0 < remaining <= LONG_DELAY, (
        f"Message Expiry Interval {remaining!r} forwarded for a will sent with {LONG_DELAY}")
