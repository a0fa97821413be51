"""Sessions the device keeps with disable_clean_session: messages queued for it while it was away, in-flight
messages resent with DUP (and PUBREL, not PUBLISH, once PUBREC came), and no replay into a clean session."""

from __future__ import annotations

import pytest

from harness.core.packets import Connack, Connect, Publish, Pubrel
from harness.proxy import DOWNSTREAM, when

from harness.device.wire import (
    EVENT_TIMEOUT, device_got, device_sent, next_ping_round, start_device, wait_device_sent,
)

pytestmark = [pytest.mark.device, pytest.mark.v311_only]


async def _forget_session(dut, device_config, **fields) -> None:
    """Leave no session of this client id on the broker: connect clean, then stop."""
    await dut.aio.destroy()
    await start_device(dut, device_config(disable_clean_session=False, **fields))
    await dut.aio.destroy()


@pytest.mark.spec("MQTT-3.1.2-4", "MQTT-3.1.2-5", "MQTT-3.2.2-2")
async def test_persistent_session_gets_the_messages_queued_while_the_device_was_offline(
        dut, wire, device_config, client_factory, topic):
    config = device_config(disable_clean_session=True)
    await start_device(dut, config)
    mark = dut.mark()
    sub = await dut.aio.subscribe(topic + "inbox", qos=1)
    await dut.aio.expect_event("SUBSCRIBED", msg_id=sub, timeout=EVENT_TIMEOUT, since=mark)
    await dut.aio.stop()
    peer = await client_factory()
    await peer.publish(topic + "inbox", b"while-away", qos=1)
    mark = dut.mark()
    await dut.aio.start()
    back = await dut.aio.expect_event("CONNECTED", timeout=EVENT_TIMEOUT, since=mark)
    assert back.get("session_present") is True, "the broker kept the session, the device should say so"
    message = await dut.aio.expect_message(topic + "inbox", timeout=EVENT_TIMEOUT)
    assert message.payload == b"while-away"
    assert [c.clean for c in device_sent(wire, Connect)] == [False, False]
    await _forget_session(dut, device_config)


@pytest.mark.spec("MQTT-3.3.1-1")
@pytest.mark.esp_behaviour("retransmit")
async def test_publish_resent_after_a_lost_puback_has_dup_set(dut, wire, device_config, client_factory, topic):
    lost = wire.add_rule(when("PUBACK", direction=DOWNSTREAM, scope="global", times=1).drop())
    await start_device(dut, device_config())
    mark = dut.mark()
    msg_id = await dut.aio.publish(topic + "dup", b"again", qos=1)
    first, again = await wait_device_sent(wire, Publish, 2, timeout=EVENT_TIMEOUT)
    assert lost.fired
    assert (first.packet_id, first.dup) == (msg_id, False)
    assert (again.packet_id, again.dup, again.payload) == (msg_id, True, b"again"), \
        f"resent PUBLISH of msg_id {msg_id}: {again!r}"
    await dut.aio.expect_event("PUBLISHED", msg_id=msg_id, timeout=EVENT_TIMEOUT, since=mark)


@pytest.mark.spec("MQTT-4.4.0-1", "MQTT-3.3.1-1")
async def test_unacknowledged_publish_is_resent_with_dup_after_reconnecting(
        dut, wire, device_config, client_factory, topic):
    wire.add_rule(when("PUBACK", direction=DOWNSTREAM, scope="global", times=1).close("before"))
    # a long retransmit period: the resend must come from the reconnect, not from the timer
    await start_device(dut, device_config(disable_clean_session=True, retransmit_ms=60_000))
    mark = dut.mark()
    msg_id = await dut.aio.publish(topic + "resume", b"in-flight", qos=1)
    await dut.aio.expect_event("DISCONNECTED", timeout=EVENT_TIMEOUT, since=mark)
    back = await dut.aio.expect_event("CONNECTED", timeout=EVENT_TIMEOUT, since=mark)
    assert back.get("session_present") is True
    await dut.aio.expect_event("PUBLISHED", msg_id=msg_id, timeout=EVENT_TIMEOUT, since=mark)
    first, again = device_sent(wire, Publish)
    assert (again.packet_id, again.dup) == (msg_id, True), f"after reconnecting the device sent {again!r}"
    await _forget_session(dut, device_config)


@pytest.mark.spec("MQTT-4.4.0-1")
@pytest.mark.requires(qos2=True)
async def test_pubrel_not_publish_is_resent_after_reconnecting_once_pubrec_came(
        dut, wire, device_config, client_factory, topic):
    wire.add_rule(when("PUBCOMP", direction=DOWNSTREAM, scope="global", times=1).close("before"))
    await start_device(dut, device_config(disable_clean_session=True, retransmit_ms=60_000))
    mark = dut.mark()
    msg_id = await dut.aio.publish(topic + "rel", b"two-step", qos=2)
    await dut.aio.expect_event("DISCONNECTED", timeout=EVENT_TIMEOUT, since=mark)
    await dut.aio.expect_event("CONNECTED", timeout=EVENT_TIMEOUT, since=mark)
    await dut.aio.expect_event("PUBLISHED", msg_id=msg_id, timeout=EVENT_TIMEOUT, since=mark)
    second = wire.connections[-1].id
    resent = [p for p in device_sent(wire, connection=second) if isinstance(p, (Publish, Pubrel))]
    assert resent and isinstance(resent[0], Pubrel) and resent[0].packet_id == msg_id, \
        f"after PUBREC the device must resend PUBREL {msg_id}; it sent {resent}"
    assert not [p for p in resent if isinstance(p, Publish)], "the QoS 2 PUBLISH was sent again after its PUBREC"
    await _forget_session(dut, device_config)


@pytest.mark.spec("MQTT-3.1.2-6")
@pytest.mark.esp_behaviour("outbox")
async def test_clean_session_does_not_get_the_old_in_flight_messages(dut, wire, device_config, topic):
    wire.add_rule(when("PUBACK", direction=DOWNSTREAM, scope="global", times=1).close("before"))
    # keepalive 4 s: its first PINGREQ (after 2 s) is the barrier; a replay comes right after CONNACK or at the
    # 1 s retransmit, both before it
    await start_device(dut, device_config(keepalive=4))
    mark = dut.mark()
    msg_id = await dut.aio.publish(topic + "old", b"in-flight", qos=1)
    await dut.aio.expect_event("DISCONNECTED", timeout=EVENT_TIMEOUT, since=mark)
    back = await dut.aio.expect_event("CONNECTED", timeout=EVENT_TIMEOUT, since=mark)
    assert back.get("session_present") is False
    second = wire.connections[-1].id
    await next_ping_round(wire, connection=second)
    replayed = [p for p in device_sent(wire, Publish, connection=second) if p.packet_id == msg_id]
    assert not replayed, f"message {msg_id} of the old session was replayed into the clean one: {replayed}"
    assert [c.session_present for c in device_got(wire, Connack)] == [False, False]
