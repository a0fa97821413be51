"""The client session state machine, sans-IO: bytes in and out, time as plain numbers.

A `Broker` stands in for the server end of one connection: it decodes what the session queued
and encodes replies with the real codec.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from harness.core.codec import Decoder, encode
from harness.core.packets import (
    MQTT_3_1_1, MQTT_5, Connack, Connect, Disconnect, Pingreq, Pingresp, Puback, Pubcomp, Publish, Pubrec, Pubrel,
    Suback, Subscribe, Subscription, Unsuback, Unsubscribe,
)
from harness.core.session import (
    DEFAULT_WINDOW_311, DEFAULT_WINDOW_311_TOTAL, ClientSession, KeepaliveTimeout, PublishDone, SessionConfig, SessionDiscarded, State,
    Violation,
)
from harness.core.statements import ref
from harness.errors import ProtocolError
import strategies  # noqa: F401  (registers the Hypothesis profiles)

V4_V5 = pytest.mark.parametrize("version", [MQTT_3_1_1, MQTT_5])


class Broker:
    """The server end of one connection."""

    def __init__(self, session: ClientSession):
        self.session = session
        self.decoder = Decoder(session.version)

    def received(self) -> list:
        """The packets the session queued since the last call."""
        return self.decoder.feed(self.session.data_to_send())

    def send(self, *packets, now: float = 0.0) -> list:
        """Deliver packets to the session; returns its events."""
        return self.session.receive_data(b"".join(encode(p, self.session.version) for p in packets), now)


def connected(version: int = MQTT_3_1_1, connack: Connack | None = None, now: float = 0.0,
              **config) -> tuple[ClientSession, Broker]:
    session = ClientSession(SessionConfig(version=version, client_id="c", **config))
    broker = Broker(session)
    session.connect(now)
    [connect] = broker.received()
    assert isinstance(connect, Connect)
    broker.send(connack or Connack(), now=now)
    assert session.state is State.CONNECTED
    return session, broker


def reconnect(session: ClientSession, session_present: bool, now: float = 0.0) -> tuple[Broker, list, list]:
    """Drop the connection, connect again; returns the new broker end, the events and what was resent."""
    session.connection_lost()
    broker = Broker(session)
    session.connect(now)
    [connect] = broker.received()
    assert connect.clean is session.config.clean
    events = broker.send(Connack(session_present), now=now)
    return broker, events, broker.received()


def of(kind: type, events: list) -> list:
    return [e for e in events if isinstance(e, kind)]


# ------------------------------------------------------------------------------ connect

@V4_V5
def test_connect_carries_the_config(version):
    props = {"receive_maximum": 7} if version == MQTT_5 else {}
    session = ClientSession(SessionConfig(version=version, client_id="dev-1", clean=False, keepalive=15,
                                          username="u", password=b"p", properties=props))
    broker = Broker(session)
    assert session.state is State.DISCONNECTED
    session.connect(0.0)
    assert session.state is State.CONNECTING
    assert broker.received() == [Connect("dev-1", False, 15, "u", b"p", None, props, version)]
    events = broker.send(Connack(), now=1.0)
    assert events == [Connack()] and session.connack == Connack()
    assert session.state is State.CONNECTED


@V4_V5
def test_refused_connack_leaves_the_session_disconnected(version):
    session = ClientSession(version=version)
    session.connect(0.0)
    Broker(session).send(Connack(False, 5 if version < MQTT_5 else 0x87))
    assert session.state is State.DISCONNECTED
    assert session.next_deadline() is None


# ------------------------------------------------------------------------------ packet ids

def test_packet_ids_unique_while_in_flight_over_many_flows():
    session, broker = connected(max_inflight=5)
    in_flight: dict[int, int] = {}  # packet id -> message number
    done = 0
    for n in range(400):
        p = session.publish("t", str(n).encode(), qos=1 + n % 2, now=n)
        assert p.packet_id not in in_flight and p.packet_id != 0
        in_flight[p.packet_id] = n
        if n % 3 == 2:  # complete the oldest two in flight, leaving others outstanding
            for pid in list(in_flight)[:2]:
                qos = session.outgoing[pid].publish.qos
                events = broker.send(Puback(pid) if qos == 1 else Pubrec(pid), now=n)
                if qos == 2:
                    events = broker.send(Pubcomp(pid), now=n)
                assert of(PublishDone, events)[0].packet_id == pid
                del in_flight[pid]
                done += 1
    assert set(session.outgoing) == set(in_flight)
    assert done == 400 - len(in_flight)


def test_allocate_skips_ids_in_flight_after_wrapping():
    session, broker = connected()
    held = session.publish("t", b"", qos=1, now=0).packet_id  # id 1, never acked
    sub = session.subscribe([Subscription("a")], now=0).packet_id  # id 2, never acked
    assert (held, sub) == (1, 2)
    seen = {session.allocate_packet_id() for _ in range(65533)}  # 3..65535
    assert seen == set(range(3, 65536))
    assert session.allocate_packet_id() == 3  # wrapped past 65535, skipping 1 and 2
    broker.send(Puback(held))
    assert [session.allocate_packet_id() for _ in range(65532)] == list(range(4, 65536))
    assert session.allocate_packet_id() == 1  # its flow ended: free again
    assert session.allocate_packet_id() == 3  # 2 still awaits its SUBACK


# ------------------------------------------------------------------------------ sender flows

@V4_V5
def test_qos1_sender_flow(version):
    session, broker = connected(version)
    p = session.publish("a/b", b"hi", qos=1, now=1)
    assert broker.received() == [Publish("a/b", b"hi", 1, False, False, p.packet_id)]
    events = broker.send(Puback(p.packet_id))
    assert events == [Puback(p.packet_id), PublishDone(p.packet_id, Puback(p.packet_id))]
    assert not session.outgoing


@V4_V5
def test_qos2_sender_flow(version):
    session, broker = connected(version)
    p = session.publish("a/b", b"hi", qos=2, retain=True, now=1)
    assert broker.received() == [Publish("a/b", b"hi", 2, True, False, p.packet_id)]
    assert not of(PublishDone, broker.send(Pubrec(p.packet_id)))
    assert broker.received() == [Pubrel(p.packet_id)]
    events = broker.send(Pubcomp(p.packet_id))
    assert of(PublishDone, events) == [PublishDone(p.packet_id, Pubcomp(p.packet_id))]
    assert not session.outgoing


def test_qos2_refused_by_pubrec_ends_the_flow_v5():
    session, broker = connected(MQTT_5)
    p = session.publish("a", b"", qos=2)
    broker.received()
    events = broker.send(Pubrec(p.packet_id, 0x87))
    assert of(PublishDone, events) == [PublishDone(p.packet_id, Pubrec(p.packet_id, 0x87))]
    assert broker.received() == [] and not session.outgoing  # no PUBREL after a failure code


def test_qos0_publish_has_no_flow():
    session, broker = connected()
    assert session.publish("a", b"x").packet_id is None
    assert broker.received() == [Publish("a", b"x")]
    assert not session.outgoing


# ------------------------------------------------------------------------------ receiver flows

@V4_V5
def test_receiver_flows_ack_automatically(version):
    session, broker = connected(version)
    events = broker.send(Publish("t", b"0"), Publish("t", b"1", 1, packet_id=5), Publish("t", b"2", 2, packet_id=6))
    assert [e.payload for e in of(Publish, events)] == [b"0", b"1", b"2"]
    assert broker.received() == [Puback(5), Pubrec(6)]
    assert session.incoming_qos2 == {6}
    broker.send(Pubrel(6))
    assert broker.received() == [Pubcomp(6)]
    assert not session.incoming_qos2


@V4_V5
def test_manual_acks_send_nothing_until_asked(version):
    session, broker = connected(version, manual_acks=True)
    q1, q2 = Publish("t", b"1", 1, packet_id=5), Publish("t", b"2", 2, packet_id=6)
    broker.send(q1, q2)
    assert broker.received() == []
    session.ack(q2)
    session.ack(q1)
    assert broker.received() == [Pubrec(6), Puback(5)]
    broker.send(Pubrel(6))
    assert broker.received() == []
    session.complete(6)
    assert broker.received() == [Pubcomp(6)]

    out = session.publish("a", b"", qos=2)
    broker.received()
    broker.send(Pubrec(out.packet_id))
    assert broker.received() == []  # no PUBREL on its own
    session.release(out.packet_id)
    assert broker.received() == [Pubrel(out.packet_id)]
    assert of(PublishDone, broker.send(Pubcomp(out.packet_id)))


def test_manual_ack_carries_reason_code_and_properties():
    session, broker = connected(MQTT_5, manual_acks=True)
    q1, q2 = Publish("t", b"1", 1, packet_id=5), Publish("t", b"2", 2, packet_id=6)
    broker.send(q1, q2)
    session.ack(q1, properties={"reason_string": "done", "user_property": [("k", "v")]})
    session.ack(q2, reason_code=0x80)
    assert broker.received() == [Puback(5, 0, {"reason_string": "done", "user_property": [("k", "v")]}),
                                 Pubrec(6, 0x80)]
    assert not session.incoming_qos2 and not session.incoming_unacked  # a failing PUBREC ends the QoS 2 flow


# ------------------------------------------------------------------------------ window

def test_window_311_default_holds_the_21st_qos2_publish():
    session, broker = connected()
    sent = [session.publish("t", bytes([n]), qos=2) for n in range(DEFAULT_WINDOW_311 + 1)]
    assert [p.payload for p in broker.received()] == [bytes([n]) for n in range(DEFAULT_WINDOW_311)]
    assert list(session.pending) == [sent[-1].packet_id]
    broker.send(Pubrec(sent[3].packet_id))
    assert broker.received() == [Pubrel(sent[3].packet_id)]  # the PUBREL phase still holds its slot
    broker.send(Pubcomp(sent[3].packet_id))
    assert broker.received() == [sent[-1]]
    assert not session.pending


def test_window_311_default_qos1_is_wider_and_shared_with_qos2():
    """In 3.1.1 QoS 1 flows fill DEFAULT_WINDOW_311_TOTAL; QoS 2 ones, counted in the same total, at most
    DEFAULT_WINDOW_311. A waiting QoS 2 publish holds back the QoS 1 ones behind it (order is kept)."""
    session, broker = connected()
    q2 = [session.publish("t", b"", qos=2) for _ in range(DEFAULT_WINDOW_311)]
    q1 = [session.publish("t", b"", qos=1) for _ in range(DEFAULT_WINDOW_311_TOTAL - DEFAULT_WINDOW_311 + 1)]
    assert [p.packet_id for p in broker.received()] == [p.packet_id for p in q2 + q1[:-1]]
    assert list(session.pending) == [q1[-1].packet_id]
    late_q2 = session.publish("t", b"", qos=2)
    broker.send(Pubrec(q2[0].packet_id), Pubcomp(q2[0].packet_id))  # one slot of the total: the QoS 1 one
    assert broker.received() == [Pubrel(q2[0].packet_id), q1[-1]]
    broker.send(Puback(q1[0].packet_id))
    assert broker.received() == [late_q2]
    behind = [session.publish("t", b"", qos=2), session.publish("t", b"", qos=1)]
    broker.send(Puback(q1[1].packet_id), Puback(q1[2].packet_id))
    assert broker.received() == []  # the QoS 2 one waits for a QoS 2 slot; the QoS 1 one waits behind it
    broker.send(Pubrec(q2[1].packet_id), Pubcomp(q2[1].packet_id))
    assert [p.packet_id for p in broker.received() if isinstance(p, Publish)] == [p.packet_id for p in behind]


@pytest.mark.parametrize("qos", [1, 2])
def test_window_configured_in_311_bounds_both_qos(qos):
    session, broker = connected(max_inflight=3)
    sent = [session.publish("t", b"", qos=qos) for _ in range(4)]
    assert [p.packet_id for p in broker.received()] == [p.packet_id for p in sent[:3]]


@pytest.mark.parametrize("receive_maximum", [1, 20, 100, 65535])
def test_window_v5_follows_connack_receive_maximum_for_both_qos(receive_maximum):
    """MQTT 5: the broker announces its limit (Receive Maximum, §3.2.2.3.3), so QoS 1 and QoS 2 flows together
    fill exactly that many slots, with no 3.1.1 default in the way."""
    session, broker = connected(MQTT_5, Connack(properties={"receive_maximum": receive_maximum}))
    count = min(receive_maximum + 1, 2000)
    sent = [session.publish("t", b"", qos=1 + n % 2) for n in range(count)]
    assert len(broker.received()) == min(count, receive_maximum)
    assert session.window == session.window_qos2 == receive_maximum
    assert list(session.pending) == ([sent[-1].packet_id] if receive_maximum <= 2000 else [])


def test_window_v5_without_receive_maximum_is_65535():
    session, broker = connected(MQTT_5, Connack())
    assert session.window == session.window_qos2 == 65535


def test_large_payload_is_queued_as_its_own_piece():
    session, broker = connected()
    payload = bytes(range(256)) * 64
    p = session.publish("t/large", payload, qos=1)
    pieces = session.take_output()
    assert len(pieces) == 2 and pieces[1] is payload and b"".join(pieces) == encode(p, MQTT_3_1_1)
    assert session.take_output() == []


@pytest.mark.parametrize("configured,expected", [(None, 3), (2, 2), (10, 3)])
def test_window_v5_receive_maximum_from_connack(configured, expected):
    session, broker = connected(MQTT_5, Connack(properties={"receive_maximum": 3}), max_inflight=configured)
    sent = [session.publish("t", b"", qos=2) for _ in range(6)]
    assert [p.packet_id for p in broker.received()] == [p.packet_id for p in sent[:expected]]
    broker.send(Pubrec(sent[0].packet_id))  # PUBREL phase still counts against the window
    assert broker.received() == [Pubrel(sent[0].packet_id)]
    broker.send(Pubcomp(sent[0].packet_id))
    assert [p.packet_id for p in broker.received()] == [sent[expected].packet_id]


def test_publishes_before_connack_wait_for_it():
    session = ClientSession(version=MQTT_3_1_1, client_id="c", max_inflight=2)
    broker = Broker(session)
    session.connect(0)
    queued = [session.publish("t", bytes([n]), qos=1) for n in range(3)]
    assert [type(p) for p in broker.received()] == [Connect]
    broker.send(Connack())
    assert broker.received() == queued[:2]


# ------------------------------------------------------------------------------ resume

@V4_V5
def test_resume_resends_unacked_with_dup_and_same_ids(version):
    session, broker = connected(version, clean=False, max_inflight=3)
    q1 = session.publish("a", b"1", qos=1)
    q2 = session.publish("b", b"2", qos=2)
    q2_released = session.publish("c", b"3", qos=2)
    waiting = session.publish("d", b"4", qos=1)  # beyond the window: never sent
    broker.received()
    broker.send(Pubrec(q2_released.packet_id))
    assert broker.received() == [Pubrel(q2_released.packet_id)]

    broker, events, resent = reconnect(session, session_present=True)
    assert not of(SessionDiscarded, events) and not of(Violation, events)
    assert resent == [
        Publish("a", b"1", 1, False, True, q1.packet_id),
        Publish("b", b"2", 2, False, True, q2.packet_id),
        Pubrel(q2_released.packet_id),
    ]
    broker.send(Puback(q1.packet_id))
    assert broker.received() == [Publish("d", b"4", 1, False, False, waiting.packet_id)]  # first attempt: DUP=0
    broker.send(Pubrec(q2.packet_id), Pubcomp(q2_released.packet_id))
    assert broker.received() == [Pubrel(q2.packet_id)]


def test_resume_drops_topic_alias_from_resent_publish():
    session, broker = connected(MQTT_5, Connack(properties={"topic_alias_maximum": 4}), clean=False)
    p = session.publish("a/b", b"x", qos=1, use_alias=True)
    assert broker.received()[0].properties == {"topic_alias": 1}
    broker, _, resent = reconnect(session, session_present=True)
    assert resent == [Publish("a/b", b"x", 1, False, True, p.packet_id)]


@V4_V5
def test_no_session_present_discards_flows(version):
    session, broker = connected(version, clean=False, max_inflight=1)
    sent = session.publish("a", b"1", qos=1)
    waiting = session.publish("a", b"2", qos=1)
    broker, events, resent = reconnect(session, session_present=False)
    assert of(SessionDiscarded, events) == [SessionDiscarded([sent.packet_id])]
    assert resent == [Publish("a", b"2", 1, False, False, waiting.packet_id)]  # never sent: goes out fresh
    assert list(session.outgoing) == [waiting.packet_id]


def test_unsent_bytes_do_not_precede_connect_on_the_next_connection():
    session, broker = connected(clean=False)
    p = session.publish("a", b"1", qos=1)
    broker.send(Publish("t", b"", 1, packet_id=9))  # PUBACK queued, never written
    session.connection_lost()
    broker = Broker(session)
    session.connect(1)
    assert [type(x) for x in broker.received()] == [Connect]
    broker.send(Connack(True))
    assert broker.received() == [Publish("a", b"1", 1, False, True, p.packet_id)]


@V4_V5
def test_session_present_on_clean_connect_is_a_violation(version):
    session = ClientSession(version=version, clean=True)
    session.connect(0)
    [violation] = of(Violation, Broker(session).send(Connack(True)))
    assert violation.statement == ref("clean_session_present", version)


# ------------------------------------------------------------------------------ topic aliases

def test_topic_alias_outbound():
    session, broker = connected(MQTT_5, Connack(properties={"topic_alias_maximum": 2}))
    for topic in ["a", "a", "b", "c", "b"]:
        session.publish(topic, b"", use_alias=True)
    assert [(p.topic, p.properties) for p in broker.received()] == [
        ("a", {"topic_alias": 1}), ("", {"topic_alias": 1}), ("b", {"topic_alias": 2}),
        ("c", {}),  # aliases used up: the topic goes in full
        ("", {"topic_alias": 2}),
    ]


def test_topic_alias_not_used_without_server_support():
    session, broker = connected(MQTT_5)
    session.publish("a", b"", use_alias=True)
    session.publish("a", b"", use_alias=True)
    assert [(p.topic, p.properties) for p in broker.received()] == [("a", {}), ("a", {})]


def test_topic_alias_inbound():
    session, broker = connected(MQTT_5, properties={"topic_alias_maximum": 3})
    events = broker.send(Publish("x/y", b"1", properties={"topic_alias": 3}),
                         Publish("", b"2", properties={"topic_alias": 3}))
    assert [p.topic for p in of(Publish, events)] == ["x/y", "x/y"]
    events = broker.send(Publish("", b"3", properties={"topic_alias": 2}),
                         Publish("z", b"4", properties={"topic_alias": 4}))
    assert [v.statement for v in of(Violation, events)] == [
        ref("topic_alias_unknown", MQTT_5), ref("topic_alias_over_max", MQTT_5)]


# ------------------------------------------------------------------------------ keepalive

def test_keepalive_ping_cycle():
    session, broker = connected(keepalive=10, now=0)
    assert session.next_deadline() == 10
    assert session.poll(9.9) == [] and broker.received() == []
    session.publish("t", b"", now=4)  # any packet sent restarts the interval
    broker.received()
    assert session.next_deadline() == 14
    assert session.poll(14) == []
    assert broker.received() == [Pingreq()]
    assert session.next_deadline() == 14 + session.ping_timeout == 19
    broker.send(Pingresp(), now=15)
    assert session.next_deadline() == 24


def test_keepalive_timeout_without_pingresp():
    session, broker = connected(keepalive=10, ping_timeout=3, now=0)
    session.poll(10)
    assert broker.received() == [Pingreq()]
    broker.send(Puback(99), now=11)  # not a PINGRESP: does not count
    assert session.poll(12.9) == []
    assert session.poll(13) == [KeepaliveTimeout(3)]


def test_server_keep_alive_overrides():
    session, broker = connected(MQTT_5, Connack(properties={"server_keep_alive": 4}), keepalive=60, now=0)
    assert session.effective_keepalive == 4 and session.next_deadline() == 4
    session.poll(4)
    assert broker.received() == [Pingreq()]


def test_no_keepalive_no_deadline():
    session, _ = connected(keepalive=0)
    assert session.next_deadline() is None and session.poll(1e9) == []
    session, _ = connected(MQTT_5, Connack(properties={"server_keep_alive": 0}), keepalive=30)
    assert session.next_deadline() is None


# ------------------------------------------------------------------------------ violations

@V4_V5
def test_acks_for_unknown_ids_are_violations(version):
    session, broker = connected(version)
    unexpected = ref("unexpected_ack", version)
    for ack in (Puback(7), Pubcomp(8), Pubrec(9)):
        [v] = of(Violation, broker.send(ack))
        assert v.statement == unexpected and v.packet == ack
    # A PUBACK for a QoS 2 flow is no answer either.
    p = session.publish("t", b"", qos=2)
    [v] = of(Violation, broker.send(Puback(p.packet_id)))
    assert v.statement == unexpected and p.packet_id in session.outgoing


@V4_V5
def test_suback_checks(version):
    session, broker = connected(version)
    [v] = of(Violation, broker.send(Suback(42, [0])))
    assert v.statement == ref("sub_ack_id", version)
    sub = session.subscribe([Subscription("a"), Subscription("b")])
    assert broker.received() == [sub]
    [v] = of(Violation, broker.send(Suback(sub.packet_id, [0])))
    assert v.statement == ref("suback_count", version)
    unsub = session.unsubscribe(["a"])
    assert broker.received() == [Unsubscribe(unsub.packet_id, ["a"])]
    assert not of(Violation, broker.send(Unsuback(unsub.packet_id, [0] if version == MQTT_5 else [])))


def test_receive_maximum_exceeded_by_server_v5():
    session, broker = connected(MQTT_5, properties={"receive_maximum": 2}, manual_acks=True)
    events = broker.send(*[Publish("t", b"", 1, packet_id=n) for n in (1, 2, 3)])
    [v] = of(Violation, events)
    assert v.statement == ref("receive_maximum", MQTT_5) and v.packet.packet_id == 3


def test_malformed_input_raises_with_the_events_before_it():
    session, broker = connected()
    data = encode(Publish("t", b"ok", 1, packet_id=3)) + encode(Puback(0))
    with pytest.raises(ProtocolError) as info:
        session.receive_data(data, 1)
    assert of(Publish, info.value.events) == [Publish("t", b"ok", 1, packet_id=3)]
    assert broker.received() == [Puback(3)]  # the packet before the error was still handled


def test_server_disconnect_ends_the_connection():
    session, broker = connected(MQTT_5)
    assert broker.send(Disconnect(0x8B)) == [Disconnect(0x8B)]
    assert session.state is State.DISCONNECTED


# ------------------------------------------------------------------------------ model-based

class SessionMachine(RuleBasedStateMachine):
    """Random publishes, acks in random order and reconnects, against a model of the broker.

    The broker end records every packet id it has seen in flight and checks the session's wire
    behaviour: ids unique while in flight, never more than `window` unacknowledged, DUP only on a
    resend of the same message. At the end the broker acks everything, and every QoS 1/2 publish
    must have completed exactly once (or been reported discarded when the session was lost).
    """

    @initialize(version=st.sampled_from([MQTT_3_1_1, MQTT_5]), window=st.integers(1, 4))
    def start(self, version, window):
        self.now = 0.0
        self.window = window
        # The window comes from the config in 3.1.1 and from the server's Receive Maximum in 5.0.
        self.connack_props = {"receive_maximum": window} if version == MQTT_5 else {}
        self.session = ClientSession(SessionConfig(version=version, client_id="m", clean=False, keepalive=0,
                                                   max_inflight=None if version == MQTT_5 else window))
        self.messages = 0
        self.owner: dict[int, int] = {}  # packet id -> message number, from publish() until its flow ends
        self.finished: Counter = Counter()  # message number -> times reported done or discarded
        self.published: set[int] = set()  # QoS 1/2 message numbers
        self.wire: dict[int, int] = {}  # broker side: packet id -> message number seen, until acked
        self.sub_ids: set[int] = set()  # broker side: SUBSCRIBE ids not yet answered
        self.replies: list = []  # acks the broker owes
        self._open(session_present=False)

    def _open(self, session_present: bool):
        self.session.connection_lost()
        self.broker = Broker(self.session)
        self.replies = []
        self.session.connect(self.now)
        assert [type(p) for p in self.broker.received()] == [Connect]
        self._events(self.broker.send(Connack(session_present, 0, self.connack_props), now=self.now))
        if not session_present:
            self.wire.clear()  # the broker's session is new
        self.sub_ids.clear()  # a SUBSCRIBE unanswered when the connection dropped stays so
        self._take()

    def _events(self, events):
        for e in events:
            if isinstance(e, Violation):
                raise AssertionError(f"unexpected violation: {e}")
            for pid in (e.packet_ids if isinstance(e, SessionDiscarded) else
                        [e.packet_id] if isinstance(e, PublishDone) else []):
                self.finished[self.owner.pop(pid)] += 1

    def _take(self):
        """The broker reads what the session sent and decides what it owes."""
        for p in self.broker.received():
            if isinstance(p, Publish) and p.qos:
                message = int(p.payload)
                if p.dup:
                    assert self.wire.get(p.packet_id) == message, f"DUP=1 on a first send of {message}"
                else:
                    assert p.packet_id not in self.wire, f"packet id {p.packet_id} reused while in flight"
                self.wire[p.packet_id] = message
                self.replies.append(Puback(p.packet_id) if p.qos == 1 else Pubrec(p.packet_id))
            elif isinstance(p, Pubrel):
                assert p.packet_id in self.wire
                self.replies.append(Pubcomp(p.packet_id))
            elif isinstance(p, Subscribe):
                assert p.packet_id not in self.wire and p.packet_id not in self.sub_ids
                self.sub_ids.add(p.packet_id)
                self.replies.append(Suback(p.packet_id, [0]))
        assert len(self.wire) <= self.window, f"{len(self.wire)} in flight, window {self.window}"

    def _tick(self):
        self.now += 1

    @rule(qos=st.integers(0, 2))
    def publish(self, qos):
        self._tick()
        p = self.session.publish("t", str(self.messages).encode(), qos=qos, now=self.now)
        if qos:
            assert p.packet_id not in self.owner and 1 <= p.packet_id <= 65535
            self.owner[p.packet_id] = self.messages
            self.published.add(self.messages)
        self.messages += 1
        self._take()

    @rule()
    def subscribe(self):
        self._tick()
        self.session.subscribe([Subscription("t")], now=self.now)
        self._take()

    @precondition(lambda self: self.replies)
    @rule(data=st.data())
    def broker_replies(self, data):
        self._tick()
        self._reply(self.replies.pop(data.draw(st.integers(0, len(self.replies) - 1))))

    def _reply(self, reply):
        if isinstance(reply, (Puback, Pubcomp)):  # the broker's part of the flow ends here
            del self.wire[reply.packet_id]
        elif isinstance(reply, Suback):
            self.sub_ids.discard(reply.packet_id)
        self._events(self.broker.send(reply, now=self.now))
        self._take()

    @rule(session_present=st.booleans())
    def reconnect(self, session_present):
        self._tick()
        self._open(session_present)

    @invariant()
    def ids_in_flight_are_valid(self):
        ids = list(self.session.outgoing)
        assert len(ids) == len(set(ids)) and all(1 <= i <= 65535 for i in ids)
        assert set(ids) == set(self.owner)
        assert not set(ids) & set(self.session.requests), "a packet id used by a publish and a request"
        assert sum(e.sent for e in self.session.outgoing.values()) <= self.window

    def teardown(self):
        if not hasattr(self, "session"):  # initialize never ran
            return
        while self.replies:  # the broker acks everything, oldest first
            self.broker_replies_oldest()
        assert not self.owner and not self.session.outgoing, "flows left unfinished"
        assert set(self.finished) == self.published
        assert all(n == 1 for n in self.finished.values()), self.finished

    def broker_replies_oldest(self):
        self._reply(self.replies.pop(0))


SessionMachine.TestCase.settings = settings(max_examples=max(20, settings.default.max_examples // 2),
                                            stateful_step_count=30)
TestSessionMachine = SessionMachine.TestCase
