"""Which OASIS statement each codec check enforces, per protocol version.

Entries starting with "MQTT-" are tagged normative statements; entries starting with "§" are
spec sections for rules the spec states without a tag. One table so a correction lands once.
"""

from __future__ import annotations

# check -> (3.1.1 reference, 5.0 reference)
REFS: dict[str, tuple[str, str]] = {
    "reserved_type": ("§2.2.1", "§2.1.2"),
    "reserved_flags": ("MQTT-2.2.2-1", "MQTT-2.1.3-1"),
    "vbi_too_long": ("§2.2.3", "§1.5.5"),
    "vbi_not_minimal": ("", "MQTT-1.5.5-1"),  # 3.1.1 has no minimal-encoding rule: accepted there
    "utf8_ill_formed": ("MQTT-1.5.3-1", "MQTT-1.5.4-1"),
    "utf8_null": ("MQTT-1.5.3-2", "MQTT-1.5.4-2"),
    "publish_wildcard": ("MQTT-3.3.2-2", "MQTT-3.3.2-2"),
    "publish_qos3": ("MQTT-3.3.1-4", "MQTT-3.3.1-4"),
    "publish_dup_qos0": ("MQTT-3.3.1-2", "MQTT-3.3.1-2"),
    "packet_id_zero": ("MQTT-2.3.1-1", "MQTT-2.2.1-3"),
    "topic_empty": ("MQTT-4.7.3-1", "MQTT-4.7.3-1"),
    "property_duplicate": ("§2.2.2.2", "§2.2.2.2"),
    "property_not_allowed": ("§2.2.2.2", "§2.2.2.2"),
    "property_unknown": ("§2.2.2.2", "§2.2.2.2"),
    "property_value": ("§3", "§3"),
    "length_mismatch": ("§2.2.3", "§1.5.5"),
    "connect_protocol_name": ("MQTT-3.1.2-1", "MQTT-3.1.2-1"),
    "connect_protocol_level": ("MQTT-3.1.2-2", "MQTT-3.1.2-2"),
    "connect_reserved": ("MQTT-3.1.2-3", "MQTT-3.1.2-3"),
    "will_flags_without_will": ("MQTT-3.1.2-11", "MQTT-3.1.2-11"),
    "will_qos3": ("MQTT-3.1.2-14", "§3.1.2.6"),
    "will_retain_without_will": ("MQTT-3.1.2-15", "MQTT-3.1.2-13"),
    "password_without_username": ("MQTT-3.1.2-22", ""),  # allowed in 5.0
    "connack_reserved": ("§3.2.2.1", "MQTT-3.2.2-1"),
    "subscribe_empty": ("MQTT-3.8.3-3", "MQTT-3.8.3-2"),
    "subscribe_reserved": ("MQTT-3.8.3-4", "MQTT-3.8.3-5"),
    "subscribe_qos3": ("MQTT-3.8.3-4", "§3.8.3.1"),
    "retain_handling3": ("§3.8.3.1", "§3.8.3.1"),
    "unsubscribe_empty": ("MQTT-3.10.3-2", "MQTT-3.10.3-2"),
    "filter_multi_level": ("MQTT-4.7.1-2", "MQTT-4.7.1-1"),
    "filter_single_level": ("MQTT-4.7.1-3", "MQTT-4.7.1-2"),
    "suback_return_code": ("MQTT-3.9.3-2", "MQTT-3.9.3-2"),
    "reason_code": ("§2.4", "§2.4"),
    "packet_too_large": ("§2.2.3", "MQTT-3.1.2-24"),  # we decode as the client
    "topic_alias_zero": ("", "MQTT-3.3.2-8"),
    "response_topic_wildcard": ("", "MQTT-3.3.2-14"),
    "connack_session_present_refused": ("MQTT-3.2.2-4", "MQTT-3.2.2-6"),
    "unexpected_ack": ("§4.3", "§4.3"),
    "sub_ack_id": ("MQTT-2.3.1-7", "MQTT-2.2.1-6"),
    "suback_count": ("MQTT-3.8.4-5", "MQTT-3.8.4-6"),
    "clean_session_present": ("MQTT-3.2.2-1", "MQTT-3.2.2-2"),
    "topic_alias_over_max": ("", "MQTT-3.3.2-11"),
    "topic_alias_unknown": ("", "§3.3.2.3.4"),
    "receive_maximum": ("", "MQTT-3.3.4-9"),
}


def ref(check: str, version: int) -> str:
    v311, v5 = REFS[check]
    return v5 if version >= 5 else v311
