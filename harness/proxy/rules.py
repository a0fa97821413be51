"""MQTT rules: which packets a rule matches and what it does to them, as data.

A Rule is a Match (direction, packet type, topic filter, QoS, client id, flags), firing limits (the nth
match, how many times, counted per connection or globally) and a list of actions. Rules load from
dicts (YAML/JSON; see README.md) or are built in Python::

    when("PUBACK", direction="downstream", nth=2).drop()
    when("PUBLISH", topic="t/#").rewrite(retain=True)

Applying rules to a connection's packets is harness.proxy.state's job; this module only describes them.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from dataclasses import dataclass, field
from typing import Union

from harness.core.packets import (
    PACKET_CLASSES, Connect, PacketType, Publish, Subscribe, Subscription, Unsubscribe, Will,
)
from harness.proxy.direction import BOTH, DOWNSTREAM, UPSTREAM, parse_direction

SCOPES = ("connection", "global")
WHEN = ("before", "after")
TARGETS = ("same", "opposite", UPSTREAM, DOWNSTREAM)
_TYPE_NAMES = {t.name: t for t in PacketType}
_rule_ids = itertools.count(1)


@functools.lru_cache(maxsize=4096)  # rules see the same few topics over and over
def topic_matches(topic_filter: str, topic: str) -> bool:
    """Does the topic name match the MQTT topic filter ('+' one level, '#' the rest)? Topics starting
    with '$' do not match filters starting with a wildcard [MQTT-4.7.2-1]."""
    if topic_filter == topic:
        return True
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, f in enumerate(f_levels):
        if f == "#":
            return True  # also matches the parent level: 'a/#' matches 'a'
        if i >= len(t_levels):
            return False
        if f != "+" and f != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)


def parse_packet_type(name: str | int | PacketType) -> PacketType:
    if isinstance(name, PacketType):
        return name
    if isinstance(name, int) and not isinstance(name, bool):
        return PacketType(name)
    key = str(name).strip().upper()
    if key not in _TYPE_NAMES:
        raise ValueError(f"unknown packet type {name!r}; use one of {', '.join(_TYPE_NAMES)}")
    return _TYPE_NAMES[key]


# ------------------------------------------------------------------------------------ match

@dataclass
class Match:
    """What a rule matches. Unset fields match anything.

    `topic` is an MQTT topic filter: it matches a PUBLISH's topic name; SUBSCRIBE/UNSUBSCRIBE when
    one of their filters matches it (or equals it); PUBACK/PUBREC/PUBREL/PUBCOMP through the topic
    of the PUBLISH they acknowledge (when the proxy saw that PUBLISH). `qos` works the same way for
    PUBLISH and its acks, and matches SUBSCRIBE if any subscription requests that QoS. `payload`
    (PUBLISH only) is the exact payload, e.g. b"" for the empty message that clears a retained one;
    `reason_code` matches packets that carry one (a CONNACK's return code in 3.1.1).
    """

    direction: str = BOTH
    type: frozenset | None = None  # PacketType members
    topic: str | None = None
    qos: int | None = None
    client_id: str | None = None
    retain: bool | None = None
    dup: bool | None = None
    packet_id: int | None = None
    payload: bytes | None = None
    reason_code: int | None = None

    def __post_init__(self) -> None:
        self.direction = parse_direction(self.direction)
        if self.payload is not None:
            self.payload = _bytes(self.payload)
        if self.type is not None:
            names = [self.type] if isinstance(self.type, (str, int, PacketType)) else list(self.type)
            self.type = frozenset(parse_packet_type(n) for n in names)
        if self.qos is not None and self.qos not in (0, 1, 2):
            raise ValueError(f"match qos must be 0, 1 or 2, not {self.qos!r}")

    def matches(self, direction: str, packet, client_id: str | None, about: tuple | None = None) -> bool:
        """`about` is the (topic, qos) the packet concerns when it does not carry them itself: the
        PUBLISH an ack belongs to, or the topic behind a v5 Topic Alias."""
        if self.direction != BOTH and self.direction != direction:
            return False
        t = packet.TYPE
        if self.type is not None and t not in self.type:
            return False
        if self.client_id is not None and client_id != self.client_id:
            return False
        if self.retain is not None and (t != 3 or packet.retain != self.retain):
            return False
        if self.dup is not None and (t != 3 or packet.dup != self.dup):
            return False
        if self.packet_id is not None and getattr(packet, "packet_id", None) != self.packet_id:
            return False
        if self.payload is not None and (t != 3 or packet.payload != self.payload):
            return False
        if self.reason_code is not None and getattr(packet, "reason_code", None) != self.reason_code:
            return False
        if self.topic is not None or self.qos is not None:
            return self._topic_qos(packet, about)
        return True

    def _topic_qos(self, packet, about) -> bool:
        t = packet.TYPE
        if t == 3:
            topic, qos = about or (packet.topic, packet.qos)
        elif 4 <= t <= 7:
            if about is None:
                return False
            topic, qos = about
        elif t in (8, 10):
            subs = packet.subscriptions if t == 8 else [Subscription(f) for f in packet.topic_filters]
            return any((self.topic is None or _filter_hit(self.topic, s.topic_filter))
                       and (self.qos is None or (t == 8 and s.qos == self.qos)) for s in subs)
        else:
            return False
        if self.qos is not None and qos != self.qos:
            return False
        return self.topic is None or (isinstance(topic, str) and topic_matches(self.topic, topic))

    def to_dict(self) -> dict:
        out = {"direction": self.direction}
        if self.type is not None:
            out["type"] = sorted(t.name for t in self.type)
        for key in ("topic", "qos", "client_id", "retain", "dup", "packet_id", "payload", "reason_code"):
            if getattr(self, key) is not None:
                out[key] = _jsonable(getattr(self, key))
        return out


def _filter_hit(rule_filter: str, sub_filter) -> bool:
    return isinstance(sub_filter, str) and (rule_filter == sub_filter or topic_matches(rule_filter, sub_filter))


# ----------------------------------------------------------------------------------- actions

@dataclass(frozen=True)
class Drop:
    """Do not forward the packet."""


@dataclass(frozen=True)
class Delay:
    """Forward the packet `seconds` later; packets behind it are not held up (MQTT-level reordering).
    For a delay of the whole byte stream use the latency fault."""

    seconds: float


@dataclass(frozen=True)
class Duplicate:
    """Forward the packet, then `count` copies; copies of a QoS>0 PUBLISH get DUP=1 when `dup`. With
    `new_id`, copies of a QoS>0 PUBLISH are new messages instead: DUP=0, each under a packet id the
    proxy picks, their acks handled by the proxy (the receiver sees distinct deliveries)."""

    count: int = 1
    dup: bool = True
    new_id: bool = False


@dataclass(frozen=True)
class Swallow:
    """Do not forward the packet, and answer its sender as the receiver would have: PUBACK, or PUBREC
    (then PUBCOMP to its PUBREL), SUBACK granting what was asked, UNSUBACK (success), PINGRESP, PUBCOMP
    for a PUBREL. Packets that draw no answer are just dropped."""


@dataclass(frozen=True)
class Rewrite:
    """Set packet fields (dataclass field names of harness.core.packets; `properties` entries are
    merged, a None value deletes one) and re-encode. `flags` sets the raw fixed-header flags nibble."""

    fields: dict


@dataclass(frozen=True)
class Inject:
    """Send a packet (a packet object, or raw bytes) before or after the matched one, in the same
    direction, the opposite one, or a named one."""

    packet: object
    where: str = "after"
    direction: str = "same"


@dataclass(frozen=True)
class Hold:
    """Queue the packet under `name` until Proxy.release(name). Later packets keep flowing."""

    name: str | None = None


@dataclass(frozen=True)
class Close:
    """Close the connection before the packet (not forwarded) or after it; `reset` sends RSTs instead."""

    when: str = "after"
    reset: bool = False


Action = Union[Drop, Swallow, Delay, Duplicate, Rewrite, Inject, Hold, Close]

# Fields that exist on no packet dataclass but that a rewrite understands.
_SPECIAL_FIELDS = {"flags"}


@dataclass(eq=False)
class Rule:
    """A match, firing limits and actions. `nth`: first fire on the nth match (1-based); `times`: how
    often it fires (default 1 when nth is given, else unlimited); both counted per `scope`
    ("connection" or "global"). `fix_acks=False` turns off the ack bookkeeping for packets this rule
    touched, so both sides see the raw consequences (see README: ack consistency)."""

    match: Match = field(default_factory=Match)
    actions: list = field(default_factory=list)
    name: str = ""
    nth: int | None = None
    times: int | None = None
    scope: str = "connection"
    fix_acks: bool = True
    fired: int = field(default=0, compare=False)  # fires so far, over all connections

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ValueError(f"rule scope {self.scope!r} is not one of {', '.join(SCOPES)}")
        for key in ("nth", "times"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"rule {key} must be a whole number >= 1, not {value!r}")
        self.actions = [_check_action(a) for a in self.actions]
        self._check_rewrites()
        if not self.name:
            self.name = f"rule{next(_rule_ids)}"
        self._global_matched = 0
        self._global_fired = 0

    @property
    def limit(self) -> int | None:
        if self.times is not None:
            return self.times
        return 1 if self.nth is not None else None

    def _check_rewrites(self) -> None:
        rewrites = [a for a in self.actions if isinstance(a, Rewrite)]
        if not rewrites:
            return
        types = self.match.type or frozenset(PacketType)
        for rw in rewrites:
            for name in rw.fields:
                if name in _SPECIAL_FIELDS:
                    continue
                lacking = [t.name for t in types if name not in _field_names(PACKET_CLASSES[t])]
                if lacking:
                    raise ValueError(f"rewrite of {name!r}: {', '.join(sorted(lacking))} has no such field; "
                                     "restrict the rule's match to packet types that have it (match.type)")

    # Builder chaining: each returns the rule, so actions read in order.
    def drop(self) -> "Rule":
        return self._add(Drop())

    def delay(self, seconds: float) -> "Rule":
        return self._add(Delay(seconds))

    def swallow(self) -> "Rule":
        return self._add(Swallow())

    def duplicate(self, count: int = 1, dup: bool = True, new_id: bool = False) -> "Rule":
        return self._add(Duplicate(count, dup, new_id))

    def rewrite(self, **fields) -> "Rule":
        return self._add(Rewrite(fields))

    def inject(self, packet, where: str = "after", direction: str = "same") -> "Rule":
        return self._add(Inject(packet, where, direction))

    def hold(self, name: str | None = None) -> "Rule":
        return self._add(Hold(name))

    def close(self, when: str = "after") -> "Rule":
        return self._add(Close(when))

    def reset(self, when: str = "after") -> "Rule":
        return self._add(Close(when, reset=True))

    def _add(self, action) -> "Rule":
        self.actions.append(_check_action(action))
        self._check_rewrites()
        return self

    @classmethod
    def from_dict(cls, data: dict) -> "Rule":
        """Parse the documented dict form (README.md, "Rule schema")."""
        if not isinstance(data, dict):
            raise ValueError(f"a rule is a mapping, got {data!r}")
        data = dict(data)
        known = {"name", "match", "action", "actions", "nth", "times", "scope", "fix_acks", "fired"}  # fired: ignored
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"rule has unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
        match_data = data.get("match") or {}
        if not isinstance(match_data, dict):
            raise ValueError(f"rule match must be a mapping, got {match_data!r}")
        allowed = {f.name for f in dataclasses.fields(Match)}
        bad = set(match_data) - allowed
        if bad:
            raise ValueError(f"match has unknown key(s) {', '.join(sorted(bad))}; known: {', '.join(sorted(allowed))}")
        if "action" in data and "actions" in data:
            raise ValueError("give either 'action' or 'actions', not both")
        raw_actions = data.get("actions", data.get("action", []))
        if not isinstance(raw_actions, list):
            raw_actions = [raw_actions]
        return cls(match=Match(**match_data), actions=[action_from_dict(a) for a in raw_actions],
                   name=data.get("name") or "", nth=data.get("nth"), times=data.get("times"),
                   scope=data.get("scope", "connection"), fix_acks=bool(data.get("fix_acks", True)))

    def to_dict(self) -> dict:
        out = {"name": self.name, "match": self.match.to_dict(), "actions": [action_to_dict(a) for a in self.actions],
               "scope": self.scope, "fired": self.fired}
        for key in ("nth", "times"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if not self.fix_acks:
            out["fix_acks"] = False
        return out


def when(type=None, *, direction: str = BOTH, topic: str | None = None, qos: int | None = None,
         client_id: str | None = None, retain: bool | None = None, dup: bool | None = None,
         packet_id: int | None = None, payload: bytes | str | None = None, reason_code: int | None = None,
         nth: int | None = None, times: int | None = None, scope: str = "connection", name: str = "",
         fix_acks: bool = True) -> Rule:
    """Start a rule; add actions by chaining: ``when("PUBACK", nth=2).drop()``."""
    return Rule(Match(direction, type, topic, qos, client_id, retain, dup, packet_id, payload, reason_code), [],
                name, nth, times, scope, fix_acks)


def _field_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _check_action(action):
    if isinstance(action, Delay) and action.seconds < 0:
        raise ValueError(f"delay must be >= 0 seconds, not {action.seconds}")
    if isinstance(action, Duplicate) and action.count < 1:
        raise ValueError(f"duplicate count must be >= 1, not {action.count}")
    if isinstance(action, Inject):
        if action.where not in WHEN:
            raise ValueError(f"inject where={action.where!r}; use before or after")
        if action.direction not in TARGETS:
            action = dataclasses.replace(action, direction=parse_direction(action.direction, allow_both=False))
        if not isinstance(action.packet, (bytes, bytearray)) and not hasattr(action.packet, "TYPE"):
            raise ValueError(f"inject needs a packet object or raw bytes, got {action.packet!r}")
    if isinstance(action, Close) and action.when not in WHEN:
        raise ValueError(f"close/reset when={action.when!r}; use before or after")
    if not isinstance(action, (Drop, Swallow, Delay, Duplicate, Rewrite, Inject, Hold, Close)):
        raise ValueError(f"not a rule action: {action!r}")
    return action


# ------------------------------------------------------------------------------- dict forms

def action_from_dict(data) -> Action:
    """'drop' | 'swallow' | {'delay': 0.5} | {'duplicate': {'count': 2, 'dup': true, 'new_id': false}} |
    {'rewrite': {...}} |
    {'inject': {'packet': {...} | 'raw': 'hex', 'where': ..., 'direction': ...}} | 'hold' | {'hold': name} |
    'close' | {'close': 'before'} | 'reset' | {'reset': 'after'}."""
    if isinstance(data, str):
        key, value = data, None
    elif isinstance(data, dict) and len(data) == 1:
        key, value = next(iter(data.items()))
    else:
        raise ValueError(f"an action is a name or a one-key mapping, got {data!r}")
    if key == "drop":
        return Drop()
    if key == "swallow":
        return Swallow()
    if key == "delay":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"delay takes seconds, e.g. {{delay: 0.5}}; got {value!r}")
        return _check_action(Delay(float(value)))
    if key == "duplicate":
        if value is None or isinstance(value, int):
            return _check_action(Duplicate(value or 1))
        return _check_action(Duplicate(**_only(value, {"count", "dup", "new_id"}, "duplicate")))
    if key == "rewrite":
        if not isinstance(value, dict) or not value:
            raise ValueError("rewrite takes a mapping of fields, e.g. {rewrite: {retain: true}}")
        return Rewrite(dict(value))
    if key == "inject":
        spec = _only(value, {"packet", "raw", "where", "direction"}, "inject")
        if ("packet" in spec) == ("raw" in spec):
            raise ValueError("inject needs exactly one of 'packet' (a mapping with 'type') or 'raw' (hex bytes)")
        packet = packet_from_dict(spec["packet"]) if "packet" in spec else bytes.fromhex(spec["raw"])
        return _check_action(Inject(packet, spec.get("where", "after"), spec.get("direction", "same")))
    if key == "hold":
        return Hold(value if value is None else str(value))
    if key in ("close", "reset"):
        return _check_action(Close(value or "after", reset=key == "reset"))
    raise ValueError(f"unknown action {key!r}; known: drop, swallow, delay, duplicate, rewrite, inject, hold, close, "
                     "reset")


def _only(value, allowed: set, what: str) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{what} takes a mapping with keys {', '.join(sorted(allowed))}, got {value!r}")
    bad = set(value) - allowed
    if bad:
        raise ValueError(f"{what} has unknown key(s) {', '.join(sorted(bad))}; known: {', '.join(sorted(allowed))}")
    return value


def action_to_dict(action) -> object:
    if isinstance(action, Drop):
        return "drop"
    if isinstance(action, Swallow):
        return "swallow"
    if isinstance(action, Delay):
        return {"delay": action.seconds}
    if isinstance(action, Duplicate):
        extra = {"new_id": True} if action.new_id else {}
        return {"duplicate": {"count": action.count, "dup": action.dup, **extra}}
    if isinstance(action, Rewrite):
        return {"rewrite": {k: _jsonable(v) for k, v in action.fields.items()}}
    if isinstance(action, Inject):
        body = ({"raw": bytes(action.packet).hex()} if isinstance(action.packet, (bytes, bytearray))
                else {"packet": packet_to_dict(action.packet)})
        return {"inject": {**body, "where": action.where, "direction": action.direction}}
    if isinstance(action, Hold):
        return {"hold": action.name} if action.name else "hold"
    return {("reset" if action.reset else "close"): action.when}


def packet_from_dict(data: dict):
    """{'type': 'PUBLISH', 'topic': 't', 'payload': 'text', 'qos': 1, ...} -> a packet object.

    Payloads and passwords are UTF-8 text, or {'hex': '...'}; SUBSCRIBE takes 'subscriptions' as
    [{topic_filter, qos, ...}] or [[filter, qos]]; CONNECT's 'will' is a mapping of Will fields.
    """
    if not isinstance(data, dict) or "type" not in data:
        raise ValueError(f"a packet is a mapping with a 'type' key, got {data!r}")
    data = dict(data)
    cls = PACKET_CLASSES[parse_packet_type(data.pop("type"))]
    names = _field_names(cls)
    bad = set(data) - names
    if bad:
        raise ValueError(f"{cls.__name__} has no field(s) {', '.join(sorted(bad))}; fields: {', '.join(sorted(names))}")
    for key in ("payload", "password"):
        if key in data and data[key] is not None:
            data[key] = _bytes(data[key])
    if cls is Subscribe:
        data["subscriptions"] = [Subscription(**s) if isinstance(s, dict) else Subscription(*s)
                                 for s in data.get("subscriptions", [])]
    if cls is Connect and isinstance(data.get("will"), dict):
        will = dict(data["will"])
        if "payload" in will:
            will["payload"] = _bytes(will["payload"])
        data["will"] = Will(**will)
    if cls is Unsubscribe:
        data["topic_filters"] = list(data.get("topic_filters", []))
    if "packet_id" not in data and "packet_id" in names and cls is not Publish:
        raise ValueError(f"{cls.__name__} needs a packet_id")
    return cls(**data)


def packet_to_dict(packet) -> dict:
    out = {"type": packet.TYPE.name}
    for f in dataclasses.fields(packet):
        out[f.name] = _jsonable(getattr(packet, f.name))
    return out


def _bytes(value) -> bytes:
    if isinstance(value, dict) and set(value) == {"hex"}:
        return bytes.fromhex(value["hex"])
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise ValueError(f"expected text or {{hex: ...}}, got {value!r}")


def _jsonable(value):
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode()
        except UnicodeDecodeError:
            return {"hex": bytes(value).hex()}
    if dataclasses.is_dataclass(value):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value
