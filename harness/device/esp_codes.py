"""Names and numbers a device reports (docs/dut-protocol.md §7): esp-mqtt events, states and error types,
esp-tls errors (both IDF numberings), mbedTLS verify flags and errors, newlib errno, reset reasons.
Tests compare by name; numbers are for display and for devices that send only a number."""

from __future__ import annotations

EVENTS = {  # esp_mqtt_event_id_t
    "MQTT_EVENT_ERROR": 0, "MQTT_EVENT_CONNECTED": 1, "MQTT_EVENT_DISCONNECTED": 2, "MQTT_EVENT_SUBSCRIBED": 3,
    "MQTT_EVENT_UNSUBSCRIBED": 4, "MQTT_EVENT_PUBLISHED": 5, "MQTT_EVENT_DATA": 6, "MQTT_EVENT_BEFORE_CONNECT": 7,
    "MQTT_EVENT_DELETED": 8,
}
EVENT_NAMES = {v: k for k, v in EVENTS.items()}

STATES = ("MQTT_STATE_ERROR", "MQTT_STATE_UNKNOWN", "MQTT_STATE_INIT", "MQTT_STATE_DISCONNECTED",
          "MQTT_STATE_CONNECTED", "MQTT_STATE_WAIT_RECONNECT")

ERROR_TYPES = {"MQTT_ERROR_TYPE_NONE": 0, "MQTT_ERROR_TYPE_TCP_TRANSPORT": 1,
               "MQTT_ERROR_TYPE_CONNECTION_REFUSED": 2, "MQTT_ERROR_TYPE_SUBSCRIBE_FAILED": 3}

CONNECT_RETURN_CODES = {0: "MQTT_CONNECTION_ACCEPTED", 1: "MQTT_CONNECTION_REFUSE_PROTOCOL",
                        2: "MQTT_CONNECTION_REFUSE_ID_REJECTED", 3: "MQTT_CONNECTION_REFUSE_SERVER_UNAVAILABLE",
                        4: "MQTT_CONNECTION_REFUSE_BAD_USERNAME", 5: "MQTT_CONNECTION_REFUSE_NOT_AUTHORIZED"}

# esp-tls errors: name -> (number on newer IDF, number on older IDF). esp_tls_errors.h @0819ee6 / @863c3ae.
ESP_TLS_ERRORS = {
    "ESP_ERR_ESP_TLS_CANNOT_RESOLVE_HOSTNAME": (0x8001, 0x8001),
    "ESP_ERR_ESP_TLS_CANNOT_CREATE_SOCKET": (0x8002, 0x8002),
    "ESP_ERR_ESP_TLS_UNSUPPORTED_PROTOCOL_FAMILY": (0x8003, 0x8003),
    "ESP_ERR_ESP_TLS_FAILED_CONNECT_TO_HOST": (0x8004, 0x8004),
    "ESP_ERR_ESP_TLS_SOCKET_SETOPT_FAILED": (0x8005, 0x8005),
    "ESP_ERR_ESP_TLS_CONNECTION_TIMEOUT": (0x8006, 0x8012),
    "ESP_ERR_ESP_TLS_SE_FAILED": (0x8007, 0x801B),
    "ESP_ERR_ESP_TLS_TCP_CLOSED_FIN": (0x8008, 0x801C),
    "ESP_ERR_MBEDTLS_CERT_PARTLY_OK": (0x8010, 0x8006),
    "ESP_ERR_MBEDTLS_X509_CRT_PARSE_FAILED": (0x8015, 0x800B),
    "ESP_ERR_MBEDTLS_SSL_SETUP_FAILED": (0x8017, 0x800D),
    "ESP_ERR_MBEDTLS_PK_PARSE_KEY_FAILED": (0x8019, 0x800F),
    "ESP_ERR_MBEDTLS_SSL_HANDSHAKE_FAILED": (0x801A, 0x8010),
}
ESP_ERRORS = {"ESP_OK": 0, "ESP_FAIL": -1, "ESP_ERR_NO_MEM": 0x101, "ESP_ERR_INVALID_ARG": 0x102,
              "ESP_ERR_INVALID_STATE": 0x103, "ESP_ERR_NOT_FOUND": 0x105, "ESP_ERR_TIMEOUT": 0x107}

# mbedTLS (values as the device sends them: positive)
MBEDTLS_ERRORS = {
    "MBEDTLS_ERR_X509_CERT_VERIFY_FAILED": 0x2700, "MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE": 0x7780,
    "MBEDTLS_ERR_SSL_CONN_EOF": 0x7280, "MBEDTLS_ERR_SSL_NO_CLIENT_CERTIFICATE": 0x7480,
    "MBEDTLS_ERR_SSL_BAD_CERTIFICATE": 0x7A00, "MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY": 0x7880,
    "MBEDTLS_ERR_SSL_HANDSHAKE_FAILURE": 0x6E00,
}
VERIFY_FLAGS = {  # MBEDTLS_X509_BADCERT_*
    0x01: "MBEDTLS_X509_BADCERT_EXPIRED", 0x02: "MBEDTLS_X509_BADCERT_REVOKED",
    0x04: "MBEDTLS_X509_BADCERT_CN_MISMATCH", 0x08: "MBEDTLS_X509_BADCERT_NOT_TRUSTED",
    0x40: "MBEDTLS_X509_BADCERT_MISSING", 0x80: "MBEDTLS_X509_BADCERT_SKIP_VERIFY",
    0x100: "MBEDTLS_X509_BADCERT_OTHER", 0x200: "MBEDTLS_X509_BADCERT_FUTURE",
    0x800: "MBEDTLS_X509_BADCERT_KEY_USAGE", 0x1000: "MBEDTLS_X509_BADCERT_EXT_KEY_USAGE",
    0x4000: "MBEDTLS_X509_BADCERT_BAD_MD", 0x8000: "MBEDTLS_X509_BADCERT_BAD_PK",
    0x10000: "MBEDTLS_X509_BADCERT_BAD_KEY",
}

# newlib/lwIP errno as an ESP32 reports it (Linux numbers differ for some: compare by name)
ERRNO = {"ECONNRESET": (104, "Connection reset by peer"), "ECONNREFUSED": (111, "Connection refused"),
         "ECONNABORTED": (113, "Software caused connection abort"), "ENETUNREACH": (114, "Network is unreachable"),
         "ETIMEDOUT": (116, "Connection timed out"), "EHOSTUNREACH": (118, "Host is unreachable"),
         "EINPROGRESS": (119, "Operation now in progress"), "ENOTCONN": (128, "Socket is not connected")}

RESET_REASONS = ("ESP_RST_UNKNOWN", "ESP_RST_POWERON", "ESP_RST_EXT", "ESP_RST_SW", "ESP_RST_PANIC",
                 "ESP_RST_INT_WDT", "ESP_RST_TASK_WDT", "ESP_RST_WDT", "ESP_RST_DEEPSLEEP", "ESP_RST_BROWNOUT",
                 "ESP_RST_SDIO")


def hex_code(code: int) -> str:
    return f"0x{code:x}"


def esp_tls_error(name: str | None, *, older_idf: bool = False) -> dict:
    """The `esp_tls_last_esp_err` object for `name` (None: no error)."""
    if name is None:
        return {"code": 0, "hex": "0x0", "name": "ESP_OK"}
    code = ESP_TLS_ERRORS[name][1 if older_idf else 0]
    return {"code": code, "hex": hex_code(code), "name": name}


def verify_flags(flags: int) -> dict:
    names = [name for bit, name in VERIFY_FLAGS.items() if flags & bit]
    return {"code": flags, "hex": hex_code(flags), "names": names}


def errno_obj(name: str | None) -> dict:
    if name is None:
        return {"code": 0, "name": None, "msg": None}
    code, msg = ERRNO.get(name, (0, name))
    return {"code": code, "name": name, "msg": msg}


def connect_return_code(code: int) -> dict:
    return {"code": code, "name": CONNECT_RETURN_CODES.get(code, f"REASON_0x{code:02x}")}


def error_handle(*, error_type: str = "MQTT_ERROR_TYPE_NONE", tls: str | None = None, stack_err: int = 0,
                 flags: int = 0, connect_rc: int = 0, sock_errno: str | None = None,
                 older_idf: bool = False) -> dict:
    """A complete error_handle object (docs/dut-protocol.md §7)."""
    return {"error_type": error_type, "error_type_id": ERROR_TYPES[error_type],
            "esp_tls_last_esp_err": esp_tls_error(tls, older_idf=older_idf),
            "esp_tls_stack_err": {"code": stack_err, "hex": hex_code(stack_err)},
            "esp_tls_cert_verify_flags": verify_flags(flags),
            "connect_return_code": connect_return_code(connect_rc),
            "esp_transport_sock_errno": errno_obj(sock_errno)}
