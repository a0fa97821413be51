"""The MQTT side of one proxied connection, sans-IO: bytes in, decisions out.

ConnectionState.receive(direction, data, now) decodes whole packets, learns the protocol version and
client id from CONNECT, applies the rules, keeps the packet-id ledger, and returns outputs the
driver carries out in order:

* Send(direction, data, delay): bytes to forward in `direction` (after `delay` seconds);
* Close(direction, reset, delay, reason): end the connection, in order with the sends of `direction`;
* Fired(rule, direction, packet, actions): a rule fired (for logs and waits);
* DecodeFailed(direction, error): the stream stopped being valid MQTT; from here on it passes raw.

Packets are forwarded whole, so with rules active a partial packet waits at the proxy until the rest
arrives (store and forward). Unchanged packets go out as the exact bytes that came in.
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace
from typing import NamedTuple

from harness.core.codec import Decoder, encode
from harness.core.packets import MQTT_3_1_1, MQTT_5, Pingresp, Pubcomp, Publish, Suback, Subscription, Unsuback
from harness.errors import ProtocolError
from harness.proxy.acks import AckLedger, answers_expected
from harness.proxy.direction import DOWNSTREAM, UPSTREAM, opposite
from harness.proxy.rules import Close as CloseAction
from harness.proxy.rules import Delay, Drop, Duplicate, Hold, Inject, Rewrite, Rule, Swallow, _bytes


class Send(NamedTuple):
    direction: str
    data: bytes
    delay: float = 0.0


class Close(NamedTuple):
    direction: str
    reset: bool
    delay: float = 0.0
    reason: str = ""


class Fired(NamedTuple):
    rule: str
    direction: str
    packet: object
    actions: tuple


class DecodeFailed(NamedTuple):
    direction: str
    error: str


class HeldPacket(NamedTuple):
    hold: str
    direction: str
    packet: object  # as it will be sent (after rewrites)
    original: object  # as the sender sent it
    raw: bytes | None  # exact bytes when unchanged
    time: float
    fix: bool
    flags: int | None
    copies: int
    dup: bool
    new_id: bool = False


class ConnectionState:
    """Per-connection MQTT state. `rules` is the proxy's live rule list (read, never changed here)."""

    def __init__(self, rules: list[Rule], *, version: int | None = None, client_id: str | None = None):
        self.rules = rules
        self.version = version or MQTT_3_1_1
        self.client_id = client_id
        self.ledger = AckLedger()
        self.holds: dict[str, deque[HeldPacket]] = {}
        self._decoders = {UPSTREAM: Decoder(self.version), DOWNSTREAM: Decoder(self.version)}
        self._pending = {UPSTREAM: bytearray(), DOWNSTREAM: bytearray()}  # fed, not yet a whole packet
        self._raw = {UPSTREAM: False, DOWNSTREAM: False}  # decoding gave up after malformed bytes
        self._counts: dict[int, list[int]] = {}  # id(rule) -> [matched, fired] on this connection
        self._aliases: dict[str, dict[int, str]] = {UPSTREAM: {}, DOWNSTREAM: {}}

    # ------------------------------------------------------------------ input
    def receive(self, direction: str, data: bytes, now: float) -> list:
        if self._raw[direction]:
            return [Send(direction, data)]
        pending = self._pending[direction]
        pending += data
        error = None
        try:
            pairs = self._decoders[direction].feed_raw(data)
        except ProtocolError as exc:
            pairs, error = exc.decoded_raw, exc
        out: list = []
        used = 0
        for packet, raw in pairs:
            used += len(raw)
            self._on_packet(direction, packet, raw, now, out)
        if error is not None:
            rest = bytes(pending[used:])
            pending.clear()
            self._raw[direction] = True
            if rest:
                out.append(Send(direction, rest))
            out.append(DecodeFailed(direction, str(error)))
        else:
            del pending[:used]
        return out

    def learn(self, version: int | None, client_id: str | None) -> None:
        """What the driver learned from a CONNECT it saw before decoding started here."""
        if version:
            self._set_version(version)
        if client_id is not None:
            self.client_id = client_id

    def _set_version(self, version: int) -> None:
        self.version = version
        for d in self._decoders.values():
            d.version = version

    # ------------------------------------------------------------------ rules
    def _on_packet(self, direction: str, packet, raw: bytes, now: float, out: list) -> None:
        t = packet.TYPE
        about = None
        if t == 1 and direction == UPSTREAM:
            self._set_version(packet.protocol_level)
            self.client_id = packet.client_id if isinstance(packet.client_id, str) else None
        elif t == 2 and direction == DOWNSTREAM and packet.properties.get("assigned_client_identifier"):
            self.client_id = packet.properties["assigned_client_identifier"]
        elif t == 3:
            about = self._alias(direction, packet)
        elif 4 <= t <= 7:
            about = self.ledger.ack_of(direction, packet)

        cur, cur_raw = packet, raw
        drop = swallow = False
        hold = None
        delay = 0.0
        copies, dup, new_id = 0, True, False
        flags = None
        fix = True
        close_before = close_after = None
        before: list = []
        after: list = []
        for rule in self.rules:
            if not rule.match.matches(direction, cur, self.client_id, about) or not self._fires(rule):
                continue
            fix = fix and rule.fix_acks
            for a in rule.actions:
                if isinstance(a, Drop):
                    drop = True
                elif isinstance(a, Swallow):
                    drop = swallow = True
                elif isinstance(a, Delay):
                    delay += a.seconds
                elif isinstance(a, Duplicate):
                    copies += a.count
                    dup, new_id = a.dup, a.new_id
                elif isinstance(a, Rewrite):
                    cur = rewrite(cur, a.fields)
                    flags = a.fields.get("flags", flags)
                    cur_raw = None
                elif isinstance(a, Inject):
                    target = {"same": direction, "opposite": opposite(direction)}.get(a.direction, a.direction)
                    (before if a.where == "before" else after).append((target, a.packet, rule.fix_acks))
                elif isinstance(a, Hold):
                    hold = a.name or rule.name
                elif isinstance(a, CloseAction):
                    reason = f"rule {rule.name}: {'reset' if a.reset else 'close'} {a.when} {t.name}"
                    if a.when == "before":
                        close_before = (a.reset, reason)
                    else:
                        close_after = (a.reset, reason)
            out.append(Fired(rule.name, direction, packet, tuple(type(a).__name__.lower() for a in rule.actions)))
            if drop or hold is not None or close_before is not None:
                break  # the packet goes no further: later rules do not see it

        for target, p, fix_inject in before:
            self._inject(target, p, fix_inject, out)
        if close_before is not None:
            out.append(Close(direction, close_before[0], 0.0, close_before[1]))
            return
        if hold is not None:
            self.holds.setdefault(hold, deque()).append(
                HeldPacket(hold, direction, cur, packet, cur_raw, now, fix, flags, copies, dup, new_id))
        elif swallow:
            out.extend(Send(d, self._encode(p), delay) for d, p in self._answer(direction, cur))
        elif not drop:
            self._emit(direction, cur, packet, cur_raw, fix, flags, delay, copies, dup, out, new_id)
        for target, p, fix_inject in after:
            self._inject(target, p, fix_inject, out)
        if close_after is not None:
            out.append(Close(direction, close_after[0], delay, close_after[1]))

    def _fires(self, rule: Rule) -> bool:
        if rule.scope == "global":
            rule._global_matched += 1
            matched = rule._global_matched
            fired = rule._global_fired
        else:
            counts = self._counts.setdefault(id(rule), [0, 0])
            counts[0] += 1
            matched, fired = counts
        if matched < (rule.nth or 1):
            return False
        limit = rule.limit
        if limit is not None and fired >= limit:
            return False
        if rule.scope == "global":
            rule._global_fired += 1
        else:
            self._counts[id(rule)][1] += 1
        rule.fired += 1
        return True

    def _alias(self, direction: str, p: Publish) -> tuple | None:
        alias = p.properties.get("topic_alias") if self.version >= MQTT_5 else None
        if alias is None:
            return None
        table = self._aliases[direction]
        if p.topic:
            table[alias] = p.topic
            return None
        return (table.get(alias, ""), p.qos)

    # ------------------------------------------------------------------ output
    def _answer(self, direction: str, packet) -> list:
        """What the receiver of a swallowed packet would have answered: (direction, packet) pairs."""
        t = packet.TYPE
        back = opposite(direction)
        if t == 3:
            if not packet.qos:
                return []
            # As a PUBLISH the receiver got at QoS 0: the ledger acks it, and answers a QoS 2 sender's PUBREL.
            return self.ledger.publish(direction, replace(packet, qos=0, packet_id=None, dup=False), packet)[1]
        if t == 6:
            return [(back, Pubcomp(packet.packet_id))]
        if t == 8:
            return [(back, Suback(packet.packet_id, [s.qos for s in packet.subscriptions]))]
        if t == 10:
            codes = [0] * len(packet.topic_filters) if self.version >= MQTT_5 else []
            return [(back, Unsuback(packet.packet_id, codes))]
        if t == 12:
            return [(back, Pingresp())]
        return []

    def _emit(self, direction: str, packet, original, raw: bytes | None, fix: bool, flags: int | None,
              delay: float, copies: int, dup: bool, out: list, new_id: bool = False) -> None:
        t = packet.TYPE
        if new_id and copies and t == 3 and packet.qos:
            # Copies as new messages: each one like a PUBLISH the proxy injects (its own id, its acks ours).
            self._emit(direction, packet, original, raw, fix, flags, delay, 0, dup, out)
            for _ in range(copies):
                copy, _ = self.ledger.publish(direction, replace(packet, dup=False, packet_id=None), None)
                out.append(Send(direction, self._encode(copy, flags), delay))
            return
        replies: list = []
        if fix:
            if t == 3 and (packet.qos or original.qos):
                sent, replies = self.ledger.publish(direction, packet, original if original.TYPE == 3 else None,
                                                    copies + 1)
                if sent is not packet:
                    packet, raw = sent, None
            elif t in (4, 5, 6, 7, 9, 11, 13):
                instead = self.ledger.reply(direction, packet)
                if instead is not None:
                    for d, p in instead:
                        out.append(Send(d, self._encode(p, flags if p is packet else None), delay))
                    return
            if copies and answers_expected(packet):
                self.ledger.expect_replies(direction, packet, copies, first_passes=True)
        elif t == 3 and packet.qos and not packet.packet_id:
            packet, raw = replace(packet, packet_id=self.ledger.fresh_pid(direction)), None
        data = raw if raw is not None else self._encode(packet, flags)
        out.append(Send(direction, data, delay))
        if copies:
            copy = replace(packet, dup=True) if dup and t == 3 and packet.qos else None
            copy_data = self._encode(copy, flags) if copy is not None else data
            out.extend(Send(direction, copy_data, delay) for _ in range(copies))
        for d, p in replies:
            out.append(Send(d, self._encode(p), delay))

    def _inject(self, direction: str, packet, fix: bool, out: list) -> None:
        if isinstance(packet, (bytes, bytearray)):
            out.append(Send(direction, bytes(packet)))
            return
        if packet.TYPE == 3 and packet.qos:
            if fix:
                packet, _ = self.ledger.publish(direction, packet, None)
            elif not packet.packet_id:
                packet = replace(packet, packet_id=self.ledger.fresh_pid(direction))
        elif fix and answers_expected(packet):
            self.ledger.expect_replies(direction, packet, 1, first_passes=False)
        out.append(Send(direction, self._encode(packet)))

    def _encode(self, packet, flags: int | None = None) -> bytes:
        return encode(packet, self.version, flags=flags)

    # ------------------------------------------------------------------ holds
    def held(self, hold: str | None = None) -> list[HeldPacket]:
        return [h for name, q in self.holds.items() if hold is None or name == hold for h in q]

    def release(self, hold: str, count: int | None = None) -> tuple[list, int]:
        """Forward up to `count` (default all) packets held under `hold`, oldest first."""
        queue = self.holds.get(hold)
        out: list = []
        n = 0
        while queue and (count is None or n < count):
            h = queue.popleft()
            self._emit(h.direction, h.packet, h.original, h.raw, h.fix, h.flags, 0.0, h.copies, h.dup, out,
                       h.new_id)
            n += 1
        if queue is not None and not queue:
            del self.holds[hold]
        return out, n


def rewrite(packet, fields: dict):
    """A copy of `packet` with `fields` set. Properties merge (None deletes one); a PUBLISH rewritten to
    QoS 0 loses its packet id and DUP flag unless they are set explicitly."""
    changes = {}
    for key, value in fields.items():
        if key == "flags":
            continue
        if key == "properties":
            merged = dict(packet.properties)
            for name, v in (value or {}).items():
                if v is None:
                    merged.pop(name, None)
                else:
                    merged[name] = v
            value = merged
        elif key in ("payload", "password") and value is not None:
            value = _bytes(value)
        elif key == "subscriptions" and isinstance(value, dict):  # options set on every subscription
            value = [replace(s, **value) for s in packet.subscriptions]
        elif key == "subscriptions":
            value = [Subscription(**s) if isinstance(s, dict) else s for s in value]
        changes[key] = value
    if packet.TYPE == 3 and changes.get("qos") == 0:
        changes.setdefault("packet_id", None)
        changes.setdefault("dup", False)
    return replace(packet, **changes)
