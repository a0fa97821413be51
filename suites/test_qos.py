"""QoS: delivery at the right QoS, SUBACK grants, packet identifiers, the QoS 1 and QoS 2 flows in both directions,
DUP, redelivery to a resumed session, ordering, and pipelined bursts."""

from __future__ import annotations

import pytest

from harness.core.packets import (
    Puback, Pubcomp, Publish, Pubrec, Pubrel, Suback, Subscribe, Subscription,
)
from harness.errors import ConnectionClosed
from harness.expect import collect, expect_closed, expect_nothing, expect_packet, expect_redelivered

QOS2 = pytest.mark.requires(qos2=True)
BURST = 500
BURST_TIMEOUT = 60.0  # bound on acknowledging a whole burst (a slow broker handles 500 QoS 2 flows in ~1 s)


def _qos_param(qos: int, *marks):
    """A QoS parameter; QoS 2 needs a broker that supports it."""
    return pytest.param(qos, id=f"qos{qos}", marks=[*marks, *([QOS2] if qos == 2 else [])])


def _first_copies(payloads: list[bytes]) -> list[bytes]:
    return list(dict.fromkeys(payloads))


async def _pipelined(pub, sub, topic: str, qos: int, count: int) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """Publish `count` numbered messages without waiting (the publisher's session keeps its window full), wait until
    every flow is acknowledged, and collect what `sub` got. Returns (sent, received, acknowledged but missing)."""
    sent = [b"%d" % i for i in range(count)]
    for payload in sent:
        pub.publish_nowait(topic, payload, qos=qos, track=False)
    await pub.wait_acked(BURST_TIMEOUT)
    # Every flow is complete, so every message is owed: each next one within the wait timeout (a message that is
    # never coming ends the wait there, not at the bound on the whole burst).
    got = [m.payload for m in await collect(sub, count, after=pub, timeout=BURST_TIMEOUT, idle=sub.timeout)]
    return sent, got, sorted(set(sent) - set(got), key=int)


# ---------------------------------------------------------------------------------------------- QoS of delivery

@pytest.mark.spec(v311="MQTT-3.8.4-6", v5="MQTT-3.8.4-8")
@pytest.mark.parametrize("sub_qos", [0, 1, 2], ids=lambda q: f"sub{q}")
@pytest.mark.parametrize("pub_qos", [_qos_param(0), _qos_param(1), _qos_param(2)])
async def test_delivery_qos_is_the_minimum_of_publish_and_granted_qos(client_factory, topic, pub_qos, sub_qos):
    sub = await client_factory()
    pub = await client_factory()
    granted = (await sub.subscribe(topic + "a", qos=sub_qos)).reason_codes[0]
    assert granted <= sub_qos, f"SUBACK granted QoS {granted} for a QoS {sub_qos} subscription"
    await pub.publish(topic + "a", b"m", qos=pub_qos)
    await expect_packet(sub, Publish, topic=topic + "a", payload=b"m", qos=min(pub_qos, granted))
    await expect_nothing(sub, after=pub)


@pytest.mark.spec("MQTT-3.9.3-1", v311="MQTT-3.8.4-5", v5=["MQTT-3.8.4-6", "MQTT-3.8.4-7"])
async def test_suback_grants_each_requested_qos_in_filter_order(broker, client_factory, topic):
    sub = await client_factory()
    suback = await sub.subscribe([(topic + "two", 2), (topic + "zero", 0), (topic + "one", 1)])
    # The profile's (or discovery's) maximum QoS: a broker may grant less than asked, never more.
    top = broker.capabilities.max_qos
    assert suback.reason_codes == [min(2, top), 0, min(1, top)]


@pytest.mark.spec("MQTT-3.8.4-1", "MQTT-3.8.4-2")
async def test_suback_carries_the_subscribe_packet_id(client_factory, topic):
    sub = await client_factory()
    await sub.send(Subscribe(0xFEDC, [Subscription(topic + "a", 1)]))
    await expect_packet(sub, Suback, packet_id=0xFEDC)


# ------------------------------------------------------------------------------------------ packet identifiers

@pytest.mark.spec("MQTT-4.3.2-1", "MQTT-4.3.3-1", v311="MQTT-2.3.1-1", v5="MQTT-2.2.1-4")
@QOS2
async def test_broker_packet_ids_are_nonzero_and_unique_among_unacknowledged(client_factory, topic):
    sub = await client_factory(manual_acks=True)
    pub = await client_factory()
    await sub.subscribe(topic + "a", qos=2)
    for i in range(8):  # 16 in flight towards sub: within every broker's outgoing window seen so far (mosquitto: 20)
        await pub.publish(topic + "a", b"q1-%d" % i, qos=1)
        await pub.publish(topic + "a", b"q2-%d" % i, qos=2)
    # Whatever the broker has in flight at once (16 here, or fewer: a broker may keep as few as one, MQTT 3.1.1
    # §4.6 non-normative), then acknowledged, then the next batch: ids are unique among those in flight together.
    delivered, window = 0, 16
    while delivered < 16:
        held = await collect(sub, min(window, 16 - delivered))
        assert held, f"no PUBLISH after {delivered} of 16"
        delivered, window = delivered + len(held), len(held)  # waits out the timeout once, if the window is < 16
        ids = [m.packet_id for m in held]
        assert 0 not in ids and None not in ids, f"packet ids {ids}"
        assert len(set(ids)) == len(ids), f"packet ids reused while unacknowledged: {ids}"
        for message in held:
            sub.ack(message)
            if message.qos == 2:  # one flow at a time: PUBRELs for different ids may come in any order
                await expect_packet(sub, Pubrel, packet_id=message.packet_id)
                sub.complete(message.packet_id)
    await expect_nothing(sub)


@pytest.mark.spec(v311=["MQTT-2.3.1-6", "MQTT-4.3.2-2"], v5=["MQTT-2.2.1-5", "MQTT-4.3.2-4"])
async def test_puback_carries_the_publish_packet_id(client_factory, topic):
    pub = await client_factory(manual_acks=True)
    await pub.send(Publish(topic + "a", b"m", qos=1, packet_id=0xBEEF))
    await expect_packet(pub, Puback, packet_id=0xBEEF)


# --------------------------------------------------------------------------------------------------- QoS 2 flows

@pytest.mark.spec(v311="MQTT-4.3.3-1", v5=["MQTT-4.3.3-2", "MQTT-4.3.3-4", "MQTT-4.3.3-6"])
@QOS2
async def test_qos2_broker_as_sender_releases_after_pubrec_and_never_resends_the_publish(client_factory, topic):
    sub = await client_factory(manual_acks=True)
    pub = await client_factory()
    await sub.subscribe(topic + "a", qos=2)
    await pub.publish(topic + "a", b"m", qos=2)
    message = await expect_packet(sub, Publish, topic=topic + "a", qos=2, dup=False, payload=b"m")
    sub.ack(message)  # PUBREC
    await expect_packet(sub, Pubrel, packet_id=message.packet_id)
    await expect_nothing(sub)  # no PUBLISH resent after our PUBREC
    sub.complete(message.packet_id)  # PUBCOMP
    await expect_nothing(sub)


@pytest.mark.spec(v311=["MQTT-4.3.3-2", "MQTT-2.3.1-6"], v5=["MQTT-4.3.3-8", "MQTT-4.3.3-11", "MQTT-2.2.1-5"])
@QOS2
async def test_qos2_broker_as_receiver_completes_the_flow(client_factory, topic):
    sub = await client_factory()
    pub = await client_factory(manual_acks=True)
    await sub.subscribe(topic + "a", qos=2)
    await pub.send(Publish(topic + "a", b"m", qos=2, packet_id=0x0A0B))
    await expect_packet(pub, Pubrec, packet_id=0x0A0B)
    await pub.send(Pubrel(0x0A0B))
    await expect_packet(pub, Pubcomp, packet_id=0x0A0B)
    await expect_packet(sub, Publish, topic=topic + "a", payload=b"m", qos=2)
    await expect_nothing(sub, after=pub)


@pytest.mark.spec(v311="MQTT-4.3.3-2", v5="MQTT-4.3.3-10")
@QOS2
async def test_qos2_publish_resent_before_pubrel_is_delivered_once(client_factory, topic):
    sub = await client_factory()
    pub = await client_factory(manual_acks=True)
    await sub.subscribe(topic + "a", qos=2)
    await pub.send(Publish(topic + "a", b"once", qos=2, packet_id=7))
    await expect_packet(pub, Pubrec, packet_id=7)
    await pub.send(Publish(topic + "a", b"once", qos=2, dup=True, packet_id=7))
    await expect_packet(pub, Pubrec, packet_id=7)  # acknowledged again, not delivered again
    await pub.send(Pubrel(7))
    await expect_packet(pub, Pubcomp, packet_id=7)
    await expect_packet(sub, Publish, topic=topic + "a", payload=b"once")
    await expect_nothing(sub, after=pub)


@pytest.mark.spec(v311="MQTT-4.3.3-2", v5="MQTT-4.3.3-12")
@QOS2
async def test_qos2_packet_id_reused_after_pubcomp_is_a_new_message(client_factory, topic):
    sub = await client_factory()
    pub = await client_factory(manual_acks=True)
    await sub.subscribe(topic + "a", qos=2)
    for payload in (b"first", b"second"):
        await pub.send(Publish(topic + "a", payload, qos=2, packet_id=9))
        await expect_packet(pub, Pubrec, packet_id=9)
        await pub.send(Pubrel(9))
        await expect_packet(pub, Pubcomp, packet_id=9)
        await expect_packet(sub, Publish, topic=topic + "a", payload=payload)
    await expect_nothing(sub, after=pub)


@pytest.mark.spec(v311="MQTT-4.3.2-2", v5="MQTT-4.3.2-5")
async def test_qos1_packet_id_reused_after_puback_is_a_new_message(client_factory, topic):
    sub = await client_factory()
    pub = await client_factory(manual_acks=True)
    await sub.subscribe(topic + "a", qos=1)
    await pub.send(Publish(topic + "a", b"first", qos=1, packet_id=5))
    await expect_packet(pub, Puback, packet_id=5)
    # DUP=1 makes no difference once the PUBACK is sent: the receiver treats it as a new publication
    await pub.send(Publish(topic + "a", b"second", qos=1, dup=True, packet_id=5))
    await expect_packet(pub, Puback, packet_id=5)
    await expect_packet(sub, Publish, topic=topic + "a", payload=b"first")
    await expect_packet(sub, Publish, topic=topic + "a", payload=b"second")


# ---------------------------------------------------------------------------------------------------------- DUP

@pytest.mark.parametrize("qos", [
    _qos_param(0, pytest.mark.spec("MQTT-3.3.1-2", "MQTT-4.3.1-1")),
    _qos_param(1, pytest.mark.spec(v311="MQTT-4.3.2-1", v5="MQTT-4.3.2-2")),
    _qos_param(2, pytest.mark.spec(v311="MQTT-4.3.3-1", v5="MQTT-4.3.3-2")),
])
async def test_first_delivery_attempt_has_dup_0(client_factory, topic, qos):
    sub = await client_factory()
    pub = await client_factory()
    await sub.subscribe(topic + "a", qos=qos)
    await pub.publish(topic + "a", b"m", qos=qos)
    await expect_packet(sub, Publish, topic=topic + "a", qos=qos, dup=False)


@pytest.mark.spec("MQTT-3.3.1-3")
@pytest.mark.parametrize("qos", [_qos_param(1), _qos_param(2)])
async def test_dup_flag_of_the_incoming_publish_is_not_propagated(client_factory, topic, qos):
    sub = await client_factory()
    pub = await client_factory(manual_acks=True)
    await sub.subscribe(topic + "a", qos=qos)
    await pub.send(Publish(topic + "a", b"m", qos=qos, dup=True, packet_id=3))
    if qos == 2:
        await expect_packet(pub, Pubrec, packet_id=3)
        await pub.send(Pubrel(3))
        await expect_packet(pub, Pubcomp, packet_id=3)
    else:
        await expect_packet(pub, Puback, packet_id=3)
    await expect_packet(sub, Publish, topic=topic + "a", payload=b"m", dup=False)


# ------------------------------------------------------------------------------------- redelivery on reconnect

@pytest.mark.spec("MQTT-4.4.0-1", "MQTT-3.3.1-1", v311="MQTT-2.3.1-4")  # resent with the same packet id
@pytest.mark.parametrize("qos", [_qos_param(1, pytest.mark.spec(v5="MQTT-4.3.2-3")),
                                 _qos_param(2, pytest.mark.spec(v5="MQTT-4.3.3-3"))])
async def test_unacknowledged_publish_is_resent_with_dup_1_on_reconnect(
        client_factory, topic, persistent, end_session, qos):
    sub = await client_factory(manual_acks=True, **persistent)
    pub = await client_factory()
    await sub.subscribe(topic + "a", qos=qos)
    await pub.publish(topic + "a", b"m", qos=qos)
    first = await expect_packet(sub, Publish, topic=topic + "a", qos=qos, payload=b"m", dup=False)
    # no PUBACK / PUBREC: the message stays unacknowledged in the session
    connack = await sub.reconnect(clean=False)
    assert connack.session_present
    await expect_redelivered(sub, first)
    await expect_nothing(sub)
    await end_session(sub)


@pytest.mark.spec("MQTT-4.4.0-1", v311="MQTT-4.3.3-1", v5=["MQTT-4.3.3-6", "MQTT-4.3.3-5"])
@QOS2
async def test_pubrel_is_resent_on_reconnect_and_the_publish_is_not(client_factory, topic, persistent, end_session):
    sub = await client_factory(manual_acks=True, **persistent)
    pub = await client_factory()
    await sub.subscribe(topic + "a", qos=2)
    await pub.publish(topic + "a", b"m", qos=2)
    message = await expect_packet(sub, Publish, topic=topic + "a", qos=2)
    sub.ack(message)  # PUBREC
    await expect_packet(sub, Pubrel, packet_id=message.packet_id)
    # no PUBCOMP: the PUBREL stays unacknowledged in the session
    connack = await sub.reconnect(clean=False)
    assert connack.session_present
    await expect_packet(sub, Pubrel, packet_id=message.packet_id)
    await expect_nothing(sub)  # the PUBLISH is not resent once PUBREL was sent
    sub.complete(message.packet_id)
    await expect_nothing(sub)
    await end_session(sub)


# ----------------------------------------------------------------------------------------------------- ordering

@pytest.mark.spec(v311=["MQTT-4.6.0-5", "MQTT-4.6.0-6"], v5=["MQTT-4.6.0-5", "MQTT-4.6.0-6"])
@pytest.mark.parametrize("qos", [_qos_param(0), _qos_param(1), _qos_param(2)])
async def test_messages_arrive_in_publish_order_per_topic(client_factory, topic, qos):
    sub = await client_factory()
    pub = await client_factory()
    await sub.subscribe([(topic + "a", qos), (topic + "b", qos)])
    sent = {topic + "a": [], topic + "b": []}
    for i in range(100):  # interleaved: order is per topic (and publisher and QoS)
        name = topic + "ab"[i % 2]
        sent[name].append(b"%d" % i)
        pub.publish_nowait(name, sent[name][-1], qos=qos, track=False)
    await pub.wait_acked()
    received = await collect(sub, 100, after=pub)
    for name, payloads in sent.items():
        got = [m.payload for m in received if m.topic == name]
        if qos == 0:  # at most once: some may be missing, but what arrives keeps the order
            assert got == [p for p in payloads if p in set(got)], f"{name}: out of order: {got}"
        else:
            assert _first_copies(got) == payloads, f"{name}: expected {len(payloads)} in order, got {got}"


# ------------------------------------------------------------------------------------------------------- bursts

@pytest.mark.spec(v311=["MQTT-4.3.2-2", "MQTT-4.5.0-1", "MQTT-4.6.0-6"],
                  v5=["MQTT-4.3.2-4", "MQTT-4.5.0-1", "MQTT-4.6.0-5"])
@pytest.mark.timeout(120)
async def test_pipelined_qos1_burst_is_delivered_at_least_once_in_order(client_factory, topic):
    sub = await client_factory()
    pub = await client_factory()  # the session's window: Receive Maximum (v5) or 20 (3.1.1)
    await sub.subscribe(topic + "a", qos=1)
    payloads, got, missing = await _pipelined(pub, sub, topic + "a", 1, BURST)
    assert not missing, f"{len(missing)} acknowledged messages never delivered, first: {missing[:10]}"
    assert _first_copies(got) == payloads, "delivered out of order"


@pytest.mark.spec(v311=["MQTT-4.3.3-2", "MQTT-4.5.0-1", "MQTT-4.6.0-6"],
                  v5=["MQTT-4.3.3-8", "MQTT-4.3.3-10", "MQTT-4.5.0-1", "MQTT-4.6.0-5"])
@pytest.mark.timeout(120)
@QOS2
async def test_pipelined_qos2_burst_is_delivered_exactly_once_in_order(client_factory, topic):
    sub = await client_factory()
    pub = await client_factory()  # the session's window: Receive Maximum (v5) or 20 (3.1.1)
    await sub.subscribe(topic + "a", qos=2)
    payloads, got, missing = await _pipelined(pub, sub, topic + "a", 2, BURST)
    assert not missing, f"{len(missing)} completed messages never delivered, first: {missing[:10]}"
    assert got == payloads, "delivered out of order or more than once"


@pytest.mark.spec("MQTT-4.3.3-2", "MQTT-4.5.0-1")
@pytest.mark.v311_only  # MQTT 5 bounds the window by the broker's Receive Maximum: see the next test
@pytest.mark.timeout(120)
@QOS2
async def test_every_completed_qos2_message_is_delivered_with_100_in_flight(client_factory, topic):
    """MQTT 3.1.1 has no flow control: a publisher may keep any number of QoS 2 flows open. A broker that
    completes a flow (PUBREC ... PUBCOMP) has taken ownership of the message and must deliver it."""
    sub = await client_factory()
    pub = await client_factory(max_inflight=100)
    await sub.subscribe(topic + "a", qos=2)
    payloads, got, missing = await _pipelined(pub, sub, topic + "a", 2, 200)  # acknowledged: every PUBCOMP came
    assert not missing, (f"{len(missing)} of {len(payloads)} messages completed with PUBCOMP were never delivered, "
                         f"first: {[int(p) for p in missing[:10]]}")
    assert got == payloads


@pytest.mark.spec("§3.3.4", "MQTT-4.13.1-1", "MQTT-4.13.2-1")
@pytest.mark.v5_only
@QOS2
async def test_exceeding_the_broker_receive_maximum_is_a_disconnect_0x93(client_factory, topic):
    """§3.3.4: a Server that receives more than Receive Maximum unacknowledged QoS 1/2 PUBLISH packets uses
    DISCONNECT with 0x93 (Receive Maximum exceeded), and closes the connection (§4.13). Our QoS 2 flows stay open
    (no PUBREL), so every one counts against the quota."""
    pub = await client_factory(manual_acks=True)
    limit = pub.connack.properties.get("receive_maximum", 65535)
    if limit > 1000:
        pytest.skip(f"the broker's Receive Maximum is {limit}; exceeding it is not a quick test")
    for pid in range(1, limit + 2):
        try:
            await pub.send(Publish(topic + "a", b"%d" % pid, qos=2, packet_id=pid))
        except ConnectionClosed:
            break  # closed before we got to the excess one: expect_closed() below reports what it sent
    await expect_closed(pub, probe=True)
    if pub.server_disconnect is not None:
        assert pub.server_disconnect.reason_code == 0x93, f"expected DISCONNECT 0x93, got {pub.server_disconnect}"
