"""Broken-broker mode: named proxy rule sets that give a correct broker one specific bug.

The conformance suites are only worth something if they fail on a broker that gets MQTT wrong. A rule set here
puts the proxy between the suites and a correct broker and makes it misbehave in exactly one way (its `bug`),
keeping everything else consistent (acks are fixed up by the proxy's ledger). `caught_by` lists the suite tests
that must then fail; tests/test_selftest_broken.py runs the suites in `suites` with the rule set and checks that
exactly those fail, and that they all pass without it.

    pytest suites/test_retain.py --broker mosquitto:process --broken retain-flag-cleared

Rule sets are Python (this module), not YAML, because one of them (`will-dropped`) needs a matcher with memory:
the will topic is learned from a CONNECT on one connection and matched on deliveries to others. The rest are the
proxy's ordinary rules written as data (see harness/proxy/README.md, "Rule schema").

Only the plain `mqtt` listener is put behind the proxy: it cannot apply rules to TLS it does not terminate or to
WebSocket frames, and no rule set is about TLS. Other listeners reach the broker directly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Union

from harness.brokers.broker import MQTT
from harness.proxy.direction import BOTH, DOWNSTREAM, UPSTREAM
from harness.proxy.rules import Match, Rule, Swallow
from harness.proxy.threaded import ThreadedProxy

RuleSpec = Union[dict, Callable[[], Rule]]  # a rule as data, or a factory for one that needs Python


@dataclass(frozen=True)
class BrokenRuleSet:
    """One bug: its name, what the broker then does wrong, the rules that do it, and the tests that catch it.

    `caught_by` entries name suite tests as "test_area.py::test_name" (every parameter), with "[params]" for
    one parametrization (test id parameters other than broker and version, e.g. "[qos1]"; "*" matches any
    text, e.g. "[1-*]"), and "@5" or "@3.1.1" to limit an entry to one MQTT version. `suites` is what the
    self-test runs: files under suites/, or "file::test_name" for one test of a file.
    """

    name: str
    bug: str
    rules: tuple[RuleSpec, ...]
    caught_by: tuple[str, ...]
    suites: tuple[str, ...]
    refs: str = ""

    def build(self) -> list[Rule]:
        """Fresh rule objects (rules count their matches, so every proxy gets its own)."""
        return [Rule.from_dict({"name": f"{self.name}-{i}", **spec}) if isinstance(spec, dict) else spec()
                for i, spec in enumerate(self.rules, 1)]

    def catches(self, test_id: str, version: str | None) -> bool:
        """Is this result (report `test` id, e.g. "suites/test_qos.py::test_x[qos1]", and its MQTT version)
        one that must fail under this bug?"""
        path, sep, rest = test_id.partition("::")
        test = path.rsplit("/", 1)[-1] + sep + rest  # "test_x.py::test_y[a/#]": parameters may hold slashes
        for entry in self.caught_by:
            name, _, only = entry.partition("@")
            if only and only != version:
                continue
            if re.fullmatch(".*".join(map(re.escape, name.split("*"))), test) or (
                    "[" not in name and test.startswith(name + "[")):
                return True
        return False


@dataclass(eq=False)
class _WillDelivery(Match):
    """Matches a PUBLISH toward a client that carries a Will Message, as learned from every CONNECT the proxy
    saw (same topic and payload): live will publications and retained wills alike."""

    wills: set = field(default_factory=set)

    def matches(self, direction: str, packet, client_id: str | None, about: tuple | None = None) -> bool:
        if packet.TYPE == 1 and packet.will is not None:
            self.wills.add((packet.will.topic, bytes(packet.will.payload)))
            return False
        if packet.TYPE != 3 or direction != DOWNSTREAM:
            return False
        topic = about[0] if about else packet.topic
        return (topic, bytes(packet.payload)) in self.wills

    def to_dict(self) -> dict:
        return {"direction": BOTH, "will_deliveries": sorted(t for t, _ in self.wills)}


def _will_rule() -> Rule:
    # Swallowed, not dropped: the broker gets the subscriber's ack, so no flow is left hanging.
    return Rule(_WillDelivery(), [Swallow()], name="will-dropped-1")


def _up(type_: str, **match) -> dict:
    return {"type": type_, "direction": UPSTREAM, **match}


def _down(type_: str, **match) -> dict:
    return {"type": type_, "direction": DOWNSTREAM, **match}


RULE_SETS: dict[str, BrokenRuleSet] = {s.name: s for s in [
    BrokenRuleSet(
        "retain-flag-cleared",
        "PUBLISH packets to subscribers never carry RETAIN=1: retained messages sent for a new subscription (and "
        "v5 Retain As Published deliveries) arrive with RETAIN=0.",
        ({"match": _down("PUBLISH", retain=True), "action": {"rewrite": {"retain": False}}},),
        caught_by=(
            "test_retain.py::test_retained_message_is_sent_to_a_new_subscription_with_retain_1",
            "test_retain.py::test_newer_retained_message_replaces_the_stored_one",
            "test_retain.py::test_non_retained_publish_leaves_the_retained_message",
            "test_retain.py::test_retained_message_outlives_the_publisher_session",
            "test_retain.py::test_resubscribing_resends_retained_messages",
            "test_retain.py::test_retained_message_qos_is_the_minimum_of_stored_and_granted_qos[1-*]",
            "test_retain.py::test_retained_message_qos_is_the_minimum_of_stored_and_granted_qos[2-*]",
            "test_retain.py::test_wildcard_subscription_receives_every_matching_retained_message",
            "test_retain.py::test_retain_as_published_keeps_the_retain_flag_of_the_publish",
            "test_retain.py::test_retain_handling_1_sends_retained_messages_only_for_a_new_subscription",
            "test_will.py::test_will_retain_publishes_a_retained_message",
        ),
        suites=("test_retain.py", "test_will.py"),
        refs="MQTT-3.3.1-8 (3.1.1), MQTT-3.3.1-9, MQTT-3.3.1-13 (5)"),
    BrokenRuleSet(
        "empty-retained-ignored",
        "A retained PUBLISH with an empty payload is acknowledged and otherwise ignored: the retained message stays "
        "and subscribers do not get the empty message.",
        ({"match": _up("PUBLISH", retain=True, payload=""), "action": "swallow"},),
        caught_by=(
            "test_retain.py::test_empty_retained_publish_is_forwarded_to_subscribers",
            "test_retain.py::test_empty_retained_publish_clears_the_retained_message",
        ),
        suites=("test_retain.py",),
        refs="MQTT-3.3.1-10, MQTT-3.3.1-11 (3.1.1), MQTT-3.3.1-6, MQTT-3.3.1-7 (5)"),
    BrokenRuleSet(
        "sessions-forgotten",
        "The broker never resumes a session: a CONNECT with Clean Session / Clean Start 0 is handled as 1, so "
        "Session Present is always 0 and subscriptions, queued messages and in-flight flows are gone on reconnect.",
        ({"match": _up("CONNECT"), "action": {"rewrite": {"clean": True}}},),
        caught_by=(
            "test_sessions.py::test_persistent_session_is_resumed_with_session_present_1",
            "test_sessions.py::test_subscriptions_survive_a_reconnect",
            "test_sessions.py::test_messages_published_while_away_are_delivered_on_reconnect",
            "test_sessions.py::test_session_expiry_raised_on_disconnect_keeps_the_session",
            "test_sessions.py::test_session_state_belongs_to_its_client_identifier",
            "test_qos.py::test_unacknowledged_publish_is_resent_with_dup_1_on_reconnect",
            "test_qos.py::test_pubrel_is_resent_on_reconnect_and_the_publish_is_not",
        ),
        suites=("test_sessions.py", "test_qos.py", "test_will.py"),
        refs="MQTT-3.1.2-4, MQTT-3.1.2-5, MQTT-4.4.0-1"),
    BrokenRuleSet(
        "session-present-lie",
        "CONNACK says Session Present 1 whenever it accepts a connection, also for a clean or a new session.",
        ({"match": _down("CONNACK", reason_code=0), "action": {"rewrite": {"session_present": True}}},),
        caught_by=(
            "test_smoke.py::test_connect_is_accepted",
            "test_sessions.py::test_clean_session_is_acknowledged_with_session_present_0",
            "test_sessions.py::test_new_persistent_session_is_acknowledged_with_session_present_0",
            "test_sessions.py::test_clean_session_discards_the_previous_session",
            "test_sessions.py::test_session_expiry_0_ends_the_session_with_the_connection",
            "test_sessions.py::test_session_expiry_0_on_disconnect_ends_the_session",
            "test_sessions.py::test_session_expiry_on_disconnect_after_0_on_connect_is_a_protocol_error",
            "test_sessions.py::test_session_expires_after_the_session_expiry_interval",
            "test_sessions.py::test_session_state_belongs_to_its_client_identifier",
            "test_connect.py::test_mqtt_3_1_connect_is_accepted",
        ),
        suites=("test_smoke.py", "test_sessions.py", "test_connect.py"),
        refs="MQTT-3.2.2-1, MQTT-3.2.2-2, MQTT-3.2.2-3"),
    BrokenRuleSet(
        "qos2-delivered-twice",
        "Every QoS 2 message reaches its subscribers twice, as two distinct messages (the second with its own "
        "packet id, DUP=0).",
        ({"match": _down("PUBLISH", qos=2), "action": {"duplicate": {"count": 1, "dup": False, "new_id": True}}},),
        caught_by=(
            "test_qos.py::test_delivery_qos_is_the_minimum_of_publish_and_granted_qos[qos2-sub2]",
            "test_qos.py::test_qos2_broker_as_receiver_completes_the_flow",
            "test_qos.py::test_qos2_publish_resent_before_pubrel_is_delivered_once",
            "test_qos.py::test_qos2_packet_id_reused_after_pubcomp_is_a_new_message",
            "test_qos.py::test_pipelined_qos2_burst_is_delivered_exactly_once_in_order",
            "test_faults.py::test_qos2_publish_resent_after_its_pubrec_was_lost_is_delivered_once",
        ),
        suites=("test_qos.py", "test_faults.py::test_qos2_publish_resent_after_its_pubrec_was_lost_is_delivered_once"),
        refs="MQTT-4.3.3-2 (3.1.1), MQTT-4.3.3-10 (5)"),
    BrokenRuleSet(
        "will-dropped",
        "The broker never publishes Will Messages (neither live nor retained).",
        (_will_rule,),
        caught_by=(
            "test_will.py::test_will_is_published_when_the_connection_drops",
            "test_will.py::test_will_is_published_when_the_broker_closes_for_a_protocol_error[publish_qos_3]",
            "test_will.py::test_disconnect_with_will_message_publishes_the_will",
            "test_will.py::test_will_retain_publishes_a_retained_message",
            "test_will.py::test_will_without_retain_is_not_retained",
            "test_will.py::test_will_is_delivered_at_the_lower_of_will_qos_and_granted_qos",
            "test_will.py::test_will_delay_interval_delays_the_will",
            "test_will.py::test_will_is_not_published_when_the_client_reconnects_within_the_delay",
            "test_will.py::test_will_property_is_forwarded_unaltered",
            "test_will.py::test_will_message_expiry_interval_is_forwarded_less_the_time_waited",
            "test_faults.py::test_half_open_client_dropped_by_keepalive_has_its_will_published",
        ),
        suites=("test_will.py", "test_faults.py::test_half_open_client_dropped_by_keepalive_has_its_will_published"),
        refs="MQTT-3.1.2-8"),
    BrokenRuleSet(
        "unsubscribe-ignored",
        "UNSUBSCRIBE is acknowledged with UNSUBACK but has no effect: the subscriptions stay.",
        ({"match": _up("UNSUBSCRIBE"), "action": "swallow"},),
        caught_by=(
            "test_topics.py::test_unsubscribe_stops_delivery",
            "test_topics.py::test_unsubscribe_with_several_filters_is_one_unsuback",
        ),
        suites=("test_topics.py",),
        refs="MQTT-3.10.4-1, MQTT-3.10.4-2"),
    BrokenRuleSet(
        "qos2-delivered-as-qos1",
        "QoS 2 messages are delivered at QoS 1 to subscribers granted QoS 2.",
        ({"match": _down("PUBLISH", qos=2), "action": {"rewrite": {"qos": 1}}},),
        caught_by=(
            "test_qos.py::test_delivery_qos_is_the_minimum_of_publish_and_granted_qos[qos2-sub2]",
            "test_qos.py::test_first_delivery_attempt_has_dup_0[qos2]",
            "test_qos.py::test_qos2_broker_as_sender_releases_after_pubrec_and_never_resends_the_publish",
            "test_qos.py::test_qos2_broker_as_receiver_completes_the_flow",
            "test_qos.py::test_unacknowledged_publish_is_resent_with_dup_1_on_reconnect[qos2]",
            "test_qos.py::test_pubrel_is_resent_on_reconnect_and_the_publish_is_not",
        ),
        suites=("test_qos.py",),
        refs="MQTT-3.8.4-6 (3.1.1), MQTT-3.8.4-8 (5)"),
    BrokenRuleSet(
        "first-delivery-reordered",
        "Order is not kept: the first message the broker sends on each connection is overtaken by the next ones.",
        ({"match": _down("PUBLISH"), "nth": 1, "times": 1, "action": {"delay": 0.3}},),
        caught_by=(
            "test_qos.py::test_messages_arrive_in_publish_order_per_topic",
            "test_qos.py::test_pipelined_qos1_burst_is_delivered_at_least_once_in_order",
            "test_qos.py::test_pipelined_qos2_burst_is_delivered_exactly_once_in_order",
            "test_qos.py::test_qos1_packet_id_reused_after_puback_is_a_new_message",
        ),
        suites=("test_qos.py",),
        refs="MQTT-4.6.0-5, MQTT-4.6.0-6"),
    BrokenRuleSet(
        "no-local-ignored",
        "MQTT 5 No Local is ignored: a client gets its own messages back.",
        ({"match": _up("SUBSCRIBE"), "action": {"rewrite": {"subscriptions": {"no_local": False}}}},),
        caught_by=(
            "test_mqtt5.py::test_no_local_subscription_gets_none_of_its_own_messages",
        ),
        suites=("test_mqtt5.py",),
        refs="MQTT-3.8.3-3 (5)"),
    BrokenRuleSet(
        "keepalive-ignored",
        "Keep Alive is not enforced: a client that goes silent is never disconnected (nor its will published).",
        ({"match": _up("CONNECT"), "action": {"rewrite": {"keepalive": 0}}},),
        caught_by=(
            "test_faults.py::test_half_open_client_dropped_by_keepalive_has_its_will_published@3.1.1",
        ),
        suites=("test_faults.py::test_half_open_client_dropped_by_keepalive_has_its_will_published",),
        refs="MQTT-3.1.2-24 (3.1.1), MQTT-3.1.2-22 (5)"),
    BrokenRuleSet(
        "dup-on-first-delivery",
        "The first delivery of every QoS 1 and QoS 2 message carries DUP=1.",
        ({"match": _down("PUBLISH", qos=1, dup=False), "action": {"rewrite": {"dup": True}}},
         {"match": _down("PUBLISH", qos=2, dup=False), "action": {"rewrite": {"dup": True}}}),
        caught_by=(
            "test_qos.py::test_first_delivery_attempt_has_dup_0[qos1]",
            "test_qos.py::test_first_delivery_attempt_has_dup_0[qos2]",
            "test_qos.py::test_dup_flag_of_the_incoming_publish_is_not_propagated",
            "test_qos.py::test_qos2_broker_as_sender_releases_after_pubrec_and_never_resends_the_publish",
            "test_qos.py::test_unacknowledged_publish_is_resent_with_dup_1_on_reconnect",
            "test_faults.py::test_publish_whose_ack_was_lost_is_resent_with_dup_to_the_resumed_subscriber",
            "test_faults.py::test_session_taken_over_while_acks_are_held_redelivers_them_with_dup",
        ),
        suites=("test_qos.py",
                "test_faults.py::test_publish_whose_ack_was_lost_is_resent_with_dup_to_the_resumed_subscriber",
                "test_faults.py::test_session_taken_over_while_acks_are_held_redelivers_them_with_dup"),
        refs="MQTT-3.3.1-1, MQTT-4.3.2-1 (3.1.1), MQTT-4.3.2-2, MQTT-4.3.3-2 (5)"),
]}


def rule_set(name: str) -> BrokenRuleSet:
    """The rule set called `name`; a ValueError naming the known ones otherwise."""
    try:
        return RULE_SETS[name]
    except KeyError:
        raise ValueError(f"unknown broken-broker rule set {name!r}; known: {', '.join(RULE_SETS)}") from None


class BrokenFront:
    """Proxies applying one rule set in front of a broker's plain MQTT listener, for a whole test session."""

    def __init__(self, rules: BrokenRuleSet, urls: dict[str, str]):
        self.rule_set = rules
        self._upstream = urls
        self._proxies: dict[str, ThreadedProxy] = {}

    def start(self) -> "BrokenFront":
        if MQTT in self._upstream:
            proxy = ThreadedProxy(self._upstream[MQTT], tap=False).start()  # a session-long proxy: keep no tap
            for rule in self.rule_set.build():
                proxy.add_rule(rule)
            self._proxies[MQTT] = proxy
        return self

    @property
    def urls(self) -> dict[str, str]:
        """Listener kind -> the proxy's URL, for the listeners behind the proxy."""
        return {kind: proxy.url for kind, proxy in self._proxies.items()}

    def note(self) -> str:
        """What the report says about this broker."""
        behind = ", ".join(self._proxies) or "none"
        return (f"BROKEN-BROKER MODE: rule set {self.rule_set.name!r} (harness.proxy.broken) makes the broker "
                f"behave wrongly on purpose: {self.rule_set.bug} Listeners behind the proxy: {behind}. These "
                "results describe the proxied broker, not the broker itself.")

    def stop(self) -> None:
        for proxy in self._proxies.values():
            proxy.stop()
        self._proxies.clear()
