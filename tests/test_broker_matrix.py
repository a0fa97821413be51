"""Every backend's brokers, driven for real: a QoS 1 round trip on each listener kind at 3.1.1 and 5, and
the negative certificate cases (a broker serving a broken server certificate; a listener refusing bad client
certificates), each failing with the error that names the cause."""

from __future__ import annotations

import asyncio

import pytest

from harness.brokers import definitions as brokerdefs
from harness.brokers.backends import load_backend
from harness.brokers.broker import BrokerUnavailable
from harness.client import Client
from harness.core.packets import Publish, Puback
from harness.errors import MqttConnectError, TlsError
from harness.brokers.probe import tls_args_for
from harness.transport import TlsOptions

# (broker, backend): each serves the listener kinds its profile names.
TARGETS = [("mosquitto", "process"), ("mosquitto", "docker"), ("aedes", "process"), ("amqtt", "process"),
           ("nats", "process"), ("rabbitmq", "process"), ("rabbitmq-mtls", "process"), ("activemq", "process"),
           ("ejabberd", "process")]
ROUND_TRIP_KINDS = ("mqtt", "mqtts", "mqtts-mtls", "ws")


def _start(name: str, backend: str, pki, listeners=None):
    defn = brokerdefs.load(name)
    module = load_backend(backend)
    reason = module.unavailable_reason(defn)
    if reason:
        pytest.skip(f"{name} ({backend}) cannot run here: {reason}")
    broker = module.create(defn, listeners=listeners, pki=pki, detached=False)
    try:
        broker.start()
    except BrokerUnavailable as exc:
        pytest.skip(f"{name} ({backend}) cannot run here: {exc}")
    return broker


@pytest.fixture(scope="module", params=TARGETS, ids=lambda t: f"{t[0]}-{t[1]}")
def target(request, pki):
    name, backend = request.param
    defn = brokerdefs.load(name)
    if defn.one_listener_per_instance:  # e.g. nats: one instance per listener kind
        brokers = {k: _start(name, backend, pki, [k]) for k in ROUND_TRIP_KINDS if k in defn.listeners}
    else:
        kinds = [k for k in ROUND_TRIP_KINDS if k in defn.listeners]
        one = _start(name, backend, pki, kinds)
        brokers = {k: one for k in kinds}
    yield defn, brokers
    for broker in {id(b): b for b in brokers.values()}.values():
        broker.stop()


def _tls(kind: str, pki) -> TlsOptions | None:
    args = tls_args_for(kind, pki)
    return TlsOptions(**args) if args else None


@pytest.mark.parametrize("version", ["3.1.1", "5"])
@pytest.mark.parametrize("kind", ROUND_TRIP_KINDS)
def test_qos1_round_trip(target, pki, kind, version):
    defn, brokers = target
    if kind not in brokers:
        pytest.skip(f"{defn.name} has no {kind} listener (profile: {', '.join(defn.listeners)})")
    if version not in defn.capabilities.versions:
        pytest.skip(f"{defn.name} does not speak MQTT {version} (profile: {', '.join(defn.capabilities.versions)})")
    url, login = brokers[kind].url(kind), brokers[kind].credentials  # ejabberd needs a user name and password

    async def main():
        async with Client(url, version=version, tls=_tls(kind, pki), **login) as sub, \
                Client(url, version=version, tls=_tls(kind, pki), **login) as pub:
            topic = f"matrix/{kind}/v{version.replace('.', '')}"  # NATS refuses '.' in MQTT topics
            await sub.subscribe(topic, qos=1)
            ack = await pub.publish(topic, b"round trip", qos=1)
            assert isinstance(ack, Puback) and ack.reason_code < 0x80
            msg = await sub.receive(timeout=10)
            assert isinstance(msg, Publish)
            assert (msg.payload, msg.qos) == (b"round trip", 1)
    asyncio.run(asyncio.wait_for(main(), 30))


SERVER_CASES = {
    "server_expired": "expired",
    "server_notyetvalid": "not yet valid",
    "server_wronghost": "hostname",
    "server_unknownca": "verif",
}


@pytest.mark.parametrize("variant", sorted(SERVER_CASES))
@pytest.mark.parametrize("backend", ["process", "docker"])
def test_broker_serving_a_broken_server_certificate_is_refused(pki, backend, variant):
    broken = pki.with_server(variant)
    defn = brokerdefs.load("mosquitto")
    module = load_backend(backend)
    reason = module.unavailable_reason(defn)
    if reason:
        pytest.skip(f"mosquitto ({backend}) cannot run here: {reason}")
    broker = module.create(defn, listeners=["mqtt", "mqtts"], pki=broken, detached=False)
    broker.start()
    try:
        async def main():
            with pytest.raises(TlsError) as info:
                await Client.connect(broker.url("mqtts"), tls=TlsOptions(ca=str(pki.ca)), timeout=10)
            return str(info.value)
        text = asyncio.run(main())
        assert SERVER_CASES[variant] in text, text
    finally:
        broker.stop()


CLIENT_CASES = {None: "requires a client certificate", "client_untrusted": "rejected the client certificate",
                "client_expired": "rejected the client certificate"}


@pytest.mark.parametrize("cert", list(CLIENT_CASES), ids=lambda c: c or "no_cert")
def test_mtls_listener_refuses_bad_client_certificates(target, pki, cert):
    defn, brokers = target
    if "mqtts-mtls" not in brokers:
        pytest.skip(f"{defn.name} has no listener that requires client certificates")
    tls = TlsOptions(ca=str(pki.ca), cert=str(getattr(pki, f"{cert}_cert")) if cert else None,
                     key=str(getattr(pki, f"{cert}_key")) if cert else None)

    async def main():
        # An OpenSSL broker sends a TLS alert (TlsError); Node's TLS (aedes) just closes after the handshake,
        # which the client reports as a close before CONNACK that names the client certificate.
        with pytest.raises((TlsError, MqttConnectError)) as info:
            await Client.connect(brokers["mqtts-mtls"].url("mqtts-mtls"), tls=tls, timeout=10)
        return info.value
    error = asyncio.run(main())
    assert "client certificate" in str(error), error
    if isinstance(error, TlsError):
        assert CLIENT_CASES[cert] in str(error), error
