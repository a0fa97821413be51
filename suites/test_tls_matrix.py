"""TLS failure matrix: every way a (device's) connection to an MQTT-over-TLS broker fails, reproduced by a local
endpoint, and classified twice: by the reference client (harness.client: the error names the layer and the
cause) and by `mqtt-harness diagnose` (harness.diagnose: failed_layer, cause, and what an esp-mqtt or ESPEasy
device would report).

The endpoints are real: mosquitto processes started with a broken certificate, a TLS 1.3-only listener or
password authentication (harness.diagnose.endpoints), a listener whose accept queue is full (SYNs dropped:
harness.diagnose.slow_listener), an ALPN-routing front end (harness.diagnose.alpn_gate) and a scripted stand-in
where mosquitto cannot produce the case (a CONNACK 4 / 0x86, a broker speaking only TLS 1.1). DNS failures go
through a stub resolver; nothing leaves loopback.

Most cases have no OASIS statement: TLS is in the non-normative chapter 5 of both versions (§5.4.1 client
certificates, §5.4.3 server certificates, cited as sections), and DNS/TCP are outside MQTT. The CONNACK refusals
from mosquitto cite the CONNACK statements they check (Session Present 0 and the close after a refusal).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import inspect
import shutil
import socket
import ssl

import pytest

from harness.brokers.broker import MQTT, MQTTS, MQTTS_MTLS, BrokerUnavailable
from harness.client import Client
from harness.diagnose import Options, StubResolver, diagnose
from harness.diagnose.alpn_gate import AlpnGate
from harness.diagnose.certs import make_chain
from harness.diagnose.endpoints import (
    PASSWORD,
    USERNAME,
    CredentialsBroker,
    start_variant,
)
from harness.diagnose.slow_listener import SlowListener
from harness.errors import ConnectError, DnsError, MqttConnectError, TcpError, TlsError
from harness.proxy.fixtures import proxy  # noqa: F401 - the device variant's pass-through front
from harness.transport import TlsOptions
from harness.url import parse_url

TIMEOUT = 5.0  # seconds per layer / per client open: loopback answers in milliseconds
BLACKHOLE_TIMEOUT = 1.0  # a dropped SYN is retransmitted after 1 s: a shorter wait sees nothing at all
TEST_LIMIT = 60.0

VERSIONS = pytest.mark.parametrize("mqtt_version", ["3.1.1", "5"], ids=["mqtt311", "mqtt5"])


def run(test):
    """Run an async test in a fresh event loop, within TEST_LIMIT seconds."""
    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        async def limited():
            async with asyncio.timeout(TEST_LIMIT):
                await test(*args, **kwargs)
        asyncio.run(limited())
    wrapper.__signature__ = inspect.signature(test)
    return wrapper


class Endpoints:
    """mosquitto variants, started on first use and stopped at the end of the module."""

    def __init__(self, pki, workdir):
        self.pki = pki
        self.workdir = workdir
        self._brokers = {}

    def url(self, variant: str, kind: str = MQTTS) -> str:
        if variant not in self._brokers:
            if shutil.which("mosquitto_passwd") is None and variant == "auth":
                pytest.skip("mosquitto_passwd is missing; install: apt-get install -y mosquitto")
            try:
                self._brokers[variant] = start_variant(variant, self.pki, self.workdir / variant)
            except BrokerUnavailable as exc:
                pytest.skip(str(exc))
        return self._brokers[variant].urls()[kind]

    def stop(self) -> None:
        for broker in self._brokers.values():
            broker.stop()


@pytest.fixture(scope="module")
def endpoints(pki, tmp_path_factory):
    eps = Endpoints(pki, tmp_path_factory.mktemp("tls-matrix"))
    yield eps
    eps.stop()


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    return make_chain(tmp_path_factory.mktemp("chain"))


async def classify(url: str, mqtt_version: str, layer: str | None, cause: str | None, **options):
    """diagnose `url` and check it names `layer` and `cause`; returns the Diagnosis."""
    resolve = options.pop("resolve", None)
    options.setdefault("timeout", TIMEOUT)
    result = await diagnose(url, Options(version=mqtt_version, **options), resolve=resolve)
    walked = [(x.name, x.ok, x.cause, x.summary) for x in result.layers]
    assert (result.failed_layer, result.cause) == (layer, cause), f"diagnose said {walked}"
    assert result.exit_code == (0 if layer is None else 10 + ["dns", "tcp", "tls", "certificate",
                                                              "client_certificate", "mqtt", "roundtrip"].index(layer))
    if layer is not None:
        assert result.causes and result.fixes, "a failure must come with likely causes and a fix"
    return result


async def reference_error(url: str, mqtt_version: str, *, timeout: float = TIMEOUT, **kwargs) -> ConnectError:
    """The reference client's error opening `url` (the test fails if it connects)."""
    client = Client(url, version=mqtt_version, timeout=timeout, **kwargs)
    try:
        await client.open()
    except ConnectError as exc:
        return exc
    await client.disconnect()
    pytest.fail(f"the reference client connected to {url}")


async def reference_connects(url: str, mqtt_version: str, **kwargs) -> None:
    client = await Client.connect(url, version=mqtt_version, timeout=TIMEOUT, **kwargs)
    await client.disconnect()


def esp(result) -> dict:
    return result.device["esp_mqtt"]


def esp_tls_name(result) -> str:
    return esp(result)["error_handle"]["esp_tls_last_esp_err"]["name"]


# ------------------------------------------------------------------------------------------------ controls

@VERSIONS
@run
async def test_healthy_tls_broker_passes_every_layer(mqtt_version, endpoints, pki):
    """Control: the same endpoints with nothing wrong pass every layer, and both devices would connect."""
    result = await classify(endpoints.url("healthy"), mqtt_version, None, None, ca=str(pki.ca))
    assert [x.name for x in result.layers] == ["dns", "tcp", "tls", "certificate", "client_certificate", "mqtt",
                                               "roundtrip"]
    assert result.device["esp_mqtt"]["would_connect"] and result.device["espeasy"]["would_connect"]
    await reference_connects(endpoints.url("healthy"), mqtt_version, tls=TlsOptions(ca=str(pki.ca)))


@VERSIONS
@run
async def test_mutual_tls_with_a_trusted_certificate_passes(mqtt_version, endpoints, pki):
    """Control for the client-certificate cases."""
    result = await classify(endpoints.url("healthy", MQTTS_MTLS), mqtt_version, None, None, ca=str(pki.ca),
                            cert=str(pki.client_cert), key=str(pki.client_key))
    assert result.layer("client_certificate").detail["requested"] is True
    await reference_connects(endpoints.url("healthy", MQTTS_MTLS), mqtt_version,
                             tls=TlsOptions(ca=str(pki.ca), cert=str(pki.client_cert), key=str(pki.client_key)))


# -------------------------------------------------------------------------------------------- dns and tcp

@VERSIONS
@run
async def test_dns_failure(mqtt_version):
    """A name that does not resolve (the stub answers NXDOMAIN for every name it was not given)."""
    stub = StubResolver({})
    url = "mqtts://broker.example.invalid:8883"
    result = await classify(url, mqtt_version, "dns", "dns_failure", resolve=stub)
    assert esp_tls_name(result) == "ESP_ERR_ESP_TLS_CANNOT_RESOLVE_HOSTNAME"
    assert result.device["espeasy"]["code"] == -1001
    error = await reference_error(url, mqtt_version, resolve=stub, tls=TlsOptions())
    assert isinstance(error, DnsError) and "cannot resolve 'broker.example.invalid'" in str(error)
    assert stub.calls == ["broker.example.invalid", "broker.example.invalid"]


@pytest.fixture
def refused_port():
    """A port bound but not listening: connecting to it is refused (RST), and nobody else can take it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


@VERSIONS
@run
async def test_refused_port(mqtt_version, refused_port):
    url = f"mqtts://127.0.0.1:{refused_port}"
    result = await classify(url, mqtt_version, "tcp", "tcp_refused")
    assert esp_tls_name(result) == "ESP_ERR_ESP_TLS_FAILED_CONNECT_TO_HOST"
    assert esp(result)["error_handle"]["esp_transport_sock_errno"]["name"] == "ECONNREFUSED"
    assert result.device["espeasy"]["code"] == -1002
    error = await reference_error(url, mqtt_version, tls=TlsOptions())
    assert isinstance(error, TcpError) and "connection refused" in str(error)


@VERSIONS
@run
async def test_blackholed_port_times_out(mqtt_version):
    """SYNs dropped (a firewall, a blocked 8883): the accept queue of this listener is full and stays full."""
    with SlowListener(mode="blackhole") as hole:
        result = await classify(hole.url(), mqtt_version, "tcp", "tcp_timeout", timeout=BLACKHOLE_TIMEOUT)
        assert esp_tls_name(result) == "ESP_ERR_ESP_TLS_CONNECTION_TIMEOUT"
        assert result.device["espeasy"]["code"] == -1002
        error = await reference_error(hole.url(), mqtt_version, timeout=BLACKHOLE_TIMEOUT, tls=TlsOptions())
        assert isinstance(error, TcpError) and "timed out" in str(error)


# ----------------------------------------------------------------------------------- server certificates

@pytest.mark.spec("§5.4.3")
@VERSIONS
@run
async def test_unknown_ca(mqtt_version, endpoints, pki):
    """The server certificate comes from a CA the client does not trust."""
    url = endpoints.url("unknownca")
    result = await classify(url, mqtt_version, "certificate", "unknown_ca", ca=str(pki.ca))
    assert esp(result)["error_handle"]["esp_tls_cert_verify_flags"]["names"] == ["MBEDTLS_X509_BADCERT_NOT_TRUSTED"]
    assert result.device["espeasy"]["code"] == 62
    error = await reference_error(url, mqtt_version, tls=TlsOptions(ca=str(pki.ca)))
    assert isinstance(error, TlsError) and "unable to get local issuer certificate" in str(error)


@pytest.mark.spec("§5.4.3")
@VERSIONS
@run
async def test_expired_server_certificate(mqtt_version, endpoints, pki):
    url = endpoints.url("expired")
    result = await classify(url, mqtt_version, "certificate", "expired", ca=str(pki.ca))
    assert "MBEDTLS_X509_BADCERT_EXPIRED" in esp(result)["error_handle"]["esp_tls_cert_verify_flags"]["names"]
    assert result.device["espeasy"]["code"] == 54
    error = await reference_error(url, mqtt_version, tls=TlsOptions(ca=str(pki.ca)))
    assert isinstance(error, TlsError) and "certificate has expired" in str(error)


@pytest.mark.spec("§5.4.3")
@VERSIONS
@run
async def test_server_certificate_not_yet_valid(mqtt_version, endpoints, pki):
    url = endpoints.url("notyetvalid")
    result = await classify(url, mqtt_version, "certificate", "not_yet_valid", ca=str(pki.ca))
    assert "MBEDTLS_X509_BADCERT_FUTURE" in esp(result)["error_handle"]["esp_tls_cert_verify_flags"]["names"]
    error = await reference_error(url, mqtt_version, tls=TlsOptions(ca=str(pki.ca)))
    assert isinstance(error, TlsError) and "certificate is not yet valid" in str(error)


@pytest.mark.spec("§5.4.3")
@pytest.mark.parametrize("clock", ["2000-01-01T00:00:00+00:00", "2099-01-01T00:00:00+00:00"],
                         ids=["never-synced", "far-future"])
@VERSIONS
@run
async def test_clock_skewed_device(mqtt_version, endpoints, pki, clock):
    """A good certificate judged by a device whose clock is wrong (--clock). The host's clock is right, so the
    reference client connects: only the device view fails."""
    url = endpoints.url("healthy")
    result = await classify(url, mqtt_version, "certificate", "clock_skew", ca=str(pki.ca),
                            clock=dt.datetime.fromisoformat(clock))
    problem = result.layer("certificate").detail["problems"][0]
    assert problem["clock"] == "device"
    flag = "MBEDTLS_X509_BADCERT_FUTURE" if clock.startswith("2000") else "MBEDTLS_X509_BADCERT_EXPIRED"
    assert flag in esp(result)["error_handle"]["esp_tls_cert_verify_flags"]["names"]
    await reference_connects(url, mqtt_version, tls=TlsOptions(ca=str(pki.ca)))


@pytest.mark.spec("§5.4.3")
@VERSIONS
@run
async def test_hostname_mismatch(mqtt_version, endpoints, pki):
    url = endpoints.url("wronghost")
    result = await classify(url, mqtt_version, "certificate", "hostname_mismatch", ca=str(pki.ca))
    assert esp(result)["error_handle"]["esp_tls_cert_verify_flags"]["names"] == ["MBEDTLS_X509_BADCERT_CN_MISMATCH"]
    assert result.device["espeasy"]["code"] == 56
    error = await reference_error(url, mqtt_version, tls=TlsOptions(ca=str(pki.ca)))
    assert isinstance(error, TlsError) and "IP address mismatch" in str(error)


@pytest.mark.spec("§5.4.3")
@VERSIONS
@run
async def test_missing_intermediate(mqtt_version, endpoints, pki):
    """The broker serves its certificate without the intermediate CA that issued it; the client trusts the
    root. The same chain served complete passes (control)."""
    url = endpoints.url("missing_intermediate")
    root = str(make_chain(endpoints.workdir / "missing_intermediate" / "chain").root)
    result = await classify(url, mqtt_version, "certificate", "missing_intermediate", ca=root)
    assert "intermediate CA" in result.layer("certificate").detail["problems"][0]["text"]
    assert result.device["espeasy"]["code"] == 62
    error = await reference_error(url, mqtt_version, tls=TlsOptions(ca=root))
    assert isinstance(error, TlsError) and "unable to get local issuer certificate" in str(error)
    full = endpoints.url("fullchain")
    full_root = str(make_chain(endpoints.workdir / "fullchain" / "chain").root)
    result = await classify(full, mqtt_version, None, None, ca=full_root)
    assert len(result.layer("certificate").detail["path"]) == 3
    await reference_connects(full, mqtt_version, tls=TlsOptions(ca=full_root))


# ----------------------------------------------------------------------------------- client certificates

TLS_VERSIONS = pytest.mark.parametrize("tls_version", [None, "1.2"], ids=["tls-default", "tls12"])


@pytest.mark.spec("§5.4.1")
@TLS_VERSIONS
@VERSIONS
@run
async def test_client_certificate_required_but_missing(mqtt_version, endpoints, pki, tls_version):
    """With TLS 1.3 the server judges the client certificate after the client's handshake (diagnose waits for its
    verdict); with TLS 1.2 (diagnose --tls-version 1.2) inside the handshake, with an alert."""
    url = endpoints.url("healthy", MQTTS_MTLS)
    result = await classify(url, mqtt_version, "client_certificate", "client_cert_required", ca=str(pki.ca),
                            tls_version=tls_version)
    assert result.layer("client_certificate").detail == {**result.layer("client_certificate").detail,
                                                         "requested": True, "sent": False}
    assert esp_tls_name(result) == "ESP_ERR_MBEDTLS_SSL_HANDSHAKE_FAILED"
    error = await reference_error(url, mqtt_version, tls=TlsOptions(ca=str(pki.ca)))
    assert isinstance(error, TlsError) and "client certificate" in str(error)


@pytest.mark.spec("§5.4.1")
@TLS_VERSIONS
@VERSIONS
@run
async def test_untrusted_client_certificate(mqtt_version, endpoints, pki, tls_version):
    url = endpoints.url("healthy", MQTTS_MTLS)
    tls = {"cert": str(pki.client_untrusted_cert), "key": str(pki.client_untrusted_key)}
    result = await classify(url, mqtt_version, "client_certificate", "client_cert_rejected", ca=str(pki.ca),
                            tls_version=tls_version, **tls)
    assert result.layer("client_certificate").detail["sent"] is True
    assert esp_tls_name(result) == "ESP_ERR_MBEDTLS_SSL_HANDSHAKE_FAILED"
    error = await reference_error(url, mqtt_version, tls=TlsOptions(ca=str(pki.ca), **tls))
    assert isinstance(error, TlsError) and "client certificate" in str(error)


# ---------------------------------------------------------------------------------------- TLS parameters

@VERSIONS
@run
async def test_tls_version_mismatch_old_broker(mqtt_version, pki):
    """A broker that speaks only TLS 1.0/1.1 (scripted stand-in) against clients that require TLS 1.2+."""
    with CredentialsBroker(pki, tls_maximum=ssl.TLSVersion.TLSv1_1) as old:
        result = await classify(old.url(), mqtt_version, "tls", "tls_version_mismatch", ca=str(pki.ca))
        assert result.layer("tls").detail["alert"] == "protocol_version"
        assert result.device["espeasy"]["code"] == 256 + 70
        error = await reference_error(old.url(), mqtt_version, tls=TlsOptions(ca=str(pki.ca)))
        assert isinstance(error, TlsError) and "no TLS version in common" in str(error)


@VERSIONS
@run
async def test_tls_version_mismatch_tls13_only_broker(mqtt_version, endpoints, pki):
    """mosquitto with tls_version tlsv1.3 against a device that speaks only TLS 1.2 (--tls-version 1.2, as
    mbedTLS 2.x and ESPEasy's BearSSL do). The reference client speaks both, so it connects (control)."""
    url = endpoints.url("tls13")
    result = await classify(url, mqtt_version, "tls", "tls_version_mismatch", ca=str(pki.ca), tls_version="1.2")
    assert esp_tls_name(result) == "ESP_ERR_MBEDTLS_SSL_HANDSHAKE_FAILED"
    await classify(url, mqtt_version, None, None, ca=str(pki.ca), tls_version="1.3")
    await reference_connects(url, mqtt_version, tls=TlsOptions(ca=str(pki.ca)))


@VERSIONS
@run
async def test_alpn_mismatch(mqtt_version, endpoints, pki):
    """An ALPN-routing front end (as AWS IoT on 443) in front of mosquitto refuses a ClientHello without its
    protocol with a fatal no_application_protocol alert; offering it passes."""
    upstream = parse_url(endpoints.url("healthy"))
    with AlpnGate((upstream.host, upstream.port), ["x-amzn-mqtt-ca"]) as gate:
        result = await classify(gate.url(), mqtt_version, "tls", "alpn_mismatch", ca=str(pki.ca), alpn=("mqtt",))
        assert result.device["espeasy"]["code"] == 256 + 120
        error = await reference_error(gate.url(), mqtt_version, tls=TlsOptions(ca=str(pki.ca), alpn=["mqtt"]))
        assert isinstance(error, TlsError) and "no application protocol" in str(error)
        result = await classify(gate.url(), mqtt_version, None, None, ca=str(pki.ca), alpn=("x-amzn-mqtt-ca",))
        assert result.layer("tls").detail["alpn_offered"] == ["x-amzn-mqtt-ca"]  # mosquitto behind selects none
        assert gate.refused == 2


@VERSIONS
@run
async def test_plain_mqtt_to_a_tls_port(mqtt_version, endpoints, pki):
    """mqtt:// to the mqtts listener: the TLS server hangs up on the plain CONNECT. diagnose then finds the port
    completes a TLS handshake and names it a TLS port; the reference client sees a close before CONNACK."""
    tls_port = parse_url(endpoints.url("healthy")).port
    url = f"mqtt://127.0.0.1:{tls_port}"
    result = await classify(url, mqtt_version, "mqtt", "tls_port")
    assert "mqtts://" in " ".join(result.fixes)
    error = await reference_error(url, mqtt_version)
    assert isinstance(error, MqttConnectError) and "before CONNACK" in str(error)


@VERSIONS
@run
async def test_tls_to_a_plain_port(mqtt_version, endpoints, pki):
    """mqtts:// to the plain listener: the broker drops the ClientHello; diagnose finds the port answers plain
    MQTT with CONNACK and names it a plain port."""
    plain_port = parse_url(endpoints.url("healthy", MQTT)).port
    url = f"mqtts://127.0.0.1:{plain_port}"
    result = await classify(url, mqtt_version, "tls", "plain_port", ca=str(pki.ca))
    assert "mqtt://" in " ".join(result.fixes)
    error = await reference_error(url, mqtt_version, tls=TlsOptions(ca=str(pki.ca)))
    assert isinstance(error, TlsError) and "check that this port speaks TLS" in str(error)


# ------------------------------------------------------------------------------------------------ CONNACK

@VERSIONS
@run
async def test_connack_bad_credentials(mqtt_version, pki):
    """CONNACK 4 (3.1.1) / 0x86 (5). mosquitto 2.0.11 answers a wrong password with 5 / 0x87 instead (see the next
    test), so a scripted TLS stand-in gives this refusal; no statement is checked (the server is ours)."""
    code = 0x86 if mqtt_version == "5" else 4
    with CredentialsBroker(pki) as stand_in:
        result = await classify(stand_in.url(), mqtt_version, "mqtt", "bad_credentials", ca=str(pki.ca),
                                username=USERNAME, password="wrong")
        assert result.layer("mqtt").detail["reason_code"] == code
        handle = esp(result)["error_handle"]
        assert handle["error_type"] == "MQTT_ERROR_TYPE_CONNECTION_REFUSED"
        assert handle["connect_return_code"]["code"] == code
        error = await reference_error(stand_in.url(), mqtt_version, tls=TlsOptions(ca=str(pki.ca)),
                                      username=USERNAME, password="wrong")
        assert isinstance(error, MqttConnectError) and error.reason_code == code
        # The right credentials are accepted; the stand-in serves CONNECT only, so the roundtrip is where it ends.
        await classify(stand_in.url(), mqtt_version, "roundtrip", "roundtrip_failed", ca=str(pki.ca),
                       username=USERNAME, password=PASSWORD)


@pytest.mark.spec(v311=["MQTT-3.2.2-4", "MQTT-3.2.2-5"], v5=["MQTT-3.2.2-6", "MQTT-3.2.2-7"])
@pytest.mark.parametrize("password", [None, "wrong"], ids=["anonymous", "wrong-password"])
@VERSIONS
@run
async def test_connack_not_authorized(mqtt_version, endpoints, pki, password):
    """mosquitto with password authentication on its TLS listener refuses an anonymous client and a wrong password
    with 5 (3.1.1) / 0x87 (5), Session Present 0, and closes the connection."""
    code = 0x87 if mqtt_version == "5" else 5
    url = endpoints.url("auth")
    creds = {"username": USERNAME, "password": password} if password else {}
    result = await classify(url, mqtt_version, "mqtt", "not_authorized", ca=str(pki.ca), **creds)
    mqtt = result.layer("mqtt").detail
    assert mqtt["reason_code"] == code and mqtt["session_present"] is False and mqtt["closed_after_refusal"] is True
    assert esp(result)["error_handle"]["connect_return_code"]["code"] == code
    error = await reference_error(url, mqtt_version, tls=TlsOptions(ca=str(pki.ca)), **creds)
    assert isinstance(error, MqttConnectError) and error.reason_code == code
    await classify(url, mqtt_version, None, None, ca=str(pki.ca), username=USERNAME, password=PASSWORD)


@VERSIONS
@run
async def test_sni_required(mqtt_version, endpoints, pki):
    """An SNI-routing front end (as HiveMQ Cloud and EMQX Cloud have) turns away a client that connects by IP
    address (no SNI) with a fatal unrecognized_name alert; sending the broker's name passes."""
    upstream = parse_url(endpoints.url("healthy"))
    with AlpnGate((upstream.host, upstream.port), server_names=["localhost"]) as gate:
        result = await classify(gate.url(), mqtt_version, "tls", "sni_rejected", ca=str(pki.ca))
        assert result.layer("tls").detail["sni"] is None and result.layer("tls").detail["alert"] == "unrecognized_name"
        error = await reference_error(gate.url(), mqtt_version, tls=TlsOptions(ca=str(pki.ca)))
        assert isinstance(error, TlsError) and "unrecognized name" in str(error)
        await classify(gate.url(), mqtt_version, None, None, ca=str(pki.ca), sni="localhost")
        await reference_connects(gate.url(), mqtt_version, tls=TlsOptions(ca=str(pki.ca), server_hostname="localhost"))


# -------------------------------------------------------------------------------------- device variant (--dut)

# case -> (variant, listener kind, device TLS settings (blob names), diagnose options (file attributes))
DEVICE_CASES = {
    "unknown-ca": ("unknownca", MQTTS, {"ca": "ca"}, {"ca": "ca"}),
    "expired-server-cert": ("expired", MQTTS, {"ca": "ca"}, {"ca": "ca"}),
    "server-cert-not-yet-valid": ("notyetvalid", MQTTS, {"ca": "ca"}, {"ca": "ca"}),
    "hostname-mismatch": ("wronghost", MQTTS, {"ca": "ca"}, {"ca": "ca"}),
    "missing-intermediate": ("missing_intermediate", MQTTS, {"ca": "chain_root"}, {"ca": "chain_root"}),
    "client-cert-missing": ("healthy", MQTTS_MTLS, {"ca": "ca"}, {"ca": "ca"}),
    "client-cert-untrusted": ("healthy", MQTTS_MTLS,
                              {"ca": "ca", "cert": "client_untrusted_cert", "key": "client_untrusted_key"},
                              {"ca": "ca", "cert": "client_untrusted_cert", "key": "client_untrusted_key"}),
    "not-authorized": ("auth", MQTTS, {"ca": "ca"}, {"ca": "ca"}),
}


@pytest.mark.spec("§5.4.1", "§5.4.3")
@pytest.mark.parametrize("case", list(DEVICE_CASES))
async def test_device_reports_what_diagnose_predicts(dut, proxy, endpoints, pki, request, case):  # noqa: F811
    from harness.device.wire import EVENT_TIMEOUT, build_config, device_url

    variant, kind, device_tls, diagnose_tls = DEVICE_CASES[case]
    dut_host = request.config.getoption("dut_host")
    upstream = endpoints.url(variant, kind)
    front = proxy(upstream, listen=f"{dut_host}:0")  # TLS passed through: the endpoint itself answers
    url = device_url(front, dut_host, "mqtts")
    files = {"chain_root": make_chain(endpoints.workdir / variant / "chain").root} if variant == "missing_intermediate" else {}
    for blob in set(device_tls.values()):
        path = files.get(blob) or getattr(pki, blob)
        await dut.aio.upload_blob(blob, path.read_bytes())
    predicted = await diagnose(url, Options(timeout=TIMEOUT, **{k: str(files.get(v) or getattr(pki, v))
                                                                for k, v in diagnose_tls.items()}))
    assert predicted.failed_layer is not None, "the endpoint must fail for the device variant to mean anything"
    config = build_config(uri=url, client_id=f"dut-matrix-{case}"[:23], keepalive=30, timeout_ms=3000,
                          disable_auto_reconnect=True, **{k: {"blob": v} for k, v in device_tls.items()})
    await dut.aio.init(config)
    mark = dut.mark()
    await dut.aio.start()
    error = await dut.aio.expect_event("ERROR", timeout=EVENT_TIMEOUT, since=mark)
    await dut.aio.expect_event("DISCONNECTED", timeout=EVENT_TIMEOUT, since=mark)
    device = error.error_handle
    expected = predicted.device["esp_mqtt"]["error_handle"]
    assert device["error_type"] == expected["error_type"], f"{case}: device {device}, diagnose {expected}"
    assert device["esp_tls_last_esp_err"]["name"] == expected["esp_tls_last_esp_err"]["name"], \
        f"{case}: device reported {device['esp_tls_last_esp_err']}, diagnose predicted {expected['esp_tls_last_esp_err']}"
    for flag in expected["esp_tls_cert_verify_flags"]["names"]:
        assert flag in device["esp_tls_cert_verify_flags"]["names"], f"{case}: device flags {device}"
    if expected["error_type"] == "MQTT_ERROR_TYPE_CONNECTION_REFUSED":
        assert device["connect_return_code"]["code"] == expected["connect_return_code"]["code"]
