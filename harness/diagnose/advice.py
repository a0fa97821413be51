"""Likely causes and fixes for each failure cause, as data: text templates filled from what the walk saw.

Each fix names the diagnose/CLI flag or the device setting to change. Templates use {names} from the walk's
context (host, port, connect_ms, device_timeout, suggested_timeout, issuer, ca, alpn, ...); a missing name shows
as "?" rather than failing.
"""

from __future__ import annotations

import string

ADVICE: dict[str, tuple[list[str], list[str]]] = {
    "dns_failure": (
        ["the host name {host!r} is misspelt or does not exist ({dns_error})",
         "this network's DNS server cannot resolve it (captive portal, split DNS, no internet)"],
        ["check the host in the URL; try an IP address (mqtts://1.2.3.4:8883 with --sni {host})",
         "on the device: check its DNS server (DHCP or the static DNS setting)"]),
    "tcp_refused": (
        ["nothing listens on {address}: the broker is down, or this is the wrong port",
         "a firewall rejects the connection (RST)"],
        ["check the port in the URL (MQTT 1883, MQTT over TLS 8883, WebSocket 80/443 or the broker's own)",
         "start the broker, or open the port in its firewall"]),
    "tcp_timeout": (
        ["a firewall drops packets to {address} (port 8883 is often blocked on guest and corporate networks)",
         "the host is down or unreachable from here",
         "the broker's listen queue is full (overloaded)"],
        ["try from another network, or the broker's WebSocket port (wss://{host}:443)",
         "raise --timeout if the network is just slow"]),
    "tcp_unreachable": (
        ["no route to {address} ({tcp_error})"],
        ["check the address, this machine's network and routing"]),
    "device_connect_timeout": (
        ["the TCP connect takes {connect_ms} ms and {device} gives up after {device_timeout} ms: a broker this far "
         "away (or this slow to answer) never connects in time (ESPEasy logs 'TLS error code: -1002')"],
        ["ESPEasy: Controllers -> your MQTT controller -> Client Timeout: raise it to {suggested_timeout} ms "
         "(range 10-4000; rerun with --device-timeout {suggested_timeout} to check)",
         "esp-mqtt: raise network.timeout_ms in esp_mqtt_client_config_t (default 10000)",
         "or use a broker closer to the device"]),
    "tls_timeout": (
        ["the port accepts TCP but never answers the TLS ClientHello (a plain port that waits for MQTT, or a "
         "middlebox)"],
        ["use {plain_scheme}:// if this is a plain port; check the port number"]),
    "plain_port": (
        ["{address} is a plain MQTT port: it answered a plain CONNECT with CONNACK and hung up on TLS"],
        ["use {plain_scheme}://{address} for this port, or the broker's TLS port (usually 8883) for mqtts://",
         "on the device: the broker URI scheme (mqtt:// vs mqtts://) or the controller's TLS setting"]),
    "not_tls": (
        ["the server answered the TLS ClientHello with something that is not TLS (a plain MQTT or HTTP port)"],
        ["use {plain_scheme}:// for this port, or the broker's TLS port"]),
    "tls_closed": (
        ["the server closed the connection during the TLS handshake without an alert",
         "it may refuse this client's TLS version, ciphers or SNI, or it is not a TLS port"],
        ["check the port; try --tls-version 1.2 or 1.3; check --sni (cloud brokers route by SNI)"]),
    "tls_version_mismatch": (
        ["the client and the server have no TLS version in common (server alert: protocol_version)",
         "many ESP32 stacks speak only TLS 1.2 (ESPEasy's BearSSL has no TLS 1.3)"],
        ["enable TLS 1.2 on the broker (mosquitto: tls_version, or drop it to allow both), or TLS 1.3 on the "
         "device (esp-mqtt: CONFIG_MBEDTLS_SSL_PROTO_TLS1_3); diagnose pins a version with --tls-version"]),
    "alpn_mismatch": (
        ["the server accepts none of the ALPN protocols offered ({alpn})"],
        ["pass the protocol the broker expects with --alpn (AWS IoT on 443: x-amzn-mqtt-ca); on esp-mqtt set "
         "broker.verification.alpn_protos"]),
    "sni_rejected": (
        ["the server routes by SNI and does not know the name sent ({sni_sent}): cloud brokers (HiveMQ Cloud, EMQX "
         "Cloud, AWS IoT) refuse clients that connect by IP address or send no SNI"],
        ["connect by the broker's host name, or pass --sni with it (device: put the host name, not an IP "
         "address, in the broker URI; esp-mqtt sends the URI host as SNI)"]),
    "tls_handshake_failed": (
        ["the server aborted the TLS handshake: no cipher suite or TLS version in common, or it requires a client "
         "certificate"],
        ["check the broker's tls_version/ciphers settings; pass --cert/--key if it requires client certificates"]),
    "unknown_ca": (
        ["the broker's certificate was issued by '{issuer}', which {ca} does not trust",
         "--ca is the wrong file (a CA from another set-up), or the broker serves a different certificate than "
         "you think"],
        ["pass the CA that signed the broker certificate with --ca (device: broker.verification.certificate, or "
         "the ESP x509 certificate bundle for public CAs)"]),
    "self_signed": (
        ["the broker presents a self-signed certificate ({subject}) that {ca} does not hold"],
        ["pass that certificate itself with --ca (device: the same PEM as broker.verification.certificate)"]),
    "missing_intermediate": (
        ["the broker does not send the intermediate CA certificate: its chain stops at '{issuer}', and {ca} holds "
         "only the root", "clients that fetch missing intermediates (browsers) connect; devices do not"],
        ["fix the broker: serve the full chain (mosquitto: certfile with the server certificate followed by the "
         "intermediate)", "or add the intermediate to the CA file you pass with --ca / to the device"]),
    "no_certificate": (
        ["the server sent no certificate"], ["check the broker's certfile/keyfile settings"]),
    "expired": (
        ["the broker certificate expired on {not_after}"],
        ["renew the broker's certificate (mosquitto: certfile); check this machine's clock if the date looks "
         "wrong"]),
    "not_yet_valid": (
        ["the broker certificate is valid only from {not_before}: it was issued with a future date, or this "
         "machine's clock is behind"],
        ["check the clock of the machine that issued it and of this one; reissue the certificate"]),
    "clock_skew": (
        ["the device clock ({clock}) is outside the certificate's validity ({not_before} .. {not_after}): a device "
         "that was never NTP-synced, or has a dead RTC battery, rejects a good certificate"],
        ["set the device clock before connecting (SNTP: esp_sntp_init and wait for the sync; ESPEasy: Tools -> "
         "Advanced -> NTP)", "check with --clock set to what the device's clock says"]),
    "hostname_mismatch": (
        ["the certificate is for {cert_names}, but the client connects to {sni}"],
        ["connect by a name the certificate lists, or pass --sni with it (device: the URI host, or "
         "broker.verification.common_name)", "or reissue the certificate with this name in its SANs"]),
    "client_cert_required": (
        ["the listener requires a client certificate (mutual TLS) and none was sent"],
        ["pass --cert and --key (device: credentials.authentication.certificate and .key)"]),
    "client_cert_rejected": (
        ["the server refused the client certificate: not signed by a CA the listener trusts, expired, or the "
         "wrong key usage"],
        ["use a certificate issued by the CA the listener trusts (mosquitto: cafile of that listener); check it "
         "has not expired"]),
    "bad_credentials": (
        ["the broker refused the user name or password (CONNACK {connack_name})"],
        ["check --username/--password (device: credentials.username and authentication.password; ESPEasy: "
         "the controller's User and Password)"]),
    "not_authorized": (
        ["the broker refused this client: not authorized (CONNACK {connack_name}); anonymous clients are not "
         "allowed, or the ACL denies this user or client id"],
        ["pass --username/--password of an account that may connect; check the broker's ACL and --client-id"]),
    "connack_refused": (
        ["the broker refused the connection (CONNACK {connack_name})"],
        ["see what the reason code means; check --mqtt-version and --client-id"]),
    "no_connack": (
        ["the server accepted the connection but never answered CONNECT: not an MQTT port, or a broker that is "
         "stuck"],
        ["check the port and the scheme; raise --timeout for a very slow broker"]),
    "closed_before_connack": (
        ["the server closed the connection after CONNECT without CONNACK: it may reject this protocol version, "
         "client id or a missing client certificate silently"],
        ["try --mqtt-version 3.1.1 or 5; check the broker log"]),
    "tls_port": (
        ["{address} is a TLS port: it answered plain MQTT with TLS, or completed a TLS handshake"],
        ["use {tls_scheme}://{address} (with --ca) for this port"]),
    "not_mqtt": (
        ["the server answered, but not in MQTT (another protocol on this port)"],
        ["check the port number and the scheme"]),
    "websocket_rejected": (
        ["the WebSocket upgrade failed: wrong path, not a WebSocket port, or the 'mqtt' subprotocol is not "
         "accepted"],
        ["check the URL path (often /mqtt) and the port"]),
    "subscribe_refused": (
        ["the broker refused the subscription to {topic} (ACL)"],
        ["allow this user to subscribe to the topic, or pick another with --topic"]),
    "publish_refused": (
        ["the broker refused the publish to {topic} (ACL)"],
        ["allow this user to publish to the topic, or pick another with --topic"]),
    "no_message": (
        ["the broker accepted the publish but did not deliver it back (ACL on reading, or a bridge/rule that "
         "rewrites topics)"],
        ["check the broker's read ACL for the topic, or pick another with --topic"]),
    "roundtrip_failed": (
        ["the connection failed during subscribe/publish"], ["check the broker log"]),
}


class _Missing(dict):
    def __missing__(self, key: str) -> str:
        return "?"


def advise(cause: str | None, context: dict) -> tuple[list[str], list[str]]:
    if cause is None:
        return [], []
    causes, fixes = ADVICE.get(cause, (["unclassified failure"], ["check the layer detail"]))
    values = _Missing({k: v for k, v in context.items() if v is not None})
    fmt = string.Formatter()
    return [fmt.vformat(t, (), values) for t in causes], [fmt.vformat(t, (), values) for t in fixes]
