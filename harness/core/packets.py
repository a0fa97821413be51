"""The MQTT packet model: one plain dataclass per control packet type.

Fields hold what is on the wire, not what is valid: a test may build a PUBLISH with packet_id=0,
a CONNECT with protocol_name="MQTX", or a topic given as raw bytes with invalid UTF-8. The codec
encodes whatever it is given and rejects malformed input only when decoding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar, Union

__all__ = [
    "PacketType", "Will", "Connect", "Connack", "Publish", "Puback", "Pubrec", "Pubrel", "Pubcomp",
    "Subscription", "Subscribe", "Suback", "Unsubscribe", "Unsuback", "Pingreq", "Pingresp",
    "Disconnect", "Auth", "Packet", "PACKET_CLASSES", "MQTT_3_1", "MQTT_3_1_1", "MQTT_5", "VERSION_NAMES",
    "parse_version",
]

# Protocol levels as carried in CONNECT.
MQTT_3_1, MQTT_3_1_1, MQTT_5 = 3, 4, 5
VERSION_NAMES = {MQTT_3_1: "3.1", MQTT_3_1_1: "3.1.1", MQTT_5: "5"}


def parse_version(text: str | int) -> int:
    """'3.1' | '3.1.1' | '5' | '5.0' (or a protocol level) -> protocol level."""
    if isinstance(text, int) and text in VERSION_NAMES:
        return text
    table = {"3.1": 3, "31": 3, "3.1.1": 4, "311": 4, "4": 4, "5": 5, "5.0": 5, "3": 3}
    try:
        return table[str(text).strip()]
    except KeyError:
        raise ValueError(f"unknown MQTT version {text!r}: use 3.1, 3.1.1 or 5") from None


class PacketType(IntEnum):
    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15


Text = Union[str, bytes]  # bytes are sent as-is, so tests can put invalid UTF-8 on the wire


@dataclass(slots=True)
class Will:
    topic: Text
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class Connect:
    TYPE: ClassVar[PacketType] = PacketType.CONNECT
    client_id: Text = ""
    clean: bool = True  # Clean Session (3.1.1) / Clean Start (5)
    keepalive: int = 60
    username: Text | None = None
    password: bytes | None = None
    will: Will | None = None
    properties: dict = field(default_factory=dict)
    protocol_level: int = MQTT_3_1_1
    protocol_name: Text | None = None  # None: "MQTT", or "MQIsdp" for level 3
    reserved: bool = False  # CONNECT flags bit 0; must be 0
    # Flag overrides for malformed CONNECTs; None derives them from the fields above.
    will_flag: bool | None = None
    will_qos: int | None = None
    will_retain: bool | None = None
    username_flag: bool | None = None
    password_flag: bool | None = None


@dataclass(slots=True)
class Connack:
    TYPE: ClassVar[PacketType] = PacketType.CONNACK
    session_present: bool = False
    reason_code: int = 0  # 3.1.1 return code, or v5 reason code
    properties: dict = field(default_factory=dict)
    reserved_flags: int = 0  # acknowledge-flags bits 7-1


@dataclass(slots=True, init=False)
class Publish:
    TYPE: ClassVar[PacketType] = PacketType.PUBLISH
    topic: Text
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None
    properties: dict = field(default_factory=dict)

    # Written out: the generated __init__'s default_factory path costs a sixth of a codec round trip.
    def __init__(self, topic: Text, payload: bytes = b"", qos: int = 0, retain: bool = False, dup: bool = False,
                 packet_id: int | None = None, properties: dict | None = None):
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.dup = dup
        self.packet_id = packet_id
        self.properties = {} if properties is None else properties


@dataclass(slots=True)
class Puback:
    TYPE: ClassVar[PacketType] = PacketType.PUBACK
    packet_id: int
    reason_code: int = 0
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class Pubrec:
    TYPE: ClassVar[PacketType] = PacketType.PUBREC
    packet_id: int
    reason_code: int = 0
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class Pubrel:
    TYPE: ClassVar[PacketType] = PacketType.PUBREL
    packet_id: int
    reason_code: int = 0
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class Pubcomp:
    TYPE: ClassVar[PacketType] = PacketType.PUBCOMP
    packet_id: int
    reason_code: int = 0
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class Subscription:
    topic_filter: Text
    qos: int = 0
    no_local: bool = False  # v5
    retain_as_published: bool = False  # v5
    retain_handling: int = 0  # v5: 0 send retained, 1 only if new subscription, 2 never
    reserved: int = 0  # bits 7-6 (v5) or 7-2 (3.1.1), shifted into place; must be 0


@dataclass(slots=True)
class Subscribe:
    TYPE: ClassVar[PacketType] = PacketType.SUBSCRIBE
    packet_id: int
    subscriptions: list[Subscription] = field(default_factory=list)
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class Suback:
    TYPE: ClassVar[PacketType] = PacketType.SUBACK
    packet_id: int
    reason_codes: list[int] = field(default_factory=list)
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class Unsubscribe:
    TYPE: ClassVar[PacketType] = PacketType.UNSUBSCRIBE
    packet_id: int
    topic_filters: list[Text] = field(default_factory=list)
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class Unsuback:
    TYPE: ClassVar[PacketType] = PacketType.UNSUBACK
    packet_id: int
    reason_codes: list[int] = field(default_factory=list)  # v5 only; empty in 3.1.1
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class Pingreq:
    TYPE: ClassVar[PacketType] = PacketType.PINGREQ


@dataclass(slots=True)
class Pingresp:
    TYPE: ClassVar[PacketType] = PacketType.PINGRESP


@dataclass(slots=True)
class Disconnect:
    TYPE: ClassVar[PacketType] = PacketType.DISCONNECT
    reason_code: int = 0
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class Auth:
    TYPE: ClassVar[PacketType] = PacketType.AUTH
    reason_code: int = 0
    properties: dict = field(default_factory=dict)


Packet = Union[Connect, Connack, Publish, Puback, Pubrec, Pubrel, Pubcomp, Subscribe, Suback,
               Unsubscribe, Unsuback, Pingreq, Pingresp, Disconnect, Auth]

PACKET_CLASSES: dict[PacketType, type] = {
    cls.TYPE: cls for cls in (Connect, Connack, Publish, Puback, Pubrec, Pubrel, Pubcomp, Subscribe, Suback,
                              Unsubscribe, Unsuback, Pingreq, Pingresp, Disconnect, Auth)
}
