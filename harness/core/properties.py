"""MQTT 5.0 properties (§2.2.2.2): identifier, wire type and the packets allowed to carry each."""

from __future__ import annotations

from dataclasses import dataclass

# Wire data types (§1.5).
BYTE, TWO, FOUR, VBI, UTF8, BINARY, PAIR = "byte", "two", "four", "vbi", "utf8", "binary", "pair"

# Carriers. WILL is the Will Properties block inside CONNECT's payload.
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, DISCONNECT, AUTH, WILL = 8, 9, 10, 11, 14, 15, 100
_ACKS = (PUBACK, PUBREC, PUBREL, PUBCOMP)
_ALL = (CONNECT, CONNACK, PUBLISH, WILL, *_ACKS, SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, DISCONNECT, AUTH)


@dataclass(frozen=True, slots=True)
class PropertyDef:
    ident: int
    name: str
    kind: str
    carriers: frozenset[int]
    multiple: bool = False  # user_property always; subscription_identifier on PUBLISH only


_DEFS = [
    (0x01, "payload_format_indicator", BYTE, (PUBLISH, WILL)),
    (0x02, "message_expiry_interval", FOUR, (PUBLISH, WILL)),
    (0x03, "content_type", UTF8, (PUBLISH, WILL)),
    (0x08, "response_topic", UTF8, (PUBLISH, WILL)),
    (0x09, "correlation_data", BINARY, (PUBLISH, WILL)),
    (0x0B, "subscription_identifier", VBI, (PUBLISH, SUBSCRIBE)),
    (0x11, "session_expiry_interval", FOUR, (CONNECT, CONNACK, DISCONNECT)),
    (0x12, "assigned_client_identifier", UTF8, (CONNACK,)),
    (0x13, "server_keep_alive", TWO, (CONNACK,)),
    (0x15, "authentication_method", UTF8, (CONNECT, CONNACK, AUTH)),
    (0x16, "authentication_data", BINARY, (CONNECT, CONNACK, AUTH)),
    (0x17, "request_problem_information", BYTE, (CONNECT,)),
    (0x18, "will_delay_interval", FOUR, (WILL,)),
    (0x19, "request_response_information", BYTE, (CONNECT,)),
    (0x1A, "response_information", UTF8, (CONNACK,)),
    (0x1C, "server_reference", UTF8, (CONNACK, DISCONNECT)),
    (0x1F, "reason_string", UTF8, (CONNACK, *_ACKS, SUBACK, UNSUBACK, DISCONNECT, AUTH)),
    (0x21, "receive_maximum", TWO, (CONNECT, CONNACK)),
    (0x22, "topic_alias_maximum", TWO, (CONNECT, CONNACK)),
    (0x23, "topic_alias", TWO, (PUBLISH,)),
    (0x24, "maximum_qos", BYTE, (CONNACK,)),
    (0x25, "retain_available", BYTE, (CONNACK,)),
    (0x26, "user_property", PAIR, _ALL),
    (0x27, "maximum_packet_size", FOUR, (CONNECT, CONNACK)),
    (0x28, "wildcard_subscription_available", BYTE, (CONNACK,)),
    (0x29, "subscription_identifier_available", BYTE, (CONNACK,)),
    (0x2A, "shared_subscription_available", BYTE, (CONNACK,)),
]

BY_ID: dict[int, PropertyDef] = {}
BY_NAME: dict[str, PropertyDef] = {}
for _ident, _name, _kind, _carriers in _DEFS:
    _d = PropertyDef(_ident, _name, _kind, frozenset(_carriers), multiple=_name in ("user_property", "subscription_identifier"))
    BY_ID[_ident] = _d
    BY_NAME[_name] = _d

# Properties whose value is a list in our model (they may legally repeat somewhere).
LIST_VALUED = frozenset(n for n, d in BY_NAME.items() if d.multiple)
