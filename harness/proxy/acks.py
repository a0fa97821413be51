"""Keeping both sides' packet-id state consistent when the proxy changes a QoS flow.

Terms: a *flow* is the direction a PUBLISH travels (upstream: the client sends, the broker receives;
downstream: the reverse). Its *sender* gets acks back; its *receiver* sends them. When a rule
rewrites the QoS, duplicates a packet, or the proxy injects one, the two ends no longer agree on
which acks are due. The ledger then plays the missing part: it synthesizes the acks the sender
waits for and the receiver will not send, swallows the acks the sender would not expect, sends
PUBREL to a QoS 2 receiver when the sender does not, and maps packet ids where the proxy had to
pick one. Exchanges the proxy did not alter pass untouched (they are tracked only so rules can match
an ack by the topic of its PUBLISH).

Cases handled (S = QoS the sender used, R = QoS the receiver got):

=========  ==================================================================================
S=R        identity: acks pass unchanged
S=1, R=0   PUBACK to the sender at once
S=2, R=0   PUBREC to the sender at once; its PUBREL is answered with PUBCOMP by the proxy
S=2, R=1   the receiver's PUBACK becomes a PUBREC to the sender; its PUBREL is answered by the proxy
S=0, R>0   (QoS upgrade, or a PUBLISH the proxy injected) the proxy picks a packet id, swallows the
           PUBACK, or swallows PUBREC, sends PUBREL itself and swallows PUBCOMP
S=1, R=2   PUBREC is swallowed and the proxy sends PUBREL; the receiver's PUBCOMP becomes a PUBACK
copies     acks to copies the proxy made (duplicate) are swallowed; the first one goes through
failure    a v5 PUBREC/PUBACK with reason >= 0x80 ends the exchange; the sender gets PUBACK/PUBREC
           with that reason code (S=1/2) or nothing (S=0)
other      SUBACK/UNSUBACK/PINGRESP answering a duplicated or injected SUBSCRIBE/UNSUBSCRIBE/PINGREQ,
           and the extra PUBCOMP answering a duplicated PUBREL, are swallowed
=========  ==================================================================================

A packet id the proxy picks counts down from 65535, skipping ids in use; when a sender later uses an
id the proxy still holds on the receiver's side, the PUBLISH (and its PUBREL) go out under another id
and the acks are mapped back. State is per connection: an exchange cut by a reconnect is not
reconciled on the next connection.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from harness.core.packets import Pingreq, Puback, Pubcomp, Publish, Pubrec, Pubrel, Subscribe, Unsubscribe
from harness.proxy.direction import DOWNSTREAM, UPSTREAM, opposite

# (direction the packet travels, packet) pairs to send.
Out = list[tuple[str, object]]

# SUBSCRIBE->SUBACK, UNSUBSCRIBE->UNSUBACK, PINGREQ->PINGRESP, PUBREL->PUBCOMP
_ANSWERED_BY = {8: 9, 10: 11, 12: 13, 6: 7}


@dataclass(eq=False)
class Exchange:
    flow: str
    topic: object
    s_qos: int  # 0 also for the proxy's own PUBLISHes
    r_qos: int
    s_pid: int | None
    r_pid: int | None
    identity: bool
    extra: int = 0  # first-phase acks still to come for copies the proxy made
    stage: str = "ack"  # receiver side: ack (PUBACK/PUBREC due), rel (sender's PUBREL due), comp, done
    sender_rel: bool = False  # the proxy answers the sender's PUBREL with PUBCOMP


class AckLedger:
    """Per-connection packet-id bookkeeping for both flows. Not thread-safe; one per connection."""

    def __init__(self) -> None:
        self._by_receiver: dict[str, dict[int, Exchange]] = {UPSTREAM: {}, DOWNSTREAM: {}}
        self._by_sender: dict[str, dict[int, Exchange]] = {UPSTREAM: {}, DOWNSTREAM: {}}
        # (direction of the answer, its type, packet id) -> [answers to swallow, let the next one through]
        self._swallow: dict[tuple[str, int, int | None], list] = {}
        self._next = {UPSTREAM: 65535, DOWNSTREAM: 65535}

    # ------------------------------------------------------------------ lookups
    def ack_of(self, direction: str, packet) -> tuple | None:
        """(topic, qos) of the PUBLISH an ack or PUBREL travelling in `direction` belongs to."""
        t = packet.TYPE
        if t == 6:
            ex = self._by_sender[direction].get(packet.packet_id)
        else:
            ex = self._by_receiver[opposite(direction)].get(packet.packet_id)
        return (ex.topic, ex.r_qos) if ex is not None else None

    @property
    def open_exchanges(self) -> int:
        return len({id(e) for d in (self._by_receiver, self._by_sender) for m in d.values() for e in m.values()})

    def fresh_pid(self, flow: str) -> int:
        """A packet id not in use on the receiving side of `flow` (nor by its sender, as far as seen)."""
        busy_r, busy_s = self._by_receiver[flow], self._by_sender[flow]
        pid = self._next[flow]
        for _ in range(65535):
            if pid not in busy_r and pid not in busy_s:
                break
            pid = pid - 1 or 65535
        else:
            raise RuntimeError("all 65535 packet ids are in flight on this connection")
        self._next[flow] = pid - 1 or 65535
        return pid

    # ------------------------------------------------------------------ outgoing requests
    def publish(self, flow: str, sent: Publish, original: Publish | None, copies: int = 1) -> tuple[Publish, Out]:
        """`sent` is about to go to the receiver of `flow` (`copies` times); `original` is what the sender
        sent (None: the proxy is the sender). Returns the PUBLISH to send and packets for the sender."""
        s_qos = original.qos if original is not None else 0
        s_pid = original.packet_id if s_qos else None
        r_qos = sent.qos
        back = opposite(flow)
        known = self._by_sender[flow].get(s_pid) if s_pid is not None else None
        if known is not None and known.identity and r_qos == known.r_qos and sent.packet_id == known.r_pid:
            if copies > 1:  # a retransmission the proxy now duplicates: its first ack is still due
                known.identity = False
                known.extra += copies - 1
            return sent, []
        if known is not None and known.identity:  # the sender reused the id for an altered PUBLISH
            self._receiver_done(known)
            self._sender_done(known)
            known = None
        if known is not None:
            # The sender resent a PUBLISH we altered: same receiver id, and answer or expect acks again.
            if r_qos and known.r_pid is not None:
                if sent.packet_id != known.r_pid:
                    sent = replace(sent, packet_id=known.r_pid)
                known.extra += copies
                return sent, []
            return sent, self._answer_unacked(known, back)
        if not s_qos and not r_qos:
            return sent, []
        r_pid = None
        if r_qos:
            r_pid = sent.packet_id
            if r_pid is None or r_pid == 0 or r_pid in self._by_receiver[flow]:
                r_pid = self.fresh_pid(flow)
            if r_pid != sent.packet_id:
                sent = replace(sent, packet_id=r_pid)
        identity = s_qos == r_qos and s_pid == r_pid and copies == 1
        ex = Exchange(flow, sent.topic, s_qos, r_qos, s_pid, r_pid, identity, extra=copies - 1)
        if r_pid is not None:
            self._by_receiver[flow][r_pid] = ex
        if s_pid is not None:
            self._by_sender[flow][s_pid] = ex
        out: Out = []
        if not r_qos:
            ex.stage = "done"
            out = self._answer_unacked(ex, back)
        return sent, out

    def _answer_unacked(self, ex: Exchange, back: str) -> Out:
        """The receiver will not ack (R=0): answer the sender as a receiver would."""
        if ex.s_qos == 1:
            self._sender_done(ex)
            return [(back, Puback(ex.s_pid))]
        if ex.s_qos == 2:
            ex.sender_rel = True
            return [(back, Pubrec(ex.s_pid))]
        return []

    def expect_replies(self, direction: str, packet, count: int, first_passes: bool) -> None:
        """`count` copies of `packet` (SUBSCRIBE, UNSUBSCRIBE, PINGREQ, PUBREL) the sender did not send go out in
        `direction`: swallow the answers they draw. `first_passes`: the sender's own packet went out too, and
        the first answer is its answer."""
        answer = _ANSWERED_BY.get(packet.TYPE)
        if answer is None or count <= 0:
            return
        key = (opposite(direction), answer, getattr(packet, "packet_id", None))
        entry = self._swallow.setdefault(key, [0, False])
        entry[0] += count
        entry[1] = entry[1] or first_passes

    # ------------------------------------------------------------------ incoming replies
    def reply(self, direction: str, packet) -> Out | None:
        """A PUBACK/PUBREC/PUBCOMP/PUBREL/SUBACK/UNSUBACK/PINGRESP about to be forwarded in `direction`.
        Returns None to forward it unchanged, or the packets to send instead ([] to swallow it)."""
        t = packet.TYPE
        if t in (4, 5, 7):
            ex = self._by_receiver[opposite(direction)].get(packet.packet_id)
            if ex is not None:
                return self._from_receiver(ex, packet)
        elif t == 6:
            ex = self._by_sender[direction].get(packet.packet_id)
            if ex is not None:
                return self._from_sender(ex, packet)
        key = (direction, t, getattr(packet, "packet_id", None))
        entry = self._swallow.get(key)
        if entry is None:
            return None
        if entry[1]:
            entry[1] = False
            return None
        entry[0] -= 1
        if not entry[0]:
            del self._swallow[key]
        return []

    def _from_receiver(self, ex: Exchange, p) -> Out | None:
        t = p.TYPE
        back, fwd = opposite(ex.flow), ex.flow
        if ex.identity:
            if t == 4 or t == 7 or (t == 5 and p.reason_code >= 0x80):
                self._receiver_done(ex)
                self._sender_done(ex)
            return None
        if t in (4, 5) and ex.stage != "ack":
            if ex.extra:
                ex.extra -= 1
                if ex.stage == "done":
                    self._receiver_done(ex)
                return []
            return self._to_sender(ex, p)
        if t in (4, 5):
            failed = t == 4 or p.reason_code >= 0x80
            if failed:  # PUBACK, or a refusing PUBREC: the receiver is finished with this id
                ex.stage = "done"
                self._receiver_done(ex)
                return self._final_to_sender(ex, p, back)
            if ex.s_qos == 2:
                ex.stage = "rel"
                return [(back, replace(p, packet_id=ex.s_pid))]
            ex.stage = "comp"
            return [(fwd, Pubrel(ex.r_pid))]  # the proxy plays the sender's part
        if t == 7 and ex.stage == "comp":
            ex.stage = "done"
            self._receiver_done(ex)
            if ex.s_qos == 2:
                self._sender_done(ex)
                return [(back, replace(p, packet_id=ex.s_pid))]
            if ex.s_qos == 1:
                self._sender_done(ex)
                return [(back, Puback(ex.s_pid, 0 if p.reason_code < 0x80 else 0x80))]
            return []
        return self._to_sender(ex, p)

    def _to_sender(self, ex: Exchange, p) -> Out | None:
        """An ack we have no plan for: pass it on under the sender's id (or swallow it if the sender is us)."""
        if ex.s_pid is None:
            return []
        return [(opposite(ex.flow), replace(p, packet_id=ex.s_pid))] if p.packet_id != ex.s_pid else None

    def _final_to_sender(self, ex: Exchange, p, back: str) -> Out:
        """The receiver finished with a PUBACK or a refusing PUBREC: give the sender the ack it expects,
        with the same reason code and properties (PUBACK and PUBREC share both sets)."""
        code = p.reason_code
        if ex.s_qos == 1:
            self._sender_done(ex)
            return [(back, replace(p, packet_id=ex.s_pid) if p.TYPE == 4 else Puback(ex.s_pid, code, p.properties))]
        if ex.s_qos == 2:
            if code >= 0x80:
                self._sender_done(ex)
            else:
                ex.sender_rel = True
            return [(back, replace(p, packet_id=ex.s_pid) if p.TYPE == 5 else Pubrec(ex.s_pid, code, p.properties))]
        return []

    def _from_sender(self, ex: Exchange, p: Pubrel) -> Out | None:
        if ex.identity:
            return None
        if ex.sender_rel:
            self._sender_done(ex)
            return [(opposite(ex.flow), Pubcomp(ex.s_pid))]
        if ex.stage == "rel":
            ex.stage = "comp"
        if ex.r_pid is not None and ex.r_pid != p.packet_id:
            return [(ex.flow, replace(p, packet_id=ex.r_pid))]
        return None

    def _receiver_done(self, ex: Exchange) -> None:
        if ex.extra == 0 and ex.r_pid is not None and self._by_receiver[ex.flow].get(ex.r_pid) is ex:
            del self._by_receiver[ex.flow][ex.r_pid]

    def _sender_done(self, ex: Exchange) -> None:
        ex.sender_rel = False
        if ex.s_pid is not None and self._by_sender[ex.flow].get(ex.s_pid) is ex:
            del self._by_sender[ex.flow][ex.s_pid]


def answers_expected(packet) -> bool:
    """Does this packet draw an answer the ledger can swallow when the proxy made a copy of it?"""
    return isinstance(packet, (Subscribe, Unsubscribe, Pingreq, Pubrel))
