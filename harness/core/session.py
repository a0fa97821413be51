"""Client-side MQTT session state machine, sans-IO.

The driver calls methods to act (connect, publish, ...), feeds received bytes with
receive_data(data, now), calls poll(now) when next_deadline() passes, and writes out whatever
data_to_send() returns. The session never reads a clock or touches a socket.

What it keeps: packet ids in flight (never reused while in flight), the QoS 1/2 sender and
receiver flows, the outgoing window (Receive Maximum, or a configured limit in 3.1.1), topic
aliases in both directions, and the keepalive timers. In manual-ack mode it sends no
PUBACK/PUBREC/PUBREL/PUBCOMP on its own, so a test can withhold, delay or reorder them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from harness.core.codec import Decoder, encode, encode_vbi, publish_header
from harness.core.packets import (
    MQTT_5, Auth, Connack, Connect, Disconnect, Pingreq, Pingresp, Puback, Pubcomp, Publish, Pubrec, Pubrel,
    Suback, Subscribe, Subscription, Unsuback, Unsubscribe, Will,
)
from harness.core.statements import ref
from harness.errors import ProtocolError

DEFAULT_WINDOW_311 = 20  # QoS 2 in 3.1.1: mosquitto's default max_inflight_messages; above it QoS 2 is lost (perf-baselines §3.1)
# QoS 1 and 2 together in 3.1.1, which has no flow control. A QoS 1 PUBLISH beyond a broker's in-flight quota
# is queued, not lost, so only QoS 2 keeps the tight window of 20 (20 costs a QoS 1 publisher one broker round
# trip per 20 messages). But not unbounded: on a loaded machine, mosquitto at its default max_queued_messages
# 1000 dropped QoS 1 messages of 3,000-5,000 bursts with a window of 500 or 1000, none with 100 or 200
# (bench/README.md, "Profile: client and codec"); tests/test_client_brokers.py checks every process broker.
DEFAULT_WINDOW_311_TOTAL = 100
LARGE_PAYLOAD = 2048  # from this size a PUBLISH payload is queued as its own piece, not copied behind its header


class State(Enum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"


# ---- events the session reports besides the packets it received


@dataclass(slots=True)
class PublishDone:
    """An outgoing QoS 1/2 flow ended; `ack` is the PUBACK, PUBCOMP or failing PUBREC."""

    packet_id: int
    ack: object


@dataclass(slots=True)
class Violation:
    """The peer broke a rule the session can see (not a decoding error)."""

    statement: str
    message: str
    packet: object = None


@dataclass(slots=True)
class KeepaliveTimeout:
    """No PINGRESP arrived within ping_timeout of a PINGREQ (other packets do not count): the peer
    counts as dead."""

    waited: float


@dataclass(slots=True)
class SessionDiscarded:
    """The server had no session (Session Present 0): these unfinished flows were dropped."""

    packet_ids: list[int]


@dataclass(slots=True)
class _Outgoing:
    publish: Publish
    awaiting: type  # Puback, Pubrec or Pubcomp
    sent: bool = False


@dataclass
class SessionConfig:
    version: int = 4
    client_id: str = ""
    clean: bool = True
    keepalive: int = 60
    username: str | None = None
    password: bytes | None = None
    will: Will | None = None
    properties: dict = field(default_factory=dict)  # v5 CONNECT properties
    max_inflight: int | None = None  # outgoing window (QoS 1 and 2); default Receive Maximum (v5), or in 3.1.1
    # DEFAULT_WINDOW_311_TOTAL of which at most DEFAULT_WINDOW_311 QoS 2
    manual_acks: bool = False
    ping_timeout: float | None = None  # default: half the keepalive, at least 1 s


class ClientSession:
    def __init__(self, config: SessionConfig | None = None, **kwargs):
        self.config = config or SessionConfig(**kwargs)
        c = self.config
        self.version = c.version
        self.state = State.DISCONNECTED
        self._decoder = Decoder(c.version)
        self._out: list[bytes] = []  # encoded packets (or a PUBLISH's header and payload) not yet taken
        self._events: list = []
        self._next_pid = 1
        self.outgoing: dict[int, _Outgoing] = {}  # QoS 1/2 publishes in flight, by packet id
        self.inflight = 0  # entries of `outgoing` that were sent (the window counts these)
        self.inflight_qos2 = 0  # of those, QoS 2 flows
        self.pending: deque[int] = deque()  # packet ids of QoS 1/2 publishes waiting for a window slot
        self.requests: dict[int, object] = {}  # SUBSCRIBE/UNSUBSCRIBE awaiting their ack
        self.incoming_qos2: set[int] = set()  # PUBREC sent, PUBREL not yet received
        self.incoming_unacked: set[int] = set()  # QoS 1/2 received, ack not yet sent (v5 Receive Maximum)
        self.connack: Connack | None = None
        self.server_keepalive: int | None = None
        # `window` bounds QoS 1 and 2 flows in flight together, `window_qos2` the QoS 2 ones among them.
        self.window = c.max_inflight or DEFAULT_WINDOW_311_TOTAL
        self.window_qos2 = c.max_inflight or DEFAULT_WINDOW_311
        self.alias_in: dict[int, str] = {}
        self.alias_out: dict[str, int] = {}
        self.alias_out_max = 0
        self.last_sent = 0.0
        self.last_received = 0.0
        self.ping_sent_at: float | None = None

    # ------------------------------------------------------------------ outgoing
    def data_to_send(self) -> bytes:
        data = b"".join(self._out)  # one packet: the same object, no copy
        self._out.clear()
        return data

    def take_output(self) -> list[bytes]:
        """What data_to_send() would join, as the pieces it is made of (for a writer that sends pieces as
        they are: a large payload is then never copied). The list is the caller's."""
        out = self._out
        self._out = []
        return out

    def _send(self, packet, now: float | None = None) -> bytes:
        raw = encode(packet, self.version)
        self._out.append(raw)
        if now is not None:
            self.last_sent = now
        return raw

    def send_packet(self, packet, now: float | None = None) -> bytes:
        """Send any packet as-is (manual acks, tests). Returns the bytes queued."""
        return self._send(packet, now)

    def send_raw(self, data: bytes, now: float | None = None) -> None:
        self._out.append(data)
        if now is not None:
            self.last_sent = now

    def connect(self, now: float) -> Connect:
        c = self.config
        props = dict(c.properties)
        packet = Connect(c.client_id, c.clean, c.keepalive, c.username, c.password, c.will,
                         props if self.version >= MQTT_5 else {}, self.version)
        self._decoder = Decoder(self.version)
        self.state = State.CONNECTING
        self.connack = None
        self.ping_sent_at = None
        self.last_received = now
        self.alias_in.clear()
        self.alias_out.clear()
        self._send(packet, now)
        return packet

    def allocate_packet_id(self) -> int:
        for _ in range(65535):
            pid = self._next_pid
            self._next_pid = pid % 65535 + 1
            if pid not in self.outgoing and pid not in self.requests:
                return pid
        raise RuntimeError("all 65535 packet identifiers are in flight")

    def publish(self, topic: str, payload: bytes = b"", qos: int = 0, retain: bool = False,
                properties: dict | None = None, now: float | None = None, use_alias: bool = False) -> Publish:
        """Queue a PUBLISH. QoS 1/2 get a packet id now and go out when the window allows."""
        props = dict(properties) if properties else {}
        packet = Publish(topic, payload, qos, retain, False, None, props)
        if qos:
            pid = packet.packet_id = self.allocate_packet_id()
            entry = self.outgoing[pid] = _Outgoing(packet, Puback if qos == 1 else Pubrec)
            if (self.state is not State.CONNECTED or self.pending or self.inflight >= self.window
                    or (qos == 2 and self.inflight_qos2 >= self.window_qos2)):
                self.pending.append(pid)  # in order: nothing overtakes a publish waiting for the window
                return packet
            entry.sent = True
            self.inflight += 1
            if qos == 2:
                self.inflight_qos2 += 1
        if self.state is State.CONNECTED:
            self._send_publish(packet, now, use_alias)
        return packet

    def _send_publish(self, packet: Publish, now, use_alias: bool = False):
        if use_alias and self.version >= MQTT_5 and self.alias_out_max:
            alias = self.alias_out.get(packet.topic)
            if alias is not None:
                wire = Publish("", packet.payload, packet.qos, packet.retain, packet.dup, packet.packet_id,
                               {**packet.properties, "topic_alias": alias})
                self._send(wire, now)
                return
            if len(self.alias_out) < self.alias_out_max:
                alias = len(self.alias_out) + 1
                self.alias_out[packet.topic] = alias
                packet.properties["topic_alias"] = alias
        self._send_pub(packet, now)

    def _send_pub(self, packet: Publish, now) -> None:
        payload = packet.payload
        if len(payload) < LARGE_PAYLOAD or type(payload) is not bytes:
            self._send(packet, now)
            return
        self._out.append(publish_header(packet, self.version))
        self._out.append(payload)  # immutable, so the writer may send it later as it is
        if now is not None:
            self.last_sent = now

    def _release_pending(self, now):
        pending, outgoing = self.pending, self.outgoing
        while pending and self.inflight < self.window:
            entry = outgoing[pending[0]]
            qos2 = entry.awaiting is not Puback
            if qos2 and self.inflight_qos2 >= self.window_qos2:
                break
            pending.popleft()
            entry.sent = True
            self.inflight += 1
            self.inflight_qos2 += qos2
            self._send_pub(entry.publish, now)

    def _flow_done(self, packet_id: int) -> None:
        if self.outgoing.pop(packet_id).publish.qos == 2:
            self.inflight_qos2 -= 1
        self.inflight -= 1

    def subscribe(self, subscriptions: list[Subscription], properties: dict | None = None,
                  now: float | None = None) -> Subscribe:
        packet = Subscribe(self.allocate_packet_id(), subscriptions, dict(properties or {}))
        self.requests[packet.packet_id] = packet
        self._send(packet, now)
        return packet

    def unsubscribe(self, topic_filters: list[str], properties: dict | None = None,
                    now: float | None = None) -> Unsubscribe:
        packet = Unsubscribe(self.allocate_packet_id(), topic_filters, dict(properties or {}))
        self.requests[packet.packet_id] = packet
        self._send(packet, now)
        return packet

    def ping(self, now: float) -> None:
        self._send(Pingreq(), now)
        if self.ping_sent_at is None:
            self.ping_sent_at = now

    def disconnect(self, reason_code: int = 0, properties: dict | None = None, now: float | None = None):
        self._send(Disconnect(reason_code, dict(properties or {})), now)
        self.state = State.DISCONNECTED

    def auth(self, reason_code: int, properties: dict, now: float | None = None):
        self._send(Auth(reason_code, properties), now)

    # acks, used automatically unless manual_acks
    def ack(self, publish: Publish, now: float | None = None, *, reason_code: int = 0,
            properties: dict | None = None) -> None:
        """Acknowledge a received QoS 1 (PUBACK) or QoS 2 (PUBREC) PUBLISH; in v5 with a reason code and
        properties (Reason String, User Property). A PUBREC of 0x80 or above ends the QoS 2 flow."""
        pid = publish.packet_id
        self.incoming_unacked.discard(pid)
        props = dict(properties or {})
        if publish.qos == 1:
            self._send(Puback(pid, reason_code, props), now)
        elif publish.qos == 2:
            if reason_code < 0x80:
                self.incoming_qos2.add(pid)
            self._send(Pubrec(pid, reason_code, props), now)

    def release(self, packet_id: int, now: float | None = None) -> None:
        """Send PUBREL for an outgoing QoS 2 flow (after its PUBREC)."""
        entry = self.outgoing.get(packet_id)
        if entry is not None:
            entry.awaiting = Pubcomp
        self._send(Pubrel(packet_id), now)

    def complete(self, packet_id: int, now: float | None = None) -> None:
        """Send PUBCOMP for an incoming QoS 2 flow (after its PUBREL)."""
        self.incoming_qos2.discard(packet_id)
        self._send(Pubcomp(packet_id), now)

    # ------------------------------------------------------------------ incoming
    def receive_data(self, data: bytes, now: float) -> list:
        """Feed bytes from the network; returns events (received packets and session events).

        Raises ProtocolError for malformed input; events decoded before it are in `.events`.
        """
        events = self._events = []
        self.last_received = now
        try:
            packets = self._decoder.feed(data)
        except ProtocolError as exc:
            for p in exc.decoded:
                self._handle(p, now)
            exc.events = events
            raise
        for p in packets:
            self._handle(p, now)
        return events

    def connection_lost(self) -> None:
        """The transport closed. In-flight state is kept for a clean=0 resumption."""
        self.state = State.DISCONNECTED
        self.ping_sent_at = None
        self.incoming_unacked.clear()
        self.requests.clear()  # an unanswered SUBSCRIBE/UNSUBSCRIBE is not resent: free its packet id
        # Bytes never written belong to the dead connection: the next one must start with
        # CONNECT [MQTT-3.1.0-1], and the flows they carried are resent on resume.
        self._out.clear()

    def _handle(self, p, now):
        events = self._events
        t = p.TYPE
        if t == 3:
            self._on_publish(p, now)
            return
        events.append(p)
        if t == 4 or t == 7:
            entry = self.outgoing.get(p.packet_id)
            if entry is None or entry.awaiting is not type(p) or not entry.sent:
                events.append(Violation(ref("unexpected_ack", self.version),
                                        f"{type(p).__name__.upper()} for packet id {p.packet_id} "
                                        "which is not awaiting one", p))
                return
            self._flow_done(p.packet_id)
            events.append(PublishDone(p.packet_id, p))
            self._release_pending(now)
        elif t == 5:
            entry = self.outgoing.get(p.packet_id)
            if entry is None or entry.awaiting not in (Pubrec, Pubcomp) or not entry.sent:
                events.append(Violation(ref("unexpected_ack", self.version), f"PUBREC for packet id {p.packet_id} with no QoS 2 "
                                        "PUBLISH in flight", p))
                if not self.config.manual_acks and self.version < MQTT_5:
                    self._send(Pubrel(p.packet_id), now)
                return
            if p.reason_code >= 0x80:
                self._flow_done(p.packet_id)
                events.append(PublishDone(p.packet_id, p))
                self._release_pending(now)
            elif not self.config.manual_acks:
                self.release(p.packet_id, now)
        elif t == 6:
            if not self.config.manual_acks:
                unknown = p.packet_id not in self.incoming_qos2 and self.version >= MQTT_5
                self.incoming_qos2.discard(p.packet_id)
                self._send(Pubcomp(p.packet_id, 0x92 if unknown else 0), now)  # 0x92: Packet Identifier not found
        elif t == 2:
            self._on_connack(p, now)
        elif t == 13:
            self.ping_sent_at = None
        elif t == 9 or t == 11:
            req = self.requests.pop(p.packet_id, None)
            if req is None:
                events.append(Violation(ref("sub_ack_id", self.version),
                                        f"{type(p).__name__.upper()} for unknown packet id {p.packet_id}", p))
            elif t == 9 and len(p.reason_codes) != len(req.subscriptions):
                events.append(Violation(ref("suback_count", self.version), f"SUBACK has {len(p.reason_codes)} return codes for "
                                        f"{len(req.subscriptions)} topic filters", p))
        elif t == 14:
            self.state = State.DISCONNECTED

    def _on_connack(self, p: Connack, now):
        self.connack = p
        if p.reason_code != 0:
            self.state = State.DISCONNECTED
            return
        self.state = State.CONNECTED
        props = p.properties
        if self.version >= MQTT_5:
            rm = props.get("receive_maximum", 65535)  # the broker's own limit, so QoS 2 needs no tighter one
            self.window = self.window_qos2 = min(rm, self.config.max_inflight or rm)
            self.alias_out_max = props.get("topic_alias_maximum", 0)
            self.server_keepalive = props.get("server_keep_alive")
        if self.config.clean and p.session_present:
            self._events.append(Violation(ref("clean_session_present", self.version),
                                          "Session Present is 1 in reply to a clean-session CONNECT", p))
        if p.session_present:
            self._resume(now)
        else:
            started = [pid for pid, e in self.outgoing.items() if e.sent]
            if started:
                self._events.append(SessionDiscarded(started))
                for pid in started:
                    del self.outgoing[pid]
                self.inflight = self.inflight_qos2 = 0
            self.incoming_qos2.clear()
        self._release_pending(now)

    def _resume(self, now):
        """Resend unacknowledged PUBLISH (DUP=1) and PUBREL with their original ids ([MQTT-4.4.0-1])."""
        for pid, entry in self.outgoing.items():
            if not entry.sent:
                continue  # still pending: goes out as a first attempt when the window allows
            if entry.awaiting is Pubcomp:
                self._send(Pubrel(pid), now)
            else:
                entry.publish.dup = True
                entry.publish.properties.pop("topic_alias", None)  # aliases do not survive a connection
                self._send_pub(entry.publish, now)

    def _on_publish(self, p: Publish, now):
        events = self._events
        if self.version >= MQTT_5 and "topic_alias" in p.properties:
            alias = p.properties["topic_alias"]
            limit = self.config.properties.get("topic_alias_maximum", 0)
            if alias > limit:
                events.append(Violation(ref("topic_alias_over_max", self.version), f"Topic Alias {alias} exceeds our Topic Alias Maximum "
                                        f"{limit}", p))
            elif p.topic:
                self.alias_in[alias] = p.topic
            elif alias in self.alias_in:
                p.topic = self.alias_in[alias]
            else:
                events.append(Violation(ref("topic_alias_unknown", self.version),
                                        f"Topic Alias {alias} used before it was set", p))
        events.append(p)
        if not p.qos:
            return
        pid = p.packet_id
        if self.version >= MQTT_5:
            limit = self.config.properties.get("receive_maximum", 65535)
            if pid not in self.incoming_unacked and pid not in self.incoming_qos2:
                if len(self.incoming_unacked) + len(self.incoming_qos2) >= limit:
                    events.append(Violation(ref("receive_maximum", self.version), f"server sent more than Receive Maximum {limit} "
                                            "unacknowledged QoS 1/2 PUBLISH packets", p))
        if self.config.manual_acks:
            self.incoming_unacked.add(pid)
            return
        if p.qos == 1:
            self._send(Puback(pid), now)
        else:
            self.incoming_qos2.add(pid)
            self._send(Pubrec(pid), now)

    # ------------------------------------------------------------------ time
    @property
    def effective_keepalive(self) -> int:
        return self.server_keepalive if self.server_keepalive is not None else self.config.keepalive

    @property
    def ping_timeout(self) -> float:
        if self.config.ping_timeout is not None:
            return self.config.ping_timeout
        return max(1.0, self.effective_keepalive / 2)

    def next_deadline(self) -> float | None:
        """When poll() next has something to do, or None (no keepalive, or not connected)."""
        ka = self.effective_keepalive
        if self.state is not State.CONNECTED or not ka:
            return None
        if self.ping_sent_at is not None:
            return self.ping_sent_at + self.ping_timeout
        return self.last_sent + ka

    def poll(self, now: float) -> list:
        """Advance timers: queue a PINGREQ when due, report a dead peer."""
        ka = self.effective_keepalive
        if self.state is not State.CONNECTED or not ka:
            return []
        if self.ping_sent_at is not None:
            if now >= self.ping_sent_at + self.ping_timeout:
                return [KeepaliveTimeout(now - self.ping_sent_at)]
            return []
        if now >= self.last_sent + ka:
            self.ping(now)
        return []


__all__ = ["ClientSession", "SessionConfig", "State", "PublishDone", "Violation", "KeepaliveTimeout",
           "SessionDiscarded", "DEFAULT_WINDOW_311", "DEFAULT_WINDOW_311_TOTAL", "encode_vbi"]
