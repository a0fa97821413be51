"""The sans-IO host core of the device protocol (harness/device/protocol.py): bytes in, items out."""

from __future__ import annotations

import zlib

import pytest

from harness.device import esp_codes
from harness.device.lines import Message, b64, crc32_hex, encode_message
from harness.device.protocol import (Answer, Boot, DataError, DataMessage, DeviceProtocol, Event, EventGap, LogLine,
                                     Malformed, StrayAnswer, VersionMismatch, clean_text, event_name)
from harness.device.show import describe

BANNER = {"proto": 1, "proto_minor": 0, "fw": "test-dut 0.0.1", "chip": "virtual", "mac": "02:00:00:00:00:01",
          "reset_reason": "ESP_RST_POWERON", "max_line": 4096, "platform": "virtual", "caps": ["blob"]}


def line(kind, body=None, ident=None, major=1) -> bytes:
    return encode_message(Message(kind=kind, body=body or {}, id=ident, major=major))


def evt(seq, name="MQTT_EVENT_PUBLISHED", **fields) -> bytes:
    return line("EVT", {"seq": seq, "t_ms": 10 * seq, "event": name, **fields})


def ready_core() -> DeviceProtocol:
    core = DeviceProtocol()
    ident, _ = core.hello()
    items = core.receive_data(line("OK", BANNER, ident), 1.0)
    assert core.ready, items
    return core


def kinds(items):
    return [type(i).__name__ for i in items]


# ----------------------------------------------------------------------------------------- line splitting


def test_log_lines_and_crlf():
    core = DeviceProtocol()
    items = core.receive_data(b"I (12) boot: hello\r\nplain\n\r\n", 5.0)
    assert [(i.text, i.at) for i in items] == [("I (12) boot: hello", 5.0), ("plain", 5.0), ("", 5.0)]


def test_partial_line_completes_on_a_later_read():
    core = DeviceProtocol()
    assert core.receive_data(b"I (1) wifi: conn", 1.0) == []
    items = core.receive_data(b"ected\nnext", 2.0)
    assert [i.text for i in items] == ["I (1) wifi: connected"]
    assert items[0].at == 1.0  # the time its first byte arrived
    assert [i.text for i in core.flush(3.0)] == ["next"]


def test_protocol_line_one_byte_at_a_time():
    core = ready_core()
    data = b"junk" + evt(1, "MQTT_EVENT_CONNECTED", session_present=True) + b"after\n"
    items = []
    for index in range(len(data)):
        items += core.receive_data(data[index:index + 1], float(index))
    assert kinds(items) == ["LogLine", "Event", "LogLine"]
    assert items[0].text == "junk" and items[0].note
    assert items[1].short == "CONNECTED" and items[1].get("session_present") is True
    assert items[2].text == "after"


def test_garbage_bytes_nul_and_invalid_utf8_are_kept_as_log():
    core = DeviceProtocol()
    items = core.receive_data(b"\x00\xff\xfe ets Jun  8 2016\x1b[0;32m I (5) x\x1b[0m\n\xc3\xa9t\xc3\xa9\n", 0.0)
    assert [i.text for i in items] == ["\\x00\\xff\\xfe ets Jun  8 2016 I (5) x", "été"]
    assert items[0].raw.startswith(b"\x00\xff")


def test_over_long_line_is_cut_and_kept_with_a_note():
    core = DeviceProtocol(max_line=4096)
    items = core.receive_data(b"A" * 5000, 0.0) + core.receive_data(b"B" * 100 + b"\nshort\n", 1.0)
    assert kinds(items) == ["LogLine", "LogLine"]
    assert items[0].text == "A" * 4096 and "max_line" in items[0].note
    assert items[1].text == "short"


def test_over_long_protocol_line_is_also_malformed():
    core = ready_core()
    items = core.receive_data(evt(1, data_b64="A" * 6000), 0.0)
    assert kinds(items) == ["LogLine", "Malformed"]
    assert "cut" in items[1].why


def test_marker_after_log_text_on_the_same_line():
    core = ready_core()
    items = core.receive_data(b"I (9) app: no newline" + evt(1), 0.0)
    assert kinds(items) == ["LogLine", "Event"]
    assert items[0].text == "I (9) app: no newline"


def test_malformed_lines_are_log_and_malformed():
    core = ready_core()
    items = core.receive_data(b"@@1 - EVT {not json\n@@1 - WHAT {}\n@@1 - EVT {\"event\":\"X\"}\n", 0.0)
    assert kinds(items) == ["LogLine", "Malformed"] * 3
    assert "JSON" in items[1].why and "WHAT" in items[3].why and "seq" in items[5].why


def test_clean_text_escapes_controls():
    assert clean_text(b"a\tb\x07c") == "a\tb\\x07c"


# --------------------------------------------------------------------------------------- requests/answers


def test_request_ids_increase_and_answers_pair_up():
    core = ready_core()
    first, data = core.request("PING")
    second, _ = core.request("STATE")
    assert second == first + 1
    assert data == f"@@1 {first} PING {{}}\n".encode()
    items = core.receive_data(line("OK", {"state": "MQTT_STATE_INIT"}, second) + line("OK", {}, first), 0.0)
    assert [(a.id, a.verb, a.ok) for a in items] == [(second, "STATE", True), (first, "PING", True)]
    assert core.outstanding == {}


def test_err_answer():
    core = ready_core()
    ident, _ = core.request("PUBLISH", {"topic": "t"})
    [answer] = core.receive_data(line("ERR", {"name": "BAD_ARGS", "msg": "qos"}, ident), 0.0)
    assert isinstance(answer, Answer) and not answer.ok and answer.name == "BAD_ARGS" and answer.msg == "qos"


def test_answer_with_unknown_id_is_reported():
    core = ready_core()
    [item] = core.receive_data(line("OK", {}, 999), 0.0)
    assert isinstance(item, StrayAnswer) and "answer to no request" in item.why and item.id == 999


def test_late_answer_after_abandon():
    core = ready_core()
    ident, _ = core.request("PING")
    core.abandon(ident)
    [item] = core.receive_data(line("OK", {}, ident), 0.0)
    assert isinstance(item, StrayAnswer) and "late answer to PING" in item.why


def test_err_without_id_goes_to_the_one_outstanding_request():
    core = ready_core()
    ident, _ = core.request("BLOB_CHUNK")
    [answer] = core.receive_data(line("ERR", {"name": "LINE_TOO_LONG"}), 0.0)
    assert answer.id == ident and answer.name == "LINE_TOO_LONG"


def test_request_before_handshake_is_refused():
    with pytest.raises(RuntimeError, match="handshake"):
        DeviceProtocol().request("PING")


# ------------------------------------------------------------------------------------------- handshake


def test_handshake_sets_info_and_max_line():
    core = DeviceProtocol()
    ident, data = core.hello()
    assert data.startswith(b"@@1 1 HELLO {\"proto\":1,")
    core.receive_data(line("OK", {**BANNER, "max_line": 8192}, ident), 0.0)
    assert core.ready and core.info["fw"] == "test-dut 0.0.1" and core.max_line == 8192


def test_repeated_hello_answers_are_quiet():
    core = DeviceProtocol()
    first, _ = core.hello()
    second, _ = core.hello()
    items = core.receive_data(line("OK", BANNER, second) + line("OK", BANNER, first), 0.0)
    assert kinds(items) == ["Answer"] and core.ready


def test_hello_sent_before_a_boot_may_be_answered_after_it():
    core = DeviceProtocol()
    ident, _ = core.hello()
    items = core.receive_data(line("BOOT", BANNER) + line("OK", BANNER, ident), 0.0)
    assert kinds(items) == ["Boot", "Answer"] and core.ready


def test_banner_with_another_major_version():
    core = DeviceProtocol()
    core.hello()
    items = core.receive_data(line("BOOT", {**BANNER, "proto": 2}, major=2), 0.0)
    assert kinds(items) == ["VersionMismatch", "Boot"]
    assert items[0].device == 2 and items[0].host == 1
    assert core.mismatch is not None and not core.ready


def test_err_proto_version_answer():
    core = DeviceProtocol()
    ident, _ = core.hello()
    items = core.receive_data(line("ERR", {"name": "PROTO_VERSION", "proto": 2, "msg": "I speak 2"}, ident,
                                   major=2), 0.0)
    assert isinstance(items[-1], VersionMismatch) and items[-1].device == 2
    assert not core.ready


def test_hello_answer_announcing_another_version():
    core = DeviceProtocol()
    ident, _ = core.hello()
    items = core.receive_data(line("OK", {**BANNER, "proto": 3}, ident), 0.0)
    assert isinstance(items[-1], VersionMismatch) and items[-1].device == 3 and not core.ready


# ---------------------------------------------------------------------------------------------- events


def test_event_properties():
    handle = esp_codes.error_handle(error_type="MQTT_ERROR_TYPE_TCP_TRANSPORT",
                                    tls="ESP_ERR_MBEDTLS_SSL_HANDSHAKE_FAILED", flags=0x8,
                                    sock_errno="ECONNREFUSED")
    core = ready_core()
    [event] = core.receive_data(evt(1, "MQTT_EVENT_ERROR", msg_id=0, error_handle=handle), 3.0)
    assert event.short == "ERROR" and event.seq == 1 and event.t_ms == 10 and event.at == 3.0
    assert event.tls_error == "ESP_ERR_MBEDTLS_SSL_HANDSHAKE_FAILED"
    assert event.get("error_type") == "MQTT_ERROR_TYPE_TCP_TRANSPORT"
    assert event.agrees(esp_transport_sock_errno="ECONNREFUSED", error_type_id=1)
    assert not event.agrees(tls_error="ESP_ERR_ESP_TLS_CONNECTION_TIMEOUT")
    assert "tls=ESP_ERR_MBEDTLS_SSL_HANDSHAKE_FAILED" in describe(event)
    [ok] = core.receive_data(evt(2, "MQTT_EVENT_CONNECTED", error_handle=None, session_present=False), 0.0)
    assert ok.tls_error is None and ok.error_handle is None
    assert ok.agrees(session_present=False) and not ok.agrees(session_present=0)
    assert event_name("connected") == "MQTT_EVENT_CONNECTED"


def test_event_data_and_topic_b64():
    core = ready_core()
    [event] = core.receive_data(evt(1, "MQTT_EVENT_SUBSCRIBED", msg_id=7, data_b64=b64(b"\x01"),
                                    topic_b64=b64(b"\xff/x")), 0.0)
    assert event.data == b"\x01" and event.msg_id == 7 and event.topic_bytes == b"\xff/x"
    assert event.topic == "\\xff/x"


def test_event_gap_names_the_missing_numbers():
    core = ready_core()
    items = core.receive_data(line("BOOT", BANNER) + evt(1) + evt(2) + evt(5) + evt(6), 0.0)
    [gap] = [i for i in items if isinstance(i, EventGap)]
    assert gap.missing == [3, 4] and (gap.expected, gap.got) == (3, 5)
    assert "#3, #4" in describe(gap)


def test_numbering_restarts_after_boot():
    core = ready_core()
    items = core.receive_data(evt(41) + evt(42) + line("BOOT", BANNER) + evt(1), 0.0)
    assert not [i for i in items if isinstance(i, (EventGap, Malformed))]


def test_first_event_after_opening_mid_run_sets_the_numbering():
    core = ready_core()
    items = core.receive_data(evt(120) + evt(121), 0.0)
    assert kinds(items) == ["Event", "Event"]


def test_event_going_back_without_boot_is_reported():
    core = ready_core()
    items = core.receive_data(evt(5) + evt(1), 0.0)
    assert isinstance(items[1], Malformed) and "BOOT" in items[1].why


# ------------------------------------------------------------------------------------------------ DATA


def data_pieces(payload: bytes, topic="a/b", msg_id=9, size=1000, start_seq=1, crc=None, qos=1):
    out = b""
    for n, offset in enumerate(range(0, len(payload), size)):
        piece = payload[offset:offset + size]
        fields = {"msg_id": msg_id, "data_b64": b64(piece), "data_len": len(piece), "total_data_len": len(payload),
                  "current_data_offset": offset, "qos": qos, "retain": False, "dup": False}
        if offset == 0:
            fields.update(topic=topic, topic_len=len(topic))
        if offset + len(piece) == len(payload):
            fields["crc32"] = crc or crc32_hex(payload)
        out += evt(start_seq + n, "MQTT_EVENT_DATA", **fields)
    return out


def test_data_reassembly_with_crc():
    core = ready_core()
    payload = bytes(range(256)) * 20
    items = core.receive_data(data_pieces(payload), 0.0)
    [msg] = [i for i in items if isinstance(i, DataMessage)]
    assert msg.payload == payload and msg.topic == "a/b" and msg.qos == 1 and msg.msg_id == 9
    assert len(msg.events) == 6 and msg.retain is False
    assert "crc ok" in describe(msg)


def test_data_in_one_piece():
    core = ready_core()
    items = core.receive_data(data_pieces(b"hi"), 0.0)
    assert kinds(items) == ["Event", "DataMessage"] and items[1].payload == b"hi"
    assert "data=b'hi'" in describe(items[0]) and "topic=a/b" in describe(items[0])


def test_data_wrong_crc_is_an_error_naming_msg_id_topic_and_both_crcs():
    core = ready_core()
    payload = b"x" * 3000
    items = core.receive_data(data_pieces(payload, crc="0xdeadbeef"), 0.0)
    [err] = [i for i in items if isinstance(i, DataError)]
    assert not [i for i in items if isinstance(i, DataMessage)]
    assert err.msg_id == 9 and err.topic == "a/b" and err.expected_crc == "0xdeadbeef"
    assert err.got_crc == f"0x{zlib.crc32(payload):08x}"
    for part in ("msg_id=9", "a/b", "0xdeadbeef", err.got_crc):
        assert part in err.why


def test_data_lost_piece():
    core = ready_core()
    pieces = data_pieces(b"y" * 3000).splitlines(keepends=True)
    items = core.receive_data(pieces[0] + pieces[2], 0.0)
    assert [i for i in items if isinstance(i, DataError)] and [i for i in items if isinstance(i, EventGap)]


def test_boot_in_the_middle_of_a_message():
    core = ready_core()
    pieces = data_pieces(b"z" * 3000).splitlines(keepends=True)
    items = core.receive_data(pieces[0] + line("BOOT", BANNER), 0.0)
    [err] = [i for i in items if isinstance(i, DataError)]
    assert "rebooted" in err.why and isinstance(items[-1], Boot)


def test_describe_every_item():
    assert describe(LogLine(0.0, "x")) == "x"
    assert describe(Boot(BANNER)).startswith('BOOT fw="test-dut 0.0.1" chip=virtual')
    assert describe(Answer(3, True, {"a": 1}, "PING")) == 'OK #3 (PING) {"a":1}'
    assert describe(Event(4, 1, "MQTT_EVENT_PUBLISHED", {"msg_id": 5})) == "EVT #4 MQTT_EVENT_PUBLISHED msg_id=5"
