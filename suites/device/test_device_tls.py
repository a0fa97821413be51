"""TLS on the device: mutual TLS that works, and every way it fails reported with the esp-tls error a real
ESP32 gives (compared by name: the numbers changed between ESP-IDF versions), with the mbedTLS verify flags.

The TLS server is our proxy terminating TLS with the certificate a case needs (the MQTT inside stays visible on
the tap); one test goes to the broker's own mTLS listener through the proxy unopened."""

from __future__ import annotations

import datetime as dt

import pytest

from harness.core.packets import Connect
from harness.brokers.ports import release_ports, reserve_ports
from harness.proxy.proxy import ServerTls

from harness.device.wire import EVENT_TIMEOUT, device_sent, device_url, start_device

pytestmark = [pytest.mark.device, pytest.mark.v311_only]
HANDSHAKE_FAILED = "ESP_ERR_MBEDTLS_SSL_HANDSHAKE_FAILED"


async def _upload(dut, pki, *names: str) -> None:
    """Put PKI files on the device as blobs of the same name (ca, client_cert, unknown_ca...)."""
    for name in names:
        await dut.aio.upload_blob(name, getattr(pki, name).read_bytes())


def _tls_front(proxy, broker, pki, cert: str = "server", client_ca: bool = False, dut_host: str = "127.0.0.1"):
    tls = ServerTls(str(getattr(pki, f"{cert}_cert")), str(getattr(pki, f"{cert}_key")),
                    client_ca=str(pki.ca) if client_ca else None)
    return proxy(broker.url("mqtt"), tls=tls, listen=f"{dut_host}:0")


async def _failed_start(dut, config: dict):
    """Start the client (no auto-reconnect); return its MQTT_EVENT_ERROR, after checking DISCONNECTED follows."""
    config.setdefault("network", {})["disable_auto_reconnect"] = True
    await dut.aio.init(config)
    mark = dut.mark()
    await dut.aio.start()
    error = await dut.aio.expect_event("ERROR", timeout=EVENT_TIMEOUT, since=mark)
    await dut.aio.expect_event("DISCONNECTED", timeout=EVENT_TIMEOUT, since=mark)
    assert not [e for e in dut.events_since(mark) if e.short == "CONNECTED"]
    return error


@pytest.mark.spec("§5.4.1", "§5.4.3")
async def test_mutual_tls_connects_with_the_client_certificate(dut, proxy, broker, pki, device_config, dut_host):
    front = _tls_front(proxy, broker, pki, client_ca=True, dut_host=dut_host)
    await _upload(dut, pki, "ca", "client_cert", "client_key")
    await start_device(dut, device_config(uri=device_url(front, dut_host, "mqtts"), ca={"blob": "ca"},
                                          cert={"blob": "client_cert"}, key={"blob": "client_key"}))
    assert len(device_sent(front, Connect)) == 1  # MQTT really flowed inside the TLS session


@pytest.mark.spec("§5.4.1", "§5.4.3")
@pytest.mark.requires(mtls=True)
async def test_mutual_tls_to_the_brokers_own_listener(dut, proxy, broker, pki, device_config, dut_host):
    front = proxy(broker.url("mqtts-mtls"), listen=f"{dut_host}:0")  # TLS passed through: the broker verifies
    await _upload(dut, pki, "ca", "client_cert", "client_key")
    await start_device(dut, device_config(uri=device_url(front, dut_host, "mqtts"), ca={"blob": "ca"},
                                          cert={"blob": "client_cert"}, key={"blob": "client_key"}))


# case -> (server certificate, client CA required, device settings, expected esp-tls name, verify flag or None)
FAILURES = {
    "unknown-ca": ("server", False, {"ca": {"blob": "unknown_ca"}}, HANDSHAKE_FAILED,
                   "MBEDTLS_X509_BADCERT_NOT_TRUSTED"),
    "server-cert-of-unknown-ca": ("server_unknownca", False, {"ca": {"blob": "ca"}}, HANDSHAKE_FAILED,
                                  "MBEDTLS_X509_BADCERT_NOT_TRUSTED"),
    "wrong-hostname": ("server_wronghost", False, {"ca": {"blob": "ca"}}, HANDSHAKE_FAILED,
                       "MBEDTLS_X509_BADCERT_CN_MISMATCH"),
    "expired-server-cert": ("server_expired", False, {"ca": {"blob": "ca"}}, HANDSHAKE_FAILED,
                            "MBEDTLS_X509_BADCERT_EXPIRED"),
    "server-cert-not-yet-valid": ("server_notyetvalid", False, {"ca": {"blob": "ca"}}, HANDSHAKE_FAILED,
                                  "MBEDTLS_X509_BADCERT_FUTURE"),
    "no-ca-configured": ("server", False, {}, "ESP_ERR_MBEDTLS_SSL_SETUP_FAILED", None),
    "client-cert-missing": ("server", True, {"ca": {"blob": "ca"}}, HANDSHAKE_FAILED, None),
    "client-cert-untrusted": ("server", True, {"ca": {"blob": "ca"}, "cert": {"blob": "client_untrusted_cert"},
                                               "key": {"blob": "client_untrusted_key"}}, HANDSHAKE_FAILED, None),
}
UPLOADS = ("ca", "unknown_ca", "client_untrusted_cert", "client_untrusted_key")


@pytest.mark.spec("§5.4.3")
@pytest.mark.parametrize("case", list(FAILURES))
async def test_tls_failure_is_reported_with_the_esp_tls_error_a_device_gives(
        dut, proxy, broker, pki, device_config, dut_host, case):
    cert, client_ca, settings, name, flag = FAILURES[case]
    front = _tls_front(proxy, broker, pki, cert=cert, client_ca=client_ca, dut_host=dut_host)
    await _upload(dut, pki, *UPLOADS)
    error = await _failed_start(dut, device_config(uri=device_url(front, dut_host, "mqtts"), **settings))
    handle = error.error_handle
    assert handle["error_type"] == "MQTT_ERROR_TYPE_TCP_TRANSPORT"
    assert handle["esp_tls_last_esp_err"]["name"] == name, \
        f"{case}: device reported {handle['esp_tls_last_esp_err']}, a device gives {name}"
    if flag is not None:
        assert flag in handle["esp_tls_cert_verify_flags"]["names"], \
            f"{case}: verify flags {handle['esp_tls_cert_verify_flags']} lack {flag}"
    assert not device_sent(front, Connect), "no MQTT may flow when the handshake failed"


@pytest.mark.spec("§5.4.3")
@pytest.mark.parametrize("offset_days", [-3650, 4000], ids=["clock-in-the-past", "clock-in-the-future"])
async def test_device_clock_outside_the_certificate_validity_fails_the_handshake(
        dut, proxy, broker, pki, device_config, dut_host, offset_days):
    """A board without SNTP boots in 1970: the broker's certificate is not valid yet by its clock."""
    caps = dut.caps
    if "set_time" not in caps:
        pytest.skip(f"device {dut.name} cannot set its clock (no set_time capability)")
    front = _tls_front(proxy, broker, pki, dut_host=dut_host)
    await _upload(dut, pki, "ca")
    when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=offset_days)
    await dut.aio.set_time(int(when.timestamp()))
    try:
        error = await _failed_start(dut, device_config(uri=device_url(front, dut_host, "mqtts"), ca={"blob": "ca"}))
    finally:
        await dut.aio.set_time(int(dt.datetime.now(dt.timezone.utc).timestamp()))
    flag = "MBEDTLS_X509_BADCERT_FUTURE" if offset_days < 0 else "MBEDTLS_X509_BADCERT_EXPIRED"
    assert error.tls_error == HANDSHAKE_FAILED
    assert flag in error.error_handle["esp_tls_cert_verify_flags"]["names"]


@pytest.mark.spec("§4.2")
async def test_refused_connection_is_reported_as_failed_connect_with_econnrefused(dut, device_config, dut_host):
    [port] = reserve_ports(1)  # reserved and not listening: connecting is refused
    try:
        error = await _failed_start(dut, device_config(uri=f"mqtt://{dut_host}:{port}"))
    finally:
        release_ports([port])
    assert error.tls_error == "ESP_ERR_ESP_TLS_FAILED_CONNECT_TO_HOST"
    assert error.error_handle["esp_transport_sock_errno"]["name"] == "ECONNREFUSED"


@pytest.mark.spec("§4.2")
async def test_unresolvable_broker_name_is_reported_as_cannot_resolve_hostname(dut, device_config):
    error = await _failed_start(dut, device_config(uri="mqtt://broker.invalid:1883"))  # .invalid never resolves
    assert error.tls_error == "ESP_ERR_ESP_TLS_CANNOT_RESOLVE_HOSTNAME"
