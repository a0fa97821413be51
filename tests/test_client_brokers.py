"""The reference client's default 3.1.1 window against every process broker: no message lost.

In 3.1.1 the session keeps up to DEFAULT_WINDOW_311_TOTAL QoS 1/2 flows in flight, of which at most
DEFAULT_WINDOW_311 QoS 2 (mosquitto drops QoS 2 messages beyond its 20 in flight while acknowledging them,
perf-baselines §3.1). These tests publish bursts larger than the window and check that every message arrives.
"""

from __future__ import annotations

import asyncio

import pytest

from harness.brokers.backends import process
from harness.brokers.backends.process import ProcessBroker
from harness.brokers.broker import MQTT, BrokerUnavailable
from harness.brokers import definitions as brokerdefs
from harness.client import Client
from harness.core.session import DEFAULT_WINDOW_311, DEFAULT_WINDOW_311_TOTAL

QOS1_BROKERS = ["mosquitto", "aedes", "amqtt", "nats"]
BURST_QOS1 = 30 * DEFAULT_WINDOW_311_TOTAL  # the window fills and refills many times
BURST_QOS2 = 50 * DEFAULT_WINDOW_311
WAIT = 60.0  # bound on one burst's acks and deliveries (the slowest broker here needs a few seconds)


@pytest.fixture(scope="module", params=QOS1_BROKERS)
def broker(request, pki):
    defn = brokerdefs.load(request.param)
    reason = process.unavailable_reason(defn)
    if reason:
        pytest.skip(reason)
    b = ProcessBroker(defn, listeners=[MQTT], pki=pki)
    try:
        b.start()
    except BrokerUnavailable as exc:
        pytest.skip(str(exc))
    yield b
    b.stop()


async def _burst(url: str, topic: str, qos: int, count: int) -> tuple[list[bytes], list[bytes], Client]:
    """Publish `count` numbered messages without waiting, wait for every ack, and collect the deliveries."""
    async with Client(url, version="3.1.1") as sub, Client(url, version="3.1.1") as pub:
        await sub.subscribe(topic, qos=qos)
        sent = [b"%d" % i for i in range(count)]
        for payload in sent:
            pub.publish_nowait(topic, payload, qos=qos, track=False)
        await pub.wait_acked(WAIT)
        got: list[bytes] = []
        seen: set[bytes] = set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while len(seen) < count:
            m = await sub.receive(timeout=max(deadline - loop.time(), 0.001))
            got.append(m.payload)
            seen.add(m.payload)
        assert not pub.violations and not sub.violations
        return sent, got, pub


def test_qos1_burst_beyond_the_default_window_loses_nothing(broker, request):
    sent, got, pub = asyncio.run(_burst(broker.url(MQTT), f"window/{request.node.name}", 1, BURST_QOS1))
    assert pub.session.window == DEFAULT_WINDOW_311_TOTAL
    assert set(got) == set(sent)
    firsts = list(dict.fromkeys(got))  # at least once: duplicates allowed, first copies in order
    assert firsts == sent


def test_qos2_burst_at_the_default_window_loses_nothing_on_mosquitto(pki, request):
    """The QoS 2 limit of 20 is what keeps mosquitto from dropping completed QoS 2 messages."""
    b = ProcessBroker("mosquitto", listeners=[MQTT], pki=pki)
    try:
        b.start()
    except BrokerUnavailable as exc:
        pytest.skip(str(exc))
    try:
        sent, got, pub = asyncio.run(_burst(b.url(MQTT), f"window/{request.node.name}", 2, BURST_QOS2))
    finally:
        b.stop()
    assert pub.session.window_qos2 == DEFAULT_WINDOW_311
    assert got == sent  # exactly once, in order
