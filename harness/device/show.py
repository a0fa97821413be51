"""One readable line per protocol item, for `dut console`, timeout messages and reports:

    EVT #12 MQTT_EVENT_DATA msg_id=3 topic=a/b qos=1 data=b'hello'
    EVT #4 MQTT_EVENT_ERROR error_type=MQTT_ERROR_TYPE_TCP_TRANSPORT tls=ESP_ERR_MBEDTLS_SSL_HANDSHAKE_FAILED ...
"""

from __future__ import annotations

import json
from typing import Any

from harness.device.protocol import (Answer, Boot, DataError, DataMessage, Event, EventGap, LogLine, Malformed,
                                     StrayAnswer, VersionMismatch)

DATA_SHOWN = 48  # bytes of payload shown before "..."
_SKIP = {"seq", "t_ms", "event", "event_id", "topic", "topic_b64", "topic_len", "data_b64", "data_len",
         "error_handle", "property", "crc32"}
_ALWAYS = {"MQTT_EVENT_DATA": ("qos",), "MQTT_EVENT_CONNECTED": ("session_present",)}


def short_bytes(data: bytes, limit: int = DATA_SHOWN) -> str:
    if len(data) <= limit:
        return repr(data)
    return f"{data[:limit]!r}... ({len(data)} bytes)"


def _value(value: Any) -> str:
    if isinstance(value, str):
        return value if value and " " not in value else json.dumps(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value).lower() if isinstance(value, bool) else str(value)


def error_summary(handle: dict[str, Any] | None) -> list[str]:
    """The parts of an error_handle that are set, by name."""
    if not handle:
        return []
    out = []
    if handle.get("error_type") not in (None, "MQTT_ERROR_TYPE_NONE"):
        out.append(f"error_type={handle['error_type']}")
    tls = handle.get("esp_tls_last_esp_err") or {}
    if tls.get("code") or tls.get("name") not in (None, "ESP_OK"):
        out.append(f"tls={tls.get('name') or tls.get('hex')}")
    stack = handle.get("esp_tls_stack_err") or {}
    if stack.get("code"):
        out.append(f"tls_stack=-{stack.get('hex')}")
    flags = handle.get("esp_tls_cert_verify_flags") or {}
    if flags.get("code"):
        out.append("verify=" + ("|".join(flags.get("names") or []) or str(flags.get("hex"))))
    rc = handle.get("connect_return_code") or {}
    if rc.get("code"):
        out.append(f"connect_rc={rc.get('name') or rc.get('code')}")
    sock = handle.get("esp_transport_sock_errno") or {}
    if sock.get("code") or sock.get("name"):
        out.append(f"errno={sock.get('name') or sock.get('code')}")
    return out


def describe_event(event: Event) -> str:
    parts = [f"EVT #{event.seq}", event.name]
    body = event.body
    if body.get("msg_id") is not None and (body["msg_id"] or event.name != "MQTT_EVENT_DATA"):
        parts.append(f"msg_id={body['msg_id']}")
    if event.topic is not None and (event.topic or event.name == "MQTT_EVENT_DATA"):
        parts.append(f"topic={_value(event.topic)}")
    always = _ALWAYS.get(event.name, ())
    for key, value in body.items():
        if key in _SKIP or key == "msg_id" or value is None:
            continue
        if key in ("total_data_len", "current_data_offset") and body.get("total_data_len") == body.get("data_len"):
            continue  # a message in one piece: offsets say nothing
        if value in (0, False, "", [], {}) and key not in always:
            continue
        parts.append(f"{key}={_value(value)}")
    if "data_b64" in body and (body["data_b64"] or event.name == "MQTT_EVENT_DATA"):
        parts.append(f"data={short_bytes(event.data)}")
    parts += error_summary(event.error_handle)
    if event.property:
        parts.append(f"property={_value(event.property)}")
    return " ".join(parts)


def describe(item: Any) -> str:
    """One line for any item of harness.device.protocol."""
    if isinstance(item, Event):
        return describe_event(item)
    if isinstance(item, LogLine):
        return item.text + (f"  [{item.note}]" if item.note else "")
    if isinstance(item, Answer):
        head = f"OK #{item.id}" if item.ok else f"ERR #{item.id}"
        verb = f" ({item.verb})" if item.verb else ""
        return f"{head}{verb} {json.dumps(item.body, separators=(',', ':'))}"
    if isinstance(item, Boot):
        b = item.banner
        keys = ("fw", "chip", "mac", "reset_reason", "idf", "esp_mqtt", "platform")
        return "BOOT " + " ".join(f"{k}={_value(b[k])}" for k in keys if b.get(k) is not None) + \
            f" proto={b.get('proto')}.{b.get('proto_minor', 0)}"
    if isinstance(item, DataMessage):
        return (f"MESSAGE topic={_value(item.topic)} qos={item.qos} retain={_value(item.retain)} "
                f"msg_id={item.msg_id} payload={short_bytes(item.payload)} ({len(item.events)} piece"
                f"{'s' if len(item.events) != 1 else ''}, crc ok)")
    if isinstance(item, DataError):
        return f"DATA ERROR {item.why}"
    if isinstance(item, EventGap):
        return f"EVENT GAP: {missing_text(item.missing)} lost (expected #{item.expected}, got #{item.got})"
    if isinstance(item, StrayAnswer):
        return f"{item.text}  [{item.why}]"
    if isinstance(item, Malformed):
        return f"MALFORMED ({item.why}): {item.text}"
    if isinstance(item, VersionMismatch):
        return f"PROTOCOL MISMATCH: the device speaks {item.device} ({item.where}), this host {item.host}"
    return repr(item)


def missing_text(missing: list[int]) -> str:
    """'#5' / '#5, #6' / '#5..#40 (36 events)'."""
    if len(missing) > 4:
        return f"#{missing[0]}..#{missing[-1]} ({len(missing)} events)"
    return ", ".join(f"#{n}" for n in missing)
