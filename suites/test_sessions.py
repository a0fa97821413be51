"""Sessions: Clean Session / Clean Start and Session Present, what a resumed session keeps (subscriptions, QoS 1 and
2 messages published while the client was away), and MQTT 5 Session Expiry (set on CONNECT, changed on DISCONNECT,
expiring).

QoS 0 messages published while a client is away may be queued or dropped (the broker's choice); nothing here
depends on either."""

from __future__ import annotations

import asyncio

import pytest

from harness.client import Client
from harness.core.packets import Disconnect, Publish
from harness.expect import expect_closed, expect_nothing, expect_packet, received

QOS = [pytest.param(1, id="qos1"), pytest.param(2, id="qos2", marks=pytest.mark.requires(qos2=True))]
KEEP = 300  # a Session Expiry Interval no test outlives


async def stored_session(client_factory, topic: str, qos: int = 1, **options) -> Client:
    """A client subscribed to topic + "x" that has disconnected normally: its session is stored on the broker if
    `options` make it persistent."""
    sub = await client_factory(name="sub", **options)
    await sub.subscribe(topic + "x", qos=qos)
    await sub.disconnect()
    return sub


# ------------------------------------------------------------------------------------------------ Session Present

@pytest.mark.spec(v311="MQTT-3.2.2-1", v5="MQTT-3.2.2-2")
async def test_clean_session_is_acknowledged_with_session_present_0(client_factory, persistent, topic):
    sub = await stored_session(client_factory, topic, **persistent)
    clean = await client_factory(name="clean", client_id=sub.client_id, clean=True)
    assert not clean.connack.session_present, "Session Present 1 in reply to a clean session"


@pytest.mark.spec(v311=["MQTT-3.1.2-4", "MQTT-3.2.2-3"], v5=["MQTT-3.1.2-6", "MQTT-3.2.2-3"])
async def test_new_persistent_session_is_acknowledged_with_session_present_0(client_factory, persistent,
                                                                               end_session):
    client = await client_factory(**persistent)
    assert not client.connack.session_present, "Session Present 1 although the client id never had a session"
    await end_session(client)


@pytest.mark.spec(v311=["MQTT-3.1.2-4", "MQTT-3.2.2-2"], v5=["MQTT-3.1.2-5", "MQTT-3.1.2-23", "MQTT-3.2.2-3"])
async def test_persistent_session_is_resumed_with_session_present_1(client_factory, persistent, topic, end_session):
    sub = await stored_session(client_factory, topic, **persistent)
    await sub.open()
    assert sub.connack.session_present, "Session Present 0: the stored session was not resumed"
    await end_session(sub)


# ------------------------------------------------------------------------------------------------ what a session keeps

@pytest.mark.spec(v311=["MQTT-3.1.2-4", "MQTT-4.1.0-1"], v5="MQTT-3.1.2-5")
async def test_subscriptions_survive_a_reconnect(client_factory, persistent, topic, end_session):
    sub = await stored_session(client_factory, topic, **persistent)
    await sub.open()
    pub = await client_factory(name="pub")
    await pub.publish(topic + "x", b"after the reconnect", qos=1)
    await expect_packet(sub, Publish, topic=topic + "x", payload=b"after the reconnect")
    await end_session(sub)


@pytest.mark.parametrize("qos", QOS)
@pytest.mark.spec("MQTT-4.5.0-1", v311="MQTT-3.1.2-5", v5="MQTT-3.1.2-23")
async def test_messages_published_while_away_are_delivered_on_reconnect(client_factory, persistent, topic,
                                                                         end_session, qos):
    sub = await stored_session(client_factory, topic, qos, **persistent)
    pub = await client_factory(name="pub")
    await pub.publish(topic + "x", b"while away", qos=qos)  # acknowledged: the broker owns the message
    await sub.open()
    assert sub.connack.session_present
    await expect_packet(sub, Publish, topic=topic + "x", payload=b"while away", qos=qos)
    await end_session(sub)


@pytest.mark.spec(v311=["MQTT-3.1.2-6", "MQTT-3.1.4-3"], v5=["MQTT-3.1.2-4", "MQTT-3.1.4-4"])
async def test_clean_session_discards_the_previous_session(client_factory, persistent, topic, end_session):
    """Neither the subscription nor a message queued for the old session reaches the clean one."""
    sub = await stored_session(client_factory, topic, **persistent)
    pub = await client_factory(name="pub")
    await pub.publish(topic + "x", b"queued for the old session", qos=1)
    await sub.open(clean=True)
    assert not sub.connack.session_present
    await pub.publish(topic + "x", b"after the clean start", qos=1)
    await expect_nothing(sub, after=pub)
    await end_session(sub)


# ------------------------------------------------------------------------------------------------ MQTT 5 Session Expiry

@pytest.mark.v5_only
@pytest.mark.spec(v5=["MQTT-4.1.0-2", "MQTT-3.2.2-3"])
async def test_session_expiry_0_ends_the_session_with_the_connection(client_factory, topic):
    sub = await stored_session(client_factory, topic, clean=False, properties={"session_expiry_interval": 0})
    await sub.open()
    assert not sub.connack.session_present, "the session outlived its connection with Session Expiry 0"
    pub = await client_factory(name="pub")
    await pub.publish(topic + "x", b"no subscription left", qos=1)
    await expect_nothing(sub, after=pub)


@pytest.mark.v5_only
@pytest.mark.spec(v5=["MQTT-4.1.0-2", "MQTT-3.2.2-3"])
async def test_session_expiry_0_on_disconnect_ends_the_session(client_factory, persistent, topic, end_session):
    sub = await client_factory(name="sub", **persistent)
    await sub.subscribe(topic + "x", qos=1)
    await sub.disconnect(properties={"session_expiry_interval": 0})
    await sub.open()
    assert not sub.connack.session_present, "the DISCONNECT's Session Expiry 0 did not end the session"
    await end_session(sub)


@pytest.mark.v5_only
@pytest.mark.spec(v5="MQTT-3.1.2-23")
async def test_session_expiry_raised_on_disconnect_keeps_the_session(client_factory, topic, keepalive_seconds,
                                                                       timer_slack, end_session):
    expiry = keepalive_seconds  # the short interval of timing tests (--keepalive-seconds)
    sub = await client_factory(name="sub", clean=False, properties={"session_expiry_interval": expiry})
    await sub.subscribe(topic + "x", qos=1)
    await sub.disconnect(properties={"session_expiry_interval": KEEP})
    # Models elapsed time: past the CONNECT's expiry, as late as a broker that expires sessions on time would
    # (whole-second clock plus scheduling: timer_slack), and far within the DISCONNECT's.
    await asyncio.sleep(expiry + timer_slack)
    await sub.open()
    assert sub.connack.session_present, "the session expired after the CONNECT's Session Expiry Interval"
    await end_session(sub)


@pytest.mark.v5_only
@pytest.mark.spec(v5=["MQTT-4.13.1-1", "MQTT-4.1.0-2"])
async def test_session_expiry_on_disconnect_after_0_on_connect_is_a_protocol_error(client_factory, topic):
    """With Session Expiry 0 on CONNECT, a non-zero one on DISCONNECT is a Protocol Error (section 3.14.2.2.2): the
    broker closes the connection and the session still ends with it."""
    client = await client_factory(clean=False, properties={"session_expiry_interval": 0})
    await client.subscribe(topic + "x", qos=1)
    await client.send(Disconnect(properties={"session_expiry_interval": KEEP}))
    await expect_closed(client)
    for disconnect in received(client, Disconnect):
        assert disconnect.reason_code >= 0x80, f"DISCONNECT {disconnect.reason_code:#x} for a protocol error"
    await client.reconnect()
    assert not client.connack.session_present, "the invalid DISCONNECT's Session Expiry Interval was applied"


@pytest.mark.v5_only
@pytest.mark.spec(v5="MQTT-4.1.0-2")
async def test_session_expires_after_the_session_expiry_interval(client_factory, topic, keepalive_seconds,
                                                                 timer_slack):
    expiry = keepalive_seconds  # the short interval of timing tests (--keepalive-seconds)
    sub = await stored_session(client_factory, topic, clean=False, properties={"session_expiry_interval": expiry})
    # Models elapsed time: the broker must discard the session once `expiry` seconds passed after the close;
    # timer_slack allows a whole-second broker clock and scheduling. Reconnecting any earlier would resume it.
    await asyncio.sleep(expiry + timer_slack)
    await sub.open()
    assert not sub.connack.session_present, (
        f"the session was still there {expiry + timer_slack:g}s after a close with Session Expiry {expiry}s")


# ------------------------------------------------------------------------------------------ whose session it is

@pytest.mark.spec("MQTT-3.1.3-2")
async def test_session_state_belongs_to_its_client_identifier(client_factory, persistent, topic, end_session):
    """A stored session is resumed by its own Client Identifier only: another one (same everything else) gets a new
    session (Session Present 0, none of the stored subscriptions), and the first still finds its session."""
    owner = await stored_session(client_factory, topic, **persistent)
    other = await client_factory(name="other", **persistent)
    assert not other.connack.session_present, "another Client Identifier was given the stored session"
    pub = await client_factory(name="pub")
    await pub.publish(topic + "x", b"for the owner", qos=1)
    await expect_nothing(other, after=pub)  # not subscribed: the owner's subscription is not its own
    connack = await owner.open(clean=False)
    assert connack.session_present
    await expect_packet(owner, Publish, topic=topic + "x", payload=b"for the owner")
    await end_session(owner)
    await end_session(other)


# ------------------------------------------------------------------------------- kept while the connection lasts

@pytest.mark.spec(v311="MQTT-4.1.0-2", v5="MQTT-4.1.0-1")
async def test_session_state_is_kept_for_as_long_as_the_connection_is_open(client_factory, topic, mqtt_version,
                                                                          timer_slack):
    """A session that ends with its connection (Clean Session 1; MQTT 5: Session Expiry 1 s, which only counts
    once the connection closes) keeps its subscription and an unacknowledged message while the connection stays
    open, past that expiry."""
    props = {"properties": {"session_expiry_interval": 1}} if mqtt_version == "5" else {}
    sub = await client_factory(name="sub", manual_acks=True, **props)
    pub = await client_factory(name="pub")
    await sub.subscribe(topic + "a", qos=1)
    await pub.publish(topic + "a", b"held", qos=1)
    held = await expect_packet(sub, Publish, topic=topic + "a", payload=b"held")
    await asyncio.sleep(1 + timer_slack)  # models a connection that outlives the Session Expiry Interval
    await sub.ping()
    await pub.publish(topic + "a", b"later", qos=1)
    # Acknowledged only now, before "later" is awaited: a broker may keep one message in flight (MQTT 3.1.1
    # §4.6, non-normative; ejabberd does), so "later" may wait for this PUBACK.
    sub.ack(held)
    later = await expect_packet(sub, Publish, topic=topic + "a", payload=b"later")
    sub.ack(later)
    await expect_nothing(sub, after=pub)
