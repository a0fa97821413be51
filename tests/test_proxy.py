"""The proxy against a real mosquitto with the reference client: forwarding and stream faults.

Timing faults are checked by their effects and by lower bounds only (a delay the fault guarantees);
"nothing arrived" is checked behind a barrier (a PINGREQ/PINGRESP round trip or a proxy byte counter).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from harness.client import Client
from harness.core.packets import Connack, Connect, Puback, Pubcomp, Publish
from harness.errors import ConnectError, ConnectionClosed
from harness.proxy import DELIVERED, DOWNSTREAM, RECEIVED, UPSTREAM, ProxyError, faults, when
from harness.transport import TlsOptions


def run(coro, timeout: float = 60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def _client_tls(url: str, pki) -> TlsOptions | None:
    return TlsOptions(ca=str(pki.ca)) if url.startswith(("mqtts", "wss")) else None


# ------------------------------------------------------------------------------------ forwarding

MODES = {
    "tcp": ("mqtt", None),
    "tls-terminate": ("mqtts", "terminate"),
    "tls-to-plain": ("mqtt", "terminate"),
}


@pytest.mark.parametrize("version", ["3.1.1", "5"])
@pytest.mark.parametrize("mode", list(MODES))
def test_transparent_forwarding_qos012(proxy, mosquitto, pki, mode, version, request):
    kind, tls = MODES[mode]
    p = proxy(mosquitto.url(kind), tls=tls)
    assert p.proxy.mode == mode and p.url.startswith("mqtts://" if tls else "mqtt://")
    topic = f"fw/{request.node.name}"

    async def main():
        opts = _client_tls(p.url, pki)
        async with Client(p.url, version=version, tls=opts, client_id="fw-sub") as sub, \
                Client(p.url, version=version, tls=opts, client_id="fw-pub") as pub:
            await sub.subscribe(topic, qos=2)
            for qos in (0, 1, 2):
                ack = await pub.publish(topic, b"m%d" % qos, qos=qos)
                assert ack is None if qos == 0 else isinstance(ack, (Puback, Pubcomp))
                msg = await sub.receive(timeout=5)
                assert (msg.topic, msg.payload, msg.qos) == (topic, b"m%d" % qos, qos)
            await sub.ping()
            assert sub.pending_messages() == [] and not sub.violations and not pub.violations
    run(main())
    conns = p.wait_until(lambda: [c for c in p.proxy.connections if not c.is_open] == p.proxy.connections
                         and p.proxy.connections, what="both connections closed")
    assert sorted(c.client_id for c in conns) == ["fw-pub", "fw-sub"]
    for c in conns:
        assert c.version == (5 if version == "5" else 4)
        assert c.received == c.delivered  # no rule or fault: every byte went through
        for direction in (UPSTREAM, DOWNSTREAM):
            assert c.log.packets(direction, stage=RECEIVED) == c.log.packets(direction, stage=DELIVERED)
    pub_conn = p.connection(client_id="fw-pub")
    published = pub_conn.log.packets(UPSTREAM, Publish)
    assert [m.qos for m in published] == [0, 1, 2]
    assert isinstance(pub_conn.log.packets(DOWNSTREAM)[0], Connack)


def test_tls_passthrough_forwards_encrypted_bytes_and_refuses_rules(proxy, mosquitto, pki):
    p = proxy(mosquitto.url("mqtts"))
    assert p.proxy.mode == "tls-passthrough" and p.url.startswith("mqtts://")

    async def main():
        async with Client(p.url, tls=TlsOptions(ca=str(pki.ca))) as c:
            await c.subscribe("pt/x", qos=1)
            await c.publish("pt/x", b"secret", qos=1)
            assert (await c.receive(timeout=5)).payload == b"secret"
    run(main())
    conn = p.wait_closed(1)  # counters are final once the proxy saw the close
    assert conn.client_log is None and conn.log.packets() == []
    assert sum(n for _, d, n in conn.chunks if d == UPSTREAM) == conn.received[UPSTREAM] > 0
    with pytest.raises(ProxyError, match="rules need decoded MQTT"):
        p.add_rule(when("PUBLISH").drop())


@pytest.mark.parametrize("kind", ["ws", "wss"])
def test_websocket_passthrough_with_a_byte_fault(proxy, mosquitto, pki, kind):
    p = proxy(mosquitto.url(kind))
    assert p.url.startswith(f"{kind}://") and p.url.endswith(mosquitto.url(kind).rsplit("/", 1)[-1])
    p.add_fault(faults.slicer(3, direction="both"))

    async def main():
        async with Client(p.url, tls=_client_tls(p.url, pki)) as c:
            await c.subscribe("ws/x", qos=1)
            await c.publish("ws/x", b"over websocket", qos=1)
            assert (await c.receive(timeout=5)).payload == b"over websocket"
    run(main())
    conn = p.wait_closed(1)  # counters are final once the proxy saw the close
    assert conn.writes[UPSTREAM] >= conn.delivered[UPSTREAM] / 3


@pytest.mark.parametrize("quick_ack", [True, False])
def test_quick_acks_are_armed_on_both_legs_unless_switched_off(proxy, mosquitto, quick_ack):
    p = proxy(mosquitto.url("mqtt"), quick_ack=quick_ack)

    async def main():
        async with Client(p.url) as c:
            await c.ping()
            conn = p.connection(1)
            armed = [side.sock is not None for side in (conn.client, conn.broker)]
            assert armed == [quick_ack, quick_ack]
    run(main())


def test_many_concurrent_connections_are_tracked(proxy, mosquitto):
    p = proxy(mosquitto.url("mqtt"))
    n = 25

    async def one(i):
        async with Client(p.url, client_id=f"many-{i}") as c:
            await c.subscribe(f"many/{i}", qos=1)
            await c.publish(f"many/{i}", b"%d" % i, qos=1)
            assert (await c.receive(timeout=10)).payload == b"%d" % i
    async def main():
        await asyncio.gather(*(one(i) for i in range(n)))
    run(main())
    conns = p.connections
    assert sorted(c.client_id for c in conns) == sorted(f"many-{i}" for i in range(n))
    assert len({c.client_addr for c in conns}) == n and len({c.id for c in conns}) == n


# ------------------------------------------------------------------------------------ stream faults

def test_latency_delays_at_least_the_configured_time(proxy, mosquitto):
    p = proxy(mosquitto.url("mqtt"))

    async def main():
        async with Client(p.url) as c:
            p.add_fault(faults.latency(150, direction="downstream"))
            start = time.monotonic()
            await c.ping(timeout=5)
            assert time.monotonic() - start >= 0.15  # lower bound the fault guarantees
            p.heal()
    run(main())


def test_bandwidth_limits_throughput_and_keeps_bytes_intact(proxy, mosquitto):
    p = proxy(mosquitto.url("mqtt"))
    payload = bytes(range(256)) * 40  # ~10 KB at 20 KB/s: at least half a second

    async def main():
        async with Client(p.url) as c:
            await c.subscribe("bw/x", qos=1)
            p.add_fault(faults.bandwidth(20, direction="upstream"))
            start = time.monotonic()
            await c.publish("bw/x", payload, qos=1, timeout=10)
            assert time.monotonic() - start >= len(payload) / 20000 * 0.99
            assert (await c.receive(timeout=10)).payload == payload
    run(main())


def test_slicer_one_byte_chunks_still_parse_at_the_broker(proxy, mosquitto):
    p = proxy(mosquitto.url("mqtt"))
    p.add_fault(faults.slicer(1, direction="both"))

    async def main():
        async with Client(p.url, version="5") as c:
            await c.subscribe("slice/x", qos=2)
            await c.publish("slice/x", b"x" * 300, qos=2)
            assert (await c.receive(timeout=10)).payload == b"x" * 300
    run(main())
    conn = p.wait_closed(1)  # counters are final once the proxy saw the close
    assert conn.writes == conn.delivered  # one write per byte, both ways
    assert conn.delivered[UPSTREAM] > 300


def test_limit_data_cuts_mid_packet_and_closes(proxy, mosquitto):
    p = proxy(mosquitto.url("mqtt"))

    async def main():
        async with Client(p.url) as sub:
            await sub.subscribe("cut/x", qos=1)
            pub = await Client.connect(p.url)
            conn = await p.wait_connection_async(2)
            sent = conn.delivered[UPSTREAM]
            p.add_fault(faults.limit_data(10, direction="upstream", connection=conn.id))
            pub.publish_nowait("cut/x", b"y" * 100, qos=1)
            assert "closed" in await pub.wait_closed(timeout=5)
            await pub.close()
            assert conn.delivered[UPSTREAM] == sent + 10  # 10 bytes of a ~110 byte PUBLISH
            assert conn.close_reason.startswith("limit_data") and not conn.reset
            await sub.ping()
            assert sub.pending_messages() == []  # the broker never got a whole PUBLISH
    run(main())


def test_reset_peer_resets_the_client(proxy, mosquitto):
    p = proxy(mosquitto.url("mqtt"))

    async def main():
        c = await Client.connect(p.url)
        conn = await p.wait_connection_async()
        p.add_fault(faults.reset_peer(50, direction="upstream"))
        c.publish_nowait("rst/x", b"z")
        reason = await c.wait_closed(timeout=5)
        await c.close()
        assert "reset" in reason.lower(), reason
        closed = await p.wait_closed_async(conn.id)
        assert closed.reset and closed.close_reason == "reset_peer"
    run(main())


def test_timeout_fault_closes_after_its_time(proxy, mosquitto):
    p = proxy(mosquitto.url("mqtt"))

    async def main():
        c = await Client.connect(p.url)
        start = time.monotonic()
        p.add_fault(faults.timeout(200, direction="downstream"))
        await c.wait_closed(timeout=5)
        assert time.monotonic() - start >= 0.2
        await c.close()
    run(main())
    assert p.connections[0].close_reason.startswith("timeout")


def test_removing_a_timeout_that_dropped_bytes_closes_the_connection(proxy, mosquitto):
    p = proxy(mosquitto.url("mqtt"))

    async def main():
        c = await Client.connect(p.url)
        conn = await p.wait_connection_async()
        p.add_fault(faults.timeout(0, direction="downstream", name="stall"))
        before = conn.received[DOWNSTREAM]
        ping = asyncio.ensure_future(c.ping(timeout=10))
        await p.wait_until_async(lambda: conn.received[DOWNSTREAM] > before, what="PINGRESP at the proxy")
        assert not ping.done()
        p.remove_fault("stall")
        await c.wait_closed(timeout=5)
        with pytest.raises(ConnectionClosed):
            await ping
        await c.close()
        assert "cannot resume" in conn.close_reason
    run(main())


def test_blackhole_then_heal_keeps_the_same_connection(proxy, mosquitto):
    p = proxy(mosquitto.url("mqtt"))

    async def main():
        async with Client(p.url) as c:
            await c.subscribe("bh/x", qos=1)
            conn = await p.wait_connection_async()
            p.add_fault(faults.blackhole(direction="both"))
            up_before, delivered_before = conn.received[UPSTREAM], conn.delivered[UPSTREAM]
            ack = c.publish_nowait("bh/x", b"held", qos=1)
            await p.wait_until_async(lambda: conn.received[UPSTREAM] > up_before, what="the PUBLISH at the proxy")
            assert conn.delivered[UPSTREAM] == delivered_before and not ack.done()
            assert p.heal() == ["blackhole_both"]
            assert isinstance(await asyncio.wait_for(ack, 5), Puback)
            assert (await c.receive(timeout=5)).payload == b"held"
            assert conn.is_open and len(p.connections) == 1
    run(main())


def test_slow_close_delays_the_fin(proxy, mosquitto):
    p = proxy(mosquitto.url("mqtt"))

    async def main():
        c = await Client.connect(p.url)
        conn = await p.wait_connection_async()
        p.add_fault(faults.slow_close(300, direction="downstream"))
        start = time.monotonic()
        await c.send(Connect("second-connect"))  # a protocol violation: mosquitto closes the connection
        await c.wait_closed(timeout=5)
        assert time.monotonic() - start >= 0.3
        await c.close()
        assert conn.close_reason == "broker closed the connection"
    run(main())


def test_refuse_closes_the_listener_and_reopens_it(proxy, mosquitto):
    p = proxy(mosquitto.url("mqtt"))

    async def main():
        async with Client(p.url) as existing:
            p.add_fault(faults.refuse(name="down"))
            with pytest.raises(ConnectError, match="refused"):
                await Client.connect(p.url, timeout=5)
            await existing.ping()  # open connections are not affected
            p.remove_fault("down")
            async with Client(p.url) as again:
                await again.ping()
    run(main())


def test_refuse_reset_mode_resets_new_connections(proxy, mosquitto):
    p = proxy(mosquitto.url("mqtt"))
    p.add_fault(faults.refuse("reset"))

    async def main():
        with pytest.raises((ConnectError, ConnectionClosed)):
            await Client.connect(p.url, timeout=5)
    run(main())
    assert p.events[-1].kind == "refused"


def test_accept_delay_holds_new_connections_unserved(proxy, mosquitto):
    p = proxy(mosquitto.url("mqtt"))
    p.add_fault(faults.accept_delay(300))

    async def main():
        start = time.monotonic()
        async with Client(p.url) as c:
            assert time.monotonic() - start >= 0.3
            await c.ping()
    run(main())


def test_toxicity_is_drawn_once_per_connection(proxy, mosquitto):
    p = proxy(mosquitto.url("mqtt"), seed=3)
    p.add_fault(faults.latency(1, toxicity=0.5, name="some"))

    async def main():
        clients = [await Client.connect(p.url) for _ in range(12)]
        for c in clients:
            await c.ping()
            await c.disconnect()
    run(main())
    applied = [bool(c.faults[UPSTREAM]) for c in p.connections]
    assert True in applied and False in applied
    assert all(c.faults[UPSTREAM] == c.faults[DOWNSTREAM] for c in p.connections)


def test_connection_scoped_fault_leaves_others_alone(proxy, mosquitto):
    p = proxy(mosquitto.url("mqtt"))

    async def main():
        async with Client(p.url) as a, Client(p.url) as b:
            ca = await p.wait_connection_async(1)
            p.add_fault(faults.blackhole(connection=ca.id))
            before = ca.received[UPSTREAM]
            ping = asyncio.ensure_future(a.ping(timeout=10))
            await p.wait_until_async(lambda: ca.received[UPSTREAM] > before, what="PINGREQ at the proxy")
            await b.ping()  # the other connection still flows
            assert not ping.done() and ca.faults[UPSTREAM] == [f"blackhole_both_c{ca.id}"]
            p.heal()
            await ping
    run(main())


def test_runtime_changes_keep_connections(proxy, mosquitto):
    """Faults and rules come and go on a live connection; decoding starts mid-stream at a packet boundary."""
    p = proxy(mosquitto.url("mqtt"))

    async def main():
        async with Client(p.url) as c:
            await c.subscribe("rt/x", qos=1)
            p.add_fault(faults.latency(20, name="lag"))
            p.add_fault(faults.latency(5, name="lag"))  # same name: replaced in place
            assert list(p.faults) == ["lag"]
            await c.publish("rt/x", b"1", qos=1)
            assert (await c.receive(timeout=5)).payload == b"1"
            p.add_rule(when("PUBLISH", direction="downstream").rewrite(payload="changed"))
            await c.publish("rt/x", b"2", qos=1)
            assert (await c.receive(timeout=5)).payload == b"changed"
            p.clear_rules()
            p.remove_fault("lag")
            await c.publish("rt/x", b"3", qos=1)
            assert (await c.receive(timeout=5)).payload == b"3"
            assert len(p.connections) == 1 and p.connections[0].is_open
    run(main())


def test_upstream_down_closes_the_client_with_a_reason(proxy):
    from harness.brokers.ports import release_ports, reserve_ports

    [port] = reserve_ports(1)
    try:
        p = proxy(f"127.0.0.1:{port}")

        async def main():
            with pytest.raises((ConnectError, ConnectionClosed)):
                await Client.connect(p.url, timeout=5)
        run(main())
        assert p.events[-1].kind == "upstream_failed" and "cannot reach the broker" in p.events[-1].detail
    finally:
        release_ports([port])


def test_bad_configuration_is_refused_with_the_fix(proxy, mosquitto, pki):
    from harness.proxy import Proxy, ServerTls

    with pytest.raises(ProxyError, match="not host:port"):
        Proxy("127.0.0.1")
    with pytest.raises(ProxyError, match="cannot terminate TLS"):
        Proxy(mosquitto.url("ws"), server_tls=ServerTls(str(pki.server_cert), str(pki.server_key)))
    with pytest.raises(ProxyError, match="give server_tls too"):
        Proxy(mosquitto.url("mqtts"), upstream_tls=TlsOptions(ca=str(pki.ca)))
    p = proxy(mosquitto.url("mqtt"))
    with pytest.raises(ProxyError, match="cannot listen"):
        proxy(mosquitto.url("mqtt"), listen=f"127.0.0.1:{p.address[1]}")
    with pytest.raises(KeyError, match="no fault named"):
        p.remove_fault("nope")


def test_client_tls_failure_is_recorded(proxy, mosquitto, pki):
    from harness.errors import TlsError

    p = proxy(mosquitto.url("mqtt"), tls="terminate")

    async def main():
        with pytest.raises(TlsError):  # the client does not trust the proxy's certificate
            await Client.connect(p.url, tls=TlsOptions(ca=str(pki.unknown_ca)), timeout=5)
    run(main())
    p.wait_until(lambda: any(e.kind == "tls_failed" for e in p.proxy.events), what="tls_failed event")


def test_mutual_tls_at_the_proxy(proxy, mosquitto, pki):
    from harness.proxy import ServerTls

    p = proxy(mosquitto.url("mqtt"), tls=ServerTls(str(pki.server_cert), str(pki.server_key), client_ca=str(pki.ca)))

    async def main():
        async with Client(p.url, tls=TlsOptions(ca=str(pki.ca), cert=str(pki.client_cert),
                                                key=str(pki.client_key))) as c:
            await c.ping()
        with pytest.raises(ConnectError):
            await Client.connect(p.url, tls=TlsOptions(ca=str(pki.ca)), timeout=5)
    run(main())


def test_ipv6_listener(proxy, mosquitto):
    import socket

    if not socket.has_ipv6:
        pytest.skip("this Python has no IPv6 support")
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    p = proxy(mosquitto.url("mqtt"), listen="[::1]:0")
    assert p.url.startswith("mqtt://[::1]:")

    async def main():
        async with Client(p.url) as c:
            await c.ping()
    run(main())
    assert p.connections[0].client_addr[0] == "::1"
