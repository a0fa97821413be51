"""Codec round trips: decode(encode(p)) == p for every packet type, whole or streamed in chunks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.core.codec import Decoder, decode, encode, encode_vbi, summary
from harness.core.packets import (
    MQTT_3_1, MQTT_3_1_1, MQTT_5, Connack, Connect, Disconnect, PacketType, Puback, Publish, Pubrel, Unsuback,
)
from strategies import packet_types, packets, packets_of_type

CASES = [(v, t) for v in (MQTT_3_1_1, MQTT_5) for t in packet_types(v)]
CASES += [(MQTT_3_1, PacketType.CONNECT), (MQTT_3_1, PacketType.CONNACK)]


@pytest.mark.parametrize(("version", "packet_type"), CASES, ids=[f"v{v}-{t.name}" for v, t in CASES])
@given(data=st.data())
def test_decode_encode_is_identity(version, packet_type, data):
    packet = data.draw(packets_of_type(packet_type, version))
    wire = encode(packet, version)
    assert decode(wire, version) == packet
    assert wire[0] >> 4 == packet_type
    assert summary(packet).startswith(packet_type.name + "(")


def _chunks(data: bytes, sizes: list[int]) -> list[bytes]:
    out, pos, i = [], 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        out.append(data[pos:pos + size])
        pos += size
        i += 1
    return out


@pytest.mark.parametrize("version", [MQTT_3_1, MQTT_3_1_1, MQTT_5])
@given(data=st.data())
def test_stream_in_random_chunks_decodes_like_whole(version, data):
    stream_packets = data.draw(st.lists(packets(version), min_size=1, max_size=6), label="packets")
    # A CONNECT switches the decoder to its level; at level 3 every other packet is a 3.1.1 one.
    wires = [encode(p, version) for p in stream_packets]
    stream = b"".join(wires)
    sizes = data.draw(st.lists(st.one_of(st.just(1), st.integers(1, 64), st.integers(1, len(stream))),
                               min_size=1, max_size=20), label="chunk sizes")

    whole = Decoder(version).feed_raw(stream)
    assert [p for p, _ in whole] == stream_packets
    assert [raw for _, raw in whole] == wires

    decoder = Decoder(version)
    pairs = []
    for chunk in _chunks(stream, sizes):
        pairs += decoder.feed_raw(chunk)
    assert [p for p, _ in pairs] == stream_packets
    assert b"".join(raw for _, raw in pairs) == stream
    assert decoder.buffered == 0

    if len(stream) <= 2048:  # byte by byte: every header and field boundary split
        decoder = Decoder(version)
        assert [p for b in range(len(stream)) for p in decoder.feed(stream[b:b + 1])] == stream_packets


@pytest.mark.parametrize("remaining", [0, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152])
def test_remaining_length_boundaries(remaining):
    """1-, 2-, 3- and 4-byte remaining lengths, at each boundary."""
    if remaining == 0:
        packet = Disconnect()
    else:  # topic 'a' (3 bytes) + packet id (2 bytes) + payload
        packet = Publish("a", b"\x5a" * (remaining - 5), qos=1, packet_id=7)
    wire = encode(packet, MQTT_3_1_1)
    assert wire[1:1 + len(encode_vbi(remaining))] == encode_vbi(remaining)
    assert len(wire) == 1 + len(encode_vbi(remaining)) + remaining
    decoder = Decoder(MQTT_3_1_1)
    # Split inside the remaining length field and in the body.
    cuts = [0, 2, max(2, len(wire) // 2), len(wire)]
    assert [p for a, b in zip(cuts, cuts[1:]) for p in decoder.feed(wire[a:b])] == [packet]


def test_normal_forms():
    """The shapes the strategies rely on, pinned as explicit examples."""
    # v5 acks and DISCONNECT with reason 0 and no properties use the short form.
    assert encode(Puback(9), MQTT_5) == bytes([0x40, 2, 0, 9])
    assert encode(Puback(9, 0x10), MQTT_5) == bytes([0x40, 3, 0, 9, 0x10])
    assert encode(Disconnect(), MQTT_5) == bytes([0xE0, 0])
    assert decode(bytes([0x62, 2, 0, 9]), MQTT_5) == Pubrel(9)
    # 3.1.1 UNSUBACK has no reason codes on the wire.
    assert encode(Unsuback(3, [0x11]), MQTT_3_1_1) == bytes([0xB0, 2, 0, 3])
    # The protocol name comes from the level and is not kept when decoding.
    wire = encode(Connect("c", protocol_level=MQTT_3_1), MQTT_3_1)
    assert wire[2:10] == b"\x00\x06MQIsdp"
    assert decode(wire).protocol_name is None
    assert decode(encode(Connect("c", protocol_name="MQTT"))) == Connect("c")
    # 3.1 CONNACK's first byte is reserved: no Session Present.
    assert decode(encode(Connack(False, 2), MQTT_3_1), MQTT_3_1) == Connack(False, 2)


def test_connect_sets_the_stream_version():
    """A server-side decoder learns the version from CONNECT and decodes what follows with it."""
    stream = encode(Connect("c", protocol_level=MQTT_5), MQTT_5) + encode(Puback(1, 0x10), MQTT_5)
    decoder = Decoder(MQTT_3_1_1)
    assert decoder.feed(stream)[1] == Puback(1, 0x10)
    assert decoder.version == MQTT_5


@pytest.mark.parametrize("version", [MQTT_3_1, MQTT_3_1_1, MQTT_5])
@given(data=st.data())
def test_feed_in_random_chunks_with_repeated_topics(version, data):
    """feed()'s inline path (whole 3.1.x PUBLISH with a topic decoded before, 2-byte acks) and its hand-over to
    the checking path at any offset give what decoding each packet alone gives."""
    topic = st.sampled_from(["a/b/c", "t", "x/" + "y" * 200])
    publish = st.builds(lambda t, payload, qos, retain, pid: Publish(t, payload, qos, retain, False,
                                                                     pid if qos else None),
                        topic, st.one_of(st.binary(max_size=40), st.binary(min_size=100, max_size=20_000)),
                        st.integers(0, 2), st.booleans(), st.integers(1, 65535))
    ack = st.builds(Puback, st.integers(1, 65535)) | st.builds(Pubrel, st.integers(1, 65535))
    stream_packets = data.draw(st.lists(publish | ack, min_size=1, max_size=12), label="packets")
    stream = b"".join(encode(p, version) for p in stream_packets)
    sizes = data.draw(st.lists(st.one_of(st.integers(1, 8), st.integers(1, len(stream))), min_size=1, max_size=8),
                      label="chunk sizes")
    for _ in range(2):  # the second time every topic is in the decoded-topic cache
        decoder = Decoder(version)
        got = [p for chunk in _chunks(stream, sizes) for p in decoder.feed(chunk)]
        assert got == stream_packets
        assert decoder.buffered == 0
        assert Decoder(version).feed(stream) == stream_packets
