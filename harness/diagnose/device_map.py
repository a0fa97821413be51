"""What an esp-mqtt device and an ESPEasy device would report for each failure cause: data tables, no logic
beyond filling in numbers.

Sources (shared/research/esp32.md §3): esp-tls `tcp_connect` / `esp_tls_mbedtls.c` for where each esp-tls error is
set, mbedTLS x509.h for the verify flags, ESPEasy's tls_mini (`WiFiClientSecureLightBearSSL.h/.cpp`) for its codes
(-1001 DNS, -1002 TCP connect, BearSSL engine errors otherwise: 54 expired or not yet valid, 56 bad server name,
62 not trusted, 256 + alert received, 512 + alert sent). Entries the research did not confirm on a device carry
`verified: False` and say so in the output. Names and numbers come from harness.device.esp_codes.
"""

from __future__ import annotations

import math
from typing import Any

from harness.device import esp_codes

ESP_MQTT, ESPEASY = "esp-mqtt", "espeasy"
DEVICES = (ESP_MQTT, ESPEASY)
# The device's own connect timeout (ms): esp-mqtt network.timeout_ms, ESPEasy Controller "Client Timeout".
DEFAULT_TIMEOUT_MS = {ESP_MQTT: 10_000, ESPEASY: 100}
ESPEASY_TIMEOUT_RANGE = (10, 4000)  # what ESPEasy's controller page accepts (ms)

# BearSSL (ESPEasy's TLS client) engine error codes
BR_ERR_X509_EXPIRED, BR_ERR_X509_BAD_SERVER_NAME, BR_ERR_X509_NOT_TRUSTED = 54, 56, 62
BR_ERR_RECV_FATAL_ALERT, BR_ERR_SEND_FATAL_ALERT = 256, 512
ESPEASY_CODES = {-1000: "OOM", -1001: "CANT_RESOLVE_IP", -1002: "TCP_CONNECT", -1004: "MISSING_CA",
                 53: "BR_ERR_X509_TIME_UNKNOWN", 54: "BR_ERR_X509_EXPIRED", 55: "BR_ERR_X509_DN_MISMATCH",
                 56: "BR_ERR_X509_BAD_SERVER_NAME", 62: "BR_ERR_X509_NOT_TRUSTED"}

# cause -> esp-mqtt error_handle ingredients. tls: esp-tls error name; stack: mbedTLS error (positive);
# flags: "chain" = the verify flags computed from the certificate checks; errno: esp_transport_sock_errno.
ESP_MQTT_MAP: dict[str, dict[str, Any]] = {
    "dns_failure": {"type": "MQTT_ERROR_TYPE_TCP_TRANSPORT", "tls": "ESP_ERR_ESP_TLS_CANNOT_RESOLVE_HOSTNAME"},
    "tcp_refused": {"type": "MQTT_ERROR_TYPE_TCP_TRANSPORT", "tls": "ESP_ERR_ESP_TLS_FAILED_CONNECT_TO_HOST",
                    "errno": "ECONNREFUSED"},
    "tcp_unreachable": {"type": "MQTT_ERROR_TYPE_TCP_TRANSPORT", "tls": "ESP_ERR_ESP_TLS_FAILED_CONNECT_TO_HOST",
                        "errno": "EHOSTUNREACH"},
    "tcp_timeout": {"type": "MQTT_ERROR_TYPE_TCP_TRANSPORT", "tls": "ESP_ERR_ESP_TLS_CONNECTION_TIMEOUT",
                    "log": "select() timeout"},
    "device_connect_timeout": {"type": "MQTT_ERROR_TYPE_TCP_TRANSPORT", "tls": "ESP_ERR_ESP_TLS_CONNECTION_TIMEOUT",
                               "log": "select() timeout"},
    "plain_port": {"type": "MQTT_ERROR_TYPE_TCP_TRANSPORT", "tls": "ESP_ERR_MBEDTLS_SSL_HANDSHAKE_FAILED",
                   "stack": "MBEDTLS_ERR_SSL_CONN_EOF", "verified": False},
    "not_tls": {"type": "MQTT_ERROR_TYPE_TCP_TRANSPORT", "tls": "ESP_ERR_MBEDTLS_SSL_HANDSHAKE_FAILED",
                "verified": False},
    "tls_closed": {"type": "MQTT_ERROR_TYPE_TCP_TRANSPORT", "tls": "ESP_ERR_MBEDTLS_SSL_HANDSHAKE_FAILED",
                   "stack": "MBEDTLS_ERR_SSL_CONN_EOF"},
    "tls_timeout": {"type": "MQTT_ERROR_TYPE_TCP_TRANSPORT", "tls": "ESP_ERR_ESP_TLS_CONNECTION_TIMEOUT"},
    "tls_version_mismatch": {"type": "MQTT_ERROR_TYPE_TCP_TRANSPORT", "tls": "ESP_ERR_MBEDTLS_SSL_HANDSHAKE_FAILED",
                             "stack": "MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE"},
    "alpn_mismatch": {"type": "MQTT_ERROR_TYPE_TCP_TRANSPORT", "tls": "ESP_ERR_MBEDTLS_SSL_HANDSHAKE_FAILED",
                      "stack": "MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE"},
    "tls_handshake_failed": {"type": "MQTT_ERROR_TYPE_TCP_TRANSPORT", "tls": "ESP_ERR_MBEDTLS_SSL_HANDSHAKE_FAILED",
                             "stack": "MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE"},
    "sni_rejected": {"type": "MQTT_ERROR_TYPE_TCP_TRANSPORT", "tls": "ESP_ERR_MBEDTLS_SSL_HANDSHAKE_FAILED",
                     "stack": "MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE", "verified_stack": False},
    # certificate problems: the handshake fails in X.509 verification with the flags of every problem found
    **{cause: {"type": "MQTT_ERROR_TYPE_TCP_TRANSPORT", "tls": "ESP_ERR_MBEDTLS_SSL_HANDSHAKE_FAILED",
               "stack": "MBEDTLS_ERR_X509_CERT_VERIFY_FAILED", "flags": "chain"}
       for cause in ("unknown_ca", "self_signed", "missing_intermediate", "hostname_mismatch", "no_certificate")},
    # dates: only if mbedTLS has MBEDTLS_HAVE_TIME_DATE (research: ESP32 clients that ignore dates exist)
    **{cause: {"type": "MQTT_ERROR_TYPE_TCP_TRANSPORT", "tls": "ESP_ERR_MBEDTLS_SSL_HANDSHAKE_FAILED",
               "stack": "MBEDTLS_ERR_X509_CERT_VERIFY_FAILED", "flags": "chain", "dates": True}
       for cause in ("expired", "not_yet_valid", "clock_skew")},
    "client_cert_required": {"type": "MQTT_ERROR_TYPE_TCP_TRANSPORT", "tls": "ESP_ERR_MBEDTLS_SSL_HANDSHAKE_FAILED",
                             "stack": "MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE", "verified_stack": False},
    "client_cert_rejected": {"type": "MQTT_ERROR_TYPE_TCP_TRANSPORT", "tls": "ESP_ERR_MBEDTLS_SSL_HANDSHAKE_FAILED",
                             "stack": "MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE", "verified_stack": False},
    "bad_credentials": {"type": "MQTT_ERROR_TYPE_CONNECTION_REFUSED", "connack": True},
    "not_authorized": {"type": "MQTT_ERROR_TYPE_CONNECTION_REFUSED", "connack": True},
    "connack_refused": {"type": "MQTT_ERROR_TYPE_CONNECTION_REFUSED", "connack": True},
    "tls_port": {"type": "MQTT_ERROR_TYPE_TCP_TRANSPORT", "tls": "ESP_ERR_ESP_TLS_TCP_CLOSED_FIN",
                 "log": "transport_read(): EOF", "verified": False},
    "closed_before_connack": {"type": "MQTT_ERROR_TYPE_TCP_TRANSPORT", "tls": "ESP_ERR_ESP_TLS_TCP_CLOSED_FIN",
                              "log": "transport_read(): EOF"},
    "no_connack": {"event": None, "log": "mqtt_message_receive() returned 0 / MQTT connect failed; "
                   "MQTT_EVENT_DISCONNECTED after network.timeout_ms, no MQTT_EVENT_ERROR"},
    "websocket_rejected": {"type": "MQTT_ERROR_TYPE_TCP_TRANSPORT", "verified": False},
    "not_mqtt": {"type": "MQTT_ERROR_TYPE_TCP_TRANSPORT", "verified": False},
    "subscribe_refused": {"type": "MQTT_ERROR_TYPE_SUBSCRIBE_FAILED", "event": "MQTT_EVENT_SUBSCRIBE_FAILED"},
    "publish_refused": {"event": "MQTT_EVENT_PUBLISHED never comes for a refused QoS 1 message", "verified": False},
    "no_message": {"event": "no MQTT_EVENT_DATA for the message", "verified": False},
    "roundtrip_failed": {"verified": False},
}

# cause -> ESPEasy "MQTT : TLS error code: N" (N None: no TLS error code is logged)
ESPEASY_MAP: dict[str, dict[str, Any]] = {
    "dns_failure": {"code": -1001, "note": "or no TLS code at all when ESPEasy's own DNS check fails first"},
    "tcp_refused": {"code": -1002},
    "tcp_unreachable": {"code": -1002},
    "tcp_timeout": {"code": -1002},
    "device_connect_timeout": {"code": -1002},
    "tls_version_mismatch": {"alert": "received", "verified": False},
    "alpn_mismatch": {"alert": "received", "verified": False},
    "tls_handshake_failed": {"alert": "received"},
    "sni_rejected": {"alert": "received", "verified": False},
    "plain_port": {"code": None, "verified": False, "note": "a BearSSL engine error; which one is not confirmed"},
    "not_tls": {"code": None, "verified": False, "note": "a BearSSL engine error; which one is not confirmed"},
    "tls_closed": {"code": None, "verified": False, "note": "a BearSSL engine error; which one is not confirmed"},
    "tls_timeout": {"code": None, "verified": False, "note": "the handshake waits for the client timeout"},
    "unknown_ca": {"code": BR_ERR_X509_NOT_TRUSTED},
    "self_signed": {"code": BR_ERR_X509_NOT_TRUSTED},
    "missing_intermediate": {"code": BR_ERR_X509_NOT_TRUSTED},
    "no_certificate": {"code": BR_ERR_X509_NOT_TRUSTED, "verified": False},
    "expired": {"code": BR_ERR_X509_EXPIRED},
    "not_yet_valid": {"code": BR_ERR_X509_EXPIRED, "note": "BearSSL uses one code for expired and not yet valid"},
    "clock_skew": {"code": BR_ERR_X509_EXPIRED, "note": "ESPEasy checks dates at max(its clock, the firmware "
                   "build time), so a clock that was never set reads as the build date"},
    "hostname_mismatch": {"code": BR_ERR_X509_BAD_SERVER_NAME},
    "client_cert_required": {"alert": "received", "verified": False},
    "client_cert_rejected": {"alert": "received", "verified": False},
    "bad_credentials": {"code": None, "note": "not a TLS error: PubSubClient's connect fails with state 4"},
    "not_authorized": {"code": None, "note": "not a TLS error: PubSubClient's connect fails with state 5"},
    "connack_refused": {"code": None, "note": "not a TLS error: PubSubClient's connect fails"},
}


def _esp_flags(flags: int) -> dict:
    return esp_codes.verify_flags(flags)


def esp_mqtt_report(cause: str | None, *, flags: int = 0, connack_code: int | None = None,
                    older_idf: bool = False, connect_ms: float | None = None, timeout_ms: int | None = None
                    ) -> dict[str, Any]:
    """What esp-mqtt's MQTT_EVENT_ERROR error_handle would hold (None cause: it connects)."""
    if cause is None:
        return {"would_connect": True, "event": "MQTT_EVENT_CONNECTED", "summary": "MQTT_EVENT_CONNECTED"}
    entry = ESP_MQTT_MAP.get(cause, {"verified": False})
    out: dict[str, Any] = {"would_connect": False, "cause": cause}
    if "type" in entry:
        stack = esp_codes.MBEDTLS_ERRORS.get(entry.get("stack", ""), 0)
        handle = esp_codes.error_handle(
            error_type=entry["type"], tls=entry.get("tls"), stack_err=stack,
            flags=flags if entry.get("flags") == "chain" else 0,
            connect_rc=connack_code or 0, sock_errno=entry.get("errno"), older_idf=older_idf)
        out["event"] = "MQTT_EVENT_ERROR"
        out["error_handle"] = handle
        parts = [handle["error_type"]]
        if entry.get("tls"):
            err = handle["esp_tls_last_esp_err"]
            parts.append(f"{err['name']} ({err['hex']}; {esp_codes.hex_code(esp_codes.ESP_TLS_ERRORS[err['name']][1])}"
                         " on older IDF)")
        if stack:
            parts.append(f"stack {entry['stack']} (-{esp_codes.hex_code(stack)})")
        if entry.get("flags") == "chain" and flags:
            parts.append(f"verify flags {esp_codes.hex_code(flags)} " + "|".join(_esp_flags(flags)["names"]))
        if entry.get("errno"):
            parts.append(f"sock_errno {entry['errno']} ({esp_codes.ERRNO[entry['errno']][0]})")
        if entry.get("connack"):
            rc = handle["connect_return_code"]
            parts.append(f"connect_return_code {rc['code']} (0x{rc['code']:x}, {rc['name']})")
        out["summary"] = ", ".join(parts)
    else:
        out["event"] = entry.get("event")
        out["summary"] = entry.get("event") or "no MQTT_EVENT_ERROR"
    if entry.get("log"):
        out["log"] = entry["log"]
        out["summary"] += f"; log: {entry['log']}"
    notes = []
    if cause in ("tcp_timeout", "device_connect_timeout") and timeout_ms is not None:
        notes.append(f"after network.timeout_ms = {timeout_ms} ms")
    if entry.get("dates"):
        notes.append("date checks need CONFIG_MBEDTLS_HAVE_TIME_DATE and a set clock; without them the device may "
                     "accept this certificate")
    if entry.get("verified") is False:
        notes.append("not confirmed on a device")
    if entry.get("verified_stack") is False:
        notes.append("the stack error is not confirmed on a device")
    if notes:
        out["notes"] = notes
    return out


def espeasy_report(cause: str | None, *, alert: int | None = None, connect_ms: float | None = None,
                   timeout_ms: int | None = None) -> dict[str, Any]:
    """What ESPEasy would log ("MQTT : TLS error code: N"), or that it connects."""
    if cause is None:
        return {"would_connect": True, "code": 0, "summary": "connects"}
    entry = ESPEASY_MAP.get(cause, {"code": None, "verified": False})
    code = entry.get("code")
    if entry.get("alert") == "received" and alert is not None:
        code = BR_ERR_RECV_FATAL_ALERT + alert
    out: dict[str, Any] = {"would_connect": False, "cause": cause, "code": code,
                           "name": ESPEASY_CODES.get(code) if code is not None else None}
    if code is None:
        out["summary"] = entry.get("note") or "no TLS error code known for this case"
    else:
        name = out["name"] or (f"BR_ERR_RECV_FATAL_ALERT + {alert}" if alert is not None and code >= 256 else "")
        out["summary"] = f"MQTT : TLS error code: {code}" + (f" ({name})" if name else "")
    notes = []
    if entry.get("note") and code is not None:
        notes.append(entry["note"])
    if cause in ("tcp_timeout", "device_connect_timeout", "tcp_refused", "tcp_unreachable"):
        notes.append("-1002 is set when the TCP connect fails, before any TLS: refused, unreachable, or no SYN-ACK "
                     f"within the Client Timeout{f' ({timeout_ms} ms)' if timeout_ms is not None else ''}")
    if entry.get("verified") is False:
        notes.append("not confirmed on a device")
    if notes:
        out["notes"] = notes
    return out


def suggested_espeasy_timeout(connect_ms: float) -> int | None:
    """ESPEasy's own rule (WiFiEventData.cpp getSuggestedTimeout): 3 x the measured connect time, clamped to its
    range; None when even the maximum is too short."""
    low, high = ESPEASY_TIMEOUT_RANGE
    if connect_ms >= high:
        return None
    return int(min(high, max(low, math.ceil(3 * connect_ms / 10) * 10)))
