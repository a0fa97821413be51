"""The broker-under-test interface shared by every backend (process, docker, external)."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

# Listener kinds every backend names its URLs by.
MQTT, MQTTS, MQTTS_MTLS, WS, WSS = "mqtt", "mqtts", "mqtts-mtls", "ws", "wss"
LISTENER_KINDS = (MQTT, MQTTS, MQTTS_MTLS, WS, WSS)


class BrokerError(RuntimeError):
    """A broker could not be started, reached or stopped. The message names the fix."""


class BrokerUnavailable(BrokerError):
    """The broker cannot run on this machine (binary or image missing). Tests skip on this."""


@dataclass
class Capabilities:
    """What a broker supports; from its profile, or discovered from CONNACK and probes."""

    versions: tuple[str, ...] = ("3.1.1", "5")
    max_qos: int = 2
    retain: bool = True
    wildcards: bool = True
    shared_subscriptions: bool = False
    max_packet_size: int | None = None
    receive_maximum: int | None = None
    # Known, documented deviations: test id or statement id -> reason (shown as xfail).
    known_limits: dict[str, str] = field(default_factory=dict)


class Broker(abc.ABC):
    """One broker instance under test. start() returns only once an MQTT CONNACK was seen."""

    name: str
    backend: str
    capabilities: Capabilities
    definition: Any  # harness.brokers.definitions.BrokerDef

    @abc.abstractmethod
    def start(self, timeout: float = 30.0) -> None: ...

    @abc.abstractmethod
    def urls(self) -> dict[str, str]:
        """Listener kind (see LISTENER_KINDS) -> URL. Only kinds this broker serves."""

    @abc.abstractmethod
    def logs(self) -> str: ...

    @abc.abstractmethod
    def stop(self, timeout: float = 10.0) -> None: ...

    def exit_status(self) -> str | None:
        """None while the broker runs (or nobody can tell), else how it ended, e.g. "exited with code 2"."""
        return None

    @property
    def credentials(self) -> dict[str, str]:
        """username/password every client of this broker must send (its profile's; empty: anonymous)."""
        return dict(self.definition.credentials)

    def url(self, kind: str = MQTT) -> str:
        urls = self.urls()
        if kind not in urls:
            raise BrokerUnavailable(f"{self.name} ({self.backend}) has no {kind} listener; it serves {sorted(urls)}")
        return urls[kind]

    def __enter__(self) -> "Broker":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
