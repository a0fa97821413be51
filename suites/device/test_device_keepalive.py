"""Keepalive as the device does it: a PINGREQ before the keepalive runs out, also while messages keep arriving,
and a half-open connection noticed (no PINGRESP) and replaced by a new one."""

from __future__ import annotations

import pytest

from harness.core.packets import Connect, Pingreq
from harness.proxy import faults

from harness.device.wire import EVENT_TIMEOUT, device_entries, gaps, next_ping_round, pace, start_device

pytestmark = [pytest.mark.device, pytest.mark.v311_only]
KEEPALIVE = 2  # seconds; esp-mqtt pings every keepalive/2
ROUNDS = 3  # PINGREQ rounds watched


def _send_gaps(wire, connection: int) -> list[float]:
    """Seconds between consecutive packets the device sent on one connection."""
    return gaps([e.time for e in device_entries(wire, connection=connection)])


@pytest.mark.spec("MQTT-3.1.2-23")
@pytest.mark.esp_behaviour("keepalive")
async def test_pingreq_comes_before_the_keepalive_runs_out(dut, wire, device_config):
    await start_device(dut, device_config(keepalive=KEEPALIVE))
    conn = wire.connections[-1].id
    for _ in range(ROUNDS):
        await next_ping_round(wire, connection=conn, timeout=3 * KEEPALIVE)
    longest = max(_send_gaps(wire, conn))
    assert longest <= KEEPALIVE, f"the device was silent for {longest:.2f}s with keepalive {KEEPALIVE}s"


@pytest.mark.spec("MQTT-3.1.2-23")
@pytest.mark.esp_behaviour("keepalive")
async def test_pingreq_keeps_coming_while_messages_arrive(dut, wire, device_config, client_factory, topic):
    """Traffic toward the device is not traffic from it: the broker only hears the device's own packets."""
    await start_device(dut, device_config(keepalive=KEEPALIVE))
    conn = wire.connections[-1].id
    mark = dut.mark()
    sub = await dut.aio.subscribe(topic + "stream", qos=0)
    await dut.aio.expect_event("SUBSCRIBED", msg_id=sub, timeout=EVENT_TIMEOUT, since=mark)
    peer = await client_factory()
    pings = len([e for e in device_entries(wire, Pingreq, connection=conn)])
    for _ in range(int(2.5 * KEEPALIVE / 0.2)):
        await peer.publish(topic + "stream", b"tick")
        await pace(0.2)
    sent = [e for e in device_entries(wire, Pingreq, connection=conn)]
    assert len(sent) > pings, f"no PINGREQ in {2.5 * KEEPALIVE:g}s of incoming messages (keepalive {KEEPALIVE}s)"
    longest = max(_send_gaps(wire, conn))
    assert longest <= KEEPALIVE, f"while messages arrived the device was silent for {longest:.2f}s"


@pytest.mark.spec("§3.1.2.10")
@pytest.mark.esp_behaviour("keepalive")
async def test_half_open_connection_is_noticed_and_the_device_reconnects(dut, wire, device_config):
    await start_device(dut, device_config(keepalive=KEEPALIVE))
    conn = wire.connections[-1].id
    mark = dut.mark()
    wire.add_fault(faults.blackhole(direction="both", connection=conn, name="half-open"))
    # esp-mqtt gives up once keepalive has passed since the last PINGRESP: within about 1.5 x keepalive
    gone = await dut.aio.expect_event("DISCONNECTED", timeout=3 * KEEPALIVE, since=mark)
    wire.heal()
    back = await dut.aio.expect_event("CONNECTED", timeout=EVENT_TIMEOUT, since=mark)
    connects = [e for e in device_entries(wire, Connect)]
    assert len(connects) == 2 and connects[1].connection != conn, "the device did not open a new connection"
    assert back.t_ms > gone.t_ms
