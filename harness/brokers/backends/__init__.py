"""Ways to run a broker under test. Each backend is a module harness.brokers.backends.<name> providing

    create(definition, *, listeners=None, pki=None, detached=False) -> harness.brokers.broker.Broker
    unavailable_reason(definition) -> str | None     # why it cannot run here, with the fix; None if it can
    stop_record(record, timeout) -> None             # harness.brokers.reaper protocol: stop a recorded instance
    record_alive(record) -> bool

Backends are imported lazily: the docker one needs a daemon and the docker package, the process one neither.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from harness.brokers.broker import BrokerUnavailable

BACKENDS = ("process", "docker")


def load_backend(name: str) -> ModuleType:
    """The module of backend `name`; BrokerUnavailable (naming the reason) if it cannot be imported."""
    if name not in BACKENDS:
        raise BrokerUnavailable(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    try:
        return importlib.import_module(f"harness.brokers.backends.{name}")
    except ImportError as exc:
        raise BrokerUnavailable(f"the {name} backend is not available: {exc}") from exc
