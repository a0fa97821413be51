"""`mqtt-harness diagnose` (harness.diagnose, harness.cli.diagnose): the pure parts (certificate checks, message
parsing, device tables, advice), the CLI contract (--clock, --json, exit codes), the success path against a real
TLS mosquitto, and the seed reproduction of ESPEasy's "TLS error code: -1002": a TCP connect that really takes
longer than the device's timeout.

No real DNS anywhere: names go through harness.diagnose.StubResolver. Traffic stays on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from harness.cli import main as cli_main
from harness.cli.diagnose import add_parser, parse_clock
from harness.cli.diagnose import run as run_cli
from harness.diagnose import (
    EXIT_CODES,
    LAYERS,
    Options,
    StubResolver,
    advice,
    device_map,
    diagnose,
    tls_inspect,
)
from harness.diagnose.slow_listener import SlowListener, listen_overflows
from harness.url import parse_url

REPO = Path(__file__).resolve().parent.parent
UTC = dt.UTC


def run(coro, timeout: float = 60):
    async def limited():
        async with asyncio.timeout(timeout):
            return await coro
    return asyncio.run(limited())


# ------------------------------------------------------------------------------------------------ pure parts

def test_exit_codes_are_ten_plus_the_layer_index():
    assert LAYERS == ("dns", "tcp", "tls", "certificate", "client_certificate", "mqtt", "roundtrip")
    assert EXIT_CODES == {"dns": 10, "tcp": 11, "tls": 12, "certificate": 13, "client_certificate": 14, "mqtt": 15,
                          "roundtrip": 16}


@pytest.mark.parametrize("text, expected", [
    ("2000-01-01T00:00:00Z", dt.datetime(2000, 1, 1, tzinfo=UTC)),
    ("2000-01-01", dt.datetime(2000, 1, 1, tzinfo=UTC)),
    ("2030-06-01T12:00:00+02:00", dt.datetime(2030, 6, 1, 10, tzinfo=UTC)),
    ("1970-01-01T00:00:10", dt.datetime(1970, 1, 1, 0, 0, 10, tzinfo=UTC)),
])
def test_clock_accepts_iso8601_and_means_utc_without_a_zone(text, expected):
    assert parse_clock(text) == expected


@pytest.mark.parametrize("text", ["yesterday", "2000-13-01", "01/02/2000", "", "2000-01-01T25:00"])
def test_clock_rejects_anything_else_with_a_usage_error(text, capsys):
    assert cli_main(["diagnose", "mqtt://127.0.0.1:1", "--clock", text]) == 2
    err = capsys.readouterr().err
    assert "is not an ISO 8601 date-time" in err and "2000-01-01T00:00:00Z" in err


def test_bad_url_and_options_are_usage_errors(capsys):
    assert cli_main(["diagnose", "http2://x"]) == 2
    assert cli_main(["diagnose", "mqtt://127.0.0.1:1", "--alpn", "mqtt"]) == 2
    assert "--alpn needs TLS" in capsys.readouterr().err
    assert cli_main(["diagnose", "mqtts://127.0.0.1:1", "--key", "k.pem"]) == 2


def test_help_documents_every_exit_code(capsys):
    with pytest.raises(SystemExit):
        cli_main(["diagnose", "--help"])
    out = capsys.readouterr().out
    for layer, code in EXIT_CODES.items():
        assert f"{code} {layer}" in out
    for flag in ("--ca", "--cert", "--key", "--username", "--password", "--client-id", "--alpn", "--sni",
                 "--mqtt-version", "--clock", "--timeout", "--device-timeout", "--device", "--json"):
        assert flag in out


def test_stub_resolver_answers_only_its_table():
    stub = StubResolver({"broker.test": ["127.0.0.1", "::1"]})
    assert run(stub("BROKER.test.", 8883)) == [(socket.AF_INET, ("127.0.0.1", 8883)),
                                               (socket.AF_INET6, ("::1", 8883, 0, 0))]
    with pytest.raises(socket.gaierror):
        run(stub("other.test", 8883))
    assert stub.calls == ["BROKER.test.", "other.test"]


def _der(cert: trustme.LeafCert) -> bytes:
    return tls_inspect.x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes()).public_bytes(tls_inspect._DER)


def test_certificate_message_parses_in_both_tls_layouts():
    ca = trustme.CA()
    a, b = _der(ca.issue_cert("a.test")), ca.cert_pem.bytes()
    b = tls_inspect.x509.load_pem_x509_certificate(b).public_bytes(tls_inspect._DER)
    l3 = lambda n: n.to_bytes(3, "big")
    tls12 = l3(3 + len(a) + 3 + len(b)) + l3(len(a)) + a + l3(len(b)) + b
    tls13_list = l3(len(a)) + a + b"\x00\x00" + l3(len(b)) + b + b"\x00\x00"
    tls13 = b"\x00" + l3(len(tls13_list)) + tls13_list
    for body in (tls12, tls13):
        assert tls_inspect.parse_certificate_message(b"\x0b" + l3(len(body)) + body) == [a, b]
    assert tls_inspect.parse_certificate_message(b"\x0b\x00\x00\x03junk") == []


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def _x509(pem: bytes):
    return tls_inspect.x509.load_pem_x509_certificate(pem)


def test_hostname_matching(ca):
    cert = _x509(ca.issue_cert("*.example.test", "broker.test", "10.0.0.5").cert_chain_pems[0].bytes())
    assert tls_inspect.hostname_matches(cert, "a.example.test")
    assert not tls_inspect.hostname_matches(cert, "a.b.example.test")  # one label only
    assert not tls_inspect.hostname_matches(cert, "example.test")
    assert tls_inspect.hostname_matches(cert, "BROKER.test.")
    assert tls_inspect.hostname_matches(cert, "10.0.0.5")
    assert not tls_inspect.hostname_matches(cert, "10.0.0.6")


def test_chain_checks_name_each_problem_and_the_device_flags(ca):
    now = dt.datetime.now(UTC)
    leaf = ca.issue_cert("broker.test", not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1))
    anchors = [_x509(ca.cert_pem.bytes())]
    chain = [_der(leaf)]
    check = tls_inspect.check_chain(chain, "other.test", anchors, trust_source="ca.pem", now=now)
    assert check.trusted and not check.ok and check.cause == "expired"
    assert {p["cause"] for p in check.problems} == {"expired", "hostname_mismatch"}
    assert check.flags == tls_inspect.FLAG_EXPIRED | tls_inspect.FLAG_CN_MISMATCH
    good = ca.issue_cert("broker.test")
    check = tls_inspect.check_chain([_der(good)], "broker.test", anchors, trust_source="ca.pem", now=now,
                                    clock=dt.datetime(1990, 1, 1, tzinfo=UTC))  # trustme: valid from 2000
    assert (check.cause, check.flags) == ("clock_skew", tls_inspect.FLAG_FUTURE)
    assert tls_inspect.check_chain([_der(good)], "broker.test", anchors, trust_source="ca.pem", now=now).ok
    other = trustme.CA()
    check = tls_inspect.check_chain([_der(good)], "broker.test", [_x509(other.cert_pem.bytes())],
                                    trust_source="other.pem", now=now)
    assert (check.cause, check.flags, check.trusted) == ("unknown_ca", tls_inspect.FLAG_NOT_TRUSTED, False)


def test_every_cause_has_a_layer_advice_and_both_device_views():
    from harness.diagnose.layers import CAUSE_LAYERS

    produced = set(device_map.ESP_MQTT_MAP)
    assert produced == set(CAUSE_LAYERS) == set(advice.ADVICE)
    assert set(CAUSE_LAYERS.values()) == set(LAYERS)
    for cause in produced:
        causes, fixes = advice.advise(cause, {})
        assert causes and fixes, cause
        assert device_map.esp_mqtt_report(cause)["would_connect"] is False
        assert "summary" in device_map.espeasy_report(cause)


def test_device_reports_use_esp_tls_names_for_both_idf_numberings():
    newer = device_map.esp_mqtt_report("unknown_ca", flags=0x08)
    older = device_map.esp_mqtt_report("unknown_ca", flags=0x08, older_idf=True)
    assert newer["error_handle"]["esp_tls_last_esp_err"] == {"code": 0x801A, "hex": "0x801a",
                                                             "name": "ESP_ERR_MBEDTLS_SSL_HANDSHAKE_FAILED"}
    assert older["error_handle"]["esp_tls_last_esp_err"]["code"] == 0x8010
    assert newer["error_handle"]["esp_tls_stack_err"]["code"] == 0x2700
    assert newer["error_handle"]["esp_tls_cert_verify_flags"]["names"] == ["MBEDTLS_X509_BADCERT_NOT_TRUSTED"]
    assert device_map.espeasy_report("device_connect_timeout")["code"] == -1002
    assert device_map.espeasy_report("tls_version_mismatch", alert=70)["code"] == 326


@pytest.mark.parametrize("connect_ms, suggested", [(150, 450), (1003.2, 3010), (2000, 4000), (5000, None),
                                                   (1, 10)])
def test_suggested_espeasy_timeout_follows_its_own_rule(connect_ms, suggested):
    assert device_map.suggested_espeasy_timeout(connect_ms) == suggested


# -------------------------------------------------------------------------------- against a real mosquitto

def test_success_path_over_every_scheme(mosquitto, pki):
    """Every layer passes, in order, on mqtts (with and without a client certificate), wss, mqtt and ws."""
    urls = mosquitto.urls()
    cases = [
        (urls["mqtts"], Options(ca=str(pki.ca)), LAYERS),
        (urls["mqtts-mtls"], Options(ca=str(pki.ca), cert=str(pki.client_cert), key=str(pki.client_key),
                                     version="5"), LAYERS),
        (urls["wss"], Options(ca=str(pki.ca)), LAYERS),
        (urls["mqtt"], Options(), ("dns", "tcp", "mqtt", "roundtrip")),
        (urls["ws"], Options(version="5"), ("dns", "tcp", "mqtt", "roundtrip")),
    ]
    for url, options, layers in cases:
        result = run(diagnose(url, options))
        assert result.failed_layer is None, [(x.name, x.summary) for x in result.layers]
        assert tuple(x.name for x in result.layers) == layers
        assert all(x.ok and x.ms >= 0 for x in result.layers)
        assert result.exit_code == 0
        rt = result.layer("roundtrip").detail
        assert rt["suback"] in ([1], [0x01]) and rt["receive_ms"] > 0
    mtls = run(diagnose(urls["mqtts-mtls"], cases[1][1]))
    assert mtls.layer("client_certificate").detail["requested"] and mtls.layer("client_certificate").detail["sent"]
    tls = run(diagnose(urls["mqtts"], Options(ca=str(pki.ca), sni="localhost"))).layer("tls").detail
    assert tls["version"] in ("TLSv1.2", "TLSv1.3") and tls["cipher"] and tls["sni"] == "localhost"


def test_cli_json_output_and_exit_codes(mosquitto, pki, capsys):
    url = mosquitto.urls()["mqtts"]
    assert cli_main(["diagnose", url, "--ca", str(pki.ca), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["failed_layer"] is None
    assert [x["name"] for x in out["layers"]] == list(LAYERS)
    assert all(set(x) == {"name", "ok", "ms", "detail"} for x in out["layers"])
    assert set(out["device"]) == {"esp_mqtt", "espeasy"}
    assert out["device"]["esp_mqtt"]["would_connect"] is True
    # a certificate failure: exit 13, and the text names the layer, the cause, the fix and the devices
    assert cli_main(["diagnose", url, "--ca", str(pki.unknown_ca)]) == 13
    text = capsys.readouterr().out
    assert "FAIL certificate" in text and "unknown_ca" in text and "--ca" in text
    assert "ESP_ERR_MBEDTLS_SSL_HANDSHAKE_FAILED" in text and "TLS error code: 62" in text
    # --clock as a device that was never NTP-synced
    assert cli_main(["diagnose", url, "--ca", str(pki.ca), "--clock", "1970-01-01T00:00:00Z", "--json"]) == 13
    out = json.loads(capsys.readouterr().out)
    assert out["failed_layer"] == "certificate" and out["cause"] == "clock_skew"
    assert out["device"]["esp_mqtt"]["error_handle"]["esp_tls_cert_verify_flags"]["names"] == [
        "MBEDTLS_X509_BADCERT_FUTURE"]


def test_cli_dns_failure_through_the_stub(capsys):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["diagnose", "mqtts://broker.example.invalid", "--json"])

    assert run_cli(args, resolve=StubResolver({})) == 10
    out = json.loads(capsys.readouterr().out)
    assert out["failed_layer"] == "dns" and [x["name"] for x in out["layers"]] == ["dns"]
    assert out["device"]["espeasy"]["code"] == -1001


# ------------------------------------------------------------------------- seed reproduction: ESPEasy -1002

@pytest.mark.timeout(60)
def test_espeasy_minus_1002_reproduced_with_a_really_slow_tcp_connect(mosquitto, pki):
    """A TLS mosquitto behind a listener whose accept queue is full: the kernel drops the SYN and the client
    retransmits it after ~1 s, like a broker far away. With ESPEasy's 100 ms timeout diagnose names tcp, reports
    -1002 with the measured connect time and suggests raising the timeout; with a timeout above the measured
    time every layer passes. Nothing is simulated: the connect time is what the kernel took."""
    upstream = parse_url(mosquitto.urls()["mqtts"])
    with SlowListener((upstream.host, upstream.port)) as slow:
        dropped_before = listen_overflows()
        result = run(diagnose(slow.url(), Options(ca=str(pki.ca), device="espeasy", device_timeout_ms=100)))
        assert listen_overflows() > dropped_before, "the kernel dropped no SYN: the connect was not slowed"
        tcp = result.layer("tcp")
        connect_ms = tcp.detail["connect_ms"]
        assert connect_ms > 900, f"connect took {connect_ms} ms: no SYN retransmission happened"
        assert (result.failed_layer, result.cause, result.exit_code) == ("tcp", "device_connect_timeout", 11)
        assert tcp.detail["host_connected"] is True and tcp.detail["device_timeout_ms"] == 100
        espeasy = result.device["espeasy"]
        assert espeasy["code"] == -1002 and espeasy["connect_ms"] == pytest.approx(connect_ms, abs=0.2)
        assert "TLS error code: -1002" in espeasy["summary"]
        suggested = device_map.suggested_espeasy_timeout(connect_ms)
        assert suggested > connect_ms
        assert any("Client Timeout" in fix and f"--device-timeout {suggested}" in fix for fix in result.fixes)
        # esp-mqtt's 10 s timeout is not exceeded: it would get past tcp
        assert result.device["esp_mqtt"]["would_connect"] is None
        slow.wait_armed(10)
        result = run(diagnose(slow.url(), Options(ca=str(pki.ca), device="espeasy", device_timeout_ms=suggested)))
        assert result.layer("tcp").detail["connect_ms"] > 900
        assert result.failed_layer is None, [(x.name, x.summary) for x in result.layers]
        assert result.device["espeasy"]["would_connect"] is True
    # The same listener without the device view: the host connects in ~1 s, every layer passes, and the device
    # section still says ESPEasy at its default 100 ms would fail with -1002.
    with SlowListener((upstream.host, upstream.port)) as slow:
        result = run(diagnose(slow.url(), Options(ca=str(pki.ca))))
        assert result.failed_layer is None
        assert result.device["espeasy"]["code"] == -1002 and result.device["esp_mqtt"]["would_connect"] is True


# ---------------------------------------------------------------------------- the matrix, as CI runs it

@pytest.mark.timeout(300)
def test_tls_failure_matrix_suite_passes():
    """CI runs tests/ only: run suites/test_tls_matrix.py as a user would, and require every case to pass."""
    from harness.plugin.brokers import parse_broker, unavailable_reason

    reason = unavailable_reason(parse_broker("mosquitto:process"))
    if reason:
        pytest.skip(reason)
    # The device variant needs --dut; it runs (and is checked) with --dut virtual in test_device_variant_...
    proc = subprocess.run([sys.executable, "-m", "pytest", "suites/test_tls_matrix.py", "-q", "-p",
                           "no:cacheprovider", "-k", "not test_device_reports"], cwd=REPO, capture_output=True,
                          text=True,
                          timeout=280, check=False)
    tail = proc.stdout[-3000:]
    assert proc.returncode == 0, tail
    assert " passed" in tail and "failed" not in tail and "skipped" not in tail, tail


@pytest.mark.timeout(300)
def test_tls_matrix_device_variant_on_the_virtual_device():
    """The device variant, with the Python stand-in device (--dut virtual): it reports what diagnose predicts."""
    from harness.plugin.brokers import parse_broker, unavailable_reason

    reason = unavailable_reason(parse_broker("mosquitto:process"))
    if reason:
        pytest.skip(reason)
    proc = subprocess.run([sys.executable, "-m", "pytest", "suites/test_tls_matrix.py", "-q", "-p",
                           "no:cacheprovider", "-k", "test_device_reports", "--dut", "virtual"], cwd=REPO,
                          capture_output=True, text=True, timeout=280, check=False)
    tail = proc.stdout[-3000:]
    assert proc.returncode == 0, tail
    assert "8 passed" in tail and "skipped" not in tail, tail
