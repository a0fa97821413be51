"""A virtual ESP32 running esp-mqtt, as a separate process on a real pseudo-terminal: mqtt-harness's serial
driver talks to it exactly as to a board (docs/dut-protocol.md). Seeded bugs make it misbehave on purpose.

bugs.py       the seeded bugs, by name
config.py     the INIT/CONFIG `config` object -> esp_mqtt_client_config_t mirror
espmqtt.py    sans-IO esp-mqtt client (time in, bytes in/out, events out)
transport.py  what esp-tls reports for each failure; certificate checks on the device clock; static DNS
firmware.py   sans-IO device side of the protocol: lines in, answers/events/log out
net.py        sockets and TLS for the firmware's transports and probes
server.py     the process: pty + selector loop, replug, reaper record
spawn.py      spawn() -> VirtualDevice, for tests and tools
cli.py        `mqtt-harness dut virtual` / `python -m harness.device.virtual`
"""

from harness.device.virtual.bugs import BUGS
from harness.device.virtual.spawn import VirtualDevice, VirtualDeviceError, spawn

__all__ = ["BUGS", "VirtualDevice", "VirtualDeviceError", "spawn"]
