"""The proxy's plain objects without sockets: framing, fault chains, rules, the ack ledger, ConnectionState."""

from __future__ import annotations

import random

import pytest

from harness.core.codec import Decoder, encode
from harness.core.packets import (
    Connack, Connect, Pingreq, Pingresp, Puback, Pubcomp, Publish, Pubrec, Pubrel, Suback, Subscribe,
    Subscription, Unsuback, Unsubscribe,
)
from harness.proxy import faults as F
from harness.proxy.config import parse_config
from harness.proxy.direction import DOWNSTREAM, UPSTREAM, parse_direction
from harness.proxy.framing import Framer, peek_protocol_level
from harness.proxy.rules import (
    Duplicate, Rule, Swallow, action_from_dict, action_to_dict, packet_from_dict, topic_matches, when,
)
from harness.proxy.state import Close, ConnectionState, DecodeFailed, Fired, Send

# ------------------------------------------------------------------------------------ framing

STREAM = (encode(Connect("c")) + encode(Publish("t", b"x" * 300, 1, packet_id=7)) + encode(Pingreq())
          + encode(Publish("t", b"y" * 1500)))
STARTS = [0]
for p in Decoder().feed_raw(STREAM):
    STARTS.append(STARTS[-1] + len(p[1]))


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 128, 1000, len(STREAM)])
def test_framer_finds_every_boundary_whatever_the_chunking(chunk):
    """Feed up to an offset, then split(): the boundary returned is the next packet start."""
    for cut in range(0, len(STREAM), 31):
        f = Framer()
        for i in range(0, cut, chunk):
            f.feed(STREAM[i:min(i + chunk, cut)])
        rest = STREAM[cut:]
        expected = next(s for s in STARTS if s >= cut) - cut
        got = None
        offset = 0
        while got is None and offset < len(rest):
            piece = rest[offset:offset + chunk]
            at = f.split(piece)
            if at is not None:
                got = offset + at
            offset += len(piece)
        assert got == (expected if expected < len(rest) else None)


def test_framer_gives_up_on_non_mqtt_lengths():
    f = Framer()
    f.feed(b"\x30\xff\xff\xff\xff\x01")
    assert f.broken and f.split(b"\x30\x00") is None


def test_peek_protocol_level_reads_a_malformed_connect():
    raw = encode(Connect("c", protocol_level=5, properties={"session_expiry_interval": 1}))
    assert peek_protocol_level(raw) == 5
    assert peek_protocol_level(raw[:8]) is None
    assert peek_protocol_level(encode(Pingreq())) is None


# ------------------------------------------------------------------------------------ faults

def chain(*faults, seed=1):
    c = F.Chain()
    rng = random.Random(seed)
    for i, f in enumerate(faults):
        f.name = f.name or f"f{i}"
        c.add(f, rng, 0.0)
    return c


def test_latency_with_jitter_delays_but_never_reorders():
    c = chain(F.latency(100, jitter=90))
    dues = [c.push(b"%d" % i, i * 0.001)[0].due for i in range(200)]
    assert dues == sorted(dues)
    assert all(0.009 <= d - i * 0.001 <= 0.191 or d == max(dues[: i + 1]) for i, d in enumerate(dues))


def test_bandwidth_spaces_chunks_by_rate():
    c = chain(F.bandwidth(10))  # 10 KB/s: 1000 bytes take 0.1 s
    steps = [c.push(b"x" * 1000, 0.0)[0] for _ in range(3)]
    assert [round(s.due, 6) for s in steps] == [0.1, 0.2, 0.3]
    assert chain(F.bandwidth(0)).push(b"x", 5.0)[0].due == 5.0  # 0 = unlimited, as in Toxiproxy


def test_slicer_cuts_into_sized_pieces_with_microsecond_delays():
    c = chain(F.slicer(1, delay=500))
    steps = c.push(b"abcd", 0.0)
    assert [s.data for s in steps] == [b"a", b"b", b"c", b"d"]
    assert [round(s.due, 6) for s in steps] == [0.0, 0.0005, 0.001, 0.0015]
    varied = chain(F.slicer(10, size_variation=5)).push(b"x" * 1000, 0.0)
    assert b"".join(s.data for s in varied) == b"x" * 1000 and {len(s.data) for s in varied} <= set(range(5, 16))


def test_limit_data_cuts_mid_chunk_then_closes():
    c = chain(F.limit_data(5))
    assert c.push(b"abc", 0.0) == [F.Step(0.0, F.DATA, b"abc")]
    out = c.push(b"defgh", 1.0)
    assert [(s.kind, s.data) for s in out] == [(F.DATA, b"de"), (F.CLOSE, b"")]
    assert c.push(b"more", 2.0) == []


def test_reset_peer_fires_once_after_timeout_on_the_next_chunk():
    c = chain(F.reset_peer(250))
    assert [(s.kind, s.due) for s in c.push(b"x", 1.0)] == [(F.RESET, 1.25)]
    assert c.push(b"y", 1.1) == []


def test_timeout_drops_and_closes_on_its_timer():
    c = F.Chain()
    timers = c.add(F.Fault("timeout", attributes={"timeout": 300}, name="t"), random.Random(), 10.0)
    assert [(s.kind, s.due) for s in timers] == [(F.CLOSE, 10.3)]
    assert c.push(b"x", 10.1) == [] and c.toxics[0].dropped == 1
    assert F.Chain().add(F.timeout(0, name="t"), random.Random(), 0.0) == []  # 0: never closes


def test_blackhole_blocks_and_slow_close_delays_eof():
    c = chain(F.blackhole(), F.slow_close(200))
    assert c.blocked and c.push(b"x", 0.0)[0].data == b"x"
    assert c.eof(1.0).due == pytest.approx(1.2)
    c.remove("f0")
    assert not c.blocked


def test_fault_dicts_toxiproxy_and_flat_forms():
    tp = F.Fault.from_dict({"name": "lag", "type": "latency", "stream": "upstream", "toxicity": 0.5,
                            "attributes": {"latency": 100, "jitter": 10}})
    flat = F.Fault.from_dict({"type": "latency", "direction": "up", "latency": 100, "jitter": 10,
                              "toxicity": 0.5, "name": "lag"})
    assert tp == flat and tp.to_dict()["direction"] == UPSTREAM


@pytest.mark.parametrize("bad, message", [
    ({"type": "lag"}, "unknown fault type 'lag'"),
    ({"type": "latency", "latency": -1}, "must be a number >= 0"),
    ({"type": "latency", "rate": 5}, "has no attribute(s) rate"),
    ({"type": "limit_data"}, "needs the attribute 'bytes'"),
    ({"type": "slicer", "average_size": 0}, "at least 1 byte"),
    ({"type": "latency", "toxicity": 2}, "between 0 and 1"),
    ({"type": "refuse", "toxicity": 0.5}, "use mode 'reset'"),
    ({"type": "latency", "direction": "sideways"}, "unknown direction 'sideways'"),
])
def test_fault_errors_name_the_problem(bad, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        F.Fault.from_dict(bad)


def test_toxicity_is_drawn_per_connection():
    rng = random.Random(7)
    fault = F.latency(1, toxicity=0.3)
    draws = [F.draw(fault, rng) for _ in range(2000)]
    assert 450 < sum(draws) < 750
    assert all(F.draw(F.latency(1), rng) for _ in range(10))


# ------------------------------------------------------------------------------------ rules

@pytest.mark.parametrize("flt, topic, hit", [
    ("a/b", "a/b", True), ("a/+", "a/b", True), ("a/+", "a/b/c", False), ("a/#", "a", True),
    ("a/#", "a/b/c", True), ("#", "a/b", True), ("+/+", "/x", True), ("+", "a/b", False),
    ("#", "$SYS/x", False), ("+/x", "$SYS/x", False), ("$SYS/#", "$SYS/x", True), ("a/+/c", "a//c", True),
])
def test_topic_matches(flt, topic, hit):
    assert topic_matches(flt, topic) is hit


def test_rule_dict_round_trip_and_builder_agree():
    data = {"name": "r", "match": {"direction": "downstream", "type": "PUBLISH", "topic": "t/#", "qos": 1},
            "nth": 2, "actions": ["drop", {"delay": 0.5}, {"duplicate": {"count": 2, "dup": False}},
                                  {"rewrite": {"retain": True}}, {"hold": "h"}, {"close": "before"},
                                  {"reset": "after"},
                                  {"inject": {"packet": {"type": "PINGREQ"}, "where": "before"}}]}
    rule = Rule.from_dict(data)
    again = Rule.from_dict(rule.to_dict())  # what GET /rules returns can be posted back
    assert again.to_dict() == rule.to_dict()
    built = (when("PUBLISH", direction="downstream", topic="t/#", qos=1, nth=2, name="r").drop().delay(0.5)
             .duplicate(2, dup=False).rewrite(retain=True).hold("h").close("before").reset()
             .inject(Pingreq(), where="before"))
    assert built.to_dict() == rule.to_dict()
    assert rule.limit == 1 and when("PUBLISH").limit is None and when("PUBLISH", nth=2, times=3).limit == 3


@pytest.mark.parametrize("bad, message", [
    ({"match": {"type": "PUBLISH"}, "actions": [{"rewrite": {"session_present": True}}]}, "PUBLISH has no such field"),
    ({"actions": [{"rewrite": {"retain": True}}]}, "restrict the rule's match"),
    ({"match": {"type": "PUBLISHX"}}, "unknown packet type"),
    ({"match": {"topics": "a"}}, "match has unknown key"),
    ({"actions": ["explode"]}, "unknown action 'explode'"),
    ({"actions": [{"inject": {"where": "after"}}]}, "exactly one of 'packet'"),
    ({"nth": 0}, "whole number >= 1"),
    ({"scope": "world"}, "scope 'world'"),
    ({"actions": [{"close": "later"}]}, "use before or after"),
    ({"when": 1}, "unknown key"),
])
def test_rule_errors_name_the_problem(bad, message):
    with pytest.raises(ValueError, match=message):
        Rule.from_dict(bad)


def test_config_errors_point_at_the_entry():
    with pytest.raises(ValueError, match=r"rules\[1\]: unknown action"):
        parse_config({"rules": [{"actions": ["drop"]}, {"actions": ["boom"]}]}, "f.yaml")
    faults, rules = parse_config({"faults": [{"type": "blackhole"}], "rules": [{"action": "drop"}]})
    assert faults[0].type == "blackhole" and rules[0].actions


def test_packet_from_dict_builds_packets():
    sub = packet_from_dict({"type": "SUBSCRIBE", "packet_id": 3, "subscriptions": [["a/#", 1], {"topic_filter": "b"}]})
    assert sub == Subscribe(3, [Subscription("a/#", 1), Subscription("b")])
    pub = packet_from_dict({"type": "publish", "topic": "t", "payload": {"hex": "00ff"}, "qos": 1})
    assert pub.payload == b"\x00\xff" and pub.packet_id is None
    with pytest.raises(ValueError, match="needs a packet_id"):
        packet_from_dict({"type": "PUBACK"})
    assert action_from_dict({"duplicate": 3}).count == 3
    assert parse_direction("to_client") == DOWNSTREAM


# ------------------------------------------------------------------------------------ ConnectionState

class Pipe:
    """A ConnectionState with helpers to feed packets and read what it sends, decoded."""

    def __init__(self, *rules, version=4):
        self.rules = list(rules)
        self.state = ConnectionState(self.rules)
        self.version = version
        self.events = []
        self.feed(UPSTREAM, Connect("dev-1", protocol_level=version))
        self.feed(DOWNSTREAM, Connack())

    def feed(self, direction, *packets):
        data = b"".join(encode(p, self.version) for p in packets)
        out = self.state.receive(direction, data, 0.0)
        sends = []
        for o in out:
            if isinstance(o, Send):
                sends.append((o.direction, *Decoder(self.version).feed(o.data)))
            else:
                self.events.append(o)
        return sends

    def up(self, *packets):
        return self.feed(UPSTREAM, *packets)

    def down(self, *packets):
        return self.feed(DOWNSTREAM, *packets)


U, D = UPSTREAM, DOWNSTREAM


def test_state_learns_version_and_client_id_and_forwards_exact_bytes():
    pipe = Pipe(version=5)
    assert (pipe.state.version, pipe.state.client_id) == (5, "dev-1")
    raw = encode(Publish("t", b"x", 1, packet_id=9, properties={"user_property": [("k", "v")]}), 5)
    out = pipe.state.receive(UPSTREAM, raw[:3], 0.0) + pipe.state.receive(UPSTREAM, raw[3:], 0.0)
    assert out == [Send(UPSTREAM, raw)]


def test_nth_and_times_per_connection_and_global():
    rule = when("PUBACK", direction="downstream", nth=2).drop()
    pipe = Pipe(rule)
    results = [pipe.down(Puback(i)) for i in (1, 2, 3)]
    assert results == [[(D, Puback(1))], [], [(D, Puback(3))]]
    assert rule.fired == 1
    glob = when("PINGREQ", nth=2, times=2, scope="global").drop()
    a, b = Pipe(glob), Pipe(glob)
    assert [bool(x.up(Pingreq())) for x in (a, b, a, b)] == [True, False, False, True]


def test_matching_by_topic_qos_client_id_and_flags():
    pipe = Pipe(when("PUBLISH", topic="a/+", qos=1, retain=True, client_id="dev-1").drop(),
                when("PUBACK", topic="b/#").drop())
    assert pipe.up(Publish("a/x", qos=1, retain=True, packet_id=1)) == []
    assert pipe.up(Publish("a/x", qos=1, packet_id=2)) != []
    assert pipe.up(Publish("b/c", qos=1, packet_id=3)) != []
    assert pipe.down(Puback(3)) == []  # matched through the topic of the PUBLISH it acknowledges
    assert pipe.down(Puback(2)) == [(D, Puback(2))]


def test_rewrite_duplicate_inject_close_hold_outputs_in_order():
    pipe = Pipe(when("PUBLISH", topic="r").rewrite(retain=True, payload="new"),
                when("PUBLISH", topic="i").inject(Pingreq(), where="before").inject(Pingresp(), direction="opposite"),
                when("PUBLISH", topic="c").close("after"),
                when("PUBLISH", topic="h").hold("H"))
    assert pipe.up(Publish("r", b"old")) == [(U, Publish("r", b"new", retain=True))]
    assert pipe.up(Publish("i")) == [(U, Pingreq()), (U, Publish("i")), (D, Pingresp())]
    out = pipe.state.receive(UPSTREAM, encode(Publish("c")), 0.0)
    assert [type(o) for o in out] == [Fired, Send, Close] and out[2].reason.startswith("rule")
    assert pipe.up(Publish("h", b"1"), Publish("x"), Publish("h", b"2")) == [(U, Publish("x"))]
    assert [h.packet.payload for h in pipe.state.held("H")] == [b"1", b"2"]
    out, n = pipe.state.release("H", 1)
    assert n == 1 and Decoder().feed(out[0].data) == [Publish("h", b"1")]


def test_duplicate_qos2_swallows_the_extra_pubrecs():
    pipe = Pipe(when("PUBLISH", direction="upstream").duplicate(2))
    p = Publish("t", b"m", 2, packet_id=5)
    assert pipe.up(p) == [(U, p), (U, Publish("t", b"m", 2, dup=True, packet_id=5)),
                          (U, Publish("t", b"m", 2, dup=True, packet_id=5))]
    assert pipe.down(Pubrec(5)) == [(D, Pubrec(5))]
    assert pipe.down(Pubrec(5)) == [] and pipe.down(Pubrec(5)) == []
    assert pipe.up(Pubrel(5)) == [(U, Pubrel(5))]
    assert pipe.down(Pubcomp(5)) == [(D, Pubcomp(5))]
    assert pipe.state.ledger.open_exchanges == 0


def test_duplicate_subscribe_and_pingreq_swallow_extra_answers():
    pipe = Pipe(when(["SUBSCRIBE", "PINGREQ"]).duplicate())
    assert len(pipe.up(Subscribe(4, [Subscription("a")]))) == 2
    assert pipe.down(Suback(4, [0])) == [(D, Suback(4, [0]))]
    assert pipe.down(Suback(4, [0])) == []
    assert len(pipe.up(Pingreq())) == 2
    assert pipe.down(Pingresp(), Pingresp()) == [(D, Pingresp())]


def test_match_on_payload_and_reason_code():
    pipe = Pipe(when("PUBLISH", payload=b"").drop(), when("CONNACK", reason_code=0).rewrite(session_present=True))
    assert pipe.up(Publish("t", b"", retain=True)) == []
    assert pipe.up(Publish("t", b"x")) == [(U, Publish("t", b"x"))]
    assert pipe.down(Connack(reason_code=0)) == [(D, Connack(session_present=True))]
    assert pipe.down(Connack(reason_code=5)) == [(D, Connack(reason_code=5))]
    rule = Rule.from_dict({"match": {"type": "PUBLISH", "payload": "", "reason_code": None}, "action": "drop"})
    assert rule.match.payload == b"" and rule.to_dict()["match"]["payload"] == ""



def test_rewrite_sets_options_on_every_subscription():
    pipe = Pipe(when("SUBSCRIBE").rewrite(subscriptions={"no_local": False, "qos": 2}), version=5)
    sent = Subscribe(3, [Subscription("a", 0, no_local=True), Subscription("b", 1, retain_handling=2)])
    assert pipe.up(sent) == [(U, Subscribe(3, [Subscription("a", 2), Subscription("b", 2, retain_handling=2)]))]

@pytest.mark.parametrize("version", [4, 5])
def test_swallow_answers_the_sender_as_the_receiver_would(version):
    pipe = Pipe(when(["PUBLISH", "SUBSCRIBE", "UNSUBSCRIBE", "PINGREQ"], direction="upstream").swallow(),
                version=version)
    assert pipe.up(Publish("t", b"q0")) == []
    assert pipe.up(Publish("t", b"q1", 1, packet_id=4)) == [(D, Puback(4))]
    assert pipe.up(Publish("t", b"q2", 2, packet_id=5)) == [(D, Pubrec(5))]
    assert pipe.up(Pubrel(5)) == [(D, Pubcomp(5))]
    assert pipe.up(Subscribe(6, [Subscription("a", 1), Subscription("b", 2)])) == [(D, Suback(6, [1, 2]))]
    assert pipe.up(Unsubscribe(7, ["a", "b"])) == [(D, Unsuback(7, [0, 0] if version == 5 else []))]
    assert pipe.up(Pingreq()) == [(D, Pingresp())]
    assert pipe.state.ledger.open_exchanges == 0
    assert action_from_dict("swallow") == Swallow() and action_to_dict(Swallow()) == "swallow"


def test_duplicate_with_new_ids_makes_distinct_messages_and_completes_their_flows():
    pipe = Pipe(when("PUBLISH", direction="downstream").duplicate(dup=False, new_id=True))
    p = Publish("t", b"m", 2, packet_id=5)
    assert pipe.down(p) == [(D, p), (D, Publish("t", b"m", 2, packet_id=65535))]
    assert pipe.up(Pubrec(5)) == [(U, Pubrec(5))]
    assert pipe.up(Pubrec(65535)) == [(D, Pubrel(65535))]  # the proxy releases its copy itself
    assert pipe.down(Pubrel(5)) == [(D, Pubrel(5))]
    assert pipe.up(Pubcomp(5)) == [(U, Pubcomp(5))]
    assert pipe.up(Pubcomp(65535)) == []
    assert pipe.state.ledger.open_exchanges == 0
    q1 = Pipe(when("PUBLISH", direction="downstream").duplicate(2, new_id=True))
    assert [pid for _, m in q1.down(Publish("t", b"m", 1, packet_id=1)) for pid in [m.packet_id]] == [1, 65535, 65534]
    assert q1.up(Puback(65535)) == [] and q1.up(Puback(1)) == [(U, Puback(1))]
    assert action_from_dict({"duplicate": {"new_id": True}}) == Duplicate(1, True, True)


# (S, R): sender QoS, receiver QoS. Each row: what the receiver answers, and what each side then sees.
@pytest.mark.parametrize("flow", [UPSTREAM, DOWNSTREAM])
def test_qos_downgrade_1_to_0_synthesizes_puback(flow):
    pipe = Pipe(when("PUBLISH", direction=flow).rewrite(qos=0))
    back = D if flow == U else U
    assert pipe.feed(flow, Publish("t", b"m", 1, packet_id=3)) == [(flow, Publish("t", b"m")), (back, Puback(3))]
    assert pipe.state.ledger.open_exchanges == 0


def test_qos_downgrade_2_to_0_answers_pubrel():
    pipe = Pipe(when("PUBLISH").rewrite(qos=0))
    assert pipe.up(Publish("t", b"m", 2, packet_id=3)) == [(U, Publish("t", b"m")), (D, Pubrec(3))]
    assert pipe.up(Pubrel(3)) == [(D, Pubcomp(3))]
    assert pipe.state.ledger.open_exchanges == 0


def test_qos_downgrade_2_to_1_translates_puback_into_pubrec():
    pipe = Pipe(when("PUBLISH").rewrite(qos=1))
    assert pipe.up(Publish("t", b"m", 2, packet_id=3)) == [(U, Publish("t", b"m", 1, packet_id=3))]
    assert pipe.down(Puback(3)) == [(D, Pubrec(3))]
    assert pipe.up(Pubrel(3)) == [(D, Pubcomp(3))]
    assert pipe.state.ledger.open_exchanges == 0


def test_qos_upgrade_0_to_2_plays_the_sender():
    pipe = Pipe(when("PUBLISH").rewrite(qos=2))
    [(d, sent)] = pipe.up(Publish("t", b"m"))
    assert d == U and sent.qos == 2 and sent.packet_id == 65535
    assert pipe.down(Pubrec(65535)) == [(U, Pubrel(65535))]
    assert pipe.down(Pubcomp(65535)) == []
    assert pipe.state.ledger.open_exchanges == 0


def test_qos_upgrade_1_to_2_turns_pubcomp_into_puback():
    pipe = Pipe(when("PUBLISH").rewrite(qos=2))
    assert pipe.up(Publish("t", b"m", 1, packet_id=8)) == [(U, Publish("t", b"m", 2, packet_id=8))]
    assert pipe.down(Pubrec(8)) == [(U, Pubrel(8))]
    assert pipe.down(Pubcomp(8)) == [(D, Puback(8))]


def test_failed_pubrec_ends_the_exchange_with_the_reason_code():
    pipe = Pipe(when("PUBLISH").rewrite(qos=2), version=5)
    pipe.up(Publish("t", b"m", 1, packet_id=8))
    assert pipe.down(Pubrec(8, 0x87, {"reason_string": "no"})) == [(D, Puback(8, 0x87, {"reason_string": "no"}))]
    assert pipe.state.ledger.open_exchanges == 0


def test_proxy_picked_id_is_remapped_when_the_sender_reuses_it():
    pipe = Pipe(when("PUBLISH", topic="up").rewrite(qos=1))
    [(_, up)] = pipe.up(Publish("up", b"0"))  # the proxy holds 65535 on the broker side
    assert up.packet_id == 65535
    [(_, clash)] = pipe.up(Publish("x", b"1", 1, packet_id=65535))
    assert clash.packet_id != 65535
    assert pipe.down(Puback(clash.packet_id)) == [(D, Puback(65535))]
    assert pipe.down(Puback(65535)) == []


def test_injected_qos1_publish_ack_is_swallowed():
    pipe = Pipe(when("PINGREQ").inject(Publish("inj", b"i", 1), direction="opposite"))
    out = pipe.up(Pingreq())
    assert out[0] == (U, Pingreq()) and out[1][0] == D and out[1][1].packet_id == 65535
    assert pipe.up(Puback(65535)) == []


def test_fix_acks_off_leaves_the_gap_visible():
    pipe = Pipe(when("PUBLISH", fix_acks=False).rewrite(qos=0))
    assert pipe.up(Publish("t", b"m", 1, packet_id=3)) == [(U, Publish("t", b"m"))]


def test_unknown_acks_pass_untouched_and_retransmissions_stay_identity():
    pipe = Pipe()
    assert pipe.down(Puback(42)) == [(D, Puback(42))]
    p = Publish("t", b"m", 1, packet_id=2)
    assert pipe.up(p) == [(U, p)]
    assert pipe.up(Publish("t", b"m", 1, dup=True, packet_id=2)) == [(U, Publish("t", b"m", 1, dup=True, packet_id=2))]
    assert pipe.down(Puback(2), Puback(2)) == [(D, Puback(2)), (D, Puback(2))]


def test_malformed_bytes_fall_back_to_raw_forwarding():
    pipe = Pipe(when("PINGREQ").drop())
    out = pipe.state.receive(UPSTREAM, encode(Pingreq()) + b"\xf0\x00" + encode(Pingreq()), 0.0)
    assert [type(o) for o in out] == [Fired, Send, DecodeFailed]
    assert out[1].data == b"\xf0\x00" + encode(Pingreq())
    assert pipe.state.receive(UPSTREAM, encode(Pingreq()), 0.0) == [Send(UPSTREAM, encode(Pingreq()))]


def test_topic_alias_resolves_for_matching():
    pipe = Pipe(when("PUBLISH", topic="long/topic").drop(), version=5)
    assert pipe.up(Publish("long/topic", b"1", properties={"topic_alias": 1})) == []
    assert pipe.up(Publish("", b"2", properties={"topic_alias": 1})) == []
    assert pipe.up(Publish("other", b"3")) != []


def test_rewrite_connect_connack_acks_properties_and_raw_flags():
    from harness.core.packets import Disconnect

    rules = [when("CONNECT").rewrite(keepalive=5, properties={"session_expiry_interval": 30}),
             when("CONNACK").rewrite(session_present=True, properties={"receive_maximum": None}),
             when("PUBACK").rewrite(reason_code=0x10),
             when("PINGREQ").rewrite(flags=0b0001),
             when("DISCONNECT").rewrite(reason_code=0x04)]
    state = ConnectionState(rules)
    [(d, connect)] = [(o.direction, *Decoder(5).feed(o.data)) for o in
                      state.receive(UPSTREAM, encode(Connect("c", protocol_level=5, keepalive=60)), 0.0)
                      if isinstance(o, Send)]
    assert (connect.keepalive, connect.properties) == (5, {"session_expiry_interval": 30})
    connack = Connack(properties={"receive_maximum": 5, "topic_alias_maximum": 2})
    out = state.receive(DOWNSTREAM, encode(connack, 5), 0.0)
    [connack] = Decoder(5).feed(out[-1].data)
    assert connack.session_present and connack.properties == {"topic_alias_maximum": 2}
    out = state.receive(DOWNSTREAM, encode(Puback(4), 5), 0.0)
    assert Decoder(5).feed(out[-1].data) == [Puback(4, 0x10)]
    out = state.receive(UPSTREAM, encode(Pingreq()), 0.0)
    assert out[-1].data == b"\xc1\x00"  # reserved flag bit set: a malformed PINGREQ, as asked
    out = state.receive(UPSTREAM, encode(Disconnect(), 5), 0.0)
    assert Decoder(5).feed(out[-1].data) == [Disconnect(0x04)]


def test_delay_and_close_after_share_the_delay():
    state = ConnectionState([when("PINGREQ").delay(0.25).close("after")])
    out = [o for o in state.receive(UPSTREAM, encode(Pingreq()), 0.0) if not isinstance(o, Fired)]
    assert [(type(o).__name__, o.delay) for o in out] == [("Send", 0.25), ("Close", 0.25)]


def test_inject_direction_aliases_are_normalised():
    rule = when("PINGREQ").inject(Pingresp(), direction="to_client")
    assert rule.actions[0].direction == DOWNSTREAM
    state = ConnectionState([rule])
    out = [o for o in state.receive(UPSTREAM, encode(Pingreq()), 0.0) if isinstance(o, Send)]
    assert [o.direction for o in out] == [UPSTREAM, DOWNSTREAM]
