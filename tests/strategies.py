"""Hypothesis strategies for valid MQTT packets, per protocol level (3 = 3.1, 4 = 3.1.1, 5 = 5.0).

Every value generated here is one the codec round-trips exactly: decode(encode(p, v), v) == p.
That means the strategies already apply the codec's normal forms:

- Connect.protocol_name is None (the decoder only accepts the level's own name and reports None);
  no flag overrides, reserved bit clear.
- Properties are {} below level 5; list-valued properties (user_property, subscription_identifier)
  are lists, user properties are (key, value) tuples; subscription_identifier is a one-element list
  on SUBSCRIBE.
- 3.1 CONNACK has no Session Present bit; 3.1.1 UNSUBACK has no reason codes; below level 5 acks,
  DISCONNECT and Subscription options beyond QoS keep their defaults.
- Packet ids are 1..65535, present iff QoS > 0; DUP only with QoS > 0.

Importing this module registers the Hypothesis settings profiles "ci" (default, ~200 examples)
and "thorough" (5000), chosen with the HYPOTHESIS_PROFILE environment variable. pytest's
--hypothesis-profile option is read before test modules are imported, so it can name these
profiles only if a conftest imports this module.
"""

from __future__ import annotations

import os
from functools import cache

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from harness.core import properties as P
from harness.core.packets import (
    MQTT_3_1, MQTT_5, Auth, Connack, Connect, Disconnect, PacketType, Pingreq, Pingresp, Puback, Pubcomp,
    Publish, Pubrec, Pubrel, Suback, Subscribe, Subscription, Unsuback, Unsubscribe, Will,
)
from harness.core.reason_codes import ALLOWED

__all__ = [
    "utf8_text", "topic_names", "topic_filters", "packet_ids", "payloads", "properties_for", "wills",
    "connects", "connacks", "publishes", "acks", "subscribes", "subacks", "unsubscribes", "unsubacks",
    "disconnects", "auths", "packet_types", "packets", "packets_of_type",
]

_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("ci", max_examples=200, deadline=None, suppress_health_check=_HEALTH)
settings.register_profile("thorough", max_examples=5000, deadline=None, suppress_health_check=_HEALTH)
if os.environ.get("HYPOTHESIS_PROFILE"):
    settings.load_profile(os.environ["HYPOTHESIS_PROFILE"])
elif settings.get_current_profile_name() == "default":  # keep a profile chosen on the command line
    settings.load_profile("ci")

# ------------------------------------------------------------------------------ primitives
# Builders are cached: a strategy made once is validated once, not on every draw.

_CHAR = st.characters(codec="utf-8", exclude_characters="\x00")  # utf-8 codec: no surrogates
_LEVEL_CHAR = st.characters(codec="utf-8", exclude_characters="\x00+#/")


@cache
def utf8_text(min_size: int = 0, max_size: int = 10) -> st.SearchStrategy[str]:
    """An MQTT UTF-8 string: any scalar value except U+0000."""
    return st.text(_CHAR, min_size=min_size, max_size=max_size)


@cache
def _levels() -> st.SearchStrategy[list[str]]:
    return st.lists(st.text(_LEVEL_CHAR, max_size=6), min_size=1, max_size=4)


@cache
def topic_names() -> st.SearchStrategy[str]:
    """A non-empty topic name without wildcards (empty levels such as 'a//b' are valid)."""
    return _levels().map("/".join).filter(bool)


def _join_filter(levels: list[str], multi: bool) -> str:
    return "/".join([*levels, "#"] if multi or not levels else levels)


@cache
def topic_filters() -> st.SearchStrategy[str]:
    """A valid topic filter: '+' whole levels anywhere, '#' only as the whole last level."""
    level = st.one_of(st.just("+"), st.text(_LEVEL_CHAR, max_size=6))
    return st.builds(_join_filter, st.lists(level, max_size=4), st.booleans()).filter(bool)


@cache
def packet_ids() -> st.SearchStrategy[int]:
    return st.integers(1, 65535)


@cache
def payloads() -> st.SearchStrategy[bytes]:
    """Mostly small payloads; sometimes big enough for a 2- or 3-byte remaining length."""
    big = st.tuples(st.sampled_from([130, 200, 16_400, 20_000]), st.binary(min_size=1, max_size=4)).map(
        lambda t: (t[1] * t[0])[:t[0]])
    return st.one_of(st.binary(max_size=40), big)


_UTF8_PAYLOAD = st.text(_CHAR, max_size=20).map(str.encode)
_QOS = st.integers(0, 2)
_BOOL = st.booleans()
_MAYBE_TEXT = st.none() | st.text(_CHAR, max_size=10)
_MAYBE_BINARY = st.none() | st.binary(max_size=16)
_CLIENT_ID_31 = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=23)
_CLIENT_ID = st.text(_CHAR, max_size=23)
_RETURN_CODE_311 = st.integers(0, 5)


@cache
def _u(bits: int, low: int = 0) -> st.SearchStrategy[int]:
    return st.integers(low, (1 << bits) - 1)


# ------------------------------------------------------------------------------ v5 properties

@cache
def _value(name: str, carrier: int) -> st.SearchStrategy:
    d = P.BY_NAME[name]
    if name == "user_property":
        return st.lists(st.tuples(utf8_text(), utf8_text()), min_size=1, max_size=3)
    if name == "subscription_identifier":
        ident = st.integers(1, 268_435_455)
        if carrier == P.PUBLISH:  # one per matching subscription
            return st.lists(ident, min_size=1, max_size=3)
        return st.lists(ident, min_size=1, max_size=1)
    if name == "response_topic":  # [MQTT-3.3.2-14] a topic name, no wildcards
        return topic_names()
    if d.kind == P.BYTE:  # every byte-valued property is a 0/1 flag (maximum_qos too)
        return st.integers(0, 1)
    if d.kind == P.TWO:
        return _u(16, 1 if name in ("receive_maximum", "topic_alias") else 0)
    if d.kind == P.FOUR:
        return _u(32, 1 if name == "maximum_packet_size" else 0)
    if d.kind == P.UTF8:
        return utf8_text()
    if d.kind == P.BINARY:
        return st.binary(max_size=16)
    raise AssertionError(f"no strategy for property {name}")


@cache
def properties_for(carrier: int, version: int, exclude: tuple[str, ...] = ()) -> st.SearchStrategy[dict]:
    """Any subset of the properties allowed on `carrier` (a packet type number or properties.WILL)."""
    if version < MQTT_5:
        return st.just({})
    names = sorted(n for n, d in P.BY_NAME.items() if carrier in d.carriers and n not in exclude)
    strategy = st.fixed_dictionaries({}, optional={n: _value(n, carrier) for n in names})
    # Authentication Data without an Authentication Method is a Protocol Error (§3.1.2.11.10).
    return strategy.map(_auth_data_needs_method)


def _auth_data_needs_method(props: dict) -> dict:
    if "authentication_data" in props and "authentication_method" not in props:
        del props["authentication_data"]
    return props


@cache
def _reason(packet_type: int) -> st.SearchStrategy[int]:
    return st.sampled_from(sorted(int(c) for c in ALLOWED[packet_type]))


def _payload_for(props: dict) -> st.SearchStrategy[bytes]:
    # Payload Format Indicator 1 promises UTF-8 payload data (§3.3.2.3.2).
    if props.get("payload_format_indicator") == 1:
        return _UTF8_PAYLOAD
    return payloads()


# ------------------------------------------------------------------------------ packets

@cache
@st.composite
def wills(draw, version: int) -> Will:
    props = draw(properties_for(P.WILL, version))
    return Will(draw(topic_names()), draw(_payload_for(props)), draw(_QOS), draw(_BOOL), props)


@cache
@st.composite
def connects(draw, version: int) -> Connect:
    # 3.1 §3.1: the client identifier is 1 to 23 characters
    client_id = draw(_CLIENT_ID_31 if version == MQTT_3_1 else _CLIENT_ID)
    username = draw(_MAYBE_TEXT)
    password = draw(_MAYBE_BINARY)
    if version < MQTT_5 and username is None:
        password = None  # [MQTT-3.1.2-22]
    will = draw(wills(version)) if draw(_BOOL) else None
    return Connect(client_id, draw(_BOOL), draw(_u(16)), username, password, will,
                   draw(properties_for(P.CONNECT, version)), version)


@cache
@st.composite
def connacks(draw, version: int) -> Connack:
    code = draw(_reason(2) if version >= MQTT_5 else _RETURN_CODE_311)
    # 3.1 has no Session Present bit; it is 0 with a refusal ([MQTT-3.2.2-4] / [MQTT-3.2.2-6]).
    present = draw(_BOOL) if version > MQTT_3_1 and code == 0 else False
    return Connack(present, code, draw(properties_for(P.CONNACK, version)))


@cache
@st.composite
def publishes(draw, version: int) -> Publish:
    qos = draw(_QOS)
    props = draw(properties_for(P.PUBLISH, version))
    # v5: an empty topic name is valid only with a Topic Alias.
    topic = "" if "topic_alias" in props and draw(_BOOL) else draw(topic_names())
    dup = draw(_BOOL) if qos else False
    packet_id = draw(packet_ids()) if qos else None
    return Publish(topic, draw(_payload_for(props)), qos, draw(_BOOL), dup, packet_id, props)


@cache
def acks(cls: type, version: int) -> st.SearchStrategy:
    """PUBACK, PUBREC, PUBREL or PUBCOMP."""
    t = cls.TYPE
    if version < MQTT_5:
        return st.builds(cls, packet_ids())
    return st.builds(cls, packet_ids(), _reason(t), properties_for(t, version))


@cache
@st.composite
def _subscriptions(draw, version: int) -> Subscription:
    f, qos = draw(topic_filters()), draw(_QOS)
    if version < MQTT_5:
        return Subscription(f, qos)
    return Subscription(f, qos, draw(_BOOL), draw(_BOOL), draw(_QOS))  # retain handling 0..2


@cache
def subscribes(version: int) -> st.SearchStrategy[Subscribe]:
    return st.builds(Subscribe, packet_ids(), st.lists(_subscriptions(version), min_size=1, max_size=4),
                     properties_for(P.SUBSCRIBE, version))


@cache
def subacks(version: int) -> st.SearchStrategy[Suback]:
    codes = _reason(9) if version >= MQTT_5 else st.sampled_from([0, 1, 2, 0x80])
    return st.builds(Suback, packet_ids(), st.lists(codes, min_size=1, max_size=4),
                     properties_for(P.SUBACK, version))


@cache
def unsubscribes(version: int) -> st.SearchStrategy[Unsubscribe]:
    return st.builds(Unsubscribe, packet_ids(), st.lists(topic_filters(), min_size=1, max_size=4),
                     properties_for(P.UNSUBSCRIBE, version))


@cache
def unsubacks(version: int) -> st.SearchStrategy[Unsuback]:
    if version < MQTT_5:
        return st.builds(Unsuback, packet_ids())
    return st.builds(Unsuback, packet_ids(), st.lists(_reason(11), min_size=1, max_size=4),
                     properties_for(P.UNSUBACK, version))


@cache
def disconnects(version: int) -> st.SearchStrategy[Disconnect]:
    if version < MQTT_5:
        return st.builds(Disconnect)  # builds, not just: every example gets its own object
    return st.builds(Disconnect, _reason(14), properties_for(P.DISCONNECT, version))


@cache
@st.composite
def auths(draw, version: int = MQTT_5) -> Auth:
    assert version >= MQTT_5, "AUTH exists only in MQTT 5"
    # Omitting the Authentication Method from AUTH is a Protocol Error (§3.15.2.2.2).
    props = draw(properties_for(P.AUTH, version, exclude=("authentication_method",)))
    props["authentication_method"] = draw(utf8_text(min_size=1))
    return Auth(draw(_reason(15)), props)


_BY_TYPE = {
    PacketType.CONNECT: connects,
    PacketType.CONNACK: connacks,
    PacketType.PUBLISH: publishes,
    PacketType.PUBACK: lambda v: acks(Puback, v),
    PacketType.PUBREC: lambda v: acks(Pubrec, v),
    PacketType.PUBREL: lambda v: acks(Pubrel, v),
    PacketType.PUBCOMP: lambda v: acks(Pubcomp, v),
    PacketType.SUBSCRIBE: subscribes,
    PacketType.SUBACK: subacks,
    PacketType.UNSUBSCRIBE: unsubscribes,
    PacketType.UNSUBACK: unsubacks,
    PacketType.PINGREQ: lambda v: st.builds(Pingreq),
    PacketType.PINGRESP: lambda v: st.builds(Pingresp),
    PacketType.DISCONNECT: disconnects,
    PacketType.AUTH: auths,
}


def packet_types(version: int) -> list[PacketType]:
    """The control packet types that exist at a protocol level."""
    return [t for t in PacketType if t is not PacketType.AUTH or version >= MQTT_5]


@cache
def packets_of_type(packet_type: PacketType, version: int) -> st.SearchStrategy:
    if packet_type not in packet_types(version):
        raise ValueError(f"{packet_type.name} does not exist at protocol level {version}")
    return _BY_TYPE[packet_type](version)


def packets(version: int, types=None) -> st.SearchStrategy:
    """Any packet valid at `version` (optionally only of the given types)."""
    return _packets(version, tuple(types or packet_types(version)))


@cache
def _packets(version: int, types: tuple[PacketType, ...]) -> st.SearchStrategy:
    return st.one_of([packets_of_type(t, version) for t in types])
