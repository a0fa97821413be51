"""Capability discovery of a broker known only by its URL: CONNACK properties (v5) or probes (3.1.1 only)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from harness.brokers import definitions as brokerdefs
from harness.brokers.backends import load_backend
from harness.brokers.discovery import PACKET_PROBE_SIZES, discover


def test_v5_broker_declares_its_capabilities(mosquitto):
    found = asyncio.run(discover(mosquitto.url("mqtt")))
    caps = found.capabilities
    assert caps.versions == ("3.1.1", "5")
    assert (caps.max_qos, caps.retain, caps.wildcards) == (2, True, True)
    assert caps.receive_maximum == 20  # mosquitto's default max_inflight_messages, declared in CONNACK
    assert caps.max_packet_size == PACKET_PROBE_SIZES[-1]  # not declared: probed
    assert found.version.startswith("mosquitto version 2.")


def test_311_only_broker_is_probed(pki):
    defn = brokerdefs.load("nats")
    backend = load_backend("process")
    if reason := backend.unavailable_reason(defn):
        pytest.skip(f"nats cannot run here: {reason}")
    broker = backend.create(defn, listeners=["mqtt"], pki=pki, detached=False)
    broker.start()
    try:
        found = asyncio.run(discover(broker.url("mqtt"), timeout=3))
    finally:
        broker.stop()
    caps = found.capabilities
    assert caps.versions == ("3.1.1",)
    assert caps.max_qos == 1  # nats-server 2.9 grants QoS 2 subscriptions as QoS 1
    assert any("probed" in note for note in found.notes)


def test_cli_probe_prints_the_capabilities(mosquitto):
    out = subprocess.run([sys.executable, "-m", "harness", "brokers", "probe", mosquitto.url("mqtt")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "maximum QoS            2" in out.stdout


def test_cli_probe_of_an_unreachable_url_is_one_line():
    out = subprocess.run([sys.executable, "-m", "harness", "brokers", "probe", "mqtt://127.0.0.1:1", "--timeout", "2"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 3  # unreachable
    assert out.stderr.count("\n") == 1 and "cannot reach" in out.stderr and out.stderr.count("connection refused") == 1
