"""harness.expect against a real mosquitto: a failure's reason names the received packet, decoded, and an
expectation that a received packet (or a close) already rules out fails at once instead of after its timeout."""

from __future__ import annotations

import asyncio
import time

import pytest

from harness.client import Client
from harness.core.codec import Decoder, encode
from harness.core.packets import Connack, Connect, Pingreq, Pingresp, Puback, Publish, Suback, Subscribe
from harness.expect import (
    PROBE_AFTER, PROBE_GRACE, ExpectationFailed, collect, expect_closed, expect_nothing, expect_packet, mark,
)
from harness.packet_log import OUT

LONG = 30.0  # the expectation's timeout in the fail-at-once tests
QUICK = 5.0  # they must fail well within this: a round trip, not the timeout


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 2 * LONG))


def reason(exc: pytest.ExceptionInfo) -> str:
    """The failure's first line: what the plugin reports as the reason."""
    return str(exc.value).splitlines()[0]


async def failing_fast(expectation) -> tuple[pytest.ExceptionInfo, float]:
    started = time.monotonic()
    with pytest.raises(ExpectationFailed) as exc:
        await expectation
    return exc, time.monotonic() - started


def test_reason_names_the_received_packet_decoded(mosquitto, request):
    topic = f"expect/{request.node.name}"

    async def main():
        async with Client(mosquitto.url("mqtt"), version="5") as sub, \
                Client(mosquitto.url("mqtt"), version="5") as pub:
            await sub.subscribe(topic, qos=1)
            await pub.publish(topic, b"hello", qos=1, properties={"content_type": "text/plain"})
            with pytest.raises(ExpectationFailed) as exc:
                await expect_packet(sub, Publish, topic=topic, qos=2, timeout=0.5)
            line = reason(exc)
            assert line.startswith(f"{sub.name}: expected PUBLISH(topic={topic!r}, qos=2) within 0.5s; received "
                                   f"PUBLISH(topic={topic!r}, qos=1, retain=False, dup=False, packet_id=1, "
                                   f"properties={{'content_type': 'text/plain'}}, payload=b'hello' (5 B))"), line
            assert line.endswith("(qos: expected 2, got 1)"), line
            assert exc.value.actual[0].startswith(f"PUBLISH(topic={topic!r}, qos=1, retain=False"), exc.value.actual

            mark(sub)  # a failed expectation leaves the position where it was
            await pub.publish(topic, b"late", qos=0)
            with pytest.raises(ExpectationFailed) as exc:
                await expect_nothing(sub, after=pub)
            assert reason(exc).endswith(f"got 1; received PUBLISH(topic={topic!r}, qos=0, retain=False, dup=False, "
                                        "payload=b'late' (4 B))"), reason(exc)
    run(main())


def test_an_ack_that_answers_the_packet_id_differently_fails_at_once(mosquitto, request):
    """MQTT 5 mosquitto answers a QoS 1 PUBLISH nobody subscribed to with PUBACK 0x10 (No matching subscribers):
    that PUBACK answers packet id 1, so no PUBACK 0x00 for it can come any more."""
    topic = f"expect/{request.node.name}/nobody"

    async def main():
        async with Client(mosquitto.url("mqtt"), version="5", manual_acks=True) as pub:
            await pub.send(Publish(topic, b"x", qos=1, packet_id=1))
            exc, took = await failing_fast(expect_packet(pub, Puback, packet_id=1, reason_code=0, timeout=LONG))
            assert took < QUICK, f"waited {took:.1f}s for an expectation already ruled out"
            line = reason(exc)
            assert "the broker answered packet id 1 with PUBACK(packet_id=1, reason_code=0x10 " \
                   "NO_MATCHING_SUBSCRIBERS) and owes no other PUBACK for it" in line, line
    run(main())


def test_an_ack_of_another_packet_id_rules_nothing_out(mosquitto, request):
    topic = f"expect/{request.node.name}"

    async def main():
        async with Client(mosquitto.url("mqtt"), version="3.1.1", manual_acks=True) as pub:
            await pub.send(Publish(topic, b"x", qos=1, packet_id=1))
            await expect_packet(pub, Puback, packet_id=1)
            await pub.send(Publish(topic, b"y", qos=1, packet_id=3))
            with pytest.raises(ExpectationFailed) as exc:  # PUBACK 3 arrives; 2 might still: the timeout decides
                await expect_packet(pub, Puback, packet_id=2, timeout=0.5)
            assert reason(exc).startswith(f"{pub.name}: expected PUBACK(packet_id=2) within 0.5s; received "
                                          "PUBACK(packet_id=3, reason_code=0x00 SUCCESS) (packet_id: expected 2, "
                                          "got 3)"), reason(exc)
    run(main())


def test_a_disconnect_from_the_broker_fails_an_expectation_at_once(mosquitto):
    """MQTT 5 mosquitto answers a SUBSCRIBE without topic filters (a protocol error) with a DISCONNECT, then
    closes. Nothing may follow a DISCONNECT, so the SUBACK the client waits for can't."""
    async def main():
        async with Client(mosquitto.url("mqtt"), version="5") as client:
            mark(client)
            await client.send(Subscribe(packet_id=1, subscriptions=[]))
            exc, took = await failing_fast(expect_packet(client, Suback, packet_id=1, timeout=LONG))
            assert took < QUICK, f"waited {took:.1f}s after the broker ended the connection"
            line = reason(exc)
            assert "but the broker sent DISCONNECT(reason_code=0x81 MALFORMED_PACKET), which ends the connection" \
                in line, line
    run(main())


def test_a_close_fails_an_expectation_at_once(mosquitto, request):
    """MQTT 3.1.1 has no server DISCONNECT: the taken-over connection just closes, without a byte to wake on."""
    topic = f"expect/{request.node.name}"

    async def main():
        async with Client(mosquitto.url("mqtt"), version="3.1.1") as first:
            await first.subscribe(topic, qos=1)
            mark(first)
            async with Client(mosquitto.url("mqtt"), version="3.1.1", client_id=first.client_id):
                exc, took = await failing_fast(expect_packet(first, Publish, topic=topic, timeout=LONG))
            assert took < QUICK, f"waited {took:.1f}s after the connection closed"
            assert "but the connection closed (connection closed by the broker); received nothing" in reason(exc), \
                reason(exc)
    run(main())


def test_a_connack_that_disagrees_fails_at_once(mosquitto):
    async def main():
        client = Client(mosquitto.url("mqtt"), version="5")
        await client.open()
        try:
            exc, took = await failing_fast(expect_packet(client, Connack, session_present=True, timeout=LONG))
            assert took < QUICK, f"waited {took:.1f}s for a second CONNACK"
            assert "the connection's one CONNACK is CONNACK(session_present=False, reason_code=0x00 SUCCESS" \
                   in reason(exc), reason(exc)
        finally:
            await client.disconnect()
    run(main())


def test_collect_stops_when_nothing_more_arrives_for_idle(mosquitto, request):
    topic = f"expect/{request.node.name}"

    async def main():
        async with Client(mosquitto.url("mqtt"), version="3.1.1") as sub, \
                Client(mosquitto.url("mqtt"), version="3.1.1") as pub:
            await sub.subscribe(topic, qos=1)
            await pub.publish(topic, b"only", qos=1)
            started = time.monotonic()
            got = await collect(sub, 5, after=pub, timeout=LONG, idle=0.5)
            took = time.monotonic() - started
            assert [m.payload for m in got] == [b"only"]
            assert took < QUICK, f"collect waited {took:.1f}s with nothing arriving"
    run(main())


def test_expect_closed_fails_at_once_when_the_broker_answers_instead(mosquitto, request):
    """A PUBLISH from a client must not carry a Subscription Identifier (MQTT-3.3.4-6): a broker must close the
    connection. mosquitto 2.0 answers PUBACK instead (its documented known limit): that decides it."""
    topic = f"expect/{request.node.name}"

    async def main():
        async with Client(mosquitto.url("mqtt"), version="5", manual_acks=True) as client:
            mark(client)
            await client.send(Publish(topic, b"x", qos=1, packet_id=1, properties={"subscription_identifier": [1]}))
            exc, took = await failing_fast(expect_closed(client, unless=(Puback,), timeout=LONG))
            assert took < QUICK, f"waited {took:.1f}s after the broker answered"
            assert reason(exc).endswith("but it answered instead; received PUBACK(packet_id=1, reason_code=0x10 "
                                        "NO_MATCHING_SUBSCRIBERS)"), reason(exc)
    run(main())


def test_expect_closed_probe_decides_a_connection_kept_open_in_about_a_second_and_a_half(mosquitto):
    """mosquitto 2.0 ignores a SUBACK sent by a client (its known limit) and keeps the connection open: the PINGREQ
    probe's PINGRESP shows that, so the failure comes after PROBE_AFTER + PROBE_GRACE, not the 30 s timeout."""
    async def main():
        async with Client(mosquitto.url("mqtt"), version="3.1.1") as client:
            mark(client)
            await client.send(Suback(1, [0]))
            exc, took = await failing_fast(expect_closed(client, timeout=LONG, probe=True))
            assert PROBE_AFTER + PROBE_GRACE <= took < QUICK, f"the probe decided after {took:.2f}s"
            assert (f"still open {PROBE_AFTER:g}s later, it answered a PINGREQ and kept the connection open "
                    f"{PROBE_GRACE:g}s more") in reason(exc), reason(exc)
            pings = [e for e in client.log.entries if e.direction == OUT and isinstance(e.packet, Pingreq)]
            assert len(pings) == 1, pings
    run(main())


def test_expect_closed_probe_is_not_sent_when_the_broker_closes_at_once(mosquitto):
    """mosquitto closes a connection that sends it a CONNACK: it does so before PROBE_AFTER, so no PINGREQ goes out."""
    async def main():
        async with Client(mosquitto.url("mqtt"), version="3.1.1") as client:
            await client.send(Connack(False, 0))
            await expect_closed(client, timeout=LONG, probe=True)
        assert not [e for e in client.log.entries if e.direction == OUT and isinstance(e.packet, Pingreq)]
    run(main())


def test_expect_closed_probe_allows_a_close_that_follows_the_pingresp():
    """A broker that answers the probe and closes shortly after (aedes and amqtt do, for a PINGREQ just behind the
    packet they close for) passes: the close comes within PROBE_GRACE of the PINGRESP. A real socket server that
    does exactly that, since no broker here does it on demand."""
    async def main():
        async def serve(reader, writer):
            decoder = Decoder(4)
            while True:
                data = await reader.read(4096)
                if not data:
                    break
                for packet in decoder.feed(data):
                    if isinstance(packet, Connect):
                        writer.write(encode(Connack(False, 0), 4))
                    elif isinstance(packet, Pingreq):
                        writer.write(encode(Pingresp(), 4))
                        await writer.drain()
                        await asyncio.sleep(PROBE_GRACE / 4)  # models a broker closing a moment after it answered
                        writer.close()
                        return

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, Client(f"mqtt://127.0.0.1:{port}", version="3.1.1") as client:
            await client.send(Suback(1, [0]))
            await expect_closed(client, timeout=LONG, probe=True)
            # The close passed through the grace path: the probe went out and its PINGRESP came back first.
            assert [type(e.packet) for e in client.log.entries if isinstance(e.packet, (Pingreq, Pingresp))] == [
                Pingreq, Pingresp], client.log.entries
    run(main())
