"""Conformance suites. The fixtures, markers and reports come from the mqtt-harness pytest plugin
(harness.plugin, registered as a pytest11 entry point); see suites/README.md for how to write a suite test.

Put fixtures shared by several suite files here; keep ones used by a single file in that file.
"""

from __future__ import annotations

import pytest

# Brokers keep protocol timers (Keep Alive, Session Expiry, Will Delay: all whole seconds on the wire) in whole
# seconds and check them once a second, so an expiry can come up to 1 s after its exact deadline.
BROKER_CLOCK_RESOLUTION = 1.0
# Event loop scheduling plus loopback latency between a broker acting and the client seeing it. Measured on this
# 2-core machine with aedes (millisecond timers): at most 0.04 s late with both cores busy; 0.25 s leaves 6x headroom.
SCHEDULING_MARGIN = 0.25


@pytest.fixture
def timer_slack() -> float:
    """Seconds a broker may act after a protocol deadline (1.5 x Keep Alive, Session Expiry, Will Delay) and still
    count as on time: whole-second broker clocks plus scheduling latency."""
    return BROKER_CLOCK_RESOLUTION + SCHEDULING_MARGIN


# MQTT 5 Session Expiry Interval for sessions that must outlive a connection during a test: longer than any test,
# so a session a test leaves behind still goes away by itself.
SESSION_EXPIRY = 300


@pytest.fixture
def persistent(mqtt_version: str) -> dict:
    """client_factory options for a session that outlives its connection: Clean Session 0 and, at MQTT 5, a Session
    Expiry Interval (without one an MQTT 5 session ends with the connection)."""
    if mqtt_version == "5":
        return {"clean": False, "properties": {"session_expiry_interval": SESSION_EXPIRY}}
    return {"clean": False}


@pytest.fixture
def end_session(mqtt_version: str):
    """`await end_session(client)`: leave no session of this client on the broker (MQTT 5: DISCONNECT with Session
    Expiry 0; 3.1.1: reconnect with Clean Session 1, then DISCONNECT)."""
    async def end(client) -> None:
        if mqtt_version == "5":
            if not client.connected:
                await client.reconnect(clean=True)  # Clean Start 1 discards the stored session
            await client.disconnect(properties={"session_expiry_interval": 0})
        else:
            if client.connected:
                await client.disconnect()
            await client.reconnect(clean=True)  # Clean Session 1 discards the stored session; this one ends with it
            await client.disconnect()
    return end
