"""Malformed input: the decoder rejects it with the right statement, and never crashes or hangs.

Every malformed packet is built with the encoder (field values or its flags / remaining_length /
raw_properties / raw_body overrides), so lengths are computed, never counted by hand.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.core import properties as P
from harness.core.codec import Decoder, decode, encode, encode_properties, encode_vbi
from harness.core.packets import (
    MQTT_3_1, MQTT_3_1_1, MQTT_5, Auth, Connack, Connect, Disconnect, PacketType, Pingreq, Pingresp, Puback,
    Pubcomp, Publish, Pubrec, Pubrel, Suback, Subscribe, Subscription, Unsuback, Unsubscribe, Will,
)
from harness.core.reason_codes import ALLOWED
from harness.core.statements import ref
from harness.errors import ProtocolError
from bench.fuzz_codec import feed_all
from strategies import packets

V4_V5 = pytest.mark.parametrize("version", [MQTT_3_1_1, MQTT_5])


def rejects(wire: bytes, version: int, check: str) -> ProtocolError:
    """Feed `wire` to a fresh decoder; it must fail with the statement the table gives `check`."""
    decoder = Decoder(version)
    with pytest.raises(ProtocolError) as info:
        decoder.feed(wire)
    assert info.value.statement == ref(check, version), str(info.value)
    with pytest.raises(ProtocolError):  # a failed stream stays failed
        decoder.feed(b"")
    return info.value


def body_of(wire: bytes) -> bytes:
    """Everything after the fixed header."""
    i = 1
    while wire[i] & 0x80:
        i += 1
    return wire[i + 1:]


def nonminimal_vbi(value: int, width: int) -> bytes:
    """`value` as a Variable Byte Integer padded to `width` bytes with zero continuation digits."""
    digits = bytearray(encode_vbi(value))
    digits[-1] |= 0x80
    digits += b"\x80" * (width - len(digits) - 1) + b"\x00"
    return bytes(digits)


def prop(name: str, value) -> bytes:
    """One encoded property (identifier + value), without the block's length prefix."""
    return body_of(b"\x00" + encode_properties({name: value}))


def examples(version: int) -> dict[PacketType, object]:
    """One valid packet per type, with every optional part present so truncation has work to do."""
    v5 = version >= MQTT_5
    reason = {"reason_string": "why"} if v5 else {}
    out = {
        PacketType.CONNECT: Connect("cid", False, 30, "user", b"pw",
                                    Will("w/t", b"bye", 1, True, {"will_delay_interval": 5} if v5 else {}),
                                    {"receive_maximum": 10} if v5 else {}, version),
        PacketType.CONNACK: Connack(True, 0, {"maximum_qos": 1} if v5 else {}),
        PacketType.PUBLISH: Publish("a/b", b"payload", 1, False, False, 7, {"content_type": "t"} if v5 else {}),
        PacketType.PUBACK: Puback(7, 0x10 if v5 else 0, reason),
        PacketType.PUBREC: Pubrec(7, 0x10 if v5 else 0, reason),
        PacketType.PUBREL: Pubrel(7, 0x92 if v5 else 0, reason),
        PacketType.PUBCOMP: Pubcomp(7, 0x92 if v5 else 0, reason),
        PacketType.SUBSCRIBE: Subscribe(7, [Subscription("a/+", 1), Subscription("#", 2)],
                                        {"subscription_identifier": [3]} if v5 else {}),
        PacketType.SUBACK: Suback(7, [1, 0x80], reason),
        PacketType.UNSUBSCRIBE: Unsubscribe(7, ["a/+", "#"]),
        PacketType.UNSUBACK: Unsuback(7, [0, 0x11] if v5 else [], reason),
        PacketType.PINGREQ: Pingreq(),
        PacketType.PINGRESP: Pingresp(),
        PacketType.DISCONNECT: Disconnect(0x8B, reason) if v5 else Disconnect(),
    }
    if v5:
        out[PacketType.AUTH] = Auth(0x18, {"authentication_method": "m", "authentication_data": b"d"})
    return out


@V4_V5
def test_examples_are_valid(version):
    for packet in examples(version).values():
        assert decode(encode(packet, version), version) == packet


# ------------------------------------------------------------------------------ fixed header

# The required flag nibble per type (3.1.1 §2.2.2, 5.0 §2.1.3), restated here as the test's oracle.
FIXED = {1: 0, 2: 0, 4: 0, 5: 0, 6: 2, 7: 0, 8: 2, 9: 0, 10: 2, 11: 0, 12: 0, 13: 0, 14: 0, 15: 0}


@V4_V5
def test_reserved_fixed_header_flags(version):
    for t, packet in examples(version).items():
        if t is PacketType.PUBLISH:
            continue
        for flags in range(16):
            if flags != FIXED[t]:
                rejects(encode(packet, version, flags=flags), version, "reserved_flags")


@V4_V5
def test_reserved_packet_types(version):
    rejects(bytes([0x00]) + encode_vbi(0), version, "reserved_type")
    if version < MQTT_5:  # AUTH (15) does not exist before 5.0
        rejects(encode(Auth(), MQTT_5), version, "reserved_type")


@V4_V5
def test_publish_qos3_and_dup_with_qos0(version):
    rejects(encode(Publish("a", b"x", 1, packet_id=1), version, flags=0b0110), version, "publish_qos3")
    rejects(encode(Publish("a", b"x", dup=True), version), version, "publish_dup_qos0")


@V4_V5
def test_remaining_length_longer_than_four_bytes(version):
    rejects(encode(Pingreq(), version, remaining_length=b"\x80\x80\x80\x80\x00"), version, "vbi_too_long")
    # Rejected as soon as the fourth byte still has its continuation bit, without waiting for more.
    rejects(encode(Pingreq(), version, remaining_length=b"\xff\xff\xff\xff"), version, "vbi_too_long")


@V4_V5
@pytest.mark.parametrize("value,width", [(0, 2), (2, 2), (2, 4), (127, 3), (200, 3)])
def test_remaining_length_not_minimal(version, value, width):
    packet = Publish("a", b"x" * (value - 3)) if value > 3 else Puback(1) if value == 2 else Pingreq()
    wire = encode(packet, version, remaining_length=nonminimal_vbi(value, width))
    if version >= MQTT_5:
        rejects(wire, version, "vbi_not_minimal")
    else:  # 3.1.1 states no minimal-encoding rule, so the decoder accepts the padded length
        assert decode(wire, version) == packet


def test_property_length_and_identifier_not_minimal():
    v = MQTT_5
    head = body_of(encode(Puback(1, 0x10), v))  # packet id + reason code
    rejects(encode(Puback(1), v, raw_body=head + nonminimal_vbi(0, 2)), v, "vbi_not_minimal")
    reason = prop("reason_string", "x")
    rejects(encode(Puback(1), v, raw_body=head + nonminimal_vbi(len(reason), 2) + reason), v, "vbi_not_minimal")
    padded_id = nonminimal_vbi(reason[0], 2) + reason[1:]
    rejects(encode(Puback(1, 0x10), v, raw_properties=padded_id), v, "vbi_not_minimal")
    sub_id = nonminimal_vbi(5, 3)  # a VBI-valued property value
    rejects(encode(Subscribe(1, [Subscription("a")]), v, raw_properties=bytes([0x0B]) + sub_id),
            v, "vbi_not_minimal")


# ------------------------------------------------------------------------------ strings

BAD_UTF8 = {
    "bad continuation": b"a\xc3\x28",
    "lone continuation": b"\x80",
    "encoded surrogate U+D800": b"a\xed\xa0\x80",
    "overlong '/'": b"\xc0\xaf",
    "overlong 3-byte": b"\xe0\x80\xaf",
    "above U+10FFFF": b"\xf4\x90\x80\x80",
    "truncated sequence": b"a\xe2\x82",
}


def _string_sites(version: int, text) -> list:
    """Packets that carry `text` in each kind of UTF-8 field."""
    sites = [
        Publish(text, b"p"),
        Connect(text, protocol_level=version),
        Connect("c", username=text, protocol_level=version),
        Connect("c", will=Will(text), protocol_level=version),
        Subscribe(1, [Subscription(text)]),
        Unsubscribe(1, [text]),
    ]
    if version >= MQTT_5:
        sites += [
            Puback(1, 0x10, {"user_property": [(text, "v")]}),
            Puback(1, 0x10, {"user_property": [("k", text)]}),
            Disconnect(0x80, {"reason_string": text}),
            Publish("t", b"", properties={"content_type": text}),
            Connect("c", will=Will("t", properties={"response_topic": text}), protocol_level=version),
        ]
    return sites


@V4_V5
@pytest.mark.parametrize("raw", BAD_UTF8.values(), ids=BAD_UTF8.keys())
def test_ill_formed_utf8(version, raw):
    for packet in _string_sites(version, raw):
        rejects(encode(packet, version), version, "utf8_ill_formed")


@V4_V5
def test_surrogate_given_as_str(version):
    # The encoder writes lone surrogates as-is (surrogatepass): the CESU-style bytes must not pass.
    for packet in _string_sites(version, "a\ud800"):
        rejects(encode(packet, version), version, "utf8_ill_formed")


@V4_V5
def test_null_character(version):
    for packet in _string_sites(version, "a\x00b"):
        rejects(encode(packet, version), version, "utf8_null")


@V4_V5
@pytest.mark.parametrize("topic", ["+", "#", "a/+", "a/#", "a/+/b", "sport+", "a#"])
def test_wildcard_in_topic_name(version, topic):
    rejects(encode(Publish(topic, b"x"), version), version, "publish_wildcard")
    rejects(encode(Connect("c", will=Will(topic), protocol_level=version), version), version, "publish_wildcard")


@V4_V5
def test_empty_topic_name(version):
    rejects(encode(Publish("", b"x"), version), version, "topic_empty")
    rejects(encode(Connect("c", will=Will(""), protocol_level=version), version), version, "topic_empty")
    rejects(encode(Subscribe(1, [Subscription("")]), version), version, "topic_empty")
    rejects(encode(Unsubscribe(1, [""]), version), version, "topic_empty")


def test_empty_topic_name_with_alias_is_valid():
    p = Publish("", b"x", properties={"topic_alias": 3})
    assert decode(encode(p, MQTT_5), MQTT_5) == p


# ------------------------------------------------------------------------------ packet ids

@V4_V5
def test_packet_id_zero(version):
    zero = [Publish("a", b"", 1, packet_id=0), Publish("a", b"", 2, packet_id=0),
            Subscribe(0, [Subscription("a")]), Unsubscribe(0, ["a"]), Puback(0), Pubrec(0), Pubrel(0),
            Pubcomp(0), Suback(0, [0]), Unsuback(0, [0] if version >= MQTT_5 else [])]
    for packet in zero:
        rejects(encode(packet, version), version, "packet_id_zero")


# ------------------------------------------------------------------------------ v5 properties

def _carrier_packet(carrier: int, props: dict):
    """A valid v5 packet whose `carrier` property block holds `props`."""
    if carrier == P.WILL:
        return Connect("c", will=Will("t", properties=props), protocol_level=MQTT_5)
    if carrier == PacketType.CONNECT:
        return Connect("c", properties=props, protocol_level=MQTT_5)
    packet = examples(MQTT_5)[PacketType(carrier)]
    packet.properties = props
    return packet


CARRIERS = [P.WILL] + [t for t in PacketType if t not in (PacketType.PINGREQ, PacketType.PINGRESP)]
# A valid value of each wire type (the only VBI property, subscription_identifier, is list-valued).
SAMPLE_VALUE = {P.BYTE: 1, P.TWO: 1, P.FOUR: 1, P.VBI: [1], P.UTF8: "x", P.BINARY: b"x", P.PAIR: [("k", "v")]}


@pytest.mark.parametrize("carrier", CARRIERS, ids=lambda c: "WILL" if c == P.WILL else PacketType(c).name)
def test_property_not_allowed_for_the_packet(carrier):
    checked = 0
    for name, d in P.BY_NAME.items():
        wire = encode(_carrier_packet(carrier, {name: SAMPLE_VALUE[d.kind]}), MQTT_5)
        if carrier in d.carriers:
            decode(wire, MQTT_5)  # allowed: decodes
        else:
            rejects(wire, MQTT_5, "property_not_allowed")
            checked += 1
    assert checked > 0


def test_property_not_allowed_named_cases():
    rejects(encode(Connect("c", protocol_level=MQTT_5), MQTT_5, raw_properties=prop("topic_alias", 1)),
            MQTT_5, "property_not_allowed")
    rejects(encode(Publish("a", b"x"), MQTT_5, raw_properties=prop("will_delay_interval", 1)),
            MQTT_5, "property_not_allowed")


def test_duplicate_property():
    v = MQTT_5
    twice = prop("reason_string", "a") + prop("reason_string", "b")
    rejects(encode(Puback(1, 0x10), v, raw_properties=twice), v, "property_duplicate")
    twice = prop("topic_alias", 1) + prop("topic_alias", 2)
    rejects(encode(Publish("a", b"x"), v, raw_properties=twice), v, "property_duplicate")
    twice = prop("subscription_identifier", [1]) + prop("subscription_identifier", [2])
    rejects(encode(Subscribe(1, [Subscription("a")]), v, raw_properties=twice), v, "property_duplicate")
    # Repeatable where the spec allows it.
    ok = Publish("a", b"x", properties={"subscription_identifier": [1, 2], "user_property": [("k", "1"), ("k", "2")]})
    assert decode(encode(ok, v), v) == ok


def test_unknown_property_identifier():
    known = set(P.BY_ID)
    for ident in [i for i in range(1, 0x80) if i not in known] + [0x80, 0x3FFF]:
        value = encode_vbi(1)  # a plausible value; the identifier alone must be enough to reject it
        rejects(encode(Puback(1, 0x10), MQTT_5, raw_properties=encode_vbi(ident) + value),
                MQTT_5, "property_unknown")


@pytest.mark.parametrize("name,value", [
    ("payload_format_indicator", 2), ("maximum_qos", 2), ("retain_available", 7),
    ("receive_maximum", 0), ("maximum_packet_size", 0), ("subscription_identifier", [0]),
])
def test_property_value_out_of_range(name, value):
    carrier = min(P.BY_NAME[name].carriers)
    rejects(encode(_carrier_packet(carrier, {name: value}), MQTT_5), MQTT_5, "property_value")


def test_topic_alias_zero():
    rejects(encode(Publish("a", b"x", properties={"topic_alias": 0}), MQTT_5), MQTT_5, "topic_alias_zero")


# ------------------------------------------------------------------------------ CONNECT / CONNACK

@pytest.mark.parametrize("version", [MQTT_3_1, MQTT_3_1_1, MQTT_5])
def test_connect_protocol_name(version):
    for name in ["MQTX", "mqtt", "", "MQIsdp" if version != MQTT_3_1 else "MQTT"]:
        rejects(encode(Connect("c", protocol_level=version, protocol_name=name)), version,
                "connect_protocol_name")


@pytest.mark.parametrize("level", [0, 1, 2, 6, 255])
def test_connect_unsupported_level(level):
    err = rejects(encode(Connect("c", protocol_level=level)), MQTT_3_1_1, "connect_protocol_level")
    assert err.reason_code == 0x84


@pytest.mark.parametrize("version", [MQTT_3_1, MQTT_3_1_1, MQTT_5])
def test_connect_flags(version):
    def connect(**kw):
        return encode(Connect("c", protocol_level=version, **kw))
    rejects(connect(reserved=True), version, "connect_reserved")
    rejects(connect(will=Will("t", qos=1), will_flag=False), version, "will_flags_without_will")
    rejects(connect(will=Will("t", qos=2), will_flag=False), version, "will_flags_without_will")
    rejects(connect(will=Will("t", retain=True), will_flag=False), version, "will_retain_without_will")
    rejects(connect(will_qos=1), version, "will_flags_without_will")  # the flags alone, no will fields
    rejects(connect(will_retain=True), version, "will_retain_without_will")
    rejects(connect(will=Will("t", qos=3)), version, "will_qos3")
    if version < MQTT_5:
        rejects(connect(password=b"pw"), version, "password_without_username")
    else:  # 5.0 allows a password without a user name
        assert decode(connect(password=b"pw")).password == b"pw"


@pytest.mark.parametrize("version", [MQTT_3_1, MQTT_3_1_1, MQTT_5])
def test_connack_reserved_bits(version):
    rejects(encode(Connack(reserved_flags=0x02), version), version, "connack_reserved")
    if version == MQTT_3_1:  # no Session Present bit in 3.1
        rejects(encode(Connack(session_present=True), version), version, "connack_reserved")


# ------------------------------------------------------------------------------ SUBSCRIBE family

@V4_V5
def test_subscribe_and_unsubscribe_without_filters(version):
    rejects(encode(Subscribe(1, []), version), version, "subscribe_empty")
    rejects(encode(Unsubscribe(1, []), version), version, "unsubscribe_empty")


@V4_V5
def test_subscription_options(version):
    reserved = [0x40, 0x80, 0xC0] if version >= MQTT_5 else [0x04, 0x08, 0x40, 0x80, 0xFC]
    for bits in reserved:
        rejects(encode(Subscribe(1, [Subscription("a", reserved=bits)]), version), version, "subscribe_reserved")
    rejects(encode(Subscribe(1, [Subscription("a", 3)]), version), version, "subscribe_qos3")
    if version >= MQTT_5:
        rejects(encode(Subscribe(1, [Subscription("a", retain_handling=3)]), version), version,
                "retain_handling3")


@V4_V5
@pytest.mark.parametrize("topic_filter,check", [
    ("a/#/b", "filter_multi_level"), ("#x", "filter_multi_level"), ("a#", "filter_multi_level"),
    ("#/", "filter_multi_level"), ("a+", "filter_single_level"), ("+a/b", "filter_single_level"),
    ("a/b+/c", "filter_single_level"),
])
def test_bad_topic_filters(version, topic_filter, check):
    rejects(encode(Subscribe(1, [Subscription("ok"), Subscription(topic_filter)]), version), version, check)
    rejects(encode(Unsubscribe(1, [topic_filter]), version), version, check)


def test_suback_return_codes_311():
    for code in [3, 0x7F, 0x81, 0x8F, 0xFF]:
        rejects(encode(Suback(1, [0, code]), MQTT_3_1_1), MQTT_3_1_1, "suback_return_code")


def _with_reason(t: PacketType, code: int):
    packet = examples(MQTT_5)[t]
    if t in (PacketType.SUBACK, PacketType.UNSUBACK):
        packet.reason_codes = [0, code]
    else:
        packet.reason_code = code
    if t == PacketType.CONNACK and code:
        packet.session_present = False  # a refusal must not claim a session [MQTT-3.2.2-6]
    return packet


@pytest.mark.parametrize("t", sorted(ALLOWED), ids=lambda t: PacketType(t).name)
def test_reason_code_not_allowed_v5(t):
    for code in range(256):
        wire = encode(_with_reason(PacketType(t), code), MQTT_5)
        if code in ALLOWED[t]:
            decode(wire, MQTT_5)
        else:
            rejects(wire, MQTT_5, "reason_code")


# ------------------------------------------------------------------------------ lengths

TRUNCATABLE = [PacketType.CONNECT, PacketType.CONNACK, PacketType.PUBACK, PacketType.PUBREC,
               PacketType.PUBREL, PacketType.PUBCOMP]


@V4_V5
def test_body_shorter_than_fields(version):
    for t in TRUNCATABLE:  # every strict prefix of these bodies ends inside a field
        packet = examples(version)[t]
        body = body_of(encode(packet, version))
        short_forms = {2, 3} if version >= MQTT_5 and t in TRUNCATABLE[2:] else set()  # pid / pid+reason
        for k in range(len(body)):
            if k not in short_forms:
                rejects(encode(packet, version, raw_body=body[:k]), version, "length_mismatch")
    for t in (PacketType.PUBLISH, PacketType.SUBSCRIBE, PacketType.SUBACK, PacketType.UNSUBSCRIBE,
              PacketType.UNSUBACK):
        packet = examples(version)[t]
        for k in (0, 1):  # inside the topic length / packet id
            rejects(encode(packet, version, raw_body=body_of(encode(packet, version))[:k]), version,
                    "length_mismatch")
    publish = Publish("abc", b"", 1, packet_id=1)  # cut inside the topic, then inside the packet id
    for cut in (3, 6):
        rejects(encode(publish, version, raw_body=body_of(encode(publish, version))[:cut]), version,
                "length_mismatch")
    subscribe = Subscribe(1, [Subscription("abc")])  # the options byte is missing
    rejects(encode(subscribe, version, raw_body=body_of(encode(subscribe, version))[:-1]), version,
            "length_mismatch")


def test_property_runs_past_property_length():
    reason = prop("content_type", "abc")
    publish = Publish("a", b"payload", properties={})
    rejects(encode(publish, MQTT_5, raw_properties=reason[:-1]), MQTT_5, "length_mismatch")


@V4_V5
def test_extra_trailing_bytes(version):
    for t, packet in examples(version).items():
        if t in (PacketType.PUBLISH, PacketType.SUBSCRIBE, PacketType.SUBACK, PacketType.UNSUBSCRIBE):
            continue  # their bodies end in a list or a payload: extra bytes are more items
        if t is PacketType.UNSUBACK and version >= MQTT_5:
            continue
        body = body_of(encode(packet, version))
        rejects(encode(packet, version, raw_body=body + b"\x00"), version, "length_mismatch")
        rejects(encode(packet, version, raw_body=body + b"\x00\x00\x00"), version, "length_mismatch")


def test_remaining_length_beyond_the_data_waits_and_decode_reports_it():
    wire = encode(Puback(1), MQTT_3_1_1, remaining_length=3)  # promises one byte more than it has
    decoder = Decoder(MQTT_3_1_1)
    assert decoder.feed(wire) == [] and decoder.buffered == len(wire)
    with pytest.raises(ProtocolError) as info:
        decode(wire)
    assert info.value.statement == ref("length_mismatch", MQTT_3_1_1)


def test_maximum_packet_size():
    decoder = Decoder(MQTT_5, max_packet_size=20)
    with pytest.raises(ProtocolError) as info:
        decoder.feed(encode(Publish("a", b"x" * 30), MQTT_5)[:2])  # rejected from the header alone
    assert info.value.statement == ref("packet_too_large", MQTT_5)
    assert info.value.reason_code == 0x95


def test_error_keeps_the_packets_before_it():
    good = encode(Pingreq()) + encode(Puback(5))
    decoder = Decoder(MQTT_3_1_1)
    with pytest.raises(ProtocolError) as info:
        decoder.feed(good + encode(Puback(0)))
    assert info.value.decoded == [Pingreq(), Puback(5)]
    assert [raw for _, raw in info.value.decoded_raw] == [encode(Pingreq()), encode(Puback(5))]


# ------------------------------------------------------------------------------ fuzz

def _feed_all(version: int, data: bytes, sizes: list[int]) -> None:
    """Feed in chunks; only ProtocolError (naming its statement) may escape, after which the decoder stays failed;
    accepted packets re-encode to themselves. The same check as the long run, bench/fuzz_codec.py."""
    feed_all(version, data, sizes)


# A hang fails the test instead of stalling the run; the bound grows with the profile's examples.
FUZZ_TIMEOUT = pytest.mark.timeout(60 * max(1, settings.default.max_examples // 200))
CHUNKS = st.lists(st.one_of(st.integers(1, 32), st.integers(33, 1 << 16)), min_size=1, max_size=8)


@FUZZ_TIMEOUT
@pytest.mark.parametrize("version", [MQTT_3_1, MQTT_3_1_1, MQTT_5])
@given(data=st.binary(max_size=300), sizes=CHUNKS)
def test_fuzz_random_bytes(version, data, sizes):
    _feed_all(version, data, sizes)


@st.composite
def _mutated(draw, version: int) -> bytes:
    wire = bytearray(b"".join(encode(p, version) for p in draw(st.lists(packets(version), min_size=1, max_size=3))))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "set"]))
        at = draw(st.integers(0, max(0, len(wire) - 1)))
        if kind == "flip" and wire:
            wire[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del wire[at:]
        elif kind == "insert":
            wire[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del wire[at:at + draw(st.integers(1, 8))]
        elif kind == "set" and wire:
            wire[at] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0xFF, 0xC0, 0xED]))
    return bytes(wire)


@FUZZ_TIMEOUT
@pytest.mark.parametrize("version", [MQTT_3_1_1, MQTT_5])
@given(data=st.data(), sizes=CHUNKS)
def test_fuzz_mutated_valid_packets(version, data, sizes):
    _feed_all(version, data.draw(_mutated(version)), sizes)


@pytest.mark.parametrize("version", [MQTT_3_1_1, MQTT_5])
def test_refused_connack_with_session_present(version):
    rejects(encode(Connack(True, 0x05 if version < MQTT_5 else 0x87), version), version,
            "connack_session_present_refused")


def test_response_topic_with_wildcard():
    rejects(encode(Publish("a", b"", properties={"response_topic": "r/+"}), MQTT_5), MQTT_5,
            "response_topic_wildcard")


def test_v5_connect_answered_by_a_311_only_server():
    """A 3.1.1-only server replies to a v5 CONNECT with `20 02 00 01`: decoded as that refusal, not malformed."""
    connack = decode(encode(Connack(False, 1), MQTT_3_1_1), MQTT_5)
    assert (connack.reason_code, connack.properties) == (1, {})
