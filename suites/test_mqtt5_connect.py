"""MQTT 5 CONNECT options the broker must honour across the connection: Request Response Information, Request
Problem Information, and Authentication Method (an unknown one is refused; without one there is no AUTH), plus
what a broker lacking a capability does with a Will that needs it. test_connect.py has the rest of CONNECT."""

from __future__ import annotations

import pytest

from harness.client import Client
from harness.core.codec import encode, summary
from harness.core.packets import (
    Auth, Connack, Disconnect, Puback, Pubcomp, Publish, Pubrec, Pubrel, Suback, Unsuback, Will,
)
from harness.core.reason_codes import ALLOWED
from harness.expect import expect_closed, expect_nothing, expect_packet, received
from harness.packet_log import IN

pytestmark = pytest.mark.v5_only

UNKNOWN_METHOD = "mqtt-harness-no-such-method"  # no broker implements this Authentication Method
PROBLEM_PROPERTIES = ("reason_string", "user_property")


async def raw_client(client_factory, **kwargs) -> Client:
    client = await client_factory(connect=False, **kwargs)
    await client.open_raw()
    return client


async def expect_refused(client: Client) -> None:
    """The broker closes the connection; a CONNACK it sends first refuses (0x80 or above), and nothing else came."""
    __tracebackhide__ = True
    await expect_closed(client)
    connacks = received(client, Connack)
    assert all(c.reason_code >= 0x80 for c in connacks), f"the broker accepted the CONNECT: {connacks}"
    assert not received(client, Disconnect), "a DISCONNECT before any successful CONNACK [MQTT-3.14.0-1]"


# ------------------------------------------------------------------------------- Request Response Information

@pytest.mark.spec("MQTT-3.1.2-28")
@pytest.mark.parametrize("requested", [None, 0], ids=["absent", "zero"])
async def test_no_response_information_unless_requested(client_factory, requested):
    props = {} if requested is None else {"request_response_information": requested}
    client = await client_factory(properties=props)
    assert "response_information" not in client.connack.properties, summary(client.connack)


# -------------------------------------------------------------------------------- Request Problem Information

@pytest.mark.spec("MQTT-3.1.2-29")
@pytest.mark.requires(qos2=True)
async def test_no_reason_string_or_user_property_on_acks_when_problem_information_is_0(client_factory, topic):
    """Acknowledgements a broker might explain (no matching subscribers, no subscription existed) carry
    no Reason String or User Property once the client asked for none."""
    client = await client_factory(name="client", properties={"request_problem_information": 0})
    pub = await client_factory(name="pub")
    await client.publish(topic + "nobody", b"1", qos=1)   # PUBACK, maybe 0x10 No matching subscribers
    await client.publish(topic + "nobody", b"2", qos=2)   # PUBREC, PUBCOMP
    await client.unsubscribe(topic + "never")             # UNSUBACK, maybe 0x11 No subscription existed
    await client.subscribe([(topic + "a", 2), (topic + "b/#", 1)])  # SUBACK
    await pub.publish(topic + "a", b"3", qos=2)
    await expect_packet(client, Publish, topic=topic + "a", payload=b"3")
    await expect_packet(client, Pubrel)
    await client.ping()
    explained = [e.packet for e in client.log.entries if e.direction == IN
                 and isinstance(e.packet, (Puback, Pubrec, Pubrel, Pubcomp, Suback, Unsuback, Auth))
                 and any(p in e.packet.properties for p in PROBLEM_PROPERTIES)]
    assert not explained, f"Request Problem Information 0, yet the broker sent {summary(explained[0])}"


# -------------------------------------------------------------------------------------- Authentication Method

@pytest.mark.spec("MQTT-4.12.0-1", "MQTT-4.12.0-4", "MQTT-3.2.2-8")
async def test_unknown_authentication_method_is_refused(client_factory):
    client = await raw_client(client_factory)
    await client.send(client.connect_packet(properties={"authentication_method": UNKNOWN_METHOD}))
    await expect_refused(client)
    for connack in received(client, Connack):
        assert connack.reason_code in ALLOWED[2], summary(connack)  # a Connect Reason Code
    assert not received(client, Auth), "the broker started an AUTH exchange for a method it cannot know"


@pytest.mark.spec("MQTT-3.1.4-6")
async def test_packets_after_a_refused_connect_are_not_processed(client_factory, topic):
    watcher = await client_factory(name="watcher")
    await watcher.subscribe(topic + "x", qos=1)
    client = await raw_client(client_factory)
    await client.send(client.connect_packet(properties={"authentication_method": UNKNOWN_METHOD}))
    await client.send(Publish(topic + "x", b"sent after a refused CONNECT", qos=1, packet_id=1))  # before CONNACK
    await expect_refused(client)
    assert not received(client, Puback), "the broker acknowledged a PUBLISH sent after the CONNECT it refused"
    await expect_nothing(watcher)


@pytest.mark.spec("MQTT-4.12.0-6")
@pytest.mark.requires(qos1=True)
async def test_no_auth_and_no_authentication_method_without_one_in_connect(client_factory, topic):
    client = await client_factory()
    assert "authentication_method" not in client.connack.properties, summary(client.connack)
    await client.subscribe(topic + "a", qos=1)
    await client.publish(topic + "a", b"x", qos=1)
    await expect_packet(client, Publish, topic=topic + "a", payload=b"x")
    await expect_nothing(client, kinds=(Auth, Disconnect))
    assert not received(client, Auth)


@pytest.mark.spec("MQTT-4.13.1-1", "§4.12")
async def test_auth_without_an_authentication_method_is_a_protocol_error(client_factory, topic):
    """Re-authentication (AUTH 0x19) on a connection that used no Authentication Method [MQTT-4.12.0-7]."""
    client = await client_factory()
    await client.send(Auth(0x19, {"authentication_method": UNKNOWN_METHOD}))
    await expect_closed(client)
    sent = client.server_disconnect
    assert sent is None or sent.reason_code in (0x82, 0x8C), (
        f"broker sent {summary(sent)}; a Protocol Error (0x82) or Bad authentication method (0x8C)")


@pytest.mark.spec("MQTT-3.15.1-1", "MQTT-4.13.1-1")
async def test_auth_with_reserved_flags_is_refused(client_factory):
    """Malformed (reserved flags 0001), and also unexpected (no Authentication Method): either way the broker
    closes, with a DISCONNECT (if any) of 0x81 Malformed Packet or 0x82 Protocol Error."""
    client = await client_factory()
    await client.send_raw(encode(Auth(0x19, {"authentication_method": UNKNOWN_METHOD}), 5, flags=0b0001))
    await expect_closed(client)
    sent = client.server_disconnect
    assert sent is None or sent.reason_code in (0x81, 0x82), summary(sent)


# ------------------------------------------------------------------------- a Will the broker cannot honour

@pytest.mark.spec("MQTT-3.2.2-12")
@pytest.mark.requires(qos2=False)
async def test_will_qos_above_the_maximum_qos_is_refused(client_factory, topic):
    client = await raw_client(client_factory)
    await client.send(client.connect_packet(will=Will(topic + "will", b"w", qos=2)))
    await expect_refused(client)


@pytest.mark.spec("MQTT-3.2.2-13")
@pytest.mark.requires(retain=False)
async def test_retained_will_is_refused_without_retain_support(client_factory, topic):
    client = await raw_client(client_factory)
    await client.send(client.connect_packet(will=Will(topic + "will", b"w", retain=True)))
    await expect_refused(client)
