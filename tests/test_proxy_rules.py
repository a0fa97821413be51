"""MQTT rules through the proxy against a real mosquitto: each action, and ack consistency after rewrites.

"Nothing more arrives" is checked behind a PINGREQ/PINGRESP barrier: the broker answers in order, so
everything it sent before the PINGRESP has been received when client.ping() returns.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from harness.client import Client
from harness.core.packets import Puback, Pubcomp, Publish, Pubrec, Pubrel, Suback
from harness.errors import ConnectionClosed
from harness.proxy import DELIVERED, DOWNSTREAM, RECEIVED, UPSTREAM, when


def run(coro, timeout: float = 60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture
def topic(request) -> str:
    return f"rules/{request.node.name}"


def test_drop_the_second_puback_to_the_client(proxy, mosquitto, topic):
    p = proxy(mosquitto.url("mqtt"))
    p.add_rule(when("PUBACK", direction="downstream", nth=2).drop())

    async def main():
        async with Client(p.url) as c:
            acks = [c.publish_nowait(topic, b"%d" % i, qos=1) for i in range(3)]
            await asyncio.wait_for(acks[2], 5)
            await c.ping()  # barrier: the broker's PUBACKs all came before its PINGRESP
            assert acks[0].done() and not acks[1].done()
            assert not c.violations
            conn = p.connections[0]
            assert [a.packet_id for a in conn.log.packets(DOWNSTREAM, Puback, RECEIVED)] == [1, 2, 3]
            assert [a.packet_id for a in conn.log.packets(DOWNSTREAM, Puback, DELIVERED)] == [1, 3]
            await c.close()  # the lost ack would block a graceful DISCONNECT wait: just drop the connection
    run(main())
    assert p.rules[0].fired == 1


def test_duplicate_a_qos2_publish_is_delivered_once(proxy, mosquitto, topic):
    # One DUP copy: mosquitto 2.0.11 answers a third copy of an in-flight QoS 2 PUBLISH with a
    # protocol-error disconnect (mosquitto #3602), which is the broker's behaviour to test, not ours.
    p = proxy(mosquitto.url("mqtt"))
    p.add_rule(when("PUBLISH", direction="upstream", topic=topic).duplicate(1))

    async def main():
        async with Client(p.url) as sub, Client(p.url, client_id="dup-pub") as pub:
            await sub.subscribe(topic, qos=2)
            ack = await pub.publish(topic, b"once", qos=2)
            assert isinstance(ack, Pubcomp)
            assert (await sub.receive(timeout=5)).payload == b"once"
            await sub.ping()
            assert sub.pending_messages() == []  # exactly once, though the broker got two copies
            assert not pub.violations and not sub.violations
    run(main())
    conn = p.connection(client_id="dup-pub")
    sent = conn.log.packets(UPSTREAM, Publish, DELIVERED)
    assert [m.dup for m in sent] == [False, True] and len({m.packet_id for m in sent}) == 1
    assert len(conn.log.packets(DOWNSTREAM, Pubrec, RECEIVED)) == 2  # the broker acknowledged each copy
    assert len(conn.log.packets(DOWNSTREAM, Pubrec, DELIVERED)) == 1  # the client saw one exchange


def test_rewrite_retain_toward_the_subscriber(proxy, mosquitto, topic):
    p = proxy(mosquitto.url("mqtt"))
    p.add_rule({"match": {"direction": "downstream", "type": "PUBLISH", "topic": topic},
                "actions": [{"rewrite": {"retain": True}}]})

    async def main():
        async with Client(p.url) as sub, Client(mosquitto.url("mqtt")) as pub:
            await sub.subscribe(topic, qos=1)
            await pub.publish(topic, b"live", qos=1)
            msg = await sub.receive(timeout=5)
            assert msg.retain and msg.payload == b"live"
    run(main())
    conn = p.connections[0]
    [received] = conn.log.packets(DOWNSTREAM, Publish, RECEIVED)
    [delivered] = conn.log.packets(DOWNSTREAM, Publish, DELIVERED)
    assert not received.retain and delivered.retain


def test_inject_a_qos1_publish_the_broker_never_sent(proxy, mosquitto, topic):
    p = proxy(mosquitto.url("mqtt"))
    fake = Publish(topic, b"from the proxy", qos=1)
    p.add_rule(when("SUBACK", direction="downstream").inject(fake, where="after"))

    async def main():
        async with Client(p.url) as c:
            await c.subscribe(topic, qos=1)
            msg = await c.receive(timeout=5)
            assert (msg.payload, msg.qos, msg.packet_id) == (b"from the proxy", 1, 65535)
            await c.ping()  # the client's PUBACK for it went out before this PINGREQ
            conn = p.connections[0]
            assert [a.packet_id for a in conn.log.packets(UPSTREAM, Puback, RECEIVED)] == [65535]
            assert conn.log.packets(UPSTREAM, Puback, DELIVERED) == []  # the broker never hears of it
            assert not c.violations
    run(main())


def test_hold_then_release(proxy, mosquitto, topic):
    p = proxy(mosquitto.url("mqtt"))
    p.add_rule(when("PUBLISH", direction="upstream", topic=topic).hold("gate"))

    async def main():
        async with Client(p.url) as sub, Client(p.url) as pub:
            await sub.subscribe(topic, qos=1)
            ack = pub.publish_nowait(topic, b"waited", qos=1)
            [(conn_id, held)] = await p.wait_held_async("gate")
            assert held.packet.payload == b"waited"
            await pub.ping()  # later packets still flow
            await sub.ping()
            assert sub.pending_messages() == [] and not ack.done()
            assert p.release("gate") == 1
            assert isinstance(await asyncio.wait_for(ack, 5), Puback)
            assert (await sub.receive(timeout=5)).payload == b"waited"
            assert p.held() == []
    run(main())


@pytest.mark.parametrize("reset", [False, True])
def test_close_or_reset_after_a_packet(proxy, mosquitto, topic, reset):
    p = proxy(mosquitto.url("mqtt"))
    rule = when("SUBACK", direction="downstream")
    p.add_rule(rule.reset() if reset else rule.close("after"))

    async def main():
        c = await Client.connect(p.url)
        ack = await c.subscribe(topic, qos=1)  # delivered before the close
        assert isinstance(ack, Suback)
        reason = await c.wait_closed(timeout=5)
        await c.close()
        return reason
    reason = run(main())
    conn = p.connections[0]
    assert conn.reset is reset and conn.close_reason.startswith("rule")
    assert ("reset" in reason.lower()) is reset, reason


def test_close_before_a_packet_drops_it(proxy, mosquitto, topic):
    p = proxy(mosquitto.url("mqtt"))
    p.add_rule(when("SUBSCRIBE", direction="upstream").close("before"))

    async def main():
        c = await Client.connect(p.url)
        with pytest.raises(ConnectionClosed):
            await c.subscribe(topic, qos=1)
        await c.close()
    run(main())
    assert p.connections[0].log.packets(UPSTREAM, stage=DELIVERED)[-1].TYPE.name == "CONNECT"


def test_delay_reorders_a_puback_behind_a_pingresp(proxy, mosquitto, topic):
    p = proxy(mosquitto.url("mqtt"))
    p.add_rule(when("PUBACK", direction="downstream").delay(0.3))

    async def main():
        async with Client(p.url) as c:
            start = time.monotonic()
            ack = c.publish_nowait(topic, b"slow", qos=1)
            await c.ping()  # PINGRESP overtakes the delayed PUBACK
            assert not ack.done()
            await asyncio.wait_for(ack, 5)
            assert time.monotonic() - start >= 0.3
    run(main())


def test_qos1_to_0_rewrite_upstream_keeps_the_publisher_whole(proxy, mosquitto, topic):
    """The broker gets QoS 0 and sends no PUBACK; the proxy acknowledges in its place."""
    p = proxy(mosquitto.url("mqtt"))
    p.add_rule(when("PUBLISH", direction="upstream", topic=topic).rewrite(qos=0))

    async def main():
        async with Client(mosquitto.url("mqtt")) as sub, Client(p.url, client_id="down-pub") as pub:
            await sub.subscribe(topic, qos=1)
            for i in range(3):
                assert isinstance(await pub.publish(topic, b"%d" % i, qos=1), Puback)
                msg = await sub.receive(timeout=5)
                assert (msg.payload, msg.qos) == (b"%d" % i, 0)
            await pub.ping()
            assert not pub.violations
    run(main())
    conn = p.connection(client_id="down-pub")
    assert conn.log.packets(DOWNSTREAM, Puback, RECEIVED) == []  # the broker never acknowledged
    assert [a.packet_id for a in conn.log.packets(DOWNSTREAM, Puback, DELIVERED)] == [1, 2, 3]
    assert conn.state.ledger.open_exchanges == 0


def test_qos2_to_1_rewrite_downstream_keeps_the_broker_whole(proxy, mosquitto, topic):
    """The subscriber gets QoS 1 and answers PUBACK; the broker still sees a complete QoS 2 exchange."""
    p = proxy(mosquitto.url("mqtt"))
    p.add_rule(when("PUBLISH", direction="downstream", topic=topic).rewrite(qos=1))

    async def main():
        async with Client(p.url, client_id="q21-sub") as sub, Client(mosquitto.url("mqtt")) as pub:
            await sub.subscribe(topic, qos=2)
            for i in range(3):  # mosquitto would stall after its inflight window if an exchange stayed open
                await pub.publish(topic, b"%d" % i, qos=2)
                msg = await sub.receive(timeout=5)
                assert (msg.payload, msg.qos) == (b"%d" % i, 1)
            await sub.ping()
            assert not sub.violations
    run(main())
    conn = p.connection(client_id="q21-sub")
    assert len(conn.log.packets(UPSTREAM, Pubrec, DELIVERED)) == 3  # the client's PUBACKs, as PUBRECs
    assert len(conn.log.packets(DOWNSTREAM, Pubrel, RECEIVED)) == 3  # the broker released each one...
    assert conn.log.packets(DOWNSTREAM, Pubrel, DELIVERED) == []  # ...and the proxy answered PUBCOMP itself
    assert len(conn.log.packets(UPSTREAM, Pubcomp, DELIVERED)) == 3
    assert conn.state.ledger.open_exchanges == 0


def test_rules_added_on_a_live_connection_start_at_a_packet_boundary(proxy, mosquitto, topic):
    p = proxy(mosquitto.url("mqtt"))

    async def main():
        async with Client(p.url) as c:
            await c.subscribe(topic, qos=0)
            p.add_rule(when("PUBLISH", direction="downstream", topic=topic, nth=2).drop())
            for i in range(3):
                c.publish_nowait(topic, b"%d" % i)
            got = [(await c.receive(timeout=5)).payload for _ in range(2)]
            await c.ping()
            assert got == [b"0", b"2"] and c.pending_messages() == []
            assert p.connections[0].info()["decoding"] == [UPSTREAM, DOWNSTREAM]
    run(main())
