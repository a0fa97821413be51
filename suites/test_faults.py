"""Faults: the broker under test behind harness.proxy, with acks lost, connections cut, packets duplicated or
truncated in transit, a half-open connection, and bytes arriving one at a time. Each test puts its own proxy
(`front`) in front of the broker's plain MQTT listener and connects the clients that see the fault through it;
the others connect directly. The proxy's decoded traffic is written to the test's tmp_path as proxy-1.pcap."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time

import pytest

from harness.client import Client
from harness.core.codec import encode, summary
from harness.core.packets import Puback, Pubcomp, Publish, Pubrec, Pubrel, Will
from harness.expect import collect, expect_closed, expect_nothing, expect_packet, expect_redelivered
from harness.proxy import DOWNSTREAM, ProxyError, faults, when
from harness.proxy.fixtures import proxy  # noqa: F401 - the `proxy` fixture `front` builds on
from harness.proxy.threaded import ThreadedProxy

QOS2 = pytest.mark.requires(qos2=True)
PID = 0x0F0F  # packet id of the PUBLISH a test sends itself
LATE_CLOSE_WAIT = 10.0  # how long past the deadline the will test waits for the will (a late close still sends it)
LONGEST_KEEPALIVE = 10  # seconds: a half-open test waits ~1.5 x this at least
HALF_OPEN_CLIENTS, HALF_OPEN_SPREAD = 4, 1.3  # deadlines 1.3 s apart: a broker checking less often than that is late for one
SLICE_DELAY_US = 300  # between the 1-byte writes: the broker's reads then really see one byte at a time


def _qos(qos: int, *marks):
    return pytest.param(qos, id=f"qos{qos}", marks=[*marks, *([QOS2] if qos == 2 else [])])


@pytest.fixture
def front(proxy, broker) -> ThreadedProxy:  # noqa: F811 - the imported fixture
    """A fault-injecting proxy in front of the broker's plain MQTT listener (clients: `url=front.url`)."""
    return proxy(broker.url("mqtt"))


async def _fired(front: ThreadedProxy, rule, what: str) -> None:
    """Wait until the proxy applied `rule` (so the broker did send what it lost)."""
    await front.wait_until_async(lambda: rule.fired, what=what)


# ----------------------------------------------------------------------------------- acks lost toward the publisher

@pytest.mark.spec("MQTT-4.4.0-1", v311="MQTT-4.3.2-2", v5=["MQTT-4.3.2-4", "MQTT-4.3.2-5"])
async def test_qos1_publish_resent_after_its_puback_was_lost_is_acknowledged_as_a_new_message(
        client_factory, front, topic, persistent, end_session):
    lose = front.add_rule(when("PUBACK", direction=DOWNSTREAM, scope="global", times=1).drop())
    sub = await client_factory()
    pub = await client_factory(url=front.url, manual_acks=True, **persistent)
    await sub.subscribe(topic + "a", qos=1)
    await pub.send(Publish(topic + "a", b"m", qos=1, packet_id=PID))
    await expect_packet(sub, Publish, topic=topic + "a", payload=b"m")
    await _fired(front, lose, "PUBACK dropped")
    await pub.reconnect(clean=False)
    await pub.send(Publish(topic + "a", b"m", qos=1, dup=True, packet_id=PID))
    await expect_packet(pub, Puback, packet_id=PID)
    # The broker had sent its PUBACK: the resent PUBLISH is a new publication, whatever its DUP flag.
    await expect_packet(sub, Publish, topic=topic + "a", payload=b"m")
    await expect_nothing(sub, after=pub)
    await end_session(pub)


@pytest.mark.spec("MQTT-4.4.0-1", v311="MQTT-4.3.3-2", v5=["MQTT-4.3.3-8", "MQTT-4.3.3-10"])
@QOS2
async def test_qos2_publish_resent_after_its_pubrec_was_lost_is_delivered_once(
        client_factory, front, topic, persistent, end_session):
    lose = front.add_rule(when("PUBREC", direction=DOWNSTREAM, scope="global", times=1).drop())
    sub = await client_factory()
    pub = await client_factory(url=front.url, manual_acks=True, **persistent)
    await sub.subscribe(topic + "a", qos=2)
    await pub.send(Publish(topic + "a", b"once", qos=2, packet_id=PID))
    await _fired(front, lose, "PUBREC dropped")
    await pub.reconnect(clean=False)  # the same session: the QoS 2 flow is part of it
    await pub.send(Publish(topic + "a", b"once", qos=2, dup=True, packet_id=PID))
    await expect_packet(pub, Pubrec, packet_id=PID)
    await pub.send(Pubrel(PID))
    await expect_packet(pub, Pubcomp, packet_id=PID)
    await expect_packet(sub, Publish, topic=topic + "a", payload=b"once")
    await expect_nothing(sub, after=pub)
    await end_session(pub)


# ---------------------------------------------------------------------------- acks lost toward the broker

@pytest.mark.spec("MQTT-4.4.0-1", "MQTT-3.3.1-1")
@pytest.mark.parametrize("qos", [_qos(1), _qos(2)])
async def test_publish_whose_ack_was_lost_is_resent_with_dup_to_the_resumed_subscriber(
        client_factory, front, topic, persistent, end_session, qos):
    ack = "PUBACK" if qos == 1 else "PUBREC"
    lose = front.add_rule(when(ack, direction="upstream", scope="global", times=1).drop())
    sub = await client_factory(url=front.url, manual_acks=True, **persistent)
    pub = await client_factory()
    await sub.subscribe(topic + "a", qos=qos)
    await pub.publish(topic + "a", b"m", qos=qos)
    first = await expect_packet(sub, Publish, topic=topic + "a", qos=qos, payload=b"m", dup=False)
    sub.ack(first)  # lost on the way: the message stays unacknowledged in the session
    await _fired(front, lose, f"{ack} dropped")
    await sub.reconnect(clean=False)
    await expect_redelivered(sub, first)
    await expect_nothing(sub)
    await end_session(sub)


# --------------------------------------------------------------------------- cut between PUBREC and PUBREL

@pytest.mark.spec("MQTT-4.4.0-1", v311="MQTT-4.3.3-2", v5=["MQTT-4.3.3-10", "MQTT-4.3.3-11"])
@QOS2
async def test_pubrel_resent_after_a_cut_following_pubrec_completes_the_flow_once(
        client_factory, front, topic, persistent, end_session):
    front.add_rule(when("PUBREC", direction=DOWNSTREAM, scope="global", times=1).close("after"))
    sub = await client_factory()
    pub = await client_factory(url=front.url, manual_acks=True, **persistent)
    await sub.subscribe(topic + "a", qos=2)
    await pub.send(Publish(topic + "a", b"once", qos=2, packet_id=PID))
    await expect_packet(pub, Pubrec, packet_id=PID)
    await expect_closed(pub)  # cut right after the PUBREC: no PUBREL got through
    await pub.reconnect(clean=False)
    await pub.send(Pubrel(PID))
    await expect_packet(pub, Pubcomp, packet_id=PID)
    await expect_packet(sub, Publish, topic=topic + "a", payload=b"once")
    await expect_nothing(sub, after=pub)
    await end_session(pub)


@pytest.mark.spec("MQTT-4.4.0-1", v311="MQTT-4.3.3-1", v5=["MQTT-4.3.3-4", "MQTT-4.3.3-6"])
@QOS2
async def test_broker_resends_pubrel_and_not_the_publish_after_a_cut_following_pubrec(
        client_factory, front, topic, persistent, end_session):
    front.add_rule(when("PUBREC", direction="upstream", scope="global", times=1).close("after"))
    sub = await client_factory(url=front.url, manual_acks=True, **persistent)
    pub = await client_factory()
    await sub.subscribe(topic + "a", qos=2)
    await pub.publish(topic + "a", b"once", qos=2)
    message = await expect_packet(sub, Publish, topic=topic + "a", qos=2, payload=b"once")
    sub.ack(message)  # the PUBREC reaches the broker, then the connection is cut
    await expect_closed(sub)
    await sub.reconnect(clean=False)
    await expect_packet(sub, Pubrel, packet_id=message.packet_id)
    await expect_nothing(sub)  # the PUBLISH is not resent once PUBREC was received
    sub.complete(message.packet_id)
    await expect_nothing(sub)
    await end_session(sub)


# ----------------------------------------------------------------------------- duplicated in transit

@pytest.mark.spec(v311="MQTT-4.3.3-2", v5="MQTT-4.3.3-10")
@pytest.mark.parametrize("copies", [1, 2], ids=lambda n: f"copies{n}")
@QOS2
async def test_qos2_publish_duplicated_before_pubrel_is_acknowledged_each_time_and_delivered_once(
        client_factory, front, topic, copies):
    front.add_rule(when("PUBLISH", direction="upstream", qos=2, times=1).duplicate(copies))  # copies: DUP=1
    sub = await client_factory()
    pub = await client_factory(url=front.url, manual_acks=True)
    await sub.subscribe(topic + "a", qos=2)
    await pub.send(Publish(topic + "a", b"once", qos=2, packet_id=PID))
    await expect_packet(pub, Pubrec, packet_id=PID)  # the proxy passes the first PUBREC on, swallows the others
    conn = front.connection(client_id=pub.client_id)

    def pubrecs() -> int:
        return len(conn.log.packets(DOWNSTREAM, Pubrec, stage="received"))
    await front.wait_until_async(lambda: pubrecs() > copies or not conn.is_open,
                                 what=f"{copies + 1} PUBRECs from the broker")
    answers = [summary(p) for p in conn.log.packets(DOWNSTREAM, stage="received")[1:]]  # after the CONNACK
    assert pubrecs() == copies + 1, (f"the broker answered {copies + 1} copies of the PUBLISH with {answers}"
                                     + ("" if conn.is_open else f", then closed the connection"))
    await pub.send(Pubrel(PID))
    await expect_packet(pub, Pubcomp, packet_id=PID)
    await expect_packet(sub, Publish, topic=topic + "a", payload=b"once")
    await expect_nothing(sub, after=pub)


# ----------------------------------------------------------------------------------------- half-open

async def _half_open(client_factory, front: ThreadedProxy, keepalive: int, **kwargs) -> tuple[Client, float, int]:
    """A client through `front` whose connection goes half-open: the TCP connection stays up, nothing passes
    either way. Returns it, the time its last packet reached the broker (+- half a round trip), and the keepalive
    the broker enforces (its MQTT 5 Server Keep Alive, if it sent one)."""
    client = await client_factory(url=front.url, keepalive=keepalive, auto_ping=False, **kwargs)
    enforced = client.connack.properties.get("server_keep_alive", keepalive)
    if not 0 < enforced <= LONGEST_KEEPALIVE:
        pytest.skip(f"the broker answered keepalive {keepalive}s with Server Keep Alive {enforced}s: "
                    f"{'no timeout' if not enforced else 'too long'} to wait for")
    conn = front.connection(client_id=client.client_id)
    sent = time.monotonic()
    await client.ping()
    last = (sent + time.monotonic()) / 2
    front.add_fault(faults.blackhole(direction="both", connection=conn.id, name=f"half-open-{conn.id}"))
    return client, last, enforced


@pytest.mark.spec(v311="MQTT-3.1.2-24", v5="MQTT-3.1.2-22")
async def test_half_open_client_is_dropped_within_one_and_a_half_keepalives(client_factory, front, keepalive_seconds,
                                                                            timer_slack):
    """Several half-open clients whose last packets are spread over a few seconds: a broker that checks
    keepalives only every few seconds is late for some of them, whatever the phase of its timer."""
    legs, lasts = [], []
    for i in range(HALF_OPEN_CLIENTS):
        if i:
            await asyncio.sleep(HALF_OPEN_SPREAD)  # models elapsed time: spreads the deadlines over the clock
        client, last, keepalive = await _half_open(client_factory, front, keepalive_seconds)
        legs.append(front.connection(client_id=client.client_id).broker)
        lasts.append(last)
    # Models elapsed time: 1.5 x keepalive after each client's last packet, plus the broker clock's slack. The
    # watch ends once the outcome is decided: every connection closed, or one still open past its deadline.
    allowed = 1.5 * keepalive + timer_slack
    closed: dict[int, float] = {}
    while len(closed) < len(legs):
        now = time.monotonic()
        closed.update({i: now - lasts[i] for i, leg in enumerate(legs) if leg.lost and i not in closed})
        open_ = [i for i in range(len(legs)) if i not in closed]
        if not open_ or any(now - lasts[i] > allowed for i in open_) or any(t > allowed for t in closed.values()):
            break
        with contextlib.suppress(ProxyError):
            await front.wait_until_async(lambda: sum(leg.lost for leg in legs) > len(closed),
                                         timeout=min(lasts[i] for i in open_) + allowed - now)
    waited = ", ".join(f"{closed[i]:.1f}s" if i in closed else f"not within {allowed:.2f}s" for i in range(len(legs)))
    on_time = len(closed) == len(legs) and max(closed.values()) <= allowed
    assert on_time, (f"the broker closed the half-open connections {waited} after each client's last packet "
                     f"(keepalive {keepalive}s, allowed {allowed:.2f}s)")


@pytest.mark.spec("MQTT-3.1.2-8")
async def test_half_open_client_dropped_by_keepalive_has_its_will_published(client_factory, front, topic,
                                                                           keepalive_seconds, timer_slack):
    watcher = await client_factory()
    await watcher.subscribe(topic + "will", qos=1)
    _, _, keepalive = await _half_open(client_factory, front, keepalive_seconds,
                                       will=Will(topic + "will", b"gone", qos=1))
    # About the will, not the timing (the test above): a bounded but generous wait.
    await expect_packet(watcher, Publish, topic=topic + "will", payload=b"gone",
                        timeout=1.5 * keepalive + timer_slack + LATE_CLOSE_WAIT)


# ------------------------------------------------------------------------------------- one byte at a time

V5_CONNECT = {"session_expiry_interval": 0, "receive_maximum": 50, "user_property": [("k", "connect")]}
V5_PUBLISH = {"content_type": "text/plain", "payload_format_indicator": 1, "user_property": [("k", "v")],
              "correlation_data": b"\x00\x01", "response_topic": "reply/to"}


@pytest.mark.spec(v311="§4.2", v5="MQTT-4.2.0-1")
@QOS2
async def test_broker_parses_every_packet_type_arriving_one_byte_at_a_time(
        client_factory, front, topic, mqtt_version):
    front.add_fault(faults.slicer(1, delay=SLICE_DELAY_US, direction="upstream"))
    v5 = mqtt_version == "5"
    filters = [topic + f"s/{qos}" for qos in (0, 1, 2)]
    watcher = await client_factory()
    await watcher.subscribe([(f, 2) for f in filters] + [(topic + "will", 1)])
    client = await client_factory(url=front.url, will=Will(topic + "will", b"not on DISCONNECT", qos=1),
                                  properties=V5_CONNECT if v5 else None)
    suback = await client.subscribe([(f, qos) for qos, f in enumerate(filters)],
                                    properties={"user_property": [("k", "subscribe")]} if v5 else None)
    assert suback.reason_codes == [0, 1, 2]
    props = V5_PUBLISH if v5 else None
    for qos, name in enumerate(filters):  # QoS 1: PUBACK; QoS 2: PUBREC, PUBREL, PUBCOMP; all sliced
        await client.publish(name, b"%d" % qos * 100, qos=qos, properties=props)
        back = await expect_packet(client, Publish, topic=name, payload=b"%d" % qos * 100, qos=qos)
        seen = await expect_packet(watcher, Publish, topic=name, payload=b"%d" % qos * 100)
        if v5:
            assert {k: seen.properties.get(k) for k in V5_PUBLISH} == V5_PUBLISH, seen.properties
            assert back.properties.get("user_property") == V5_PUBLISH["user_property"]
    await client.unsubscribe(filters)
    await client.ping()
    await client.publish(filters[1], b"unsubscribed", qos=1)
    await expect_nothing(client)  # the UNSUBSCRIBE took effect
    await expect_packet(watcher, Publish, topic=filters[1], payload=b"unsubscribed")
    await client.disconnect()
    connection = front.connection(client_id=client.client_id)
    await front.wait_until_async(lambda: not connection.is_open, what="the broker to close after DISCONNECT")
    await expect_nothing(watcher)  # a DISCONNECT read whole: no will


# ---------------------------------------------------------------------------------- truncated PUBLISH

@pytest.mark.parametrize("qos", [
    _qos(1, pytest.mark.spec(v311="MQTT-4.3.2-2", v5="MQTT-4.3.2-4")),
    _qos(2, pytest.mark.spec(v311="MQTT-4.3.3-2", v5=["MQTT-4.3.3-8", "MQTT-4.3.3-10"])),
])
@pytest.mark.spec("MQTT-4.4.0-1")
async def test_publish_cut_mid_packet_then_resent_with_dup_on_a_new_connection_is_delivered_once(
        client_factory, front, topic, persistent, end_session, qos):
    """emqx #18441: a QoS 2 PUBLISH cut mid-packet and retried with DUP=1 was silently dropped."""
    sub = await client_factory()
    pub = await client_factory(url=front.url, manual_acks=True, **persistent)
    await sub.subscribe(topic + "a", qos=qos)
    packet = Publish(topic + "a", b"x" * 200, qos=qos, packet_id=PID)
    half = len(encode(packet, pub.version)) // 2
    front.add_fault(faults.limit_data(half, direction="upstream", name="cut"))
    await pub.send(packet)
    await expect_closed(pub)  # half the PUBLISH reached the broker, then the connection closed
    front.remove_fault("cut")
    await pub.reconnect(clean=False)
    await pub.send(dataclasses.replace(packet, dup=True))
    if qos == 1:
        await expect_packet(pub, Puback, packet_id=PID)
    else:
        await expect_packet(pub, Pubrec, packet_id=PID)
        await pub.send(Pubrel(PID))
        await expect_packet(pub, Pubcomp, packet_id=PID)
    await expect_packet(sub, Publish, topic=topic + "a", payload=b"x" * 200, qos=qos)
    await expect_nothing(sub, after=pub)
    await end_session(pub)


# ---------------------------------------------------------------------------------------- takeover

@pytest.mark.spec("MQTT-4.4.0-1", "MQTT-3.3.1-1", v311="MQTT-3.1.4-2", v5="MQTT-3.1.4-3")
@pytest.mark.parametrize("qos", [_qos(1), _qos(2)])
async def test_session_taken_over_while_acks_are_held_redelivers_them_with_dup(
        client_factory, front, topic, persistent, end_session, qos):
    front.add_rule(when("PUBACK" if qos == 1 else "PUBREC", direction="upstream").hold("acks"))
    first = await client_factory(url=front.url, **persistent)
    pub = await client_factory()
    await first.subscribe(topic + "a", qos=qos)
    payloads = [b"%d" % i for i in range(3)]
    for payload in payloads:
        await pub.publish(topic + "a", payload, qos=qos)
    # A broker may keep fewer than three in flight (MQTT 3.1.1 §4.6, non-normative: ejabberd keeps one); the
    # rest then wait, unsent, for the acks the proxy holds.
    sent = await collect(first, len(payloads))
    assert sent and all(m.qos == qos and not m.dup for m in sent), sent
    await front.wait_held_async("acks", len(sent))  # first acked each one; none reached the broker
    second = await client_factory(client_id=first.client_id, **persistent)
    await expect_closed(first)
    again = await collect(second, len(payloads))
    was_sent = {m.payload for m in sent}
    assert sorted((m.payload, m.packet_id, m.dup) for m in again if m.payload in was_sent) == sorted(
        (m.payload, m.packet_id, True) for m in sent), "every message sent before is resent, same id, DUP 1"
    fresh = [m for m in again if m.payload not in was_sent]
    assert sorted(m.payload for m in fresh) == sorted(set(payloads) - was_sent) and not any(m.dup for m in fresh), \
        f"the messages never sent before arrive once, DUP 0: {fresh}"
    await expect_nothing(second)  # second acked each one (and completed the QoS 2 flows)
    await end_session(second)
