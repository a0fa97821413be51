"""Seeded device bugs of the virtual ESP32, switched on by name. All off = a correct client.

Each bug is a known or plausible way a device's MQTT stack goes wrong, so the harness's device suites can be
shown to catch it. `ref` names the esp-mqtt issue, field report or code path it models (see
shared/research/esp32.md), or None when it is a generic fault with no single report."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Bug:
    name: str
    description: str
    ref: str | None = None


BUGS: dict[str, Bug] = {b.name: b for b in (
    Bug("no-dup", "retransmitted PUBLISH (timer or session resume) goes out with DUP=0",
        "esp-mqtt#151 (DUP was only set for QoS 2)"),
    Bug("late-ping", "PINGREQ only after 1.5 x keepalive of silence instead of keepalive/2",
        "MQTT-3.1.2-23; the opposite of esp-mqtt#32 (ping at keepalive/2 by design)"),
    Bug("ping-starved", "keepalive tick refreshed by every received packet, so no PINGREQ while messages arrive",
        "MQTT-3.1.2-23; esp-mqtt refreshes it only on CONNACK/PINGRESP (mqtt_client.c process_keepalive)"),
    Bug("no-half-open", "never gives up on a missing PINGRESP: a half-open connection stays 'connected'",
        "esp-mqtt#321, esp-idf#12094, esp-idf#11330 (requests to drop the 'No PING_RESP' disconnect)"),
    Bug("clean-replay", "in-flight outbox replayed with DUP into a clean session (session_present=0)",
        "esp-mqtt mqtt_client.c: the outbox is only cleared on stop, whatever CONNACK says"),
    Bug("publish-not-pubrel", "after a reconnect resends the QoS 2 PUBLISH instead of PUBREL once PUBREC came",
        "esp-mqtt#168, esp-idf#9115 (QoS 2 duplicates after a broker restart)"),
    Bug("session-ignored", "CONNECT always has clean session set, whatever disable_clean_session says", None),
    Bug("no-will", "the configured last will is left out of CONNECT", None),
    Bug("retain-dropped", "retain flag cleared on every outgoing PUBLISH", None),
    Bug("wrong-tls-error", "TLS handshake failures reported as ESP_ERR_ESP_TLS_FAILED_CONNECT_TO_HOST",
        "ESPEasy#5265 (-1002 'TCP connect' blamed for TLS trouble), esp32.md section 3.4"),
    Bug("lost-event", "the 4th EVT line after boot is never written; its seq is skipped",
        "a console line lost on the UART (pytest-embedded#168 lost input)"),
    Bug("qos2-twice", "an incoming QoS 2 PUBLISH resent (DUP) before PUBREL is delivered again as DATA",
        "esp-mqtt mqtt_process_receive keeps no inbound QoS 2 state; esp-mqtt#168"),
    Bug("big-data-truncated", "messages larger than buffer.size lose their last DATA piece", None),
)}


def parse_bugs(values) -> frozenset[str]:
    """Names from repeatable and/or comma-separated values; ValueError naming the valid ones."""
    names: set[str] = set()
    for value in values or ():
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            if part not in BUGS:
                raise ValueError(f"unknown bug {part!r}; valid bugs: {', '.join(BUGS)}")
            names.add(part)
    return frozenset(names)


def describe() -> str:
    width = max(map(len, BUGS))
    lines = []
    for bug in BUGS.values():
        ref = f" [{bug.ref}]" if bug.ref else ""
        lines.append(f"{bug.name:<{width}}  {bug.description}{ref}")
    return "\n".join(lines)
