"""The reference client against a real mosquitto started by the tests (all five listener kinds)."""

from __future__ import annotations

import asyncio

import pytest

from harness.client import Client
from harness.core.packets import Connack, Connect, Publish, Puback, Pubcomp, Pubrec, Pubrel
from harness.errors import TlsError
from harness.packet_log import IN, OUT
from harness.transport import TlsOptions

VERSIONS = ["3.1.1", "5"]
KINDS = ["mqtt", "mqtts", "mqtts-mtls", "ws", "wss"]


def _tls(kind: str, pki) -> TlsOptions | None:
    if kind in ("mqtts", "wss"):
        return TlsOptions(ca=str(pki.ca))
    if kind == "mqtts-mtls":
        return TlsOptions(ca=str(pki.ca), cert=str(pki.client_cert), key=str(pki.client_key))
    return None


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_qos_round_trips(mosquitto, pki, kind, version, request):
    url = mosquitto.url(kind)
    topic = f"rt/{request.node.name}"

    async def main():
        async with Client(url, version=version, tls=_tls(kind, pki)) as sub, \
                Client(url, version=version, tls=_tls(kind, pki)) as pub:
            await sub.subscribe(topic, qos=2)
            for qos in (0, 1, 2):
                ack = await pub.publish(topic, b"payload-%d" % qos, qos=qos)
                assert ack is None if qos == 0 else isinstance(ack, (Puback, Pubcomp))
                msg = await sub.receive(timeout=5)
                assert (msg.topic, msg.payload, msg.qos) == (topic, b"payload-%d" % qos, qos)
            await sub.ping()  # barrier: nothing else was delivered
            assert sub.pending_messages() == []
            assert not sub.violations and not pub.violations
    run(main())


@pytest.mark.parametrize("version", VERSIONS)
def test_resume_resends_publish_with_dup(mosquitto, version, request):
    """An unacknowledged QoS 1 PUBLISH is resent with DUP=1 and the same id after reconnect [MQTT-4.4.0-1]."""
    url = mosquitto.url("mqtt")
    topic = f"resume/{request.node.name}"
    props = {"session_expiry_interval": 60} if version == "5" else {}

    async def main():
        async with Client(url, version=version) as sub:
            await sub.subscribe(topic, qos=1)
            pub = Client(url, version=version, clean=False, properties=props)
            await pub.open()
            pub.publish_nowait(topic, b"once", qos=1)
            pub.abort()  # gone before the PUBACK can be read
            await pub.close()
            connack = await pub.reconnect(clean=False)
            assert connack.session_present
            ack = await pub.wait_for(Puback, timeout=5)
            second = [e.packet for e in pub.log.entries if e.connection == 2 and e.direction == OUT]
            resent = [p for p in second if isinstance(p, Publish)]
            assert len(resent) == 1 and resent[0].dup and resent[0].packet_id == ack.packet_id
            msg = await sub.receive(timeout=5)
            assert msg.payload == b"once"
            await pub.disconnect()
    run(main())


@pytest.mark.parametrize("version", VERSIONS)
def test_resume_resends_pubrel(mosquitto, version, request):
    """After PUBREC, a cut and a reconnect, the client resends PUBREL (not PUBLISH) [MQTT-4.4.0-1];
    the message is delivered exactly once."""
    url = mosquitto.url("mqtt")
    topic = f"pubrel/{request.node.name}"
    props = {"session_expiry_interval": 60} if version == "5" else {}

    async def main():
        async with Client(url, version=version) as sub:
            await sub.subscribe(topic, qos=2)
            pub = Client(url, version=version, clean=False, properties=props, manual_acks=True)
            await pub.open()
            pub.publish_nowait(topic, b"exactly-once", qos=2)
            rec = await pub.wait_for(Pubrec, timeout=5)
            pub.release(rec.packet_id)
            pub.abort()
            await pub.close()
            connack = await pub.reconnect(clean=False)
            assert connack.session_present
            await pub.wait_for(Pubcomp, lambda p: p.packet_id == rec.packet_id, timeout=5)
            second = [e.packet for e in pub.log.entries if e.connection == 2 and e.direction == OUT]
            assert any(isinstance(p, Pubrel) and p.packet_id == rec.packet_id for p in second)
            assert not any(isinstance(p, Publish) for p in second)
            msg = await sub.receive(timeout=5)
            assert msg.payload == b"exactly-once"
            await sub.ping()
            assert sub.pending_messages() == []
            await pub.disconnect()
    run(main())


@pytest.mark.parametrize("cert", ["none", "client_untrusted", "client_expired"])
def test_rejected_client_certificate_is_a_clear_error(mosquitto, pki, cert):
    url = mosquitto.url("mqtts-mtls")
    tls = TlsOptions(ca=str(pki.ca))
    if cert != "none":
        tls = TlsOptions(ca=str(pki.ca), cert=str(getattr(pki, f"{cert}_cert")), key=str(getattr(pki, f"{cert}_key")))

    async def main():
        with pytest.raises(TlsError) as info:
            await Client.connect(url, tls=tls, timeout=5)
        text = str(info.value)
        assert "certificate" in text, text
        return text
    run(main())


def test_server_certificate_from_unknown_ca_is_a_clear_error(mosquitto, pki):
    url = mosquitto.url("mqtts")

    async def main():
        with pytest.raises(TlsError) as info:
            await Client.connect(url, tls=TlsOptions(ca=str(pki.unknown_ca)), timeout=5)
        assert "verif" in str(info.value)
    run(main())


def test_packet_log_records_both_directions_in_order(mosquitto, request):
    async def main():
        async with Client(mosquitto.url("mqtt"), version="5") as c:
            await c.subscribe(f"log/{request.node.name}", qos=1)
            await c.publish(f"log/{request.node.name}", b"x", qos=1)
            await c.receive(timeout=5)
            await c.ping()
        entries = c.log.entries
        times = [e.time for e in entries]
        assert times == sorted(times)
        kinds = [(e.direction, type(e.packet).__name__) for e in entries]
        assert kinds[:2] == [(OUT, "Connect"), (IN, "Connack")]
        assert (IN, "Publish") in kinds and (OUT, "Disconnect") == kinds[-1]
    run(main())


def test_open_raw_sends_nothing_until_told(mosquitto):
    """open_raw() connects without CONNECT: the test's own first packet is what the broker sees."""
    async def main():
        client = Client(mosquitto.url("mqtt"), version="3.1.1")
        await client.open_raw(timeout=5)
        await client.send(Connect(client.client_id, keepalive=30, protocol_level=4))
        connack = await client.wait_for(Connack, timeout=5)
        assert connack.reason_code == 0 and client.connected
        await client.ping(timeout=5)
        await client.disconnect()
        assert [type(e.packet).__name__ for e in client.log.entries] == [
            "Connect", "Connack", "Pingreq", "Pingresp", "Disconnect"]
    run(main())


def test_wait_closed_returns_at_once_when_already_closed(mosquitto):
    """A zero timeout is a check, not a wait: asyncio.wait_for(..., 0) alone times out even on a set event."""
    async def main():
        client = Client(mosquitto.url("mqtt"), version="3.1.1")
        await client.open_raw(timeout=5)
        await client.send(Connect(client.client_id, protocol_level=4, reserved=True))  # refused: closed at once
        reason = await client.wait_closed(timeout=5)
        assert await client.wait_closed(timeout=0) == reason
    run(main())


@pytest.mark.parametrize("kind", ["mqtt", "mqtts", "ws"])
def test_burst_of_large_payloads_arrives_intact_in_order(mosquitto, pki, kind, request):
    """Large payloads leave as their own pieces (plain TCP: sendmsg, the rest to asyncio's buffer once the socket
    is full); mixed with small ones, every byte arrives, in order, from every transport. All at QoS 1: the broker
    may reorder or drop QoS 0 messages queued behind a full in-flight window. The subscriber is on plain TCP:
    mosquitto 2.0.11 stalls sending such a burst over WebSocket (paho-mqtt's ws subscriber stops at 16 of 96 too)."""
    url = mosquitto.url(kind)
    topic = f"large/{request.node.name}"
    sizes = [1 << 18, 10, 5000, 2048, 2047, 1 << 16, 0, 100_000] * 12
    payloads = [bytes([n % 251]) * size + b"%d" % n for n, size in enumerate(sizes)]

    async def main():
        async with Client(mosquitto.url("mqtt")) as sub, Client(url, tls=_tls(kind, pki)) as pub:
            await sub.subscribe(topic, qos=1)
            for n, payload in enumerate(payloads):
                pub.publish_nowait(topic, payload, qos=1, track=False)
            await pub.wait_acked(20)
            got = [(await sub.receive(timeout=20)).payload for _ in payloads]
            assert got == payloads
            sent = b"".join(e.raw for e in pub.log.entries if e.direction == OUT and isinstance(e.packet, Publish))
            assert sent.count(payloads[0]) == 1  # the log holds what went out, pieces joined
    run(main())
