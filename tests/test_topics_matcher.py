"""harness.topics: the reference topic matcher and topic validation (§4.7)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.topics import check_topic_filter, check_topic_name, matches

# ------------------------------------------------------------------------------ the spec's own examples (§4.7)


@pytest.mark.parametrize("topic_filter, topic, expected", [
    # §4.7.1.2 multi-level wildcard
    ("sport/tennis/player1/#", "sport/tennis/player1", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
    ("sport/#", "sport", True),
    ("#", "sport/tennis", True),
    ("#", "/", True),
    # §4.7.1.3 single-level wildcard
    ("sport/tennis/+", "sport/tennis/player1", True),
    ("sport/tennis/+", "sport/tennis/player2", True),
    ("sport/tennis/+", "sport/tennis/player1/ranking", False),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("+", "/finance", False),
    ("+/tennis/#", "sport/tennis", True),
    ("sport/+/player1", "sport/tennis/player1", True),
    ("+/#", "a", True),  # '+' takes the level, '#' the (absent) rest
    # §4.7.2 topics beginning with $
    ("#", "$SYS/monitor/Clients", False),
    ("+/monitor/Clients", "$SYS/monitor/Clients", False),
    ("$SYS/#", "$SYS/monitor/Clients", True),
    ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
    ("+", "$", False),
    ("$", "$", True),
    ("a/+", "a/$b", True),  # the rule is about the first character of the topic only
    ("a/#", "a/$b", True),
    # §4.7.3: case-sensitive, no normalisation, spaces and empty levels are ordinary
    ("ACCOUNTS", "Accounts", False),
    ("Accounts payable", "Accounts payable", True),
    ("a//b", "a//b", True),
    ("a/+/b", "a//b", True),
    ("a/b", "a/b/", False),
    ("a/b/", "a/b", False),
    ("caf\u00e9", "cafe\u0301", False),
])
def test_spec_examples(topic_filter, topic, expected):
    assert matches(topic_filter, topic) is expected


@pytest.mark.parametrize("topic_filter, rule", [
    ("", "MQTT-4.7.3-1"),
    ("sport/tennis#", "MQTT-4.7.1-2"),
    ("sport/tennis/#/ranking", "MQTT-4.7.1-2"),
    ("##", "MQTT-4.7.1-2"),
    ("sport+", "MQTT-4.7.1-3"),
    ("+a/b", "MQTT-4.7.1-3"),
    ("a\x00b", "MQTT-4.7.3-2"),
    ("a" * 65_536, "MQTT-4.7.3-3"),
])
def test_invalid_filters_are_refused_naming_the_rule(topic_filter, rule):
    with pytest.raises(ValueError, match=rule):
        check_topic_filter(topic_filter)
    with pytest.raises(ValueError, match=rule):
        matches(topic_filter, "a")


@pytest.mark.parametrize("topic, rule", [
    ("", "MQTT-4.7.3-1"), ("a/+", "MQTT-4.7.1-1"), ("#", "MQTT-4.7.1-1"), ("a/b#", "MQTT-4.7.1-1"),
    ("\x00", "MQTT-4.7.3-2"), ("\u00e9" * 32_768, "MQTT-4.7.3-3"),
])
def test_invalid_topic_names_are_refused_naming_the_rule(topic, rule):
    with pytest.raises(ValueError, match=rule):
        check_topic_name(topic)
    with pytest.raises(ValueError, match=rule):
        matches("#", topic)


def test_lone_surrogate_is_refused():
    with pytest.raises(ValueError, match="UTF-8"):
        check_topic_name("a\ud800")


def test_non_string_is_a_type_error():
    with pytest.raises(TypeError, match="must be a str"):
        matches(b"a", "a")  # type: ignore[arg-type]


def test_longest_valid_strings_are_accepted():
    check_topic_name("a" * 65_535)
    check_topic_filter("a" * 65_533 + "/#")


# ------------------------------------------------------------------------------ properties

_LEVEL = st.sampled_from(["a", "b", "$", "$a", "", "\u00e9", " "])
topics = st.lists(_LEVEL, min_size=1, max_size=4).map("/".join).filter(bool)
filters = st.builds(lambda levels, multi: "/".join(levels + ["#"] if multi else levels),
                    st.lists(_LEVEL | st.just("+"), max_size=4), st.booleans()).filter(bool)


def regex_oracle(topic_filter: str, topic: str) -> bool:
    """The same rules, written another way: the filter as a regular expression over the whole topic."""
    if topic.startswith("$") and topic_filter[0] in "+#":
        return False
    levels = topic_filter.split("/")
    tail = ""
    if levels[-1] == "#":
        levels.pop()
        tail = "(/.*)?" if levels else ".*"
    body = "/".join("[^/]*" if level == "+" else re.escape(level) for level in levels)
    return re.fullmatch(body + tail, topic, re.DOTALL) is not None


@given(filters, topics)
def test_agrees_with_a_regex_oracle(topic_filter, topic):
    assert matches(topic_filter, topic) == regex_oracle(topic_filter, topic)


@given(topics)
def test_a_topic_name_used_as_filter_matches_itself(topic):
    assert matches(topic, topic)


@given(topics, st.data())
def test_a_plus_in_place_of_any_level_still_matches(topic, data):
    levels = topic.split("/")
    index = data.draw(st.integers(0, len(levels) - 1))
    levels[index] = "+"
    assert matches("/".join(levels), topic) == (index > 0 or not topic.startswith("$"))


@given(topics, st.data())
def test_hash_after_any_prefix_matches(topic, data):
    levels = topic.split("/")
    keep = data.draw(st.integers(0, len(levels)))
    assert matches("/".join(levels[:keep] + ["#"]), topic) == (keep > 0 or not topic.startswith("$"))


@given(filters, topics)
def test_a_different_level_count_without_hash_never_matches(topic_filter, topic):
    if not topic_filter.endswith("#") and topic_filter.count("/") != topic.count("/"):
        assert not matches(topic_filter, topic)
