"""The `config` object of INIT/CONFIG (docs/dut-protocol.md §6) -> UserConfig, a flat mirror of
esp_mqtt_client_config_t. A field left out is None, like a zeroed C field, so esp_mqtt_set_config's own rules
(espmqtt.Client.set_config) decide what a missing field means. Pure: blobs are looked up through a callback."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any, Callable

PROTOCOL_VERSIONS = ("3.1", "3.1.1", "5")
TRANSPORTS = {"MQTT_TRANSPORT_OVER_TCP": "mqtt", "MQTT_TRANSPORT_OVER_SSL": "mqtts",
              "MQTT_TRANSPORT_OVER_WS": "ws", "MQTT_TRANSPORT_OVER_WSS": "wss"}


class ConfigError(ValueError):
    """A field of the wrong type or out of range: `name` is the ERR name, the message names the field."""

    def __init__(self, message: str, name: str = "BAD_ARGS"):
        super().__init__(message)
        self.name = name


@dataclass
class UserConfig:
    uri: str | None = None
    hostname: str | None = None
    port: int | None = None
    path: str | None = None
    transport: str | None = None  # scheme
    ca_pem: bytes | None = None
    skip_cert_common_name_check: bool = False
    common_name: str | None = None
    use_global_ca_store: bool = False
    crt_bundle_attach: bool = False
    alpn_protos: list[str] | None = None
    client_id: str | None = None
    set_null_client_id: bool = False
    username: str | None = None
    password: str | None = None
    client_cert_pem: bytes | None = None
    client_key_pem: bytes | None = None
    key_password: str | None = None
    keepalive: int | None = None
    disable_keepalive: bool = False
    disable_clean_session: bool = False
    protocol_ver: str | None = None
    message_retransmit_timeout: int | None = None
    will_topic: str | None = None
    will_msg: bytes | None = None
    will_qos: int | None = None
    will_retain: bool = False
    reconnect_timeout_ms: int | None = None
    timeout_ms: int | None = None
    refresh_connection_after_ms: int | None = None
    disable_auto_reconnect: bool = False
    buffer_size: int | None = None
    out_size: int | None = None
    outbox_limit: int | None = None
    ignored: list[str] = field(default_factory=list)  # unknown field paths, for the log line


# JSON path -> (UserConfig attribute, kind). "" as attribute: known, accepted, without effect here.
_FIELDS: dict[str, tuple[str, str]] = {
    "broker.address.uri": ("uri", "str"),
    "broker.address.hostname": ("hostname", "str"),
    "broker.address.port": ("port", "port"),
    "broker.address.path": ("path", "str"),
    "broker.address.transport": ("transport", "transport"),
    "broker.verification.certificate": ("ca_pem", "pem"),
    "broker.verification.skip_cert_common_name_check": ("skip_cert_common_name_check", "bool"),
    "broker.verification.common_name": ("common_name", "str"),
    "broker.verification.use_global_ca_store": ("use_global_ca_store", "bool"),
    "broker.verification.crt_bundle_attach": ("crt_bundle_attach", "bool"),
    "broker.verification.alpn_protos": ("alpn_protos", "strlist"),
    "credentials.client_id": ("client_id", "str"),
    "credentials.set_null_client_id": ("set_null_client_id", "bool"),
    "credentials.username": ("username", "str"),
    "credentials.authentication.password": ("password", "str"),
    "credentials.authentication.certificate": ("client_cert_pem", "pem"),
    "credentials.authentication.key": ("client_key_pem", "pem"),
    "credentials.authentication.key_password": ("key_password", "str"),
    "credentials.authentication.use_secure_element": ("", "bool"),
    "session.keepalive": ("keepalive", "uint16"),
    "session.disable_keepalive": ("disable_keepalive", "bool"),
    "session.disable_clean_session": ("disable_clean_session", "bool"),
    "session.protocol_ver": ("protocol_ver", "protocol"),
    "session.message_retransmit_timeout": ("message_retransmit_timeout", "uint"),
    "session.last_will.topic": ("will_topic", "str"),
    "session.last_will.msg_b64": ("will_msg", "b64"),
    "session.last_will.msg": ("will_msg", "text"),
    "session.last_will.qos": ("will_qos", "qos"),
    "session.last_will.retain": ("will_retain", "bool"),
    "network.reconnect_timeout_ms": ("reconnect_timeout_ms", "uint"),
    "network.timeout_ms": ("timeout_ms", "uint"),
    "network.refresh_connection_after_ms": ("refresh_connection_after_ms", "uint"),
    "network.disable_auto_reconnect": ("disable_auto_reconnect", "bool"),
    "task.priority": ("", "uint"),
    "task.stack_size": ("", "uint"),
    "buffer.size": ("buffer_size", "uint"),
    "buffer.out_size": ("out_size", "uint"),
    "outbox.limit": ("outbox_limit", "uint"),
}
_GROUPS = {p.rsplit(".", i)[0] for p in _FIELDS for i in range(1, p.count(".") + 1)}


def parse_config(obj: Any, blob: Callable[[str], bytes | None], *, where: str = "config") -> UserConfig:
    """Validate and convert; ConfigError names the first bad field. `blob(name)` returns a complete blob's
    bytes or None."""
    if not isinstance(obj, dict):
        raise ConfigError(f"{where} must be an object")
    cfg = UserConfig()
    _walk(obj, "", cfg, blob, where)
    return cfg


def _walk(obj: dict, prefix: str, cfg: UserConfig, blob, where: str) -> None:
    for key, value in obj.items():
        path = f"{prefix}{key}"
        if path in _FIELDS:
            attr, kind = _FIELDS[path]
            if value is None:  # JSON null = a NULL pointer / zero: same as leaving it out
                continue
            converted = _convert(value, kind, f"{where}.{path}", blob)
            if attr:
                setattr(cfg, attr, converted)
        elif path in _GROUPS:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{path} must be an object")
            _walk(value, f"{path}.", cfg, blob, where)
        else:
            cfg.ignored.append(path)


def _convert(value: Any, kind: str, name: str, blob) -> Any:
    if kind in ("str", "text"):
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string")
        return value.encode() if kind == "text" else value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false")
        return value
    if kind in ("uint", "uint16", "port", "qos"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{name} must be a non-negative integer")
        limit = {"uint": 2**31 - 1, "uint16": 65535, "port": 65535, "qos": 2}[kind]
        if value > limit:
            raise ConfigError(f"{name} must be at most {limit}")
        return value
    if kind == "protocol":
        if value not in PROTOCOL_VERSIONS:
            raise ConfigError(f"{name} must be one of {', '.join(PROTOCOL_VERSIONS)}")
        return value
    if kind == "transport":
        if value not in TRANSPORTS:
            raise ConfigError(f"{name} must be one of {', '.join(TRANSPORTS)}")
        return TRANSPORTS[value]
    if kind == "strlist":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{name} must be a list of strings")
        return list(value)
    if kind == "b64":
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a base64 string")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"{name} is not valid base64") from None
    if kind == "pem":
        if isinstance(value, str):
            return value.encode()
        if isinstance(value, dict) and isinstance(value.get("blob"), str):
            data = blob(value["blob"])
            if data is None:
                raise ConfigError(f"{name}: no complete blob named {value['blob']!r}", "NO_BLOB")
            return data
        raise ConfigError(f"{name} must be a PEM string or {{\"blob\": name}}")
    raise AssertionError(kind)
