"""MQTT topic names and topic filters (§4.7, the same at 3.1.1 and 5): validation and the reference matcher.

    matches("sport/+/player1", "sport/tennis/player1")  -> True
    matches("sport/#", "sport")                          -> True   ('#' also matches the parent level)
    matches("+/monitor", "$SYS/monitor")                 -> False  ([MQTT-4.7.2-1]: '$' topics need an explicit
                                                                    first level)

Shared subscriptions ("$share/group/filter", MQTT 5) are a subscription option, not a filter syntax: split off
"$share/group/" before matching.
"""

from __future__ import annotations

__all__ = ["matches", "check_topic_name", "check_topic_filter"]

MAX_BYTES = 65_535  # [MQTT-4.7.3-3]


def _check_string(text: str, what: str) -> None:
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a str, not {type(text).__name__}")
    if not text:
        raise ValueError(f"{what} is empty; it must be at least one character long [MQTT-4.7.3-1]")
    if "\x00" in text:
        raise ValueError(f"{what} {text!r} contains U+0000 [MQTT-4.7.3-2]")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"{what} {text!r} is not encodable as UTF-8 (a lone surrogate)") from None
    if size > MAX_BYTES:
        raise ValueError(f"{what} is {size} bytes of UTF-8; at most {MAX_BYTES} [MQTT-4.7.3-3]")


def check_topic_name(name: str) -> None:
    """Raise ValueError (naming the rule) unless `name` is a valid topic name: no wildcards, 1..65535 bytes."""
    _check_string(name, "topic name")
    if "+" in name or "#" in name:
        raise ValueError(f"topic name {name!r} contains a wildcard; wildcards are for topic filters only "
                         "[MQTT-4.7.1-1]")


def check_topic_filter(topic_filter: str) -> None:
    """Raise ValueError (naming the rule) unless `topic_filter` is a valid topic filter: '+' only as a whole
    level, '#' only as the whole last level."""
    _check_string(topic_filter, "topic filter")
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            raise ValueError(f"topic filter {topic_filter!r}: '#' must be a whole level and the last one "
                             "[MQTT-4.7.1-2]")
        if "+" in level and level != "+":
            raise ValueError(f"topic filter {topic_filter!r}: '+' must occupy a whole level [MQTT-4.7.1-3]")


def matches(topic_filter: str, topic: str) -> bool:
    """Does the topic name `topic` match `topic_filter` (§4.7)? '+' matches exactly one level (an empty one too),
    '#' any number of trailing levels including none, so "a/#" matches "a"; a filter starting with a wildcard
    matches no topic starting with '$' [MQTT-4.7.2-1]. No normalisation: levels compare character by character
    [MQTT-4.7.3-4]. Raises ValueError for an invalid filter or topic name."""
    check_topic_filter(topic_filter)
    check_topic_name(topic)
    if topic[0] == "$" and topic_filter[0] in "+#":
        return False
    wanted = topic_filter.split("/")
    levels = topic.split("/")
    for index, level in enumerate(wanted):
        if level == "#":
            return True
        if index >= len(levels) or (level != "+" and level != levels[index]):
            return False
    return len(wanted) == len(levels)
