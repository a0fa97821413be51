"""Differential check of the 3.1.1 codec against scapy.contrib.mqtt, an independent implementation.

scapy models 3.1.1 only (no properties, no AUTH), so everything here is protocol level 4.
Both directions: scapy dissects our encoding into the same fields, and our decoder decodes
scapy's encoding of the same fields into the same packet (byte for byte the same wire, too).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.core.codec import decode, encode, encode_vbi
from harness.core.packets import (
    MQTT_3_1_1, Connack, Connect, Disconnect, PacketType, Pingreq, Pingresp, Puback, Pubcomp, Publish, Pubrec,
    Pubrel, Suback, Subscribe, Subscription, Unsuback, Unsubscribe, Will,
)
from strategies import packets_of_type

mqtt = pytest.importorskip("scapy.contrib.mqtt", reason="scapy is a test extra: pip install -e .[test]")
from scapy.packet import Padding, Raw  # noqa: E402  (after the skip guard)

# Every 3.1.1 type scapy models. PINGREQ/PINGRESP have no layer of their own: the fixed header is all.
TYPES = [PacketType.CONNECT, PacketType.CONNACK, PacketType.PUBLISH, PacketType.PUBACK, PacketType.PUBREC,
         PacketType.PUBREL, PacketType.PUBCOMP, PacketType.SUBSCRIBE, PacketType.SUBACK, PacketType.UNSUBSCRIBE,
         PacketType.UNSUBACK, PacketType.PINGREQ, PacketType.PINGRESP, PacketType.DISCONNECT]
_ACKS = {PacketType.PUBACK: (Puback, mqtt.MQTTPuback), PacketType.PUBREC: (Pubrec, mqtt.MQTTPubrec),
         PacketType.PUBREL: (Pubrel, mqtt.MQTTPubrel), PacketType.PUBCOMP: (Pubcomp, mqtt.MQTTPubcomp)}
# scapy puts the fixed-header flag nibble in its DUP/QOS/RETAIN fields; these types require 0b0010.
_QOS1_FLAG = {PacketType.PUBREL, PacketType.SUBSCRIBE, PacketType.UNSUBSCRIBE}


def _b(text: str) -> bytes:
    return text.encode("utf-8")


def to_scapy(p):
    """Build scapy's packet from our packet's fields."""
    t = p.TYPE
    header = dict(type=int(t), QOS=1 if t in _QOS1_FLAG else 0)
    if t is PacketType.CONNECT:
        w = p.will
        fields = dict(protoname=b"MQTT", protolevel=4,  # scapy defaults protolevel to 5
                      cleansess=int(p.clean), klive=p.keepalive, clientId=_b(p.client_id),
                      usernameflag=int(p.username is not None), passwordflag=int(p.password is not None),
                      willflag=int(w is not None))
        if w is not None:
            fields.update(willtopic=_b(w.topic), willmsg=w.payload, willQOSflag=w.qos, willretainflag=int(w.retain))
        if p.username is not None:
            fields["username"] = _b(p.username)
        if p.password is not None:
            fields["password"] = p.password
        return mqtt.MQTT(**header) / mqtt.MQTTConnect(**fields)
    if t is PacketType.CONNACK:
        return mqtt.MQTT(**header) / mqtt.MQTTConnack(sessPresentFlag=int(p.session_present), retcode=p.reason_code)
    if t is PacketType.PUBLISH:
        header.update(QOS=p.qos, DUP=int(p.dup), RETAIN=int(p.retain))
        fields = dict(topic=_b(p.topic), value=p.payload)
        if p.qos:
            fields["msgid"] = p.packet_id
        return mqtt.MQTT(**header) / mqtt.MQTTPublish(**fields)
    if t in _ACKS:
        return mqtt.MQTT(**header) / _ACKS[t][1](msgid=p.packet_id)
    if t is PacketType.SUBSCRIBE:
        topics = [mqtt.MQTTTopicQOS(topic=_b(s.topic_filter), QOS=s.qos) for s in p.subscriptions]
        return mqtt.MQTT(**header) / mqtt.MQTTSubscribe(msgid=p.packet_id, topics=topics)
    if t is PacketType.SUBACK:
        return mqtt.MQTT(**header) / mqtt.MQTTSuback(msgid=p.packet_id, retcodes=list(p.reason_codes))
    if t is PacketType.UNSUBSCRIBE:
        topics = [mqtt.MQTTTopic(topic=_b(f)) for f in p.topic_filters]
        return mqtt.MQTT(**header) / mqtt.MQTTUnsubscribe(msgid=p.packet_id, topics=topics)
    if t is PacketType.UNSUBACK:
        return mqtt.MQTT(**header) / mqtt.MQTTUnsuback(msgid=p.packet_id)
    if t is PacketType.DISCONNECT:
        return mqtt.MQTT(**header) / mqtt.MQTTDisconnect()
    return mqtt.MQTT(**header)  # PINGREQ, PINGRESP


def from_scapy(d):
    """Read scapy's dissection back into our packet model (no use of our codec)."""
    t = PacketType(d.type)
    flags = (d.DUP << 3) | (d.QOS << 1) | d.RETAIN
    if t is not PacketType.PUBLISH:
        assert flags == (2 if t in _QOS1_FLAG else 0), f"{t.name} flags {flags:04b}"
    if t is PacketType.CONNECT:
        c = d[mqtt.MQTTConnect]
        assert (c.protoname, c.protolevel, c.reserved) == (b"MQTT", 4, 0)
        will = None
        if c.willflag:
            will = Will(c.willtopic.decode(), c.willmsg, c.willQOSflag, bool(c.willretainflag))
        else:
            assert (c.willQOSflag, c.willretainflag) == (0, 0)
        return Connect(c.clientId.decode(), bool(c.cleansess), c.klive,
                       c.username.decode() if c.usernameflag else None, c.password if c.passwordflag else None, will)
    if t is PacketType.CONNACK:
        c = d[mqtt.MQTTConnack]
        return Connack(bool(c.sessPresentFlag), c.retcode)
    if t is PacketType.PUBLISH:
        c = d[mqtt.MQTTPublish]
        return Publish(c.topic.decode(), c.value, d.QOS, bool(d.RETAIN), bool(d.DUP), c.msgid if d.QOS else None)
    if t in _ACKS:
        return _ACKS[t][0](d[_ACKS[t][1]].msgid)
    if t is PacketType.SUBSCRIBE:
        c = d[mqtt.MQTTSubscribe]
        return Subscribe(c.msgid, [Subscription(s.topic.decode(), s.QOS) for s in c.topics])
    if t is PacketType.SUBACK:
        c = d[mqtt.MQTTSuback]
        return Suback(c.msgid, list(c.retcodes))
    if t is PacketType.UNSUBSCRIBE:
        c = d[mqtt.MQTTUnsubscribe]
        return Unsubscribe(c.msgid, [s.topic.decode() for s in c.topics])
    if t is PacketType.UNSUBACK:
        return Unsuback(d[mqtt.MQTTUnsuback].msgid)
    return {PacketType.PINGREQ: Pingreq, PacketType.PINGRESP: Pingresp, PacketType.DISCONNECT: Disconnect}[t]()


# Both directions per example, per type; a quarter of the profile's examples keeps CI fast
# (scapy builds and dissects slowly) while "thorough" still runs 1250 per type.
@pytest.mark.parametrize("packet_type", TYPES, ids=lambda t: t.name)
@settings(max_examples=max(10, settings.default.max_examples // 4))
@given(data=st.data())
def test_scapy_agrees_with_our_codec(packet_type, data):
    packet = data.draw(packets_of_type(packet_type, MQTT_3_1_1))
    wire = encode(packet, MQTT_3_1_1)

    dissected = mqtt.MQTT(wire)
    assert 1 + len(encode_vbi(dissected.len)) + dissected.len == len(wire)
    # One MQTT packet, nothing left over (scapy would dissect trailing bytes as Raw or a second MQTT).
    layers = dissected.layers()
    assert layers.count(mqtt.MQTT) == 1 and Raw not in layers and Padding not in layers, layers
    assert from_scapy(dissected) == packet

    theirs = bytes(to_scapy(packet))
    assert decode(theirs, MQTT_3_1_1) == packet
    assert theirs == wire
