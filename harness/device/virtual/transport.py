"""What an ESP32's transport layer (esp-tls over lwIP and mbedTLS) reports when a connection fails, and the
certificate checks it makes. Pure: net.py does the I/O and turns what it saw into a Failure with these
functions; espmqtt.py turns a Failure into MQTT_EVENT_ERROR. Mapping per shared/research/esp32.md §3.5
(newer IDF numbering).

Name resolution is a static table, never real DNS: `localhost`, IP literals and --resolve entries."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID, NameOID

from harness.device import esp_codes

EAI_FAIL = 202  # lwIP's EAI_FAIL, what getaddrinfo() returns for an unknown name
SOCK_FD = 54  # lwIP hands out socket numbers from 54 up: the fd esp-tls prints
CERT_VERIFY_FAILED = esp_codes.MBEDTLS_ERRORS["MBEDTLS_ERR_X509_CERT_VERIFY_FAILED"]  # 0x2700

X509_V_ERR_CERT_NOT_YET_VALID = 9
X509_V_ERR_CERT_HAS_EXPIRED = 10
X509_V_ERR_HOSTNAME_MISMATCH = 62
X509_V_ERR_IP_ADDRESS_MISMATCH = 64

_VERIFY_TEXT = {  # mbedtls_x509_crt_verify_info()
    0x01: "The certificate validity has expired",
    0x04: "The certificate Common Name (CN) does not match with the expected CN",
    0x08: "The certificate is not correctly signed by the trusted CA",
    0x200: "The certificate validity starts in the future",
}

Log = tuple[str, str, str]  # (level letter, tag, message)


@dataclass(frozen=True, slots=True)
class Failure:
    """One transport failure as esp-tls records it (esp_tls_get_and_clear_last_error, esp_transport_get_errno),
    with the log lines esp-tls and esp_transport print on the way."""

    tls: str | None = None  # esp-tls error name, None = ESP_OK
    stack_err: int = 0  # mbedTLS error, positive
    flags: int = 0  # mbedTLS verify flags
    sock_errno: str | None = None
    logs: tuple[Log, ...] = ()
    handshake: bool = False  # failed in the TLS handshake (the `wrong-tls-error` bug rewrites these)

    def error_handle(self, *, tls_name: str | None = None) -> dict:
        return esp_codes.error_handle(error_type="MQTT_ERROR_TYPE_TCP_TRANSPORT", tls=tls_name or self.tls,
                                      stack_err=self.stack_err, flags=self.flags, sock_errno=self.sock_errno)


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """The TLS part of a client config (what esp_mqtt_set_ssl_transport_properties hands to esp-tls)."""

    ca_pem: bytes | None = None
    client_cert_pem: bytes | None = None
    client_key_pem: bytes | None = None
    key_password: str | None = None
    skip_cn_check: bool = False
    common_name: str | None = None
    alpn: tuple[str, ...] = ()
    use_global_ca_store: bool = False
    crt_bundle_attach: bool = False


@dataclass(slots=True)
class Resolver:
    """Static name table; lookups never leave the process."""

    table: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        self.table = {k.lower(): v for k, v in self.table.items()}

    def lookup(self, host: str) -> list[str]:
        """Addresses of `host`, [] if it does not resolve."""
        host = host.strip("[]")
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        name = host.lower().rstrip(".")
        if name in self.table:
            return [self.table[name]]
        if name == "localhost":
            return ["127.0.0.1"]
        return []


def _open_failed(*first: Log) -> tuple[Log, ...]:
    return (*first, ("E", "esp-tls", "Failed to open new connection"),
            ("E", "transport_base", "Failed to open a new connection"))


def resolve_failure(host: str) -> Failure:
    return Failure("ESP_ERR_ESP_TLS_CANNOT_RESOLVE_HOSTNAME", logs=_open_failed(
        ("E", "esp-tls", f"couldn't get hostname for :{host}: getaddrinfo() returns {EAI_FAIL}, addrinfo=0x0")))


def connect_failure(errno_name: str) -> Failure:
    text = esp_codes.ERRNO.get(errno_name, (0, errno_name))[1]
    return Failure("ESP_ERR_ESP_TLS_FAILED_CONNECT_TO_HOST", sock_errno=errno_name, logs=_open_failed(
        ("E", "esp-tls", f"[sock={SOCK_FD}] delayed connect error: {text}")))


def connect_timeout() -> Failure:
    return Failure("ESP_ERR_ESP_TLS_CONNECTION_TIMEOUT", logs=_open_failed(
        ("E", "esp-tls", f"[sock={SOCK_FD}] select() timeout")))


def setup_failure(name: str, detail: str, stack_err: int = 0) -> Failure:
    """esp-tls could not configure mbedTLS (no verification option, a PEM that does not parse)."""
    code = esp_codes.ESP_TLS_ERRORS[name][0]
    return Failure(name, stack_err=stack_err, logs=_open_failed(
        ("E", "esp-tls-mbedtls", detail),
        ("E", "esp-tls-mbedtls", f"Failed to set client configurations, returned [0x{code:04X}] ({name})"),
        ("E", "esp-tls-mbedtls", "create_ssl_handle failed")))


def handshake_failure(stack_err: int, flags: int = 0) -> Failure:
    logs: list[Log] = [("E", "esp-tls-mbedtls", f"mbedtls_ssl_handshake returned -0x{stack_err:x}")]
    if flags:
        logs.append(("I", "esp-tls-mbedtls", "Failed to verify peer certificate!"))
        for bit, text in _VERIFY_TEXT.items():
            if flags & bit:
                logs.append(("I", "esp-tls-mbedtls", f"verification info: ! {text}"))
    return Failure("ESP_ERR_MBEDTLS_SSL_HANDSHAKE_FAILED", stack_err=stack_err, flags=flags,
                   logs=_open_failed(*logs), handshake=True)


def closed_by_fin() -> Failure:
    """The broker closed the connection (FIN, or TLS close_notify)."""
    return Failure("ESP_ERR_ESP_TLS_TCP_CLOSED_FIN", sock_errno="ENOTCONN")


def read_failure(errno_name: str) -> Failure:
    text = esp_codes.ERRNO.get(errno_name, (0, errno_name))[1]
    return Failure(None, sock_errno=errno_name, logs=(("E", "transport_base", f"tcp_read error, errno={text}"),))


# ---- what mbedTLS would make of a handshake error OpenSSL reported

def flags_for_verify_code(code: int) -> int:
    if code == X509_V_ERR_CERT_HAS_EXPIRED:
        return 0x01
    if code == X509_V_ERR_CERT_NOT_YET_VALID:
        return 0x200
    if code in (X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH):
        return 0x04
    return 0x08  # unknown issuer, self-signed, bad signature: the chain is not trusted


def stack_err_for_ssl_error(reason: str | None, message: str) -> int:
    """mbedTLS error for a non-verification handshake failure (an OpenSSL reason such as
    'SSLV3_ALERT_HANDSHAKE_FAILURE' or 'WRONG_VERSION_NUMBER')."""
    text = f"{reason or ''} {message}".upper()
    if "ALERT" in text:
        return esp_codes.MBEDTLS_ERRORS["MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE"]
    if "EOF" in text or "UNEXPECTED_EOF" in text:
        return esp_codes.MBEDTLS_ERRORS["MBEDTLS_ERR_SSL_CONN_EOF"]
    if "WRONG_VERSION" in text or "RECORD" in text or "PACKET_LENGTH" in text:
        return 0x7200  # MBEDTLS_ERR_SSL_INVALID_RECORD: the peer does not speak TLS
    return esp_codes.MBEDTLS_ERRORS["MBEDTLS_ERR_SSL_HANDSHAKE_FAILURE"]


# ---- certificate checks with the device's clock

def check_peer_certificate(der: bytes, *, expected_host: str | None, epoch: float) -> int:
    """mbedTLS verify flags for the leaf's dates (against the DEVICE clock, not the host's) and, when
    `expected_host` is given, its name. The chain itself is OpenSSL's job (net.py)."""
    cert = x509.load_der_x509_certificate(der)
    now = dt.datetime.fromtimestamp(epoch, dt.timezone.utc)
    flags = 0
    if now > cert.not_valid_after_utc:
        flags |= 0x01
    if now < cert.not_valid_before_utc:
        flags |= 0x200
    if expected_host is not None and not name_matches(cert, expected_host):
        flags |= 0x04
    return flags


def name_matches(cert: x509.Certificate, host: str) -> bool:
    """mbedTLS's rule: the subjectAltName entries if there are any (DNS with a left-most '*' label, IP), else
    the subject CN; case-insensitive."""
    host = host.strip("[]").lower().rstrip(".")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        if ip is not None:
            return ip in san.get_values_for_type(x509.IPAddress)
        return any(_dns_match(name, host) for name in san.get_values_for_type(x509.DNSName))
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return any(_dns_match(str(n), host) for n in names)


def _dns_match(pattern: str, host: str) -> bool:
    pattern = pattern.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == host


def pem_problem(settings: TlsSettings) -> Failure | None:
    """What esp-tls's set_client_config would fail on before any handshake, or None."""
    if settings.ca_pem is None and not settings.use_global_ca_store and not settings.crt_bundle_attach:
        return setup_failure("ESP_ERR_MBEDTLS_SSL_SETUP_FAILED",
                             "No server verification option set in esp_tls_cfg_t structure. "
                             "Check esp_tls API reference")
    if settings.use_global_ca_store or settings.crt_bundle_attach:
        if settings.ca_pem is None:  # no global store or bundle on this device
            return setup_failure("ESP_ERR_MBEDTLS_SSL_SETUP_FAILED", "global_cacert is NULL")
    if settings.ca_pem is not None and not _parses_certs(settings.ca_pem):
        return setup_failure("ESP_ERR_MBEDTLS_X509_CRT_PARSE_FAILED", "mbedtls_x509_crt_parse returned -0x2180",
                             0x2180)
    if settings.client_cert_pem is not None:
        if not _parses_certs(settings.client_cert_pem):
            return setup_failure("ESP_ERR_MBEDTLS_X509_CRT_PARSE_FAILED",
                                 "mbedtls_x509_crt_parse returned -0x2180", 0x2180)
        if settings.client_key_pem is None:
            return setup_failure("ESP_ERR_MBEDTLS_PK_PARSE_KEY_FAILED", "client key is missing", 0x3D00)
        try:
            password = settings.key_password.encode() if settings.key_password else None
            serialization.load_pem_private_key(settings.client_key_pem, password=password)
        except (ValueError, TypeError):
            return setup_failure("ESP_ERR_MBEDTLS_PK_PARSE_KEY_FAILED", "mbedtls_pk_parse_keyfile returned -0x3d00",
                                 0x3D00)
    return None


def _parses_certs(pem: bytes) -> bool:
    try:
        return bool(x509.load_pem_x509_certificates(pem))
    except ValueError:
        try:  # esp-tls also takes DER when a length is given
            x509.load_der_x509_certificate(pem)
            return True
        except ValueError:
            return False
