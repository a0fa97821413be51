"""Shared fixtures. Keep each one small; put helpers for a single test module in that module."""

from __future__ import annotations

import pytest

from harness.brokers.broker import LISTENER_KINDS, BrokerUnavailable
from harness.pki import Pki, generate_pki
from harness.proxy.fixtures import proxy  # noqa: F401
import strategies  # noqa: F401,E402 - registers the hypothesis profiles before --hypothesis-profile is read


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    """A fresh test PKI (CA, server/client certificates, broken ones) for this test session."""
    return generate_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def mosquitto(pki):
    """mosquitto as a local process serving all five listener kinds (mqtt, mqtts, mqtts-mtls, ws, wss)."""
    from harness.brokers.backends.process import ProcessBroker

    broker = ProcessBroker("mosquitto", listeners=LISTENER_KINDS, pki=pki)
    try:
        broker.start()
    except BrokerUnavailable as exc:
        pytest.skip(str(exc))
    yield broker
    broker.stop()
