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
