"""Malformed and out-of-order input (the bad-input catalogue, shared/research/faults.md §4).

For each bad input the broker must refuse it: close the network connection (3.1.1 §4.8 [MQTT-4.8.0-1], 5 §4.13
[MQTT-4.13.1-1]), in MQTT 5 optionally after a DISCONNECT, or for a CONNECT a CONNACK, carrying the reason code
the spec gives for it. It must not act on the packet (no ack, no delivery to a watching subscriber), and it must
go on serving: after each refusal a fresh client connects and completes a QoS 1 round trip.

Every packet comes from the typed builders with encode() overrides (flags, remaining_length, raw_properties,
raw_body), so lengths are computed, never counted by hand. Bad CONNECTs go out on a connection opened with
Client.open_raw(), which sends no CONNECT of its own.

Elsewhere: invalid topic filters in test_topics.py (test_invalid_topic_filter_is_refused); malformed CONNECTs
(protocol name and level, reserved flag, Will QoS 3, password without user name) and out-of-order CONNECTs (none
first, a second one) in test_connect.py. Here: the CONNECT cases that are about encoding (UTF-8, properties).
"""

from __future__ import annotations

from typing import Collection

import pytest

from harness.client import Client
from harness.core.codec import encode, encode_properties, encode_vbi, summary
from harness.core.packets import (
    MQTT_5, Auth, Connack, Disconnect, Pingreq, Pingresp, Puback, Pubcomp, Publish, Pubrel, Suback,
    Subscribe, Subscription, Unsuback, Unsubscribe, Will,
)
from harness.core.reason_codes import reason_name
from harness.errors import ConnectionClosed, Timeout
from harness.expect import expect_closed, expect_nothing, expect_packet, received

pytestmark = pytest.mark.requires(qos1=True)  # the broker-still-serves check is a QoS 1 round trip

MALFORMED, PROTOCOL_ERROR = 0x81, 0x82
TOPIC_ALIAS_INVALID, PACKET_TOO_LARGE = 0x94, 0x95
WILDCARDS = pytest.mark.requires(wildcards=True)


# -------------------------------------------------------------------------------------------------- helpers

async def still_serving(client_factory, topic: str) -> None:
    """A fresh client connects and gets its own QoS 1 message back: the bad input did not take the broker down."""
    fresh = await client_factory(name="fresh")
    await fresh.subscribe(topic + "alive", qos=1)
    await fresh.publish(topic + "alive", b"still serving", qos=1)
    await expect_packet(fresh, Publish, topic=topic + "alive", payload=b"still serving", qos=1)


async def watching(client_factory, topic_filter: str) -> Client:
    """A subscriber that must never see the bad PUBLISH."""
    watcher = await client_factory(name="watcher")
    await watcher.subscribe(topic_filter, qos=1)
    return watcher


def _codes(codes: Collection[int]) -> str:
    return " or ".join(f"0x{c:02X} ({reason_name(c)})" for c in sorted(codes))


async def expect_refused(client: Client, reasons: Collection[int], *, never: tuple[type, ...] = (),
                         probe: bool = True) -> None:
    """The broker closes the connection. A DISCONNECT it sends first (MQTT 5) carries one of `reasons`; no packet
    of the kinds in `never` (the answer the bad packet would have had) arrives: one arriving fails at once.
    A connected client probes with PINGREQ (expect_closed(probe=True)); `probe=False` where the bad bytes do not
    end on a packet boundary the broker can find."""
    __tracebackhide__ = True
    connected = client.connack is not None and client.connack.reason_code == 0
    await expect_closed(client, unless=never, probe=probe and connected)
    sent = client.server_disconnect
    if sent is not None and client.version >= MQTT_5:
        assert sent.reason_code in reasons, (
            f"broker sent {summary(sent)}; for this input the spec gives {_codes(reasons)}")
    answered = received(client, never)
    assert not answered, f"broker acted on the bad packet: it sent {summary(answered[0])}"


async def open_raw(client_factory) -> Client:
    """A client whose connection is open, with no CONNECT sent: the test sends its own first packet."""
    client = await client_factory(connect=False)
    await client.open_raw()
    return client


async def expect_connect_refused(client: Client, connack_codes: Collection[int] = ()) -> None:
    """The broker closes the connection without accepting the CONNECT: it sends no CONNACK, or one with a code in
    `connack_codes` where the spec allows that; and no DISCONNECT, which may only follow a successful CONNACK
    ([MQTT-3.14.0-1] in MQTT 5; 3.1.1 has no server DISCONNECT at all)."""
    __tracebackhide__ = True
    await expect_closed(client)
    for connack in received(client, Connack):
        allowed = f"a CONNACK with {_codes(connack_codes)}" if connack_codes else "no CONNACK"
        assert connack.reason_code in connack_codes, f"broker sent {summary(connack)}; the spec allows {allowed}"
    disconnects = received(client, Disconnect)
    assert not disconnects, f"broker sent {summary(disconnects[0])} before any successful CONNACK"


def padded_vbi(value: int, width: int) -> bytes:
    """`value` as a Variable Byte Integer of exactly `width` bytes: zero digits with continuation bits pad it."""
    minimal = encode_vbi(value)
    if width == len(minimal):
        return minimal
    return bytes(b | 0x80 for b in minimal) + b"\x80" * (width - len(minimal) - 1) + b"\x00"


def remaining_length(packet, version: int) -> int:
    """The Remaining Length encode() computes for `packet` (kept under 128, so its fixed header is 2 bytes)."""
    data = encode(packet, version)
    assert data[1] < 0x80, "keep test packets under 128 bytes: their Remaining Length is one byte"
    return data[1]


def property_bytes(**properties) -> bytes:
    """The encoded properties without their length prefix, for raw_properties= (duplicates, misplaced ones)."""
    block = encode_properties(properties)
    assert block[0] < 0x80, "keep raw property blocks under 128 bytes"
    return block[1:]


def with_packet_type(data: bytes, packet_type: int) -> bytes:
    """An encoded packet with the type nibble of its fixed header replaced (for types no builder has)."""
    return bytes(((packet_type << 4) | (data[0] & 0x0F),)) + data[1:]


# ------------------------------------------------------------------------------------------- Remaining Length

@pytest.mark.spec(v311=["MQTT-4.8.0-1", "§2.2.3"], v5=["MQTT-4.13.1-1", "§1.5.5"])
async def test_broker_closes_on_remaining_length_of_five_bytes(client_factory, topic):
    client = await client_factory()
    publish = Publish(topic + "a", b"x")
    length = padded_vbi(remaining_length(publish, client.version), 5)  # a Variable Byte Integer has at most 4
    await client.send_raw(encode(publish, client.version, remaining_length=length))
    await expect_refused(client, {MALFORMED}, probe=False)  # where the packet ends is unknowable
    await still_serving(client_factory, topic)


@pytest.mark.spec("MQTT-1.5.5-1", "MQTT-4.13.1-1")
@pytest.mark.v5_only  # 3.1.1 has no minimal-encoding rule
async def test_broker_closes_on_non_minimal_remaining_length(client_factory, topic):
    watcher = await watching(client_factory, topic + "a")
    client = await client_factory()
    publish = Publish(topic + "a", b"x")
    length = padded_vbi(remaining_length(publish, client.version), 2)
    await client.send_raw(encode(publish, client.version, remaining_length=length))
    await expect_refused(client, {MALFORMED})
    await expect_nothing(watcher)
    await still_serving(client_factory, topic)


@pytest.mark.spec(v311="§2.2.3", v5="§2.1.4")
async def test_broker_does_not_act_on_a_packet_shorter_than_its_remaining_length(client_factory, topic):
    """A Remaining Length larger than the bytes sent makes the broker wait for the rest: it must not deliver
    the partial PUBLISH, neither while it waits nor when the connection then closes."""
    watcher = await watching(client_factory, topic + "a")
    client = await client_factory()
    publish = Publish(topic + "a", b"x")
    await client.send_raw(encode(publish, client.version,
                                 remaining_length=remaining_length(publish, client.version) + 16))
    await client.drain()
    await expect_nothing(watcher)  # the partial packet went out before this barrier; the broker waits for more
    await client.close()
    await still_serving(client_factory, topic)
    await expect_nothing(watcher)


@pytest.mark.spec(v311=["MQTT-4.8.0-1", "§2.2.3"], v5=["MQTT-4.13.1-1", "§2.1.4"])
async def test_broker_closes_on_remaining_length_too_short_for_the_fields(client_factory, topic):
    client = await client_factory()
    # Remaining Length 3: the Topic Name's length prefix and its first byte; the packet ends inside the name.
    data = encode(Publish(topic + "a", b"x", qos=1, packet_id=1), client.version, remaining_length=3)
    await client.send_raw(data[:2 + 3])
    await expect_refused(client, {MALFORMED}, never=(Puback,))
    await still_serving(client_factory, topic)


# ------------------------------------------------------------------------------------------------------ UTF-8

def _utf8(raw: bytes, name: str, v311: list[str], v5: list[str]):
    return pytest.param(raw, id=name, marks=pytest.mark.spec(v311=v311, v5=v5))


ILL_FORMED_UTF8 = [
    _utf8(b"\xc3\x28", "bad_continuation_byte", ["MQTT-1.5.3-1"], ["MQTT-1.5.4-1"]),
    _utf8(b"\xed\xa0\x80", "surrogate_d800", ["MQTT-1.5.3-1"], ["MQTT-1.5.4-1"]),
    _utf8(b"\x00", "null_character", ["MQTT-1.5.3-2"], ["MQTT-1.5.4-2"]),
]


@pytest.mark.spec("MQTT-3.3.2-1", v311="MQTT-4.8.0-1", v5="MQTT-4.13.1-1")
@pytest.mark.parametrize("bad", ILL_FORMED_UTF8)
async def test_broker_closes_on_ill_formed_utf8_in_topic_name(client_factory, topic, bad):
    client = await client_factory()
    await client.send_raw(encode(Publish((topic + "a").encode() + bad, b"x", qos=1, packet_id=1), client.version))
    await expect_refused(client, {MALFORMED}, never=(Puback,))
    await still_serving(client_factory, topic)


@pytest.mark.spec("MQTT-3.1.3-4", "MQTT-3.1.4-1", v5="MQTT-3.14.0-1")
@pytest.mark.parametrize("bad", ILL_FORMED_UTF8)
async def test_broker_refuses_ill_formed_utf8_in_client_id(client_factory, topic, bad):
    """3.1.1 lets the broker reject the Client Identifier with CONNACK 0x02 [MQTT-3.1.3-9]; MQTT 5 with 0x81
    (Malformed Packet) or 0x85 (Client Identifier not valid) [MQTT-3.1.3-8]."""
    client = await open_raw(client_factory)
    await client.send_raw(encode(client.connect_packet(client_id=b"mh" + bad), client.version))
    await expect_connect_refused(client, {MALFORMED, 0x85} if client.version >= MQTT_5 else {0x02})
    await still_serving(client_factory, topic)


@pytest.mark.spec("MQTT-3.1.4-1", v311="MQTT-3.1.3-10", v5=["MQTT-3.1.3-11", "MQTT-3.14.0-1"])
@pytest.mark.parametrize("bad", ILL_FORMED_UTF8)
async def test_broker_refuses_ill_formed_utf8_in_will_topic(client_factory, topic, bad):
    watcher = await watching(client_factory, topic + "#")
    client = await open_raw(client_factory)
    await client.send_raw(encode(client.connect_packet(will=Will((topic + "will").encode() + bad, b"w")),
                                 client.version))
    await expect_connect_refused(client, {MALFORMED} if client.version >= MQTT_5 else ())
    await expect_nothing(watcher)  # no Will with a broken topic, either
    await still_serving(client_factory, topic)


@pytest.mark.spec("MQTT-3.1.4-1", v311="MQTT-3.1.3-11", v5=["MQTT-3.1.3-12", "MQTT-3.14.0-1"])
@pytest.mark.parametrize("bad", ILL_FORMED_UTF8)
async def test_broker_refuses_ill_formed_utf8_in_user_name(client_factory, topic, bad):
    """MQTT 5 may also answer 0x86 (Bad User Name or Password); 3.1.1 closes, or refuses with 0x04."""
    client = await open_raw(client_factory)
    await client.send_raw(encode(client.connect_packet(username=b"mh" + bad, password=b"p"), client.version))
    await expect_connect_refused(client, {MALFORMED, 0x86} if client.version >= MQTT_5 else {0x04})
    await still_serving(client_factory, topic)


@pytest.mark.spec("MQTT-3.8.3-1", v311="MQTT-4.8.0-1", v5="MQTT-4.13.1-1")
@pytest.mark.parametrize("bad", ILL_FORMED_UTF8)
async def test_broker_closes_on_ill_formed_utf8_in_a_subscribe_filter(client_factory, topic, bad):
    client = await client_factory()
    await client.send_raw(encode(Subscribe(1, [Subscription((topic + "a").encode() + bad, 1)]), client.version))
    await expect_refused(client, {MALFORMED, 0x8F}, never=(Suback,))  # 0x8F Topic Filter invalid
    await still_serving(client_factory, topic)


@pytest.mark.spec("MQTT-3.10.3-1", v311="MQTT-4.8.0-1", v5="MQTT-4.13.1-1")
@pytest.mark.parametrize("bad", ILL_FORMED_UTF8)
async def test_broker_closes_on_ill_formed_utf8_in_an_unsubscribe_filter(client_factory, topic, bad):
    client = await client_factory()
    await client.subscribe(topic + "a", qos=1)
    await client.send_raw(encode(Unsubscribe(2, [(topic + "a").encode() + bad]), client.version))
    await expect_refused(client, {MALFORMED, 0x8F}, never=(Unsuback,))
    await still_serving(client_factory, topic)


@pytest.mark.spec("MQTT-4.7.3-2", v311="MQTT-4.8.0-1", v5="MQTT-4.13.1-1")
@pytest.mark.parametrize("where", ["topic_name", "topic_filter"])
async def test_broker_closes_on_null_character_in_a_topic(client_factory, topic, where):
    client = await client_factory()
    if where == "topic_name":
        await client.send_raw(encode(Publish(topic + "a\x00b", b"x", qos=1, packet_id=1), client.version))
        never = (Puback,)
    else:
        await client.send_raw(encode(Subscribe(1, [Subscription(topic + "a\x00b", 1)]), client.version))
        never = (Suback,)
    await expect_refused(client, {MALFORMED, 0x8F, 0x90}, never=never)
    await still_serving(client_factory, topic)


def _v5_property(name: str, value, sid: str):
    return pytest.param(name, value, id=name, marks=pytest.mark.spec(v5=sid))


@pytest.mark.spec(v5=["MQTT-1.5.4-1", "MQTT-4.13.1-1"])
@pytest.mark.v5_only
@pytest.mark.parametrize("name, value", [
    _v5_property("response_topic", b"\xc3\x28", "MQTT-3.3.2-13"),
    _v5_property("content_type", b"\xc3\x28", "MQTT-3.3.2-19"),
    _v5_property("user_property", [(b"\xc3\x28", b"v")], "MQTT-1.5.7-1"),
    _v5_property("user_property", [(b"k", b"\xed\xa0\x80")], "MQTT-1.5.7-1"),
])
async def test_broker_refuses_ill_formed_utf8_in_a_publish_property(client_factory, topic, name, value):
    """The broker closes (DISCONNECT 0x81, if any). Forwarding it would hand a subscriber the broken string."""
    watcher = await watching(client_factory, topic + "a")
    client = await client_factory()
    await client.send_raw(encode(Publish(topic + "a", b"x", qos=1, packet_id=1), client.version,
                                 raw_properties=property_bytes(**{name: value})))
    await expect_refused(client, {MALFORMED}, never=(Puback,))
    await expect_nothing(watcher)
    await still_serving(client_factory, topic)


@pytest.mark.spec(v5=["MQTT-3.3.2-14", "MQTT-4.13.1-1"])
@pytest.mark.v5_only
@WILDCARDS
async def test_broker_does_not_forward_a_response_topic_with_wildcards(client_factory, topic):
    """The broker may close on it (a Protocol Error: 0x82, if it says) or drop it, but it must not send a PUBLISH
    whose Response Topic has a wildcard: the watcher's strict decoder would flag that as [MQTT-3.3.2-14]."""
    watcher = await watching(client_factory, topic + "a")
    client = await client_factory()
    await client.send_raw(encode(Publish(topic + "a", b"x", qos=1, packet_id=1,
                                         properties={"response_topic": topic + "reply/+"}), client.version))
    try:
        await client.ping()  # the broker has handled the PUBLISH: closed, or answered it
    except (ConnectionClosed, Timeout):
        pass
    if client.is_closed:
        sent = client.server_disconnect
        assert sent is None or sent.reason_code == PROTOCOL_ERROR, summary(sent)
    await expect_nothing(watcher)
    assert not watcher.violations, watcher.violations
    await still_serving(client_factory, topic)


@pytest.mark.spec(v311=["MQTT-3.8.3-4", "MQTT-4.8.0-1"], v5=["MQTT-3.8.3-5", "MQTT-4.13.1-1"])
async def test_broker_closes_on_subscribe_with_reserved_option_bits(client_factory, topic):
    """Bits 7-6 of the Subscription Options (3.1.1: bits 7-2 of the requested QoS byte) must be 0."""
    client = await client_factory()
    await client.send_raw(encode(Subscribe(1, [Subscription(topic + "a", 1, reserved=0x80)]), client.version))
    await expect_refused(client, {MALFORMED}, never=(Suback,))
    await still_serving(client_factory, topic)


@pytest.mark.spec(v311=["MQTT-3.1.2-18", "MQTT-3.1.4-1"])
@pytest.mark.v311_only
async def test_broker_refuses_a_user_name_without_the_user_name_flag(client_factory, topic):
    """The field is there, the flag says it is not: the CONNECT's Remaining Length covers bytes no field claims."""
    client = await open_raw(client_factory)
    await client.send_raw(encode(client.connect_packet(username="stray", username_flag=False), client.version))
    await expect_connect_refused(client)
    await still_serving(client_factory, topic)


# ------------------------------------------------------------------------------------------------ Topic Names

@pytest.mark.spec("MQTT-3.3.2-2", v311=["MQTT-4.7.1-1", "MQTT-4.8.0-1"], v5=["MQTT-4.7.0-1", "MQTT-4.13.1-1"])
@pytest.mark.parametrize("wildcard", ["+", "#"], ids=["single_level", "multi_level"])
@WILDCARDS
async def test_broker_closes_on_wildcard_in_publish_topic(client_factory, topic, wildcard):
    """The spec names no reason code for it: a Protocol Error (0x82), or 0x90 Topic Name invalid."""
    name = topic + "a/" + wildcard
    watcher = await watching(client_factory, name)  # as a filter it would match the name taken literally
    client = await client_factory()
    await client.send_raw(encode(Publish(name, b"x", qos=1, packet_id=1), client.version))
    await expect_refused(client, {PROTOCOL_ERROR, 0x90}, never=(Puback,))
    await expect_nothing(watcher)
    await still_serving(client_factory, topic)


@pytest.mark.spec("MQTT-4.7.3-1", v311="MQTT-4.8.0-1", v5=["§3.3.2.1", "MQTT-4.13.1-1"])
async def test_broker_closes_on_publish_with_empty_topic_name(client_factory, topic):
    """MQTT 5 allows a zero-length Topic Name only with a Topic Alias; without one it is a Protocol Error."""
    client = await client_factory()
    await client.send_raw(encode(Publish("", b"x", qos=1, packet_id=1), client.version))
    await expect_refused(client, {PROTOCOL_ERROR}, never=(Puback,))
    await still_serving(client_factory, topic)


# ------------------------------------------------------------------------------------------ reserved flag bits

FLAG_RULES = dict(v311=["MQTT-2.2.2-1", "MQTT-2.2.2-2"], v5=["MQTT-2.1.3-1", "MQTT-4.13.1-1"])


@pytest.mark.spec("MQTT-3.8.1-1", **FLAG_RULES)
async def test_broker_closes_on_subscribe_with_reserved_flags_0000(client_factory, topic):
    client = await client_factory()
    await client.send_raw(encode(Subscribe(1, [Subscription(topic + "a", 1)]), client.version, flags=0b0000))
    await expect_refused(client, {MALFORMED}, never=(Suback,))
    await still_serving(client_factory, topic)


@pytest.mark.spec("MQTT-3.10.1-1", **FLAG_RULES)
async def test_broker_closes_on_unsubscribe_with_reserved_flags_0000(client_factory, topic):
    client = await client_factory()
    await client.subscribe(topic + "a", qos=1)
    await client.send_raw(encode(Unsubscribe(2, [topic + "a"]), client.version, flags=0b0000))
    await expect_refused(client, {MALFORMED}, never=(Unsuback,))
    await still_serving(client_factory, topic)


@pytest.mark.spec("MQTT-3.6.1-1", **FLAG_RULES)
async def test_broker_closes_on_pubrel_with_reserved_flags_0000(client_factory, topic):
    client = await client_factory()
    await client.send_raw(encode(Pubrel(1), client.version, flags=0b0000))
    await expect_refused(client, {MALFORMED}, never=(Pubcomp,))
    await still_serving(client_factory, topic)


@pytest.mark.spec("MQTT-3.14.1-1", "MQTT-3.1.2-8", v311="MQTT-2.2.2-2", v5="MQTT-2.1.3-1")
async def test_broker_publishes_the_will_after_disconnect_with_reserved_flags(client_factory, topic):
    """A DISCONNECT with a reserved bit set is malformed, not a normal disconnection: the broker closes the
    connection as for any protocol error, so the Will Message is published."""
    watcher = await watching(client_factory, topic + "will")
    client = await client_factory(will=Will(topic + "will", b"gone", qos=1))
    await client.send_raw(encode(Disconnect(), client.version, flags=0b0001))
    await expect_refused(client, {MALFORMED})
    await expect_packet(watcher, Publish, topic=topic + "will", payload=b"gone")
    await still_serving(client_factory, topic)


# ------------------------------------------------------------------------------------------------------ QoS 3

@pytest.mark.spec("MQTT-3.3.1-4", v5="MQTT-4.13.1-1")
async def test_broker_closes_on_publish_with_qos_3(client_factory, topic):
    watcher = await watching(client_factory, topic + "a")
    client = await client_factory()
    await client.send_raw(encode(Publish(topic + "a", b"x", qos=3, packet_id=1), client.version))
    await expect_refused(client, {MALFORMED}, never=(Puback,))
    await expect_nothing(watcher)
    await still_serving(client_factory, topic)


# ------------------------------------------------------------------------------------------ Packet Identifier

@pytest.mark.spec(v311=["MQTT-2.3.1-1", "MQTT-4.8.0-1"], v5=["MQTT-2.2.1-3", "MQTT-4.13.1-1"])
@pytest.mark.parametrize("kind", ["publish", "subscribe", "unsubscribe"])
async def test_broker_closes_on_packet_id_0(client_factory, topic, kind):
    watcher = await watching(client_factory, topic + "a")
    client = await client_factory()
    packet, answer = {
        "publish": (Publish(topic + "a", b"x", qos=1, packet_id=0), Puback),
        "subscribe": (Subscribe(0, [Subscription(topic + "b", 1)]), Suback),
        "unsubscribe": (Unsubscribe(0, [topic + "b"]), Unsuback),
    }[kind]
    await client.send_raw(encode(packet, client.version))
    await expect_refused(client, {MALFORMED, PROTOCOL_ERROR}, never=(answer,))
    await expect_nothing(watcher)
    await still_serving(client_factory, topic)


# ----------------------------------------------------------------------------------- acknowledgements of nothing

@pytest.mark.spec(v311="MQTT-4.3.3-2", v5=["MQTT-4.3.3-11", "MQTT-3.7.2-1"])
@pytest.mark.requires(qos2=True)
async def test_broker_answers_pubrel_without_publish_with_pubcomp(client_factory, topic):
    """Nothing makes a PUBREL for an unknown Packet Identifier an error; the receiver answers every PUBREL with a
    PUBCOMP of the same identifier (MQTT 5: 0x92 Packet Identifier not found is the fitting reason code)."""
    client = await client_factory()
    await client.send(Pubrel(0x1234))
    pubcomp = await expect_packet(client, Pubcomp, packet_id=0x1234)
    if client.version >= MQTT_5:
        assert pubcomp.reason_code in (0x00, 0x92), f"PUBCOMP reason code {pubcomp.reason_code:#04x}"
    await still_serving(client_factory, topic)


@pytest.mark.spec("§4.3")
async def test_broker_survives_puback_without_publish(client_factory, topic):
    """No rule covers a PUBACK for a PUBLISH the broker never sent: the broker may ignore it or close the
    connection. Either way it must go on serving."""
    client = await client_factory()
    await client.send(Puback(0x1234))
    await still_serving(client_factory, topic)


# --------------------------------------------------------------------- packet types the broker must not receive

# The packet type tables (§2.2.1 in 3.1.1, §2.1.2 in 5) give each type its direction and mark 0 (and 15 in 3.1.1)
# reserved: a broker receiving a server's packet, or a reserved type, has a protocol error.
PACKET_TYPE_RULES = dict(v311=["§2.2.1", "MQTT-4.8.0-1"], v5=["§2.1.2", "MQTT-4.13.1-1"])


@pytest.mark.spec(**PACKET_TYPE_RULES)
async def test_broker_closes_on_connack_from_a_client(client_factory, topic):
    client = await client_factory()
    await client.send_raw(encode(Connack(), client.version))
    await expect_refused(client, {MALFORMED, PROTOCOL_ERROR})
    await still_serving(client_factory, topic)


@pytest.mark.spec(**PACKET_TYPE_RULES)
async def test_broker_closes_on_suback_from_a_client(client_factory, topic):
    client = await client_factory()
    await client.send_raw(encode(Suback(1, [0]), client.version))
    await expect_refused(client, {MALFORMED, PROTOCOL_ERROR})
    await still_serving(client_factory, topic)


@pytest.mark.spec(**PACKET_TYPE_RULES)
async def test_broker_closes_on_pingresp_from_a_client(client_factory, topic):
    client = await client_factory()
    await client.send_raw(encode(Pingresp(), client.version))
    await expect_refused(client, {MALFORMED, PROTOCOL_ERROR})
    await still_serving(client_factory, topic)


@pytest.mark.spec(**PACKET_TYPE_RULES)
async def test_broker_closes_on_reserved_packet_type_0(client_factory, topic):
    client = await client_factory()
    await client.send_raw(with_packet_type(encode(Pingreq(), client.version), 0))
    await expect_refused(client, {MALFORMED, PROTOCOL_ERROR})
    await still_serving(client_factory, topic)


@pytest.mark.spec("§2.2.1", "MQTT-4.8.0-1")
@pytest.mark.v311_only  # type 15 is AUTH in MQTT 5
async def test_broker_closes_on_reserved_packet_type_15(client_factory, topic):
    client = await client_factory()
    await client.send_raw(encode(Auth(), client.version))
    await expect_refused(client, ())
    await still_serving(client_factory, topic)


# --------------------------------------------------------------------------------- SUBSCRIBE and UNSUBSCRIBE

@pytest.mark.spec(v311=["MQTT-3.8.3-3", "MQTT-4.8.0-1"], v5=["MQTT-3.8.3-2", "MQTT-4.13.1-1"])
async def test_broker_closes_on_subscribe_without_topic_filters(client_factory, topic):
    client = await client_factory()
    await client.send_raw(encode(Subscribe(1, []), client.version))
    await expect_refused(client, {PROTOCOL_ERROR}, never=(Suback,))
    await still_serving(client_factory, topic)


@pytest.mark.spec("MQTT-3.10.3-2", v311="MQTT-4.8.0-1", v5="MQTT-4.13.1-1")
async def test_broker_closes_on_unsubscribe_without_topic_filters(client_factory, topic):
    client = await client_factory()
    await client.send_raw(encode(Unsubscribe(1, []), client.version))
    await expect_refused(client, {PROTOCOL_ERROR}, never=(Unsuback,))
    await still_serving(client_factory, topic)


# ------------------------------------------------------------------------------------------- MQTT 5 properties

@pytest.mark.spec("§3.3.2.3.3", "MQTT-4.13.1-1")
@pytest.mark.v5_only
async def test_broker_closes_on_duplicate_property(client_factory, topic):
    """It is a Protocol Error to include the Message Expiry Interval more than once."""
    watcher = await watching(client_factory, topic + "a")
    client = await client_factory()
    twice = property_bytes(message_expiry_interval=60) * 2
    await client.send_raw(encode(Publish(topic + "a", b"x", qos=1, packet_id=1), client.version,
                                 raw_properties=twice))
    await expect_refused(client, {PROTOCOL_ERROR}, never=(Puback,))
    await expect_nothing(watcher)
    await still_serving(client_factory, topic)


@pytest.mark.spec("§2.2.2.2", "MQTT-4.13.1-1")
@pytest.mark.v5_only
async def test_broker_closes_on_publish_with_a_connect_property(client_factory, topic):
    """A property identifier not valid for the packet type makes it a Malformed Packet (§2.2.2.2)."""
    watcher = await watching(client_factory, topic + "a")
    client = await client_factory()
    await client.send_raw(encode(Publish(topic + "a", b"x", qos=1, packet_id=1), client.version,
                                 raw_properties=property_bytes(session_expiry_interval=60)))
    await expect_refused(client, {MALFORMED}, never=(Puback,))
    await expect_nothing(watcher)
    await still_serving(client_factory, topic)


@pytest.mark.spec("§2.2.2.2", "MQTT-3.1.4-1", "MQTT-3.14.0-1")
@pytest.mark.v5_only
async def test_broker_refuses_connect_with_a_publish_property(client_factory, topic):
    client = await open_raw(client_factory)
    await client.send_raw(encode(client.connect_packet(), client.version, raw_properties=property_bytes(topic_alias=1)))
    await expect_connect_refused(client, {MALFORMED})
    await still_serving(client_factory, topic)


@pytest.mark.spec("MQTT-3.3.4-6", "MQTT-4.13.1-1")
@pytest.mark.v5_only
async def test_broker_closes_on_publish_with_subscription_identifier(client_factory, topic):
    watcher = await watching(client_factory, topic + "a")
    client = await client_factory()
    await client.send_raw(encode(Publish(topic + "a", b"x", qos=1, packet_id=1,
                                         properties={"subscription_identifier": [1]}), client.version))
    await expect_refused(client, {PROTOCOL_ERROR}, never=(Puback,))
    await expect_nothing(watcher)
    await still_serving(client_factory, topic)


@pytest.mark.spec("MQTT-3.3.2-8", "§3.3.4", "MQTT-4.13.1-1")
@pytest.mark.v5_only
async def test_broker_closes_on_topic_alias_0(client_factory, topic):
    """A Topic Alias of 0 is a Protocol Error: DISCONNECT 0x94 (Topic Alias invalid), §3.3.4 (PUBLISH Actions)."""
    watcher = await watching(client_factory, topic + "a")
    client = await client_factory()
    await client.send_raw(encode(Publish(topic + "a", b"x", qos=1, packet_id=1, properties={"topic_alias": 0}),
                                 client.version))
    await expect_refused(client, {TOPIC_ALIAS_INVALID}, never=(Puback,))
    await expect_nothing(watcher)
    await still_serving(client_factory, topic)


@pytest.mark.spec("MQTT-3.3.2-9", "MQTT-3.2.2-17", "§3.3.4", "MQTT-4.13.1-1")
@pytest.mark.v5_only
async def test_broker_closes_on_topic_alias_above_its_maximum(client_factory, topic):
    """A Topic Alias above the broker's Topic Alias Maximum (0 when absent) is a Protocol Error: DISCONNECT 0x94."""
    watcher = await watching(client_factory, topic + "a")
    client = await client_factory()
    alias = client.connack.properties.get("topic_alias_maximum", 0) + 1
    await client.send_raw(encode(Publish(topic + "a", b"x", qos=1, packet_id=1, properties={"topic_alias": alias}),
                                 client.version))
    await expect_refused(client, {TOPIC_ALIAS_INVALID}, never=(Puback,))
    await expect_nothing(watcher)
    await still_serving(client_factory, topic)


@pytest.mark.spec("MQTT-3.2.2-15", "§3.2.2.3.6", "MQTT-4.13.1-1")
@pytest.mark.v5_only
async def test_broker_closes_on_packet_above_its_maximum_packet_size(client_factory, topic):
    """A packet over the Maximum Packet Size the broker announced is a Protocol Error: DISCONNECT 0x95."""
    watcher = await watching(client_factory, topic + "a")
    client = await client_factory()
    limit = client.connack.properties.get("maximum_packet_size")
    if limit is None:
        pytest.skip("the broker announces no Maximum Packet Size (its limit is the protocol's, 256 MiB)")
    await client.send_raw(encode(Publish(topic + "a", bytes(limit), qos=1, packet_id=1), client.version))
    await expect_refused(client, {PACKET_TOO_LARGE}, never=(Puback,))
    await expect_nothing(watcher)
    await still_serving(client_factory, topic)
