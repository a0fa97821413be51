"""MQTT 5 DISCONNECT sent by the broker (§3.14): provoked by a protocol error (a Topic Alias never set) or a
session takeover (0x8E Session taken over; a broker MAY close without a DISCONNECT there), the DISCONNECT carries a DISCONNECT reason code and no Session Expiry Interval, nothing follows it,
and the broker closes the connection."""

from __future__ import annotations

import pytest

from harness.core.codec import summary
from harness.core.packets import Disconnect, Publish
from harness.core.reason_codes import ALLOWED
from harness.expect import expect_closed
from harness.packet_log import IN

pytestmark = pytest.mark.v5_only

SESSION_TAKEN_OVER = 0x8E


async def taken_over(client_factory):
    """A client whose session another connection with its Client Identifier took over; the first is closed."""
    first = await client_factory(name="first")
    await client_factory(name="second", client_id=first.client_id)
    await expect_closed(first)
    return first


def disconnects(client) -> list[Disconnect]:
    return [e.packet for e in client.log.entries if e.direction == IN and isinstance(e.packet, Disconnect)]


def sent_disconnect_or_skip(client) -> Disconnect:
    found = disconnects(client)
    if not found:
        pytest.skip("the broker closed the connection without a DISCONNECT (allowed: it MAY send one)")
    return found[0]


@pytest.mark.spec("MQTT-3.14.2-1")
async def test_disconnect_on_takeover_uses_a_disconnect_reason_code(client_factory):
    d = sent_disconnect_or_skip(await taken_over(client_factory))
    assert d.reason_code in ALLOWED[14], summary(d)
    assert d.reason_code == SESSION_TAKEN_OVER, f"{summary(d)}; a takeover is 0x8E Session taken over"


@pytest.mark.spec("MQTT-3.14.2-2")
async def test_disconnect_from_the_broker_has_no_session_expiry_interval(client_factory):
    d = sent_disconnect_or_skip(await taken_over(client_factory))
    assert "session_expiry_interval" not in d.properties, summary(d)


@pytest.mark.spec("MQTT-3.14.2-2", "MQTT-3.14.2-1")
async def test_disconnect_for_a_protocol_error_has_no_session_expiry_interval(client_factory, topic):
    client = await client_factory()
    await client.send(Publish("", b"x", properties={"topic_alias": 7}))  # an alias never set: a Protocol Error
    await expect_closed(client)
    d = sent_disconnect_or_skip(client)
    assert d.reason_code in ALLOWED[14] and d.reason_code >= 0x80, summary(d)
    assert "session_expiry_interval" not in d.properties, summary(d)


@pytest.mark.spec("MQTT-3.14.4-1", "MQTT-3.14.4-2")
@pytest.mark.requires(qos1=True)
async def test_broker_sends_nothing_after_its_disconnect_and_closes(client_factory, topic):
    """Messages are on their way to the client as it makes a protocol error: whatever the broker sent, its
    DISCONNECT is the last packet on that connection, and the connection is closed (expect_closed)."""
    client = await client_factory(name="client")
    await client.subscribe(topic + "a", qos=1)
    pub = await client_factory(name="pub")
    for n in range(5):
        pub.publish_nowait(topic + "a", b"%d" % n, qos=1)
    await client.send(Publish("", b"x", properties={"topic_alias": 7}))  # an alias never set: a Protocol Error
    await expect_closed(client)
    sent_disconnect_or_skip(client)
    incoming = [e.packet for e in client.log.entries if e.direction == IN]
    assert isinstance(incoming[-1], Disconnect), f"the broker sent {summary(incoming[-1])} after its DISCONNECT"
    await pub.wait_acked()
