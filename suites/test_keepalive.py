"""Keep Alive: the broker disconnects a silent client by one and a half keepalives and not before one keepalive,
any control packet (not only PINGREQ) resets the timer, the will is published on a keepalive timeout, keepalive 0
turns the timer off, PINGREQ is answered with PINGRESP, and an MQTT 5 Server Keep Alive is enforced.

These tests model elapsed time, so they wait. K is --keepalive-seconds (default 2). Durations are measured from
the client's last packet (its packet log timestamp) to the moment the client saw the close (Client.closed_at).
The deadline is 1.5 x K plus timer_slack (suites/conftest.py): brokers keep these timers in whole seconds
(up to 1 s late), plus scheduling latency (0.25 s, six times what was measured on this machine under load).

Each measured close is recorded (`measure("keepalive_window", ...)`: seconds and multiple of the keepalive), so the
report states every broker's enforcement window. A close between K and 1.5 x K passes with a warning: the statement
sets only a deadline, but a client may be silent for up to 1.5 x K. The measured silence can only overstate the
broker's own (the client stamps a packet before the broker reads it, and sees the close after it happens), so a
window below 1.5 x K is the broker's doing, not the measurement's.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from harness.client import Client
from harness.core.packets import Pingreq, Pingresp, Publish, Will
from harness.expect import expect_closed, expect_packet
from harness.packet_log import OUT

STAGGERED = 6  # clients whose keepalive deadlines are spread out, for the deadline test
LONGEST_WAIT = 30.0  # the longest a test waits for one keepalive timeout (the per-test limit is 60 s)


def last_sent(client: Client) -> float:
    """When the client last sent a packet (packet log timestamp)."""
    return next(e.time for e in reversed(client.log.entries) if e.direction == OUT)


def enforced_keepalive(client: Client, requested: int) -> int:
    """The keepalive the broker holds the client to: its Server Keep Alive (MQTT 5) if it sent one
    [MQTT-3.2.2-21], the client's own otherwise [MQTT-3.2.2-22]. Skips when that is too long to wait for."""
    keepalive = client.connack.properties.get("server_keep_alive", requested)
    if keepalive == 0:
        pytest.skip(f"the broker answered keepalive {requested}s with Server Keep Alive 0: no timeout to check")
    if 1.5 * keepalive > LONGEST_WAIT:
        pytest.skip(f"the broker answered keepalive {requested}s with Server Keep Alive {keepalive}s, "
                    f"which this test cannot wait out (longest wait {LONGEST_WAIT:g}s)")
    return keepalive


async def silent_connection(client_factory, keepalive: int, **options) -> Client:
    """A connected client that sends nothing more: no PINGREQ, no other packet."""
    client = await client_factory(keepalive=keepalive, **options)
    client.go_silent()
    return client


def record_window(measure, silences: list[float], keepalive: int, whose: str = "keepalive"):
    """Report the measured enforcement window: the shortest silence the broker allowed (seconds and multiple of the
    keepalive, every sample kept), with a warning when that is less than the 1.5 x K a client may be silent."""
    shortest = min(silences)
    ratio = shortest / keepalive
    warning = None
    if ratio < 1.5:
        warning = (f"closed a silent client {shortest:.2f}s ({ratio:.2f} x {whose} {keepalive}s) after its last "
                   f"packet, before 1.5 x {whose}: the spec lets a client be silent that long (it must send within "
                   f"the keepalive; the broker must close only after 1.5 x), so a client that is late by network "
                   f"delay is dropped")
    measure("keepalive_window", shortest, "s", ratio=ratio, ratio_of=f"{whose} {keepalive} s",
            samples=silences if len(silences) > 1 else (), warning=warning,
            label=f"silence the broker allowed before it closed the connection ({whose} {keepalive} s"
                  + (f"; shortest of {len(silences)} clients)" if len(silences) > 1 else ")"))


async def seconds_until_closed(client: Client, keepalive: int, timer_slack: float) -> float:
    """Wait for the broker to close the silent client's connection; seconds from its last packet to the close.
    Waits past the deadline by the client's wait timeout, so a late close is measured, not just reported."""
    deadline = last_sent(client) + 1.5 * keepalive + timer_slack + client.timeout
    await expect_closed(client, timeout=max(0.0, deadline - time.monotonic()))
    return client.closed_at - last_sent(client)


# ------------------------------------------------------------------------------------------------ the timeout

@pytest.mark.spec(v311="MQTT-3.1.2-24", v5=["MQTT-3.1.2-22", "MQTT-3.2.2-22"])
async def test_silent_client_is_disconnected_within_one_and_a_half_keepalives(client_factory, keepalive_seconds,
                                                                               timer_slack, measure):
    """Several clients go silent at moments spread over twice the slack: a broker that looks for expired
    keepalives on a periodic scan can close one of them in time by luck, but not all of them. A close before
    1.5 x K is a warning in the report (see the module docstring); before K, the next test fails it."""
    clients = []
    for index in range(STAGGERED):
        if index:
            await asyncio.sleep(2 * timer_slack / (STAGGERED - 1))  # models elapsed time: staggered deadlines
        clients.append(await silent_connection(client_factory, keepalive_seconds, name=f"silent{index}"))
    keepalive = enforced_keepalive(clients[0], keepalive_seconds)
    limit = 1.5 * keepalive + timer_slack
    # All waited for at once, each to its own deadline: a client that is never closed fails the test as before,
    # and the closes of the others are still measured and reported.
    outcomes = await asyncio.gather(*(seconds_until_closed(c, keepalive, timer_slack) for c in clients),
                                    return_exceptions=True)
    silences = [o for o in outcomes if not isinstance(o, BaseException)]
    if silences:
        record_window(measure, silences, keepalive)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    late = [round(s, 2) for s in silences if s > limit]
    assert not late, (f"closed {late}s after the last packet, later than 1.5 x {keepalive}s + {timer_slack:g}s; "
                      f"all clients: {[round(s, 2) for s in silences]}")


@pytest.mark.spec(v311="MQTT-3.1.2-24", v5="MQTT-3.1.2-22")
async def test_silent_client_is_not_disconnected_before_one_keepalive(client_factory, keepalive_seconds, measure):
    """The statement sets a deadline, not an earliest moment, and a broker may drop clients for other reasons.
    But Keep Alive is the longest silence a client is allowed (section 3.1.2.10): a keepalive timeout before K
    would drop clients that keep the protocol. So the close must not come before K."""
    client = await silent_connection(client_factory, keepalive_seconds)
    keepalive = enforced_keepalive(client, keepalive_seconds)
    # Models elapsed time: one keepalive of silence. Whether and when the broker closes later is the other test's.
    await asyncio.sleep(max(0.0, last_sent(client) + keepalive - time.monotonic()))
    if client.is_closed:
        silence = client.closed_at - last_sent(client)
        record_window(measure, [silence], keepalive)
        assert silence >= keepalive, f"closed {silence:.2f}s after the last packet, before the keepalive ({keepalive}s)"


@pytest.mark.spec(v311="MQTT-3.1.2-24", v5="MQTT-3.1.2-22")
async def test_any_control_packet_resets_the_keepalive_timer(client_factory, topic, keepalive_seconds, timer_slack):
    """PUBLISH every half keepalive and never a PINGREQ, until well past the 1.5 x K deadline counted from the
    CONNECT: the connection stays open."""
    client = await silent_connection(client_factory, keepalive_seconds)
    keepalive = enforced_keepalive(client, keepalive_seconds)
    connected = last_sent(client)
    while time.monotonic() < connected + 1.5 * keepalive + timer_slack:
        await asyncio.sleep(keepalive / 2)  # models elapsed time: the gap between packets
        assert not client.is_closed, (f"closed {client.closed_at - connected:.2f}s after CONNECT although a PUBLISH "
                                      f"came every {keepalive / 2:g}s")
        await client.publish(topic + "x", b"activity")  # QoS 0 to a topic nobody reads: nothing comes back
    await client.ping()  # still open


@pytest.mark.spec("MQTT-3.1.2-8", v311="MQTT-3.1.2-24", v5="MQTT-3.1.2-22")
async def test_will_is_published_on_keepalive_timeout(client_factory, topic, keepalive_seconds, timer_slack):
    watcher = await client_factory(name="watcher")
    await watcher.subscribe(topic + "will")
    willer = await silent_connection(client_factory, keepalive_seconds, name="willer",
                                     will=Will(topic + "will", b"timed out"))
    keepalive = enforced_keepalive(willer, keepalive_seconds)
    await expect_packet(watcher, Publish, topic=topic + "will", payload=b"timed out",
                        timeout=1.5 * keepalive + timer_slack + watcher.timeout)


@pytest.mark.spec(v311="MQTT-3.1.2-24", v5=["MQTT-3.1.2-22", "MQTT-3.2.2-22"])
async def test_keepalive_0_turns_the_timeout_off(client_factory, keepalive_seconds, timer_slack):
    """Silent for as long as a client with keepalive K may live (1.5 x K + slack), then a PINGREQ round trip."""
    client = await silent_connection(client_factory, 0)
    window = 1.5 * keepalive_seconds + timer_slack
    server_keepalive = client.connack.properties.get("server_keep_alive")
    if server_keepalive and server_keepalive <= window:
        pytest.skip(f"the broker answered keepalive 0 with Server Keep Alive {server_keepalive}s, as MQTT 5 allows")
    await asyncio.sleep(window)  # models elapsed time: longer than a keepalive-K client would be allowed
    assert not client.is_closed, f"closed {client.closed_at - last_sent(client):.2f}s after CONNECT with keepalive 0"
    await client.ping()


@pytest.mark.spec("MQTT-3.12.4-1")
async def test_pingreq_is_answered_with_pingresp(client_factory):
    client = await client_factory()
    await client.send(Pingreq())
    await expect_packet(client, Pingresp)


@pytest.mark.v5_only
@pytest.mark.spec(v5="MQTT-3.1.2-22")
async def test_server_keep_alive_is_enforced(client_factory, timer_slack, measure):
    """If the broker answers with a Server Keep Alive, the client must use it [MQTT-3.2.2-21], and the broker's
    timeout follows it. Asking for the longest keepalive (65535 s) makes a broker with a maximum send one; a
    broker without one (mosquitto unless max_keepalive is set) gives nothing to check."""
    client = await silent_connection(client_factory, 65535)
    server_keepalive = client.connack.properties.get("server_keep_alive")
    if server_keepalive is None:
        pytest.skip("the broker sent no Server Keep Alive (for keepalive 65535), so it enforces the client's own")
    keepalive = enforced_keepalive(client, 65535)
    silence = await seconds_until_closed(client, keepalive, timer_slack)
    record_window(measure, [silence], keepalive, whose="Server Keep Alive")
    assert keepalive <= silence <= 1.5 * keepalive + timer_slack, (
        f"closed {silence:.2f}s after the last packet; Server Keep Alive {keepalive}s allows "
        f"{keepalive}..{1.5 * keepalive + timer_slack:g}s")
