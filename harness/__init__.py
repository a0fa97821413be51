"""mqtt-harness: MQTT conformance test harness."""

__version__ = "0.1.0"
