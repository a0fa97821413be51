"""The OASIS normative-statement catalogue: complete, well-formed, and looked up per version."""

from __future__ import annotations

import dataclasses
import json
from importlib import resources

import pytest

from harness import spec
from harness.errors import HarnessError

# Rows of each spec's "Mandatory normative statement(s)" appendix (every body tag is among them).
EXPECTED_COUNTS = {"3.1.1": 141, "5": 251}


@pytest.mark.parametrize("version", sorted(EXPECTED_COUNTS))
def test_count_matches_the_appendix(version):
    assert len(spec.statements(version)) == EXPECTED_COUNTS[version]


@pytest.mark.parametrize("version", sorted(EXPECTED_COUNTS))
def test_ids_unique_well_formed_and_sectioned(version):
    stmts = spec.statements(version)
    ids = [s.id for s in stmts]
    assert len(set(ids)) == len(ids)
    for s in stmts:
        assert spec.ID_PATTERN.fullmatch(s.id), s.id
        assert s.version == version
        numbers = s.id.removeprefix("MQTT-").rsplit("-", 1)[0]
        assert (numbers + ".").startswith(s.section + "."), (s.id, s.section)
        assert s.text.strip() == s.text and s.text and "<br>" not in s.text, s.id


@pytest.mark.parametrize("filename", ["statements-3.1.1.json", "statements-5.0.json"])
def test_files_record_their_source(filename):
    doc = json.loads(resources.files("harness.spec").joinpath(filename).read_text(encoding="utf-8"))
    assert doc["retrieved"] == "2026-11-22"
    assert doc["source"]["url"].startswith("http")
    assert doc["source"]["copy"]


def test_spot_checks_311():
    first = spec.statement("MQTT-3.1.0-1", "3.1.1")
    assert first.section == "3.1"
    assert "first Packet" in first.text and "CONNECT Packet" in first.text
    assert "ill-formed UTF-8" in spec.statement("MQTT-1.5.3-1", "3.1.1").text
    assert "CleanSession to 1" in spec.statement("MQTT-3.1.3-7", "3.1.1").text
    assert "re-deliver" in spec.statement("MQTT-3.3.1-1", "3.1.1").text  # hyphenated line wrap rejoined


def test_spot_checks_5():
    utf8 = spec.statement("MQTT-1.5.4-1", "5")
    assert "well-formed UTF-8" in utf8.text and "U+D800 and U+DFFF" in utf8.text
    assert "minimum number of bytes" in spec.statement("MQTT-1.5.5-1", "5").text
    assert "No Local" in spec.statement("MQTT-3.8.3-4", "5").text
    assert spec.statement("MQTT-6.0.0-1", "5").section == "6"


def test_body_text_overrides_where_the_appendix_is_wrong():
    retain = spec.statement("MQTT-3.3.1-10", "5")
    assert "did already exist, the Server MUST send" in retain.text  # the appendix inverts the rule
    assert "did not already exist, the Server MUST send" in retain.body_text
    assert spec.statement("MQTT-3.3.1-1", "5").body_text is None


def test_id_forms_are_normalised():
    plain = spec.statement("MQTT-3.3.1-6", "3.1.1")
    assert spec.statement("[MQTT-3.3.1-6]", "3.1.1") is plain
    assert spec.statement(" [mqtt-3.3.1-6] ", "3.1.1") is plain
    assert spec.statement("MQTT-3.1.2.7", "3.1.1").id == "MQTT-3.1.2-7"  # as the spec misprints it
    assert spec.statement("MQTT-3-8.3-4", "3.1.1").id == "MQTT-3.8.3-4"
    assert spec.statement("MQTT-4.2-1", "5.0").id == "MQTT-4.2.0-1"


def test_version_choice():
    both = spec.lookup("MQTT-3.1.2-3")
    assert [s.version for s in both] == ["5", "3.1.1"]
    assert both[0].text != both[1].text
    assert spec.statement("MQTT-3.1.2-3") is both[0]  # no version: MQTT 5 first
    assert spec.statement("MQTT-4.8.0-1").version == "3.1.1"  # only in 3.1.1
    assert spec.statement("MQTT-3.15.1-1").version == "5"  # AUTH: only in 5
    assert spec.lookup("MQTT-9.9.9-9") == ()


def test_is_known():
    assert spec.is_known("[MQTT-3.3.1-6]")
    assert spec.is_known("MQTT-4.8.0-1", "3.1.1")
    assert not spec.is_known("MQTT-4.8.0-1", "5")
    assert not spec.is_known("not an id")


def test_unknown_id_and_version_are_clear_errors():
    with pytest.raises(spec.UnknownStatement, match="MQTT-4.8.0-1.*MQTT 5") as info:
        spec.statement("MQTT-4.8.0-1", "5")
    assert isinstance(info.value, HarnessError) and isinstance(info.value, LookupError)
    with pytest.raises(ValueError, match="'3.1.1' or '5'"):
        spec.statements("4")


def test_statements_are_frozen_and_copies():
    stmt = spec.statements("5")[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        stmt.text = "changed"  # type: ignore[misc]
    spec.statements("5").clear()
    assert len(spec.statements("5")) == EXPECTED_COUNTS["5"]


# Reasons that say nothing about the statement: a reason must name what makes it unobservable from outside.
VAGUE_REASONS = ("untestable", "not testable", "cannot be tested", "hard to test", "n/a", "todo", "internal")


@pytest.mark.parametrize("filename", ["statements-3.1.1.json", "statements-5.0.json"])
def test_entries_have_only_known_fields(filename):
    doc = json.loads(resources.files("harness.spec").joinpath(filename).read_text(encoding="utf-8"))
    known = {"id", "section", "text", "body_text", "aliases", "side", "untestable"}
    for item in doc["statements"]:
        assert set(item) <= known, (item["id"], set(item) - known)
        assert item.get("side", "server") in spec.SIDES, item["id"]


@pytest.mark.parametrize("version", sorted(EXPECTED_COUNTS))
def test_untestable_reasons_are_specific_and_only_on_server_statements(version):
    for s in spec.statements(version):
        if s.untestable is None:
            continue
        assert s.side == "server", f"{s.id}: a client-side statement needs no untestable reason (device suites)"
        reason = s.untestable
        assert reason == reason.strip() and len(reason) >= 60, f"{s.id}: reason too short to say why: {reason!r}"
        assert reason.lower() not in VAGUE_REASONS and not reason.lower().startswith(VAGUE_REASONS), (s.id, reason)


def test_side_and_untestable_are_loaded():
    assert spec.statement("MQTT-4.6.0-2", "3.1.1").side == "client"  # "Client MUST send PUBACK packets in order"
    assert spec.statement("MQTT-3.3.2-7", "5").side == "server"      # the default
    assert spec.statement("MQTT-3.3.2-7", "5").untestable is None
    assert "bridg" in spec.statement("MQTT-7.0.0-1", "3.1.1").untestable
    assert "Authentication Method" in spec.statement("MQTT-4.12.0-2", "5").untestable
