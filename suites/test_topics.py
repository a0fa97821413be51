"""Topics: filter matching (a fixed table; the property-based matcher suite is elsewhere), `$` topics, overlapping
subscriptions, UNSUBSCRIBE, invalid filters, and topic names the broker must keep exactly as sent."""

from __future__ import annotations

from collections import Counter

import pytest

from harness.core.packets import Publish, Suback, Subscribe, Subscription, Unsuback, Unsubscribe
from harness.errors import ConnectionClosed
from harness.expect import collect, expect_nothing, expect_packet

WILDCARDS = pytest.mark.requires(wildcards=True)


# --------------------------------------------------------------------------------------------- matching table

# Topic names, relative to the test's prefix (which ends in "/": "" is the prefix itself, whose last level is
# empty). Each filter below, relative to the same prefix, must match exactly the names listed with it.
NAMES = ["", "a", "a/", "a/b", "a/B", "a/b/", "a/b/c", "a/b/c/d", "a//c", "a/c", "ab", "b/a", "/b"]
MATCHES = [
    ("a/b", ["a/b"]),
    ("a/", ["a/"]),
    ("/b", ["/b"]),
    ("a/+", ["a/", "a/b", "a/B", "a/c"]),
    ("a/+/c", ["a/b/c", "a//c"]),
    ("+", ["", "a", "ab"]),
    ("+/+", ["a/", "a/b", "a/B", "a/c", "b/a", "/b"]),
    ("+/b", ["a/b", "/b"]),
    ("+/+/+", ["a/b/", "a/b/c", "a//c"]),
    ("a/#", ["a", "a/", "a/b", "a/B", "a/b/", "a/b/c", "a/b/c/d", "a//c", "a/c"]),  # "#" includes the parent
    ("a/b/#", ["a/b", "a/b/", "a/b/c", "a/b/c/d"]),
    ("a/+/#", ["a/", "a/b", "a/B", "a/b/", "a/b/c", "a/b/c/d", "a//c", "a/c"]),
    ("A/#", []),
    ("#", NAMES),
]


@pytest.mark.spec("MQTT-3.3.2-3", "MQTT-4.7.3-4", v311=["MQTT-4.7.1-2", "MQTT-4.7.1-3"],
                  v5=["MQTT-4.7.1-1", "MQTT-4.7.1-2"])
@pytest.mark.parametrize("pattern, names", [
    pytest.param(p, n, id=p or "(empty)", marks=[WILDCARDS] if "+" in p or "#" in p else []) for p, n in MATCHES])
async def test_filter_matches_exactly_the_expected_topics(client_factory, topic, pattern, names):
    sub = await client_factory()
    pub = await client_factory()
    await sub.subscribe(topic + pattern, qos=1)
    for name in NAMES:
        await pub.publish(topic + name, name.encode(), qos=1)
    got = await collect(sub, len(names), after=pub)
    assert sorted(m.topic for m in got) == sorted(topic + n for n in names)
    assert all(m.payload == m.topic[len(topic):].encode() for m in got)


# ------------------------------------------------------------------------------------------------- $ topics

@pytest.mark.spec("MQTT-4.7.2-1")
@WILDCARDS
@pytest.mark.parametrize("wildcard", ["#", "+"])
async def test_filters_starting_with_a_wildcard_do_not_match_dollar_topics(client_factory, topic, wildcard):
    name = "$" + topic + "x"  # "$mh/<run>/<test>/x"
    pattern = "#" if wildcard == "#" else "+/" + name.split("/", 1)[1]  # "+/<run>/<test>/x": only the $ differs
    wide = await client_factory(name="wildcard")
    exact = await client_factory(name="exact")
    pub = await client_factory(name="pub")
    await wide.subscribe(pattern, qos=1)
    await exact.subscribe(name, qos=1)
    await pub.publish(name, b"dollar", qos=1)
    if not await collect(exact, 1, after=pub):
        pytest.skip(f"the broker did not deliver {name!r} even to a subscription to exactly that name: it keeps "
                    "clients from exchanging messages on $ topics, as §4.7.2 says it SHOULD")
    # "#" also receives everything else on the broker (other tests' traffic, retained messages): only ours counts
    leaked = [m for m in await collect(wide, 0, after=pub) if m.topic == name]
    assert not leaked, f"{pattern!r} matched the $ topic {name!r}"


# ---------------------------------------------------------------------------------------- overlapping filters

@pytest.mark.spec(v311="MQTT-3.3.5-1", v5="MQTT-3.3.4-2")
@WILDCARDS
@pytest.mark.parametrize("pub_qos", [1, pytest.param(2, marks=pytest.mark.requires(qos2=True))],
                         ids=lambda q: f"qos{q}")
async def test_overlapping_subscriptions_deliver_at_their_maximum_qos(client_factory, topic, pub_qos):
    """One copy at the maximum QoS of the matching subscriptions; both 3.1.1 (§3.3.5) and 5 (§3.3.4) let the
    server deliver further copies, at most one per other matching subscription, each at that subscription's QoS."""
    sub = await client_factory()
    pub = await client_factory()
    suback = await sub.subscribe([(topic + "a/#", 2), (topic + "a/+", 1), (topic + "a/b", 0)])
    allowed = Counter(min(pub_qos, granted) for granted in suback.reason_codes)
    await pub.publish(topic + "a/b", b"m", qos=pub_qos)
    copies = Counter(m.qos for m in await collect(sub, 1, after=pub))
    assert copies[max(allowed)] >= 1, f"no copy at QoS {max(allowed)}; copies by QoS: {dict(copies)}"
    assert not copies - allowed, (f"copies by QoS {dict(copies)}, allowed at most {dict(allowed)}: one per matching "
                                  f"subscription, at the lower of the PUBLISH QoS and that subscription's QoS")


# -------------------------------------------------------------------------------------------------- UNSUBSCRIBE

@pytest.mark.spec("MQTT-3.10.4-1", "MQTT-3.10.4-2", "MQTT-3.10.4-4", v5="MQTT-3.10.4-5")
async def test_unsubscribe_stops_delivery(client_factory, topic, mqtt_version):
    sub = await client_factory()
    pub = await client_factory()
    await sub.subscribe(topic + "a", qos=1)
    await pub.publish(topic + "a", b"before", qos=1)
    await expect_packet(sub, Publish, topic=topic + "a", payload=b"before")
    await sub.send(Unsubscribe(0x1234, [topic + "a"]))
    unsuback = await expect_packet(sub, Unsuback, packet_id=0x1234)
    if mqtt_version == "5":
        assert unsuback.reason_codes == [0x00]
    await pub.publish(topic + "a", b"after", qos=1)
    await expect_nothing(sub, after=pub)


@pytest.mark.spec("MQTT-3.10.4-5", v5="MQTT-3.11.3-2")
async def test_unsubscribe_without_a_matching_subscription_is_acknowledged(client_factory, topic, mqtt_version):
    sub = await client_factory()
    await sub.send(Unsubscribe(0x2345, [topic + "never-subscribed"]))
    unsuback = await expect_packet(sub, Unsuback, packet_id=0x2345)
    if mqtt_version == "5":
        assert unsuback.reason_codes in ([0x00], [0x11]), f"reason codes {unsuback.reason_codes}"


@pytest.mark.spec("MQTT-3.10.4-1")
@WILDCARDS
async def test_unsubscribe_compares_filters_character_by_character(client_factory, topic):
    sub = await client_factory()
    pub = await client_factory()
    await sub.subscribe(topic + "a/+", qos=1)
    await sub.unsubscribe(topic + "a/b")  # matches the topics of "a/+" but is not the same filter
    await pub.publish(topic + "a/b", b"still", qos=1)
    await expect_packet(sub, Publish, topic=topic + "a/b", payload=b"still")


@pytest.mark.spec("MQTT-3.10.4-6", v5="MQTT-3.11.3-1")
async def test_unsubscribe_with_several_filters_is_one_unsuback(client_factory, topic, mqtt_version):
    sub = await client_factory()
    pub = await client_factory()
    await sub.subscribe([(topic + "a", 1), (topic + "b", 1), (topic + "c", 1)])
    await sub.send(Unsubscribe(0x3456, [topic + "a", topic + "b"]))
    unsuback = await expect_packet(sub, Unsuback, packet_id=0x3456)
    if mqtt_version == "5":
        assert unsuback.reason_codes == [0x00, 0x00]
    await expect_nothing(sub, kinds=(Unsuback,))  # one UNSUBACK for both
    for name in "abc":
        await pub.publish(topic + name, name.encode(), qos=1)
    delivered = await collect(sub, 1, after=pub)  # everything up to a barrier: a and b must not be among it
    assert [m.topic for m in delivered] == [topic + "c"], [m.topic for m in delivered]


# ---------------------------------------------------------------------------------------------- invalid filters

def _invalid(pattern: str, v311: str, v5: str):
    return pytest.param(pattern, id=pattern or "(empty)", marks=pytest.mark.spec(v311=v311, v5=v5))


@WILDCARDS
@pytest.mark.parametrize("pattern", [
    _invalid("a/#/b", "MQTT-4.7.1-2", "MQTT-4.7.1-1"),
    _invalid("#/a", "MQTT-4.7.1-2", "MQTT-4.7.1-1"),
    _invalid("a/b#", "MQTT-4.7.1-2", "MQTT-4.7.1-1"),
    _invalid("a+", "MQTT-4.7.1-3", "MQTT-4.7.1-2"),
    _invalid("+a", "MQTT-4.7.1-3", "MQTT-4.7.1-2"),
    _invalid("a/+b/c", "MQTT-4.7.1-3", "MQTT-4.7.1-2"),
])
async def test_invalid_topic_filter_is_refused(client_factory, topic, mqtt_version, pattern):
    """A malformed filter is a protocol violation: the server closes the connection (3.1.1 §4.8, 5 §4.13; v5
    with a DISCONNECT of 0x80 or above, if any), or refuses just that subscription with a SUBACK failure code
    (0x80; in v5 any code of 0x80 or above, e.g. 0x8F Topic Filter invalid)."""
    sub = await client_factory()
    await sub.send(Subscribe(0x77, [Subscription(topic + pattern, 1)]))
    try:
        suback = await sub.wait_for(Suback, lambda p: p.packet_id == 0x77)
    except ConnectionClosed:
        if sub.server_disconnect is not None:
            assert sub.server_disconnect.reason_code >= 0x80, f"DISCONNECT {sub.server_disconnect}"
        return
    failure = [0x80] if mqtt_version == "3.1.1" else [code for code in suback.reason_codes if code >= 0x80]
    assert suback.reason_codes == failure and failure, f"SUBACK {suback.reason_codes} accepts {pattern!r}"


# ------------------------------------------------------------------------------------ names kept exactly as sent

@pytest.mark.spec("MQTT-4.7.3-4")
async def test_topic_matching_is_case_sensitive(client_factory, topic):
    sub = await client_factory()
    pub = await client_factory()
    await sub.subscribe(topic + "Case", qos=1)
    for name in ("case", "CASE", "Case"):
        await pub.publish(topic + name, name.encode(), qos=1)
    await expect_packet(sub, Publish, topic=topic + "Case", payload=b"Case")
    await expect_nothing(sub, after=pub)


@pytest.mark.spec("MQTT-4.7.3-4")
async def test_leading_trailing_and_empty_levels_are_distinct(client_factory, topic):
    names = ["/" + topic + "a", topic + "a", topic + "a/", topic + "a//b", topic + "a/b"]
    sub = await client_factory()
    pub = await client_factory()
    await sub.subscribe([(name, 1) for name in names])
    for name in names:
        await pub.publish(name, name.encode(), qos=1)
    got = await collect(sub, len(names), after=pub)
    assert sorted((m.topic, m.payload) for m in got) == sorted((name, name.encode()) for name in names)


@pytest.mark.spec("MQTT-4.7.3-3")
async def test_topic_of_65535_bytes_is_delivered(client_factory, topic, mqtt_version):
    sub = await client_factory()
    pub = await client_factory()
    limit = pub.connack.properties.get("maximum_packet_size") if mqtt_version == "5" else None
    if limit is not None and limit < 70000:
        pytest.skip(f"the broker's Maximum Packet Size is {limit} bytes, below a PUBLISH with a 65535-byte topic")
    name = topic + "x" * (65535 - len(topic.encode()))
    await sub.subscribe(name, qos=1)
    await pub.publish(name, b"long", qos=1)
    message = await expect_packet(sub, Publish, payload=b"long")
    assert message.topic == name, f"topic of {len(message.topic.encode())} bytes, expected 65535"


@pytest.mark.spec("MQTT-4.7.3-4", v311="MQTT-1.5.3-1", v5="MQTT-1.5.4-1")
@WILDCARDS
async def test_multibyte_utf8_topic_round_trips(client_factory, topic):
    name = topic + "zürich/日本/😀"  # 2-, 3- and 4-byte UTF-8 sequences
    exact = await client_factory(name="exact")
    wide = await client_factory(name="wildcard")
    pub = await client_factory(name="pub")
    await exact.subscribe(name, qos=1)
    await wide.subscribe(topic + "+/日本/+", qos=1)
    await pub.publish(name, b"utf8", qos=1)
    await expect_packet(exact, Publish, topic=name, payload=b"utf8")
    await expect_packet(wide, Publish, topic=name, payload=b"utf8")


@pytest.mark.spec(v311="MQTT-1.5.3-3", v5="MQTT-1.5.4-3")
async def test_bom_in_a_topic_is_neither_skipped_nor_stripped(client_factory, topic):
    with_bom, without = topic + "\ufeffa", topic + "a"
    sub = await client_factory()
    pub = await client_factory()
    await sub.subscribe(with_bom, qos=1)
    await pub.publish(without, b"plain", qos=1)
    await pub.publish(with_bom, b"bom", qos=1)
    await expect_packet(sub, Publish, topic=with_bom, payload=b"bom")
    await expect_nothing(sub, after=pub)
