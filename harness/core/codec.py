"""MQTT wire codec: packets to bytes and a strict streaming decoder from bytes to packets.

encode() writes valid packets by default; keyword overrides (flags, remaining_length,
raw_properties, raw_body) let a test put a malformed packet on the wire. The Decoder accepts
bytes in chunks of any size and raises ProtocolError naming the statement a packet breaks.
"""

from __future__ import annotations

import struct

from harness.core import properties as P
from harness.core.packets import (
    MQTT_3_1, MQTT_3_1_1, MQTT_5, Auth, Connack, Connect, Disconnect, Pingreq, Pingresp, Puback,
    Pubcomp, Publish, Pubrec, Pubrel, Suback, Subscribe, Subscription, Unsuback, Unsubscribe, Will,
)
from harness.core.reason_codes import ALLOWED as ALLOWED_REASONS
from harness.core.reason_codes import ConnackReturnCode, reason_name
from harness.core.statements import ref
from harness.errors import ProtocolError

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_pack_u16 = _U16.pack
_unpack_u16 = _U16.unpack_from

# Fixed-header flags that are not free (PUBLISH's are): §2.2.2 (3.1.1) / §2.1.3 (5).
_FIXED_FLAGS = {1: 0, 2: 0, 4: 0, 5: 0, 6: 2, 7: 0, 8: 2, 9: 0, 10: 2, 11: 0, 12: 0, 13: 0, 14: 0, 15: 0}
_ACK_CLASSES = {4: Puback, 5: Pubrec, 6: Pubrel, 7: Pubcomp}
_ACK_FIRST = {0x40: Puback, 0x50: Pubrec, 0x62: Pubrel, 0x70: Pubcomp}  # first byte of a valid ack -> class
_SUBACK_311 = frozenset({0, 1, 2, 0x80})
_PROTOCOL_NAMES = {MQTT_3_1: "MQIsdp", MQTT_3_1_1: "MQTT", MQTT_5: "MQTT"}


# ----------------------------------------------------------------------------------- encoding

def encode_vbi(value: int) -> bytes:
    """Variable Byte Integer, minimal form (§1.5.5). Values above 268,435,455 are allowed so that
    tests can produce over-long encodings."""
    if value < 128:
        return bytes((value,))
    out = bytearray()
    while True:
        digit = value & 0x7F
        value >>= 7
        if value:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


def _text(value) -> bytes:
    raw = value if isinstance(value, (bytes, bytearray)) else value.encode("utf-8", "surrogatepass")
    return _pack_u16(len(raw)) + raw


def _binary(value: bytes) -> bytes:
    return _pack_u16(len(value)) + bytes(value)


def encode_properties(props: dict, raw: bytes | None = None) -> bytes:
    """A v5 property block: length VBI + properties. `raw` replaces the content verbatim."""
    if raw is not None:
        return encode_vbi(len(raw)) + raw
    if not props:
        return b"\x00"
    out = bytearray()
    for name, value in props.items():
        d = P.BY_NAME.get(name)
        if d is None:
            raise ValueError(f"unknown MQTT 5 property {name!r}; known: {', '.join(sorted(P.BY_NAME))}")
        for v in (value if d.multiple else (value,)):
            out += encode_vbi(d.ident)
            k = d.kind
            if k == P.BYTE:
                out.append(v)
            elif k == P.TWO:
                out += _pack_u16(v)
            elif k == P.FOUR:
                out += _U32.pack(v)
            elif k == P.VBI:
                out += encode_vbi(v)
            elif k == P.UTF8:
                out += _text(v)
            elif k == P.BINARY:
                out += _binary(v)
            else:  # PAIR
                out += _text(v[0]) + _text(v[1])
    return encode_vbi(len(out)) + bytes(out)


def encode(packet, version: int = MQTT_3_1_1, *, flags: int | None = None,
           remaining_length: int | bytes | None = None, raw_properties: bytes | None = None,
           raw_body: bytes | None = None) -> bytes:
    """Encode a packet. `version` is the protocol level (3, 4 or 5); CONNECT uses its own.

    Overrides for malformed packets: `flags` replaces the fixed-header low nibble,
    `remaining_length` replaces the computed length (an int, or raw VBI bytes), `raw_properties`
    replaces the v5 property content, `raw_body` replaces everything after the fixed header.
    """
    t = packet.TYPE
    if flags is None and remaining_length is None and raw_body is None and raw_properties is None:
        if t == 3:  # publish_header() inline: this is the hot path
            topic = packet.topic
            try:
                head = _TOPICS_OUT[topic]
            except (KeyError, TypeError):
                head = _topic_field(topic)
            qos = packet.qos
            if qos or packet.packet_id is not None:
                head += _pack_u16(packet.packet_id or 0)
            if version >= MQTT_5:
                head += encode_properties(packet.properties)
            payload = packet.payload
            n = len(head) + len(payload)
            first = 0x30 | (packet.dup << 3) | ((qos & 3) << 1) | bool(packet.retain)
            if n < 128:
                return _pack_bb(first, n) + head + payload
            return bytes((first,)) + encode_vbi(n) + head + payload
        if 4 <= t <= 7 and not packet.reason_code and not packet.properties:
            pid = packet.packet_id
            return bytes(((t << 4) | _FIXED_FLAGS[t], 2, (pid >> 8) & 0xFF, pid & 0xFF))
    body, default_flags = _BODY[t](packet, version, raw_properties) if raw_body is None else (raw_body, None)
    if default_flags is None:
        default_flags = _publish_flags(packet) if t == 3 else _FIXED_FLAGS[t]
    first = (t << 4) | (default_flags if flags is None else flags & 0x0F)
    if remaining_length is None:
        length = encode_vbi(len(body))
    elif isinstance(remaining_length, (bytes, bytearray)):
        length = bytes(remaining_length)
    else:
        length = encode_vbi(remaining_length)
    return bytes((first,)) + length + body


def _publish_flags(p: Publish) -> int:
    return (p.dup << 3) | ((p.qos & 3) << 1) | bool(p.retain)


_TOPICS_OUT: dict = {}  # topic (str or bytes) -> its length-prefixed UTF-8: publishers repeat their topics
_TOPIC_CACHE_MAX = 4096
_pack_bb = struct.Struct(">BB").pack


def _topic_field(topic) -> bytes:
    head = _text(topic)
    try:
        if len(_TOPICS_OUT) >= _TOPIC_CACHE_MAX:
            _TOPICS_OUT.clear()
        _TOPICS_OUT[topic] = head
    except TypeError:  # an unhashable topic (bytearray) is not cached
        pass
    return head


def publish_header(p: Publish, version: int = MQTT_3_1_1) -> bytes:
    """A PUBLISH's bytes up to its payload: encode(p) is publish_header(p) + p.payload. For large payloads
    a writer sends the two pieces as they are (scatter/gather) instead of copying the payload."""
    topic = p.topic
    try:
        head = _TOPICS_OUT[topic]
    except (KeyError, TypeError):
        head = _topic_field(topic)
    qos = p.qos
    if qos or p.packet_id is not None:
        head += _pack_u16(p.packet_id or 0)
    if version >= MQTT_5:
        head += encode_properties(p.properties)
    n = len(head) + len(p.payload)
    first = 0x30 | (p.dup << 3) | ((qos & 3) << 1) | bool(p.retain)
    if n < 128:
        return _pack_bb(first, n) + head
    return bytes((first,)) + encode_vbi(n) + head


def _props(version, props, raw):
    return encode_properties(props, raw) if version >= MQTT_5 else b""


def _body_connect(p: Connect, _version, raw_props):
    level = p.protocol_level
    name = p.protocol_name if p.protocol_name is not None else _PROTOCOL_NAMES.get(level, "MQTT")
    will = p.will
    will_flag = (will is not None) if p.will_flag is None else p.will_flag
    user_flag = (p.username is not None) if p.username_flag is None else p.username_flag
    pass_flag = (p.password is not None) if p.password_flag is None else p.password_flag
    will_qos = (will.qos if will is not None else 0) if p.will_qos is None else p.will_qos
    will_retain = (will is not None and will.retain) if p.will_retain is None else p.will_retain
    cflags = (user_flag << 7) | (pass_flag << 6) | (bool(will_retain) << 5) | ((will_qos & 3) << 3) | bool(p.reserved)
    cflags |= will_flag << 2
    cflags |= bool(p.clean) << 1
    out = bytearray(_text(name))
    out.append(level & 0xFF)
    out.append(cflags)
    out += _pack_u16(p.keepalive & 0xFFFF)
    out += _props(level, p.properties, raw_props)
    out += _text(p.client_id)
    if will is not None:
        if level >= MQTT_5:
            out += encode_properties(will.properties)
        out += _text(will.topic) + _binary(will.payload)
    if p.username is not None:
        out += _text(p.username)
    if p.password is not None:
        out += _binary(p.password)
    return bytes(out), None


def _body_connack(p: Connack, version, raw_props):
    flags = (p.reserved_flags & 0xFE) | bool(p.session_present)
    return bytes((flags, p.reason_code)) + _props(version, p.properties, raw_props), None


def _body_publish(p: Publish, version, raw_props):
    out = _text(p.topic)
    if p.qos or p.packet_id is not None:
        out += _pack_u16(p.packet_id or 0)
    return out + _props(version, p.properties, raw_props) + p.payload, None


def _body_ack(p, version, raw_props):
    out = _pack_u16(p.packet_id)
    if version >= MQTT_5 and (p.reason_code or p.properties or raw_props is not None):
        out += bytes((p.reason_code,))
        if p.properties or raw_props is not None:
            out += encode_properties(p.properties, raw_props)
    return out, None


def _subscription_options(s: Subscription, version) -> int:
    opts = (s.qos & 3) | (s.reserved & 0xFF)
    if version >= MQTT_5:
        opts |= (bool(s.no_local) << 2) | (bool(s.retain_as_published) << 3) | ((s.retain_handling & 3) << 4)
    return opts & 0xFF


def _body_subscribe(p: Subscribe, version, raw_props):
    out = bytearray(_pack_u16(p.packet_id))
    out += _props(version, p.properties, raw_props)
    for s in p.subscriptions:
        out += _text(s.topic_filter)
        out.append(_subscription_options(s, version))
    return bytes(out), None


def _body_suback(p: Suback, version, raw_props):
    return _pack_u16(p.packet_id) + _props(version, p.properties, raw_props) + bytes(p.reason_codes), None


def _body_unsubscribe(p: Unsubscribe, version, raw_props):
    out = bytearray(_pack_u16(p.packet_id))
    out += _props(version, p.properties, raw_props)
    for f in p.topic_filters:
        out += _text(f)
    return bytes(out), None


def _body_unsuback(p: Unsuback, version, raw_props):
    if version < MQTT_5:
        return _pack_u16(p.packet_id), None
    return _pack_u16(p.packet_id) + encode_properties(p.properties, raw_props) + bytes(p.reason_codes), None


def _body_empty(_p, _version, _raw):
    return b"", None


def _body_reason(p, version, raw_props):
    if version < MQTT_5 or (not p.reason_code and not p.properties and raw_props is None):
        return b"", None
    out = bytes((p.reason_code,))
    if p.properties or raw_props is not None:
        out += encode_properties(p.properties, raw_props)
    return out, None


_BODY = {
    1: _body_connect, 2: _body_connack, 3: _body_publish, 4: _body_ack, 5: _body_ack, 6: _body_ack,
    7: _body_ack, 8: _body_subscribe, 9: _body_suback, 10: _body_unsubscribe, 11: _body_unsuback,
    12: _body_empty, 13: _body_empty, 14: _body_reason, 15: _body_reason,
}


# ----------------------------------------------------------------------------------- decoding

class _Reader:
    """Cursor over one packet's variable header and payload."""

    __slots__ = ("data", "pos", "version", "raw")

    def __init__(self, data: bytes, version: int, raw: bytes):
        self.data = data
        self.pos = 0
        self.version = version
        self.raw = raw  # the whole packet, for error messages

    def fail(self, check: str, message: str, reason_code: int = 0x81):
        raise ProtocolError(message, ref(check, self.version), self.raw, reason_code)

    def need(self, n: int, what: str):
        if self.pos + n > len(self.data):
            self.fail("length_mismatch",
                      f"packet ends inside {what}: needs {n} more byte(s) at offset {self.pos}, "
                      f"remaining length is {len(self.data)}")

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def u8(self, what: str) -> int:
        self.need(1, what)
        v = self.data[self.pos]
        self.pos += 1
        return v

    def u16(self, what: str) -> int:
        self.need(2, what)
        (v,) = _unpack_u16(self.data, self.pos)
        self.pos += 2
        return v

    def u32(self, what: str) -> int:
        self.need(4, what)
        (v,) = _U32.unpack_from(self.data, self.pos)
        self.pos += 4
        return v

    def vbi(self, what: str) -> int:
        value, self.pos = _decode_vbi(self.data, self.pos, self.version, self.raw, what)
        return value

    def binary(self, what: str) -> bytes:
        n = self.u16(what + " length")
        self.need(n, what)
        v = self.data[self.pos:self.pos + n]
        self.pos += n
        return bytes(v)

    def text(self, what: str) -> str:
        return check_utf8(self.binary(what), what, self.version, self.raw)

    def done(self, what: str):
        if self.pos != len(self.data):
            self.fail("length_mismatch",
                      f"{self.remaining()} unexpected byte(s) after the {what} at offset {self.pos}")


def check_utf8(raw: bytes, what: str, version: int, packet: bytes = b"") -> str:
    """Decode an MQTT UTF-8 string strictly: well-formed, no surrogates, no U+0000 (§1.5.3/§1.5.4)."""
    try:
        s = raw.decode("utf-8")  # Python's codec rejects encoded surrogates and overlongs
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{what} is not well-formed UTF-8 ({exc.reason} at byte {exc.start})",
                            ref("utf8_ill_formed", version), packet or raw) from None
    if "\x00" in s:
        raise ProtocolError(f"{what} contains U+0000", ref("utf8_null", version), packet or raw)
    return s


def _decode_vbi(data, pos: int, version: int, raw: bytes, what: str) -> tuple[int, int]:
    value = 0
    shift = 0
    start = pos
    for i in range(4):
        if pos >= len(data):
            raise ProtocolError(f"packet ends inside the {what} Variable Byte Integer",
                                ref("length_mismatch", version), raw)
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            if i and b == 0 and version >= MQTT_5:
                raise ProtocolError(f"{what} is not minimally encoded ({i + 1} bytes for {value})",
                                    ref("vbi_not_minimal", version), bytes(data[start:pos]))
            return value, pos
        shift += 7
    raise ProtocolError(f"{what} Variable Byte Integer is longer than 4 bytes",
                        ref("vbi_too_long", version), bytes(data[start:pos + 1]))


def decode_properties(r: _Reader, carrier: int) -> dict:
    """Read a v5 property block, enforcing type, carrier and uniqueness."""
    length = r.vbi("property length")
    r.need(length, "properties")
    end = r.pos + length
    props: dict = {}
    where = "Will Properties" if carrier == P.WILL else _NAMES[carrier]
    while r.pos < end:
        ident = r.vbi("property identifier")
        d = P.BY_ID.get(ident)
        if d is None:
            r.fail("property_unknown", f"unknown property identifier 0x{ident:02X} in {where}")
        if carrier not in d.carriers:
            r.fail("property_not_allowed", f"property {d.name} (0x{ident:02X}) is not allowed in {where}")
        k = d.kind
        if k == P.BYTE:
            v = r.u8(d.name)
        elif k == P.TWO:
            v = r.u16(d.name)
        elif k == P.FOUR:
            v = r.u32(d.name)
        elif k == P.VBI:
            v = r.vbi(d.name)
        elif k == P.UTF8:
            v = r.text(d.name)
        elif k == P.BINARY:
            v = r.binary(d.name)
        else:
            v = (r.text(d.name + " key"), r.text(d.name + " value"))
        if r.pos > end:
            r.fail("length_mismatch", f"property {d.name} runs past the property length ({length})")
        repeatable = d.name == "user_property" or (d.name == "subscription_identifier" and carrier == P.PUBLISH)
        if d.multiple:
            if d.name in props and not repeatable:
                r.fail("property_duplicate", f"property {d.name} appears more than once in {where}", 0x82)
            props.setdefault(d.name, []).append(v)
        else:
            if d.name in props:
                r.fail("property_duplicate", f"property {d.name} appears more than once in {where}", 0x82)
            props[d.name] = v
        _check_property_value(r, d.name, v, where)
    return props


def _check_property_value(r: _Reader, name: str, v, where: str):
    bad = None
    if name in ("payload_format_indicator", "request_problem_information", "request_response_information",
                "retain_available", "wildcard_subscription_available", "subscription_identifier_available",
                "shared_subscription_available", "maximum_qos") and v > 1:
        bad = "must be 0 or 1"
    elif name in ("receive_maximum", "maximum_packet_size") and v == 0:
        bad = "must not be 0"
    elif name == "subscription_identifier" and v == 0:
        bad = "must not be 0"
    elif name == "response_topic" and ("+" in v or "#" in v):
        r.fail("response_topic_wildcard", f"response_topic {v!r} in {where} contains a wildcard", 0x82)
    elif name == "topic_alias" and v == 0:
        r.fail("topic_alias_zero", f"topic_alias=0 in {where}", 0x82)
    if bad:
        r.fail("property_value", f"{name}={v} in {where} {bad}", 0x82)


_NAMES = {1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC", 6: "PUBREL", 7: "PUBCOMP",
          8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK", 12: "PINGREQ", 13: "PINGRESP",
          14: "DISCONNECT", 15: "AUTH"}


def _check_filter(r: _Reader, f: str):
    if not f:
        r.fail("topic_empty", "topic filter is empty")
    levels = f.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            r.fail("filter_multi_level", f"topic filter {f!r}: '#' must be a whole level and the last one")
        if "+" in level and level != "+":
            r.fail("filter_single_level", f"topic filter {f!r}: '+' must occupy a whole level")


def _check_reason(r: _Reader, t: int, code: int):
    allowed = ALLOWED_REASONS.get(t)
    if allowed is not None and code not in allowed:
        r.fail("reason_code", f"reason code {reason_name(code)} is not valid in {_NAMES[t]}", 0x82)


def _check_packet_id(r: _Reader, pid: int, t: int):
    if pid == 0:
        r.fail("packet_id_zero", f"{_NAMES[t]} has packet identifier 0; it must be non-zero", 0x82)


def _decode_connect(r: _Reader, flags: int) -> Connect:
    name = r.text("protocol name")
    level = r.u8("protocol level")
    if level not in _PROTOCOL_NAMES:
        r.version = MQTT_5 if level > MQTT_5 else MQTT_3_1_1
        r.fail("connect_protocol_level", f"unsupported protocol level {level} (known: 3, 4, 5)", 0x84)
    r.version = level
    if name != _PROTOCOL_NAMES[level]:
        r.fail("connect_protocol_name",
               f"protocol name {name!r} does not match level {level} (expected {_PROTOCOL_NAMES[level]!r})", 0x84)
    cflags = r.u8("connect flags")
    keepalive = r.u16("keep alive")
    if cflags & 1:
        r.fail("connect_reserved", "CONNECT flags reserved bit 0 is set", 0x81)
    will_flag = bool(cflags & 0x04)
    will_qos = (cflags >> 3) & 3
    will_retain = bool(cflags & 0x20)
    if not will_flag and will_qos:
        r.fail("will_flags_without_will", f"Will QoS is {will_qos} but the Will Flag is 0")
    if not will_flag and will_retain:
        r.fail("will_retain_without_will", "Will Retain is 1 but the Will Flag is 0")
    if will_qos == 3:
        r.fail("will_qos3", "Will QoS is 3")
    has_user, has_pass = bool(cflags & 0x80), bool(cflags & 0x40)
    if level < MQTT_5 and has_pass and not has_user:
        r.fail("password_without_username", "Password Flag is 1 but User Name Flag is 0")
    props = decode_properties(r, P.CONNECT) if level >= MQTT_5 else {}
    client_id = r.text("client identifier")
    will = None
    if will_flag:
        wprops = decode_properties(r, P.WILL) if level >= MQTT_5 else {}
        wtopic = r.text("will topic")
        _check_topic_name(r, wtopic, "will topic")
        if not wtopic:  # a topic name, so at least one character; no alias can stand in for it
            r.fail("topic_empty", "will topic is empty", 0x82)
        will = Will(wtopic, r.binary("will payload"), will_qos, will_retain, wprops)
    username = r.text("user name") if has_user else None
    password = r.binary("password") if has_pass else None
    r.done("CONNECT payload")
    # protocol_name stays None: it matched the default for the level (checked above)
    return Connect(client_id, bool(cflags & 0x02), keepalive, username, password, will, props, level)


def _check_topic_name(r: _Reader, topic: str, what: str):
    if "+" in topic or "#" in topic:
        r.fail("publish_wildcard", f"{what} {topic!r} contains a wildcard character", 0x82)


def _decode_connack(r: _Reader, flags: int) -> Connack:
    ack = r.u8("acknowledge flags")
    if r.version == MQTT_3_1:
        ack_reserved, session_present = ack, False  # 3.1: the first byte is reserved (and 0)
    else:
        ack_reserved, session_present = ack & 0xFE, bool(ack & 1)
    if ack_reserved:
        r.fail("connack_reserved", f"CONNACK acknowledge flags reserved bits are set (0x{ack:02X})")
    code = r.u8("return code")
    # A server that only speaks 3.1.x answers a v5 CONNECT with its own 2-byte CONNACK (return code 1,
    # unacceptable protocol version); decode that as what it is rather than as a malformed v5 CONNACK.
    legacy_refusal = r.version >= MQTT_5 and code == 1 and len(r.data) == 2
    if r.version >= MQTT_5 and not legacy_refusal:
        _check_reason(r, 2, code)
    if code and session_present:
        r.fail("connack_session_present_refused", f"CONNACK refuses the connection (0x{code:02X}) "
               "but has Session Present 1", 0x82)
    props = {}
    if r.version >= MQTT_5 and not legacy_refusal:
        props = decode_properties(r, P.CONNACK)
    r.done("CONNACK")
    return Connack(session_present, code, props)


def _decode_publish(r: _Reader, flags: int) -> Publish:
    qos = (flags >> 1) & 3
    if qos == 3:
        r.fail("publish_qos3", "PUBLISH has both QoS bits set (QoS 3)")
    dup = bool(flags & 8)
    if dup and qos == 0:
        r.fail("publish_dup_qos0", "PUBLISH has DUP=1 with QoS 0", 0x81)
    topic = r.text("topic name")
    _check_topic_name(r, topic, "topic name")
    pid = None
    if qos:
        pid = r.u16("packet identifier")
        _check_packet_id(r, pid, 3)
    props = {}
    if r.version >= MQTT_5:
        props = decode_properties(r, P.PUBLISH)
    if not topic and "topic_alias" not in props:
        r.fail("topic_empty", "PUBLISH topic name is empty" +
               (" and there is no Topic Alias" if r.version >= MQTT_5 else ""), 0x82)
    return Publish(topic, bytes(r.data[r.pos:]), qos, bool(flags & 1), dup, pid, props)


def _decode_ack(r: _Reader, flags: int, t: int):
    pid = r.u16("packet identifier")
    _check_packet_id(r, pid, t)
    code, props = 0, {}
    if r.version >= MQTT_5 and r.remaining():
        code = r.u8("reason code")
        _check_reason(r, t, code)
        if r.remaining():
            props = decode_properties(r, t)
    r.done(_NAMES[t])
    return _ACK_CLASSES[t](pid, code, props)


def _decode_subscribe(r: _Reader, flags: int) -> Subscribe:
    pid = r.u16("packet identifier")
    _check_packet_id(r, pid, 8)
    props = decode_properties(r, P.SUBSCRIBE) if r.version >= MQTT_5 else {}
    subs = []
    while r.remaining():
        f = r.text("topic filter")
        _check_filter(r, f)
        opts = r.u8("subscription options")
        qos = opts & 3
        if r.version >= MQTT_5:
            reserved = opts & 0xC0
            rh = (opts >> 4) & 3
            if rh == 3:
                r.fail("retain_handling3", f"subscription to {f!r} has Retain Handling 3", 0x82)
            sub = Subscription(f, qos, bool(opts & 4), bool(opts & 8), rh, reserved)
        else:
            reserved = opts & 0xFC
            sub = Subscription(f, qos, reserved=reserved)
        if reserved:
            r.fail("subscribe_reserved", f"subscription to {f!r} has reserved option bits set (0x{opts:02X})")
        if qos == 3:
            r.fail("subscribe_qos3", f"subscription to {f!r} requests QoS 3")
        subs.append(sub)
    if not subs:
        r.fail("subscribe_empty", "SUBSCRIBE has no topic filters", 0x82)
    return Subscribe(pid, subs, props)


def _decode_suback(r: _Reader, flags: int) -> Suback:
    pid = r.u16("packet identifier")
    _check_packet_id(r, pid, 9)
    props = decode_properties(r, P.SUBACK) if r.version >= MQTT_5 else {}
    codes = list(r.data[r.pos:])
    for c in codes:
        if r.version >= MQTT_5:
            _check_reason(r, 9, c)
        elif c not in _SUBACK_311:
            r.fail("suback_return_code", f"SUBACK return code 0x{c:02X} is not 0x00, 0x01, 0x02 or 0x80")
    return Suback(pid, codes, props)


def _decode_unsubscribe(r: _Reader, flags: int) -> Unsubscribe:
    pid = r.u16("packet identifier")
    _check_packet_id(r, pid, 10)
    props = decode_properties(r, P.UNSUBSCRIBE) if r.version >= MQTT_5 else {}
    filters = []
    while r.remaining():
        f = r.text("topic filter")
        _check_filter(r, f)
        filters.append(f)
    if not filters:
        r.fail("unsubscribe_empty", "UNSUBSCRIBE has no topic filters", 0x82)
    return Unsubscribe(pid, filters, props)


def _decode_unsuback(r: _Reader, flags: int) -> Unsuback:
    pid = r.u16("packet identifier")
    _check_packet_id(r, pid, 11)
    if r.version < MQTT_5:
        r.done("UNSUBACK")
        return Unsuback(pid)
    props = decode_properties(r, P.UNSUBACK)
    codes = list(r.data[r.pos:])
    for c in codes:
        _check_reason(r, 11, c)
    return Unsuback(pid, codes, props)


def _decode_empty(cls):
    def decode_(r: _Reader, flags: int):
        r.done(cls.__name__.upper())
        return cls()
    return decode_


def _decode_reason(cls, t):
    def decode_(r: _Reader, flags: int):
        code, props = 0, {}
        if r.version >= MQTT_5 and r.remaining():
            code = r.u8("reason code")
            _check_reason(r, t, code)
            if r.remaining():
                props = decode_properties(r, t)
        r.done(_NAMES[t])
        return cls(code, props)
    return decode_


_DECODERS = {
    1: _decode_connect, 2: _decode_connack, 3: _decode_publish,
    4: lambda r, f: _decode_ack(r, f, 4), 5: lambda r, f: _decode_ack(r, f, 5),
    6: lambda r, f: _decode_ack(r, f, 6), 7: lambda r, f: _decode_ack(r, f, 7),
    8: _decode_subscribe, 9: _decode_suback, 10: _decode_unsubscribe, 11: _decode_unsuback,
    12: _decode_empty(Pingreq), 13: _decode_empty(Pingresp), 14: _decode_reason(Disconnect, 14),
    15: _decode_reason(Auth, 15),
}


def _decode_one(first: int, body: bytes, version: int, raw: bytes):
    t = first >> 4
    flags = first & 0x0F
    if t == 0 or (t == 15 and version < MQTT_5):
        raise ProtocolError(f"reserved packet type {t}", ref("reserved_type", version), raw)
    if t != 3:
        expected = _FIXED_FLAGS[t]
        if flags != expected:
            raise ProtocolError(
                f"{_NAMES[t]} fixed-header flags are 0b{flags:04b}; they must be 0b{expected:04b}",
                ref("reserved_flags", version), raw)
    return _DECODERS[t](_Reader(body, version, raw), flags)


class Decoder:
    """Streaming decoder: feed() bytes in chunks of any size, get whole packets back.

    `version` is the protocol level used for packets other than CONNECT; decoding a CONNECT sets
    it (a server-side decoder learns the version that way). After a ProtocolError the stream
    cannot be resynchronised; the decoder stays failed and re-raises.

    Packets are decoded straight from the chunk they arrived in: a PUBLISH payload is the one copy
    made of its bytes. Only a packet split across chunks is assembled in a buffer first.
    """

    __slots__ = ("version", "max_packet_size", "_buf", "error")

    def __init__(self, version: int = MQTT_3_1_1, max_packet_size: int | None = None):
        self.version = version
        self.max_packet_size = max_packet_size
        self._buf = bytearray()  # the start of a packet that the next chunk completes
        self.error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a whole packet."""
        return len(self._buf)

    def feed(self, data: bytes) -> list:
        if self._buf or self.error is not None or type(data) is not bytes or self.version >= MQTT_5 \
                or self.max_packet_size is not None:
            return self._feed(data, False)
        # The hot path, inline (a call costs as much as decoding a field here): whole 3.1.x PUBLISH packets
        # whose topic was decoded and checked before, and 2-byte acks. Anything else goes on in _feed(),
        # which checks everything and raises the errors.
        out: list = []
        n = len(data)
        pos = 0
        topics = _TOPICS_IN
        while n - pos >= 4:
            first = data[pos]
            length = data[pos + 1]
            body = pos + 2
            if length >= 128:
                b = data[body]
                if b >= 128 or n - pos < 5:
                    break
                length = (length & 127) | (b << 7)
                body += 1
            stop = body + length
            if stop > n:
                break
            if first & 0xF0 == 0x30:
                qos = (first >> 1) & 3
                s = body + 2
                e = s + ((data[body] << 8) | data[body + 1])
                if qos:
                    if qos == 3 or e + 2 > stop:
                        break
                    topic = topics.get(data[s:e])
                    pid = (data[e] << 8) | data[e + 1]
                    if topic is None or not pid:
                        break
                    out.append(Publish(topic, data[e + 2:stop], qos, bool(first & 1), bool(first & 8), pid, {}))
                else:
                    if first & 8 or e > stop:
                        break
                    topic = topics.get(data[s:e])
                    if topic is None:
                        break
                    out.append(Publish(topic, data[e:stop], 0, bool(first & 1), False, None, {}))
            elif length == 2 and first in _ACK_FIRST:
                pid = (data[body] << 8) | data[body + 1]
                if not pid:
                    break
                out.append(_ACK_FIRST[first](pid, 0, {}))
            else:
                break
            pos = stop
        if pos == n:
            return out
        return self._feed(data, False, pos, out)

    def feed_raw(self, data: bytes) -> list[tuple[object, bytes]]:
        """Like feed(), but pairs each packet with its exact bytes (for logs, pcap and proxies).

        On a malformed packet, raises ProtocolError whose `.decoded` holds the packets that
        preceded it in this call (and `.decoded_raw` the (packet, bytes) pairs).
        """
        return self._feed(data, True)

    def _feed(self, data, raw: bool, pos: int = 0, out: list | None = None) -> list:
        """Decode `data` from `pos` (earlier packets of it already in `out`)."""
        if self.error is not None:
            raise self.error
        if type(data) is not bytes:
            data = bytes(data)
        if out is None:
            out = []
        version = self.version
        done = b""  # the completed earlier packet, for the error path
        if self._buf:
            buf = self._buf
            # Complete the packet an earlier chunk started, copying only its own bytes from this chunk.
            head = bytes(buf[:5]) + data[:5] if len(buf) < 5 else buf
            if len(head) < 2:
                buf += data
                return out
            try:
                length, end = (head[1], 2) if head[1] < 128 else _peek_vbi(head, 1, self.version)
                if end >= 0:
                    self._check_size(end + length, head[:end])
            except ProtocolError as exc:
                self._fail(exc, out, raw, bytes(buf) + data, b"", version)
            if end < 0 or end + length - len(buf) > len(data):
                buf += data
                return out
            pos = end + length - len(buf)
            buf += memoryview(data)[:pos]
            done = bytes(buf)
            buf.clear()
            try:
                self._parse(done, 0, out, raw)
            except ProtocolError as exc:
                self._fail(exc, out, raw, done + data[pos:], b"", version)
        start = pos
        try:
            pos = self._parse(data, pos, out, raw)
        except ProtocolError as exc:
            self._fail(exc, out, raw, data[exc.at:], done + data[start:exc.at], version)
        if pos < len(data):
            self._buf += memoryview(data)[pos:]
        return out

    def _check_size(self, size: int, header) -> None:
        if self.max_packet_size is not None and size > self.max_packet_size:
            raise ProtocolError(f"packet of {size} bytes exceeds Maximum Packet Size {self.max_packet_size}",
                                ref("packet_too_large", self.version), bytes(header), 0x95)

    def _fail(self, exc: ProtocolError, out: list, raw: bool, rest: bytes, good: bytes, version: int):
        """Record the error: the buffer keeps `rest`, the bytes from the bad packet on; the decoder stays
        failed. `good` are the bytes of the packets decoded before it (their raw bytes, for feed())."""
        if raw:
            exc.decoded, exc.decoded_raw = [p for p, _ in out], out
        else:
            exc.decoded, exc.decoded_raw = out, Decoder(version).feed_raw(good) if good else []
        self.error = exc
        self._buf = bytearray(rest)
        raise exc

    def _parse(self, data: bytes, pos: int, out: list, raw: bool) -> int:
        """Decode the whole packets of `data` from `pos`; returns where the first incomplete one starts.
        A ProtocolError carries `.at`, the offset of the packet that broke."""
        n = len(data)
        version = self.version
        limit = self.max_packet_size
        append = out.append
        start = pos
        try:
            while n - pos >= 2:
                start = pos
                first = data[pos]
                b = data[pos + 1]
                if b < 128:
                    length, hdr = b, 2
                else:
                    length, end = _peek_vbi(data, pos + 1, version)
                    if end < 0:
                        break
                    hdr = end - pos
                if limit is not None and hdr + length > limit:
                    self._check_size(hdr + length, data[pos:pos + hdr])
                stop = pos + hdr + length
                if stop > n:
                    break
                packet = _fast_decode(first, data, pos + hdr, stop, version)
                if packet is None or raw:
                    whole = data if (stop - pos) == n else data[pos:stop]
                    if packet is None:
                        packet = _decode_one(first, whole[hdr:], version, whole)
                        if first >> 4 == 1:
                            version = self.version = packet.protocol_level
                    append((packet, whole) if raw else packet)
                else:
                    append(packet)
                pos = stop
        except ProtocolError as exc:
            exc.at = start
            raise
        return pos


_TOPICS_IN: dict[bytes, str] = {}  # topic bytes already checked (UTF-8, no U+0000, no wildcard) -> str


def _fast_decode(first: int, data: bytes, start: int, stop: int, version: int):
    """The common, valid cases of PUBLISH and the 2-byte acks, decoded inline from data[start:stop]
    (the packet's body).

    Returns None for anything unusual, which then takes the full, checking path (so every
    error is still raised there, with its statement)."""
    t = first >> 4
    if t == 3:
        if version >= MQTT_5 or stop - start < 2:
            return None
        qos = (first >> 1) & 3
        if qos == 3 or (qos == 0 and first & 8):
            return None
        s = start + 2
        end = s + ((data[start] << 8) | data[start + 1])
        if end == s or end + (2 if qos else 0) > stop:
            return None
        raw_topic = data[s:end]
        topic = _TOPICS_IN.get(raw_topic)
        if topic is None:
            try:
                topic = raw_topic.decode("utf-8")
            except UnicodeDecodeError:
                return None
            if "\x00" in topic or "+" in topic or "#" in topic:
                return None
            if len(_TOPICS_IN) >= _TOPIC_CACHE_MAX:
                _TOPICS_IN.clear()
            _TOPICS_IN[raw_topic] = topic
        pid = None
        if qos:
            pid = (data[end] << 8) | data[end + 1]
            if not pid:
                return None
            end += 2
        return Publish(topic, data[end:stop], qos, bool(first & 1), bool(first & 8), pid, {})
    if stop - start == 2 and 4 <= t <= 7 and (first & 0x0F) == _FIXED_FLAGS[t]:
        pid = (data[start] << 8) | data[start + 1]
        if pid:
            return _ACK_CLASSES[t](pid, 0, {})
    return None


def _peek_vbi(buf, pos: int, version: int) -> tuple[int, int]:
    """Remaining length at buf[pos:]; (-1, -1) if more bytes are needed."""
    value = 0
    for i in range(4):
        if pos + i >= len(buf):
            return -1, -1
        b = buf[pos + i]
        value |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            if i and b == 0 and version >= MQTT_5:
                raise ProtocolError(f"remaining length is not minimally encoded ({i + 1} bytes for {value})",
                                    ref("vbi_not_minimal", version), bytes(buf[pos - 1:pos + i + 1]))
            return value, pos + i + 1
    raise ProtocolError("remaining length Variable Byte Integer is longer than 4 bytes",
                        ref("vbi_too_long", version), bytes(buf[pos - 1:pos + 5]))


def decode(data: bytes, version: int = MQTT_3_1_1):
    """Decode exactly one whole packet."""
    d = Decoder(version)
    packets = d.feed(data)
    if len(packets) != 1 or d.buffered:
        raise ProtocolError(f"expected exactly one whole packet, got {len(packets)} and {d.buffered} "
                            f"leftover byte(s)", ref("length_mismatch", version), data)
    return packets[0]


# ----------------------------------------------------------------------------------- display

def summary(packet) -> str:
    """One line per packet, for traces and logs: type, key fields, sizes; no payload dump."""
    t = packet.TYPE
    name = t.name
    if t == 3:
        parts = [f"topic={packet.topic!r}", f"qos={packet.qos}"]
        if packet.packet_id is not None:
            parts.append(f"pid={packet.packet_id}")
        if packet.retain:
            parts.append("retain")
        if packet.dup:
            parts.append("dup")
        payload = packet.payload
        shown = payload[:32]
        parts.append(f"payload={shown!r}{'…' if len(payload) > 32 else ''} ({len(payload)} B)")
    elif t == 1:
        parts = [f"client_id={packet.client_id!r}", f"v={packet.protocol_level}",
                 f"clean={int(packet.clean)}", f"keepalive={packet.keepalive}"]
        if packet.username is not None:
            parts.append(f"user={packet.username!r}")
        if packet.will is not None:
            w = packet.will
            parts.append(f"will={w.topic!r}/q{w.qos}{'/retain' if w.retain else ''}")
    elif t == 2:
        rc = packet.reason_code
        # v5 CONNACK codes are 0 or >= 0x80, so 1-5 are MQTT 3.1.x return codes (also a 3.1.x refusal of a v5 CONNECT)
        code = ConnackReturnCode(rc).name if 0 < rc <= max(ConnackReturnCode) else reason_name(rc)
        parts = [f"session_present={int(packet.session_present)}", f"rc={code}"]
    elif t in (4, 5, 6, 7):
        parts = [f"pid={packet.packet_id}"]
        if packet.reason_code:
            parts.append(f"rc={reason_name(packet.reason_code)}")
    elif t == 8:
        parts = [f"pid={packet.packet_id}"] + [f"{s.topic_filter!r}/q{s.qos}" for s in packet.subscriptions]
    elif t in (9, 11):
        parts = [f"pid={packet.packet_id}", "rc=[" + ",".join(f"0x{c:02X}" for c in packet.reason_codes) + "]"]
    elif t == 10:
        parts = [f"pid={packet.packet_id}"] + [repr(f) for f in packet.topic_filters]
    elif t in (14, 15):
        parts = [f"rc={reason_name(packet.reason_code)}"] if packet.reason_code else []
    else:
        parts = []
    props = getattr(packet, "properties", None)
    if props:
        parts.append("props={" + ", ".join(f"{k}={v!r}" for k, v in props.items()) + "}")
    return f"{name}({', '.join(parts)})"
