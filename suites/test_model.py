"""Model-based tests: random client histories checked against a reference model of MQTT, and topic matching
checked against the reference matcher (harness.topics).

test_random_histories_agree_with_the_model drives three clients (A, B, C) and an observer (obs, subscribed to
everything under the example's topic prefix) with a hypothesis RuleBasedStateMachine: connect with a clean or a
persistent session (MQTT 5: Session Expiry Interval > 0), with or without a will; DISCONNECT or drop the
connection; subscribe and unsubscribe wildcard filters over a small topic space; publish at QoS 0/1/2, retained
or not, one at a time or several pipelined; clear a retained message; let a fresh client subscribe to
everything. The model (sessions and their
subscriptions, messages owed to offline persistent sessions, the retained store, wills) says what every client
may and must receive. After each step the clients' packet logs are checked against it:

- a QoS 1/2 message is never lost: it reaches every session that subscribed to it while the session lasts,
  including sessions that were offline when it was published;
- no message is delivered more than once per matching subscription (QoS 2: exactly once; QoS 1: again only as
  a DUP retransmission; QoS 0: never twice) and none is delivered without a matching subscription, or to a
  session that a clean start discarded;
- copies have the QoS the subscriptions allow, and one copy has the maximum of them;
- messages from one publisher on one topic at one QoS arrive in publish order (QoS 0 too, where they arrive);
- on subscribe, the retained messages that match are exactly the model's (a fresh subscriber to everything sees
  exactly the retained store), with RETAIN=1; forwarded messages carry RETAIN=0;
- Session Present is what the model says on every CONNACK;
- a will is published when the connection drops, and never after a DISCONNECT.

QoS 0 may be lost (also on the way to an offline session, which a broker MAY queue) and a QoS 0 retained message
MAY be discarded: those are never required, only checked for duplicates, order and staleness. Nothing sleeps:
a step waits for every copy the model expects (a PUBACK does not vouch for them: a broker may still be routing
the message when it answers; QoS 0 ones too, so a late copy cannot move a failure to another step), then ends at
a barrier (PINGREQ/PINGRESP on every connected client) so that what the broker sent before is in the logs when
they are checked. A broker that sends something unexpected later than that is caught at a later step.

A failing history shrinks to a minimal one, shown in the failure as a script that replays it (suites/README.md,
"Model suite"). The number of examples follows the hypothesis profile: a short, fixed set by default, many more
with --hypothesis-profile thorough.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import traceback
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Awaitable, Callable, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.internal.conjecture import engine as hypothesis_engine
from hypothesis import strategies as st
from hypothesis.errors import Flaky
from hypothesis.stateful import (
    Bundle, RuleBasedStateMachine, consumes, initialize, invariant, multiple, precondition, rule,
    run_state_machine_as_test,
)

from harness.client import Client
from harness.core.packets import Publish, Pubrel, Will
from harness.errors import ConnectionClosed, HarnessError, Timeout
from harness.packet_log import IN
from harness.plugin.markers import statement_ids
from harness.topics import matches

# ---------------------------------------------------------------------------------------------------- bounds

# (examples, steps per example, overall time limit in seconds) per hypothesis profile. The time limit leaves
# room for hypothesis' shrinking of a failure (at most 300 s).
MACHINE_RUNS = {"default": (20, 25, 900), "thorough": (200, 50, 3600)}
MATCHING_RUNS = {"default": (100, 0, 400), "thorough": (1000, 0, 1800)}
# Seconds hypothesis may spend shrinking a failing history. Each replay against a broker that deviates waits out
# the client's timeouts, so its own bound (300 s) made one failing test take 4-7 minutes (rabbitmq, ejabberd);
# the default profile stops after 60 s and reports the shortest history found by then.
SHRINK_SECONDS = {"default": 60, "thorough": 300}
_HEALTH = [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large]


T = TypeVar("T")


def _for_profile(table: dict[str, T]) -> T:
    return table.get(settings.get_current_profile_name(), table["default"])


def _settings(table: dict[str, tuple[int, int, int]]) -> settings:
    """Bounded and derandomized (the same examples every run: CI outcomes do not depend on luck) unless the
    profile is "thorough", which explores with fresh randomness and the example database."""
    examples, steps, _ = _for_profile(table)
    thorough = settings.get_current_profile_name() == "thorough"
    extra = {"stateful_step_count": steps} if steps else {}
    return settings(settings.default, max_examples=examples, deadline=None, derandomize=not thorough,
                    database=settings.default.database if thorough else None, suppress_health_check=_HEALTH,
                    **extra)


# ---------------------------------------------------------------------------------------------------- model

NAMES = ("A", "B", "C")  # the clients the machine drives
OBSERVER = "obs"  # connected throughout, subscribed to everything: sees every will (the barrier for wills)
TOPICS = ("a", "b", "a/b", "b/a", "a/b/c")  # relative to the example's prefix
FILTERS = ("#", "+", "a", "a/#", "a/+", "+/a", "+/+", "b/#", "+/b/#", "a/b")
WILLS = st.none() | st.tuples(st.sampled_from(TOPICS), st.integers(1, 2), st.booleans())  # (topic, QoS, retain)
SUBSCRIPTIONS = st.none() | st.tuples(st.sampled_from(FILTERS), st.integers(0, 2))  # (filter, QoS)
EXPIRY = 3600  # MQTT 5 Session Expiry Interval of a persistent session: outlives any example
STEP_LIMIT = 6  # a step's time limit, in units of the clients' wait timeout

DUE, QUEUED, VOID = "due", "queued", "void"


@dataclass
class Message:
    number: int
    publisher: str
    topic: str  # relative to the example's prefix
    payload: bytes  # unique: identifies the message in every packet log
    qos: int
    retain: bool
    will: bool = False
    published: bool = True  # False for a will until its connection drops
    order: int = 0  # when the broker took it, among all messages (a will is made at CONNECT, published later)
    withdrawn: bool = False  # a will whose client sent DISCONNECT

    def __str__(self) -> str:
        kind = "will" if self.will else "message"
        flags = ", retained" if self.retain else ""
        return f"{kind} {self.payload.decode()} (QoS {self.qos}{flags}, topic {self.topic!r}, from {self.publisher})"


@dataclass
class Owed:
    """What one session may and must receive of one message."""

    copies: int  # matching subscriptions when it was published: at most one copy each
    qos: frozenset[int]  # QoS a copy may have: min(message QoS, granted QoS) per matching subscription
    state: str  # DUE (must have arrived by now if required), QUEUED (session offline), VOID (session discarded)
    queued: bool = False  # the session was offline when it was published

    @property
    def required(self) -> bool:
        return max(self.qos) > 0


@dataclass
class Window:
    """A subscribe: the retained messages it must and may bring, at any time after its SUBSCRIBE (a broker may
    send them after a later PINGRESP)."""

    start: int  # packet log index of the SUBSCRIBE
    topic_filter: str
    granted: int | None  # None: the broker refused the subscription
    retained: dict[str, Message]  # topic -> the model's retained message there that the filter matches


@dataclass
class Session:
    """The model of one client id: its broker-side session and connection."""

    name: str
    client: Client
    epoch: int = 0  # increases with every new session
    online: bool = False
    keep: bool = False  # the current connection's session outlives it
    stored: bool = False  # offline, and the broker holds the session
    will: Message | None = None
    subscriptions: dict[str, int] = field(default_factory=dict)  # filter (relative) -> granted QoS
    epochs: dict[int, int] = field(default_factory=dict)  # packet log connection number -> session epoch
    owed: dict[tuple[int, int], Owed] = field(default_factory=dict)  # (epoch, message number) -> Owed
    windows: list[Window] = field(default_factory=list)


@dataclass
class Target:
    """What a model machine runs against: how it makes clients, at which MQTT version, under which topic prefix,
    within which capabilities of the broker."""

    make_client: Callable[[str], Awaitable[Client]]  # name -> a new, unconnected client
    version: str = "3.1.1"
    prefix: str = "mh/model/"
    max_qos: int = 2
    retain: bool = True
    timeout: float = 5.0  # the clients' wait timeout
    url: str = ""  # shown in replay scripts
    relaxed: frozenset[str] = frozenset()  # statements not checked: the broker's documented deviations
    forget_clients: Callable[[], None] = lambda: None  # a new example starts: let the last one's clients go

    @classmethod
    def at(cls, url: str, version: str = "3.1.1", *, max_qos: int = 2, retain: bool = True,
           timeout: float = 5.0, relaxed: tuple[str, ...] = ()) -> "Target":
        """The broker at `url` (e.g. mqtt://127.0.0.1:1883), for replaying a history outside pytest."""
        async def make(name: str) -> Client:
            return Client(url, version=version, name=name, timeout=timeout)

        return cls(make, version, f"mh/replay/{secrets.token_hex(3)}/", max_qos, retain, timeout, url,
                   frozenset(relaxed))


@dataclass
class Delivery:
    index: int  # in the packet log
    epoch: int
    publish: Publish
    new: bool  # not a retransmission of a delivery the session already has
    first: bool  # the session's first PUBLISH with this payload


async def wait_for_payloads(client: Client, payloads: set[bytes], start: int = 0) -> None:
    """Wait (up to the client's wait timeout) until PUBLISHes with all these payloads arrived after packet log
    index `start`. A PINGRESP barrier is not enough for these: a broker may hold QoS 1/2 messages back while the
    client has its maximum in flight, and answer PINGREQ meanwhile. What does not arrive, the caller's check
    reports."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + client.timeout
    while True:
        got = {e.packet.payload for e in client.log.entries[start:]
               if e.direction == IN and isinstance(e.packet, Publish)}
        remaining = deadline - loop.time()
        if payloads <= got or remaining <= 0 or client.is_closed:
            return
        with contextlib.suppress(Timeout):
            await client.receive(timeout=remaining)


def _matches(topic_filter: str, topic: str) -> bool:
    """harness.topics.matches, for a topic a broker sent: an invalid one matches nothing."""
    try:
        return matches(topic_filter, topic)
    except ValueError:
        return False


def deliveries(session: Session) -> list[Delivery]:
    """Every PUBLISH the client received, with its session epoch, and whether it is a new delivery: a DUP=1
    QoS 2 PUBLISH whose packet id awaits PUBREL, or a DUP=1 QoS 1 PUBLISH of a message already received in this
    session, is a retransmission of the same delivery."""
    found: list[Delivery] = []
    pending: set[int] = set()  # QoS 2 packet ids received, PUBREL not yet
    seen: set[bytes] = set()
    epoch = None
    for index, entry in enumerate(session.client.log.entries):
        packet = entry.packet
        if entry.direction != IN or packet is None:
            continue
        if session.epochs.get(entry.connection) != epoch:
            epoch = session.epochs.get(entry.connection)
            pending.clear()
            seen.clear()
        if isinstance(packet, Pubrel):
            pending.discard(packet.packet_id)
        elif isinstance(packet, Publish):
            first = packet.payload not in seen
            if packet.qos == 2:
                new = not (packet.dup and packet.packet_id in pending)
                pending.add(packet.packet_id)
            else:
                new = not (packet.qos == 1 and packet.dup and not first)
            seen.add(packet.payload)
            found.append(Delivery(index, epoch, packet, new, first))
    return found


class Findings:
    """Disagreements between the packet logs and the model, each citing its statements. One citing a relaxed
    statement (a deviation the broker's profile documents, which a dedicated test checks strictly) is left out."""

    def __init__(self, relaxed: frozenset[str]):
        self.relaxed = relaxed
        self.items: list[str] = []

    def add(self, text: str, *ids: str) -> None:
        item = f"{text} [{', '.join(ids)}]" if ids else text
        if not self.relaxed.intersection(ids) and item not in self.items:
            self.items.append(item)


class ModelMachine(RuleBasedStateMachine):
    """Random client histories against the broker of `ModelMachine.target`, checked against the model."""

    target: Target | None = None  # set by the test, or by a replay script, before the machine runs
    offline = Bundle("offline")
    online = Bundle("online")

    def __init__(self) -> None:
        super().__init__()
        if type(self).target is None:
            raise RuntimeError("set ModelMachine.target first, e.g. ModelMachine.target = "
                               "Target.at('mqtt://127.0.0.1:1883', version='5')")
        self.t: Target = type(self).target
        self.t.forget_clients()
        self.loop = asyncio.new_event_loop()
        self.base = f"{self.t.prefix}{secrets.token_hex(3)}/"
        self.sessions: dict[str, Session] = {}
        self.fresh: list[Session] = []
        self.messages: dict[int, Message] = {}
        self.by_payload: dict[bytes, Message] = {}
        self.retained: dict[str, Message] = {}  # topic -> retained message
        self.retained_topics: set[str] = set()  # every topic ever retained to (cleanup)
        self.retained_checked = True  # no change to the retained store since a fresh subscriber last looked
        self.numbers = itertools.count(1)
        self.order = itertools.count(1)

    # ------------------------------------------------------------------------------------------- plumbing

    def run(self, coro):
        """Run one step's coroutine in this example's event loop, within the step time limit."""
        limit = STEP_LIMIT * self.t.timeout
        try:
            return self.loop.run_until_complete(asyncio.wait_for(coro, limit))
        except ConnectionClosed as exc:
            dropped = [s for s in self.sessions.values() if s.online and s.client.is_closed]
            if not dropped:
                raise
            lines = "\n".join(f"--- {s.name}'s last packets:\n" + "\n".join(s.client.log.format().splitlines()[-6:])
                              for s in dropped)
            raise AssertionError(f"the broker closed the connection of {', '.join(s.name for s in dropped)} "
                                 f"({exc}); the model expects it open: nothing it sent calls for a close\n{lines}"
                                 ) from None
        except TimeoutError as exc:
            if isinstance(exc, Timeout):  # a client's own wait: its message says what did not arrive
                raise
            raise AssertionError(f"step did not finish within {limit:g}s") from None

    def ref(self, v311: str, v5: str) -> str:
        """The statement ID for this version."""
        return v5 if self.t.version == "5" else v311

    @property
    def v5(self) -> bool:
        return self.t.version == "5"

    def _message(self, publisher: str, topic: str, qos: int, retain: bool, *, will: bool = False) -> Message:
        number = next(self.numbers)
        message = Message(number, publisher, topic, f"{'w' if will else 'm'}{number}".encode(), qos, retain, will,
                          published=not will)
        self.messages[number] = message
        self.by_payload[message.payload] = message
        return message

    async def _settle(self) -> None:
        """Barrier: every connected client's PINGREQ answered, so what the broker sent it before has arrived."""
        await asyncio.gather(*(s.client.ping() for s in self.sessions.values() if s.online))

    def _publish_to_model(self, message: Message) -> None:
        """The broker took ownership of `message`: every session with matching subscriptions owes it."""
        message.order = next(self.order)
        full_topic = self.base + message.topic
        for session in self.sessions.values():
            if not (session.online or session.stored):
                continue
            granted = [g for f, g in session.subscriptions.items() if matches(self.base + f, full_topic)]
            if granted:
                session.owed[(session.epoch, message.number)] = Owed(
                    len(granted), frozenset(min(message.qos, g) for g in granted),
                    DUE if session.online else QUEUED, queued=not session.online)
        if message.retain:
            self.retained[message.topic] = message
            self.retained_topics.add(message.topic)
            self.retained_checked = False

    def _log_sizes(self) -> dict[str, int]:
        return {s.name: len(s.client.log.entries) for s in self.sessions.values()}

    async def _deliveries_due(self, message: Message, starts: dict[str, int]) -> None:
        """Wait for a message at the connected clients that subscribed to it: a PUBACK or PINGRESP does not vouch
        for its delivery (a broker may still be routing it when it answers). QoS 0 copies too, though they may be
        lost (then this waits out the timeout): a late copy must not make a failure show at a later step in one
        run than in another."""
        waits = [wait_for_payloads(s.client, {message.payload}, starts[s.name]) for s in self.sessions.values()
                 if s.online and (s.epoch, message.number) in s.owed]
        await asyncio.gather(*waits)

    def _end_session(self, session: Session) -> None:
        """The session is gone: messages queued for it will never be delivered, its subscriptions are gone."""
        for key, owed in session.owed.items():
            if key[0] == session.epoch and owed.state == QUEUED:
                owed.state = VOID
        session.subscriptions.clear()
        session.stored = False

    async def _subscribe(self, session: Session, topic_filter: str, qos: int) -> None:
        client = session.client
        start = len(client.log.entries)
        suback = await client.subscribe(self.base + topic_filter, qos=qos)
        code = suback.reason_codes[0]
        granted = code if code < 0x80 else None
        if granted is not None:
            session.subscriptions[topic_filter] = granted
        retained = {} if granted is None else {
            topic: m for topic, m in self.retained.items() if matches(self.base + topic_filter, self.base + topic)}
        # QoS 0 ones too: a broker MAY drop them (then this waits out the timeout), but one that sends them late
        # must not make a failure show at a later step in one run than in another (hypothesis calls that flaky)
        await wait_for_payloads(session.client, {m.payload for m in retained.values()}, start)
        await client.ping()
        session.windows.append(Window(start, topic_filter, granted, retained))

    # ------------------------------------------------------------------------------------------- rules

    @initialize(target=offline)
    def start(self):
        """Make the clients; connect the observer and subscribe it to everything."""
        async def start():
            for name in NAMES:
                self.sessions[name] = Session(name, await self.t.make_client(name))
            obs = self.sessions[OBSERVER] = Session(OBSERVER, await self.t.make_client(OBSERVER))
            await obs.client.open()
            obs.epoch, obs.online = 1, True
            obs.epochs[obs.client.log.connection] = 1
            await self._subscribe(obs, "#", self.t.max_qos)

        self.run(start())
        return multiple(*NAMES)

    @rule(target=online, name=consumes(offline), clean=st.booleans(), will=WILLS, subscribe=SUBSCRIPTIONS)
    def connect(self, name, clean, will, subscribe):
        """Connect with a clean session (it ends with the connection) or a persistent one (MQTT 5: Clean Start 0
        and a Session Expiry Interval). `will`: (topic, QoS, retain) or None; `subscribe`: (filter, QoS) to
        subscribe to once connected, or None."""
        self.run(self._connect(name, clean, not clean, will, subscribe))
        return name

    @precondition(lambda self: self.v5)
    @rule(target=online, name=consumes(offline), clean_start=st.booleans(), keep=st.booleans(), will=WILLS,
          subscribe=SUBSCRIPTIONS)
    def connect_v5(self, name, clean_start, keep, will, subscribe):
        """MQTT 5 separates Clean Start from whether the session outlives the connection (`keep`: Session Expiry
        Interval > 0)."""
        self.run(self._connect(name, clean_start, keep, will, subscribe))
        return name

    async def _connect(self, name: str, clean_start: bool, keep: bool, will, subscribe) -> None:
        session = self.sessions[name]
        client = session.client
        config = client.session.config
        session.will = None
        if will is not None:
            topic, qos, retain = will
            session.will = self._message(name, topic, min(qos, self.t.max_qos), retain and self.t.retain, will=True)
        message = session.will
        config.will = None if message is None else Will(self.base + message.topic, message.payload, message.qos,
                                                        message.retain)
        config.properties = {"session_expiry_interval": EXPIRY} if self.v5 and keep else {}
        resume = not clean_start and session.stored
        start = len(client.log.entries)
        connack = await client.open(clean=clean_start)
        if connack.session_present != resume:
            if clean_start:
                why = (f"it connected with Clean {'Start' if self.v5 else 'Session'} 1 "
                       f"[{self.ref('MQTT-3.2.2-1', 'MQTT-3.2.2-2')}]")
            elif resume:
                why = f"the broker holds its session from before [{self.ref('MQTT-3.2.2-2', 'MQTT-3.2.2-3')}]"
            else:
                why = "it has no session (never had one, or the last one ended with its connection) [MQTT-3.2.2-3]"
            raise AssertionError(f"{name}: CONNACK has Session Present {int(connack.session_present)}, the model "
                                 f"says {int(resume)}: {why}")
        if resume:
            for key, owed in session.owed.items():
                if key[0] == session.epoch and owed.state == QUEUED:
                    owed.state = DUE
        else:
            self._end_session(session)
            session.epoch += 1
        session.epochs[client.log.connection] = session.epoch
        session.online, session.keep, session.stored = True, keep, False
        if resume:  # what it was owed while offline: no ack vouches for these
            required = {self.messages[n].payload for (e, n), o in session.owed.items()
                        if e == session.epoch and o.queued and o.state == DUE and o.required}
            await wait_for_payloads(session.client, required, start)
        await self._settle()
        if subscribe is not None:
            topic_filter, qos = subscribe
            await self._subscribe(session, topic_filter, min(qos, self.t.max_qos))

    @rule(target=offline, name=consumes(online), abort=st.booleans())
    def disconnect(self, name, abort):
        """DISCONNECT (the will is dropped) or drop the connection without one (the will is published)."""
        self.run(self._disconnect(name, abort))
        return name

    async def _disconnect(self, name: str, abort: bool) -> None:
        session = self.sessions[name]
        client = session.client
        starts = self._log_sizes()
        if abort:
            await client.close()
        else:
            await client.disconnect()
        session.online = False
        if session.keep:
            session.stored = True
        else:
            self._end_session(session)
        will, session.will = session.will, None
        if will is not None and abort:
            will.published = True
            self._publish_to_model(will)
            await self._deliveries_due(will, starts)
        elif will is not None:
            will.withdrawn = True
        await self._settle()

    @rule(name=online, topic_filter=st.sampled_from(FILTERS), qos=st.integers(0, 2))
    def subscribe(self, name, topic_filter, qos):
        self.run(self._subscribe(self.sessions[name], topic_filter, min(qos, self.t.max_qos)))

    @rule(name=online, topic_filter=st.sampled_from(FILTERS))
    def unsubscribe(self, name, topic_filter):
        """UNSUBSCRIBE one filter, subscribed or not (an UNSUBACK either way)."""
        self.run(self._unsubscribe(self.sessions[name], [topic_filter]))

    @precondition(lambda self: any(s.online and s.subscriptions for s in self.sessions.values() if s.name in NAMES))
    @rule(name=online)
    def unsubscribe_all(self, name):
        """UNSUBSCRIBE every filter the client has, in one packet (nothing, if it has none)."""
        session = self.sessions[name]
        if session.subscriptions:
            self.run(self._unsubscribe(session, sorted(session.subscriptions)))

    async def _unsubscribe(self, session: Session, filters: list[str]) -> None:
        await session.client.unsubscribe([self.base + f for f in filters])
        for topic_filter in filters:
            session.subscriptions.pop(topic_filter, None)

    @rule(name=online, topic=st.sampled_from(TOPICS), qos=st.integers(0, 2), retain=st.booleans())
    def publish(self, name, topic, qos, retain):
        message = self._message(name, topic, min(qos, self.t.max_qos), retain and self.t.retain)

        async def publish():
            starts = self._log_sizes()
            await self._publish(self.sessions[name].client, message.topic, message.payload, message.qos,
                                message.retain)
            self._publish_to_model(message)
            await self._deliveries_due(message, starts)
            await self._settle()

        self.run(publish())

    @rule(name=online, topic=st.sampled_from(TOPICS), qos=st.integers(0, 2), count=st.integers(2, 4))
    def publish_burst(self, name, topic, qos, count):
        """Several messages to one topic, each sent without waiting for the last one's ack: they arrive in
        publish order."""
        client = self.sessions[name].client
        messages = [self._message(name, topic, min(qos, self.t.max_qos), False) for _ in range(count)]

        async def burst():
            starts = self._log_sizes()
            acks = [client.publish_nowait(self.base + topic, m.payload, qos=m.qos) for m in messages]
            if messages[0].qos:
                for ack in await asyncio.wait_for(asyncio.gather(*acks), self.t.timeout):
                    self._check_ack(client, topic, ack)
            else:
                await client.ping()
            for message in messages:
                self._publish_to_model(message)
            for message in messages:
                await self._deliveries_due(message, starts)
            await self._settle()

        self.run(burst())

    @precondition(lambda self: self.retained)
    @rule(name=online, topic=st.sampled_from(TOPICS))
    def clear_retained(self, name, topic):
        """A zero-byte retained message removes the retained message on its topic."""
        self.run(self._publish(self.sessions[name].client, topic, b"", min(1, self.t.max_qos), True))
        self.retained.pop(topic, None)
        self.retained_checked = False
        self.run(self._settle())

    async def _publish(self, client: Client, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        ack = await client.publish(self.base + topic, payload, qos=qos, retain=retain)
        if ack is None:
            await client.ping()  # QoS 0: the broker has handled it once it answers the PINGREQ after it
        else:
            self._check_ack(client, topic, ack)

    def _check_ack(self, client: Client, topic: str, ack) -> None:
        if getattr(ack, "reason_code", 0) >= 0x80:
            raise AssertionError(f"{client.name}: the broker refused a PUBLISH to {self.base + topic!r}: "
                                 f"{type(ack).__name__.upper()} reason code 0x{ack.reason_code:02X}")

    @precondition(lambda self: not self.retained_checked)
    @rule()
    def check_retained(self):
        """A fresh client subscribed to everything receives exactly the retained store (whenever it changed)."""
        async def check():
            fresh = Session(f"fresh{len(self.fresh) + 1}", await self.t.make_client(f"fresh{len(self.fresh) + 1}"))
            self.fresh.append(fresh)
            await fresh.client.open()
            fresh.epoch = 1
            fresh.epochs[fresh.client.log.connection] = 1
            await self._subscribe(fresh, "#", self.t.max_qos)
            await fresh.client.disconnect()
            self.retained_checked = True

        self.run(check())

    # ------------------------------------------------------------------------------------------- the check

    @invariant()
    def trace_agrees_with_the_model(self):
        findings = Findings(self.t.relaxed)
        for session in [*self.sessions.values(), *self.fresh]:
            self._check(session, findings)
        if findings.items:
            shown = findings.items[:12] + ([f"... and {len(findings.items) - 12} more"]
                                           if len(findings.items) > 12 else [])
            raise AssertionError("the packet logs disagree with the model:\n- " + "\n- ".join(shown))

    def _check(self, session: Session, findings: Findings) -> None:
        found = deliveries(session)
        self._check_retained(session, [d for d in found if d.publish.retain], findings)
        self._check_live(session, [d for d in found if not d.publish.retain], findings)

    def _describe(self, publish: Publish) -> str:
        message = self.by_payload.get(publish.payload)
        return str(message) if message is not None else f"PUBLISH {publish.payload!r} on {publish.topic!r}"

    def _retained_by(self, session: Session, d: Delivery) -> Window | None:
        """The earlier subscribe that expected this PUBLISH as its retained message, if any."""
        topic = d.publish.topic.removeprefix(self.base)
        return next((w for w in session.windows if w.start <= d.index and topic in w.retained
                     and w.retained[topic].payload == d.publish.payload), None)

    def _check_retained(self, session: Session, found: list[Delivery], findings: Findings) -> None:
        """RETAIN 1 deliveries: each subscribe brings exactly the model's retained messages its filter matches. A
        delivery counts for the earliest subscribe that expects it and has not had it yet, else for the latest
        one whose filter matches its topic; none: RETAIN 1 on an established subscription."""
        got: list[dict[str, int]] = [defaultdict(int) for _ in session.windows]
        for d in found:
            p = d.publish
            topic = p.topic.removeprefix(self.base)
            candidates = [i for i, w in enumerate(session.windows) if w.start <= d.index and w.granted is not None
                          and _matches(self.base + w.topic_filter, p.topic)]
            if not candidates:
                findings.add(f"{session.name}: {self._describe(p)} arrived with RETAIN 1 on an established "
                             "subscription", self.ref("MQTT-3.3.1-9", "MQTT-3.3.1-12"))
                continue
            index = next((i for i in candidates if not got[i][topic] and topic in session.windows[i].retained
                          and session.windows[i].retained[topic].payload == p.payload), candidates[-1])
            got[index][topic] += 1
            window = session.windows[index]
            where = f"{session.name}: subscribing to {window.topic_filter!r}"
            expected = window.retained.get(topic)
            if not p.payload:
                findings.add(f"{where}, got a zero-byte retained message on {topic!r}; zero-byte messages are never "
                             "retained", self.ref("MQTT-3.3.1-11", "MQTT-3.3.1-7"))
            elif expected is None:
                findings.add(f"{where}, got {self._describe(p)} as retained, but the model holds no retained message "
                             f"on {topic!r} (cleared by a zero-byte message, or never published with RETAIN 1)",
                             self.ref("MQTT-3.3.1-10", "MQTT-3.3.1-6"), self.ref("MQTT-3.3.1-12", "MQTT-3.3.1-8"))
            elif p.payload != expected.payload:
                findings.add(f"{where}, got {self._describe(p)} as retained on {topic!r}; the last retained message "
                             f"there is {expected}", "MQTT-3.3.1-5")
            elif got[index][topic] > 1:
                findings.add(f"{where}, the retained {expected} arrived {got[index][topic]} times")
            elif p.qos != min(expected.qos, window.granted):
                findings.add(f"{where}, the retained {expected} arrived at QoS {p.qos}, not min(its QoS, granted QoS "
                             f"{window.granted})", self.ref("MQTT-3.8.4-6", "MQTT-3.8.4-8"))
        for window, counts in zip(session.windows, got):
            for topic, message in window.retained.items():
                if window.granted and message.qos and not counts[topic]:
                    findings.add(f"{session.name}: subscribing to {window.topic_filter!r}, the retained {message} "
                                 f"did not arrive (within {self.t.timeout:g}s)",
                                 self.ref("MQTT-3.3.1-6", "MQTT-3.3.1-9"))

    def _check_live(self, session: Session, live: list[Delivery], findings: Findings) -> None:
        """Forwarded messages: none lost, none duplicated or unexpected, right QoS, in order."""
        name = session.name
        counts: dict[tuple[int, int], int] = defaultdict(int)
        qos_seen: dict[tuple[int, int], set[int]] = defaultdict(set)
        order: dict[tuple, list[int]] = defaultdict(list)
        for d in live:
            p = d.publish
            if not p.payload:
                continue  # zero-byte retained clears are not unique: not tracked
            message = self.by_payload.get(p.payload)
            if message is None:
                findings.add(f"{name}: received a PUBLISH the model never saw published: {p.payload!r} on {p.topic!r}")
                continue
            if p.topic != self.base + message.topic:
                findings.add(f"{name}: {message} arrived on topic {p.topic!r}", "MQTT-3.3.2-3")
            if p.dup and (p.qos == 0 or d.first):
                findings.add(f"{name}: {message} arrived with DUP 1 " + (
                             "at QoS 0" if p.qos == 0 else "the first time: it is not a retransmission"),
                             "MQTT-3.3.1-2" if p.qos == 0 else "MQTT-3.3.1-3")
            key = (d.epoch, message.number)
            owed = session.owed.get(key)
            if owed is None and (window := self._retained_by(session, d)) is not None:
                findings.add(f"{name}: subscribing to {window.topic_filter!r}, the retained {message} arrived with "
                             "RETAIN 0", self.ref("MQTT-3.3.1-8", "§3.3.1.3"))
                continue
            if owed is None:
                self._unowed(session, message, findings)
                continue
            if owed.state == VOID:
                findings.add(f"{name}: {message} was queued for a session that a clean start discarded, yet it "
                             "arrived", self.ref("MQTT-3.1.2-6", "MQTT-3.1.2-4"))
            if p.qos not in owed.qos:
                findings.add(f"{name}: {message} arrived at QoS {p.qos}; its matching subscriptions allow "
                             f"{sorted(owed.qos)}", self.ref("MQTT-3.8.4-6", "MQTT-3.8.4-8"))
            qos_seen[key].add(p.qos)
            if d.new:
                if not counts[key]:
                    order[(d.epoch, message.publisher, message.topic, message.qos)].append(message.order)
                counts[key] += 1
        for key, owed in session.owed.items():
            message, count = self.messages[key[1]], counts.get(key, 0)
            if owed.state == DUE and owed.required and not count:
                will = ("MQTT-3.1.2-8",) if message.will else ()  # published when the connection dropped
                if owed.queued:
                    findings.add(f"{name}: {message} was not delivered (QoS {max(owed.qos)} subscription; queued "
                                 "while its persistent session was offline)", *will,
                                 self.ref("MQTT-3.1.2-5", "MQTT-3.1.2-23"), "MQTT-4.5.0-1")
                else:
                    findings.add(f"{name}: {message} was not delivered (QoS {max(owed.qos)} subscription)", *will,
                                 "MQTT-4.5.0-1")
            if count > owed.copies and not (message.qos == 1 and 0 in owed.qos):
                findings.add(f"{name}: {message} arrived {count} times as a new message (DUP 0, or again after its "
                             f"QoS 2 flow completed); {owed.copies} matching subscription(s) allow {owed.copies}",
                             self.ref("MQTT-4.3.3-1", "MQTT-4.3.3-6") if message.qos == 2 else "MQTT-3.3.1-1")
            if owed.required and count and max(owed.qos) not in qos_seen[key]:
                findings.add(f"{name}: {message} arrived only at QoS {sorted(qos_seen[key])}; a matching "
                             f"subscription grants QoS {max(owed.qos)}", self.ref("MQTT-3.3.5-1", "MQTT-3.3.4-2"))
        by_order = {m.order: m for m in self.messages.values()}
        for (_, publisher, topic, qos), orders in order.items():
            if orders != sorted(orders):
                shown = ", ".join(by_order[n].payload.decode() for n in orders)
                findings.add(f"{name}: QoS {qos} messages from {publisher} on {topic!r} arrived as {shown}, not in "
                             "publish order", self.ref("MQTT-4.6.0-6", "MQTT-4.6.0-5"))

    def _unowed(self, session: Session, message: Message, findings: Findings) -> None:
        name = session.name
        if message.withdrawn:
            findings.add(f"{name}: received the {message}, but {message.publisher} sent DISCONNECT: the will must be "
                         "discarded", "MQTT-3.14.4-3", "MQTT-3.1.2-10")
        elif not message.published:
            findings.add(f"{name}: received the {message} while {message.publisher} was still connected",
                         "MQTT-3.1.2-8")
        elif any(n == message.number for (_, n) in session.owed):
            findings.add(f"{name}: {message} was owed to an earlier session of this client id, which a clean start "
                         "discarded, yet it arrived", self.ref("MQTT-3.1.2-6", "MQTT-3.1.2-4"))
        else:
            filters = ", ".join(repr(f) for f in session.subscriptions) or "none"
            findings.add(f"{name}: {message} arrived, but the session had no matching subscription when it was "
                         f"published (subscriptions now: {filters})", "MQTT-3.3.2-3", "MQTT-3.10.4-2")

    # ------------------------------------------------------------------------------------------- cleanup

    def teardown(self):
        """Leave the broker as found: persistent sessions ended, retained messages cleared, clients closed."""
        try:
            self.run(self._cleanup())
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    async def _cleanup(self) -> None:
        async def quietly(coro) -> None:
            with contextlib.suppress(HarnessError, OSError, asyncio.TimeoutError):
                await asyncio.wait_for(coro, self.t.timeout)

        observer = self.sessions.get(OBSERVER)
        if observer is not None and self.retained_topics:
            if observer.client.is_closed:
                await quietly(observer.client.open(clean=True))
            for topic in sorted(self.retained_topics):
                await quietly(observer.client.publish(self.base + topic, b"", qos=min(1, self.t.max_qos),
                                                      retain=True))
        for session in self.sessions.values():
            client = session.client
            if not client.is_closed:
                await quietly(client.disconnect())
            if session.stored or (session.online and session.keep):
                client.session.config.will, client.session.config.properties = None, {}
                await quietly(client.open(clean=True))
                await quietly(client.disconnect())
        for session in [*self.sessions.values(), *self.fresh]:
            await quietly(session.client.close())


# ---------------------------------------------------------------------------------------------------- tests

_MACHINE = _for_profile(MACHINE_RUNS)
_MATCHING = _for_profile(MATCHING_RUNS)


@pytest.mark.spec(
    "MQTT-4.5.0-1", "MQTT-3.3.2-3", "MQTT-4.6.0-6", "MQTT-3.3.1-5", "MQTT-3.3.1-6", "MQTT-3.1.2-8",
    "MQTT-3.1.2-10", "MQTT-3.14.4-3", "MQTT-3.10.4-2",
    v311=["MQTT-3.1.2-4", "MQTT-3.1.2-5", "MQTT-3.1.2-6", "MQTT-3.2.2-1", "MQTT-3.2.2-2", "MQTT-3.2.2-3",
          "MQTT-3.3.1-8", "MQTT-3.3.1-9", "MQTT-3.3.1-10", "MQTT-3.3.1-11", "MQTT-3.3.1-12", "MQTT-3.8.4-6",
          "MQTT-4.3.3-1"],
    v5=["MQTT-3.1.2-4", "MQTT-3.1.2-5", "MQTT-3.1.2-6", "MQTT-3.1.2-23", "MQTT-3.2.2-2", "MQTT-3.2.2-3",
        "MQTT-3.3.1-7", "MQTT-3.3.1-8", "MQTT-3.3.1-9", "MQTT-3.3.1-12", "MQTT-3.8.4-8", "MQTT-4.3.3-6",
        "MQTT-4.6.0-5"],
)
@pytest.mark.requires(qos1=True, wildcards=True)
@pytest.mark.timeout(_MACHINE[2])
def test_random_histories_agree_with_the_model(request, monkeypatch, broker, client_factory, mqtt_version,
                                               topic):
    """(The module docstring says what is checked.) The model also checks statements this test does not claim,
    e.g. the maximum QoS of overlapping subscriptions (MQTT-3.3.5-1 / MQTT-3.3.4-2, the topics suite's): one
    that the broker's profile lists as a known limit is relaxed here, so a documented deviation fails only its
    own test."""
    caps = broker.capabilities
    claimed = set(statement_ids(request.node.iter_markers("spec"), mqtt_version))
    relaxed = frozenset(key for key in broker.known_limits if key.startswith("MQTT-") and key not in claimed)
    ModelMachine.target = Target(
        lambda name: client_factory(name=name, connect=False), mqtt_version, topic, caps.max_qos, caps.retain,
        client_factory.timeout, broker.url(), relaxed, forget_clients=client_factory.clients.clear)
    failure = None
    # hypothesis has no setting for this; its engine reads the module constant when shrinking starts.
    monkeypatch.setattr(hypothesis_engine, "MAX_SHRINKING_SECONDS",
                        _for_profile(SHRINK_SECONDS))
    try:
        run_state_machine_as_test(ModelMachine, settings=_settings(MACHINE_RUNS))
    except Exception as exc:  # noqa: BLE001 - reported below, with the replay script
        failure = failure_text(exc, ModelMachine.target)
    finally:
        ModelMachine.target = None
    if failure is not None:
        pytest.fail(failure, pytrace=False)


def failure_text(exc: Exception, target: Target | None = None) -> str:
    """A hypothesis failure as the report shows it: what disagreed, the minimal failing example (for the model,
    a script that replays the history), where it failed."""
    if isinstance(exc, Flaky) and (first := _first_failure(exc)) is not None:
        return (f"{type(first).__name__}: {first}\n\nhypothesis stopped there: running the same example again "
                f"did not fail the same way ({type(exc).__name__}), so the broker behaves differently from one run "
                f"of it to the next.\n\nwhere it failed first:\n{_where(first)}")
    text = f"{type(exc).__name__}: {exc}"
    script = replay_script(exc, target) if target is not None else None
    if script is not None:
        text += f"\n\n{script}"
    elif _notes(exc):
        text += "\n\n" + "\n".join(_notes(exc))
    return f"{text}\n\nwhere it failed:\n{_where(exc)}"


def _first_failure(exc: BaseException) -> BaseException | None:
    """The failure behind hypothesis' Flaky report: a sub-exception, or the exception it was handling."""
    for inner in getattr(exc, "exceptions", ()):
        if not isinstance(inner, Flaky):
            return inner
    context = exc.__context__
    return context if context is not None and not isinstance(context, Flaky) else None


def _where(exc: BaseException) -> str:
    return "".join(traceback.format_tb(exc.__traceback__)[-6:])


def replay_script(exc: BaseException, target: Target) -> str | None:
    """Hypothesis notes the minimal failing history as Python (state = ModelMachine(); state.rule(...); ...):
    wrapped into a script that replays it against a running broker (and cleans up after itself)."""
    notes = _notes(exc)
    begin = next((i for i, line in enumerate(notes) if line.startswith("state = ")), None)
    if begin is None:
        return None
    end = next((i for i, line in enumerate(notes) if line.startswith("state.teardown()")), len(notes))
    steps = [line for note in notes[begin + 1:end] for line in note.splitlines()]
    url = target.url or "mqtt://127.0.0.1:1883"
    script = [
        "# Minimal failing history: a script that replays it against a running broker (suites/README.md, \"Model",
        "# suite\"). Save it as replay.py, put the broker's URL below, run .venv/bin/python replay.py from the",
        "# repository root.",
        "import sys",
        "sys.path.insert(0, 'suites')",
        "from test_model import ModelMachine, Target",
        f"ModelMachine.target = Target.at({url!r}, version={target.version!r}, max_qos={target.max_qos}, "
        f"retain={target.retain}, relaxed={tuple(sorted(target.relaxed))})",
        notes[begin],
        "try:",
        *("    " + line for line in steps),
        *([] if steps and steps[-1] == "state.trace_agrees_with_the_model()" else
          ["    state.trace_agrees_with_the_model()"]),
        "finally:",
        "    state.teardown()",
    ]
    others = [line for line in notes[:begin] + notes[end + 1:] if not line.startswith("Failing test case")]
    return "\n".join(script + (["", *others] if others else []))


def _notes(exc: BaseException) -> list[str]:
    notes = list(getattr(exc, "__notes__", []))
    for inner in getattr(exc, "exceptions", ()):  # hypothesis' FlakyFailure is an exception group
        notes += _notes(inner)
    return notes


# ---------------------------------------------------------------------------------------------------- matching

_LEVELS = ("a", "b", "$", "$a", "")
_topic_names = st.lists(st.sampled_from(_LEVELS), min_size=1, max_size=4).map("/".join).filter(bool)


@st.composite
def _topic_filters(draw) -> str:
    levels = draw(st.lists(st.sampled_from(_LEVELS + ("+",)), max_size=4))
    if draw(st.booleans()) or not "/".join(levels):  # '#' last, or alone
        levels.append("#")
    return "/".join(levels)


def namespaced(text: str, token: str) -> str:
    """`text` (a topic name or filter) with `token` appended to every level that is neither empty nor a
    wildcard: matching is unchanged (equal levels stay equal, '$' stays first) and no other test's topics can
    match a literal level."""
    return "/".join(level if level in ("", "+", "#") else level + token for level in text.split("/"))


@pytest.mark.spec("MQTT-4.7.2-1", "MQTT-3.3.2-3", "MQTT-4.5.0-1", v311=["MQTT-4.7.1-2", "MQTT-4.7.1-3"],
                  v5=["MQTT-4.7.1-1", "MQTT-4.7.1-2"])
@pytest.mark.requires(qos1=True, wildcards=True)
@pytest.mark.timeout(_MATCHING[2])
def test_delivery_follows_topic_matching(client_factory, topic):
    """Generated filters (with '+' and '#') and topic names (1-4 levels from a small alphabet with '$' and empty
    levels): a subscriber gets a publish exactly when harness.topics.matches says so. A topic starting with '$'
    that the filter matches is required only if the broker lets clients exchange such topics at all (a control
    subscriber with the literal topic as filter gets it): the spec says a server SHOULD keep them to itself.
    Every example has its own clients, so one example cannot break the next."""
    token = "_" + secrets.token_hex(3)
    payloads = itertools.count(1)
    loop = asyncio.new_event_loop()
    limit = STEP_LIMIT * client_factory.timeout

    async def check(topic_filter: str, topics: list[str]) -> None:
        client_factory.clients.clear()  # the report keeps the last example's clients: the minimal failing one
        sub, pub, control = [await client_factory(name=name) for name in ("sub", "pub", "control")]
        full_filter = namespaced(topic_filter, token)
        published = {namespaced(t, token): f"{token}:{next(payloads)}".encode() for t in topics}
        dollar = [t for t in published if t.startswith("$")]
        await sub.subscribe(full_filter, qos=1)
        for name in dollar:
            await control.subscribe(name, qos=1)
        for name, payload in published.items():
            await pub.publish(name, payload, qos=1)
        await control.ping()  # it has our few messages at most: none held back
        exchanged = {e.packet.payload for e in control.log.entries if e.direction == IN
                     and isinstance(e.packet, Publish)}
        await wait_for_payloads(sub, {payload for name, payload in published.items() if matches(full_filter, name)
                                      and (not name.startswith("$") or payload in exchanged)})
        await sub.ping()
        got = {e.packet.payload: e.packet.topic for e in sub.log.entries
               if e.direction == IN and isinstance(e.packet, Publish)}
        for name, payload in published.items():
            expected = matches(full_filter, name)
            if payload in got and got[payload] != name:
                raise AssertionError(f"published to {name!r}, delivered on {got[payload]!r} [MQTT-3.3.2-3]")
            if expected and name.startswith("$") and payload not in exchanged:
                continue  # the broker keeps '$' topics to itself (SHOULD, §4.7.2)
            if (payload in got) != expected:
                dollar_rule = ", MQTT-4.7.2-1" if name.startswith("$") and topic_filter[0] in "+#" else ""
                raise AssertionError(
                    f"filter {full_filter!r} {'matches' if expected else 'does not match'} topic {name!r}, but the "
                    f"subscriber {'did not get' if expected else 'got'} it [§4.7{dollar_rule}]")

    @settings(_settings(MATCHING_RUNS))
    @given(topic_filter=_topic_filters(), topics=st.lists(_topic_names, min_size=1, max_size=4, unique=True))
    def delivered_iff_matching(topic_filter, topics):
        try:
            loop.run_until_complete(asyncio.wait_for(check(topic_filter, topics), limit))
        finally:
            loop.run_until_complete(client_factory.close_all())

    failure = None
    try:
        delivered_iff_matching()
    except Exception as exc:  # noqa: BLE001 - reported below: the minimal example first
        failure = failure_text(exc)
    finally:
        loop.close()
    if failure is not None:
        pytest.fail(failure, pytrace=False)
