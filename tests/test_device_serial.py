"""The serial driver (harness/device/serial_driver.py) over a real pseudo-terminal, against the in-test device
of dut_fake.py. No fixed sleeps: every wait is for a condition, with a timeout."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import zlib

import pytest

from dut_fake import BANNER, FakeDevice, eventually, make_pty
from harness.device.errors import (DeviceError, DeviceRebooted, DeviceTimeout, EventLost, HandshakeError,
                                   ProtocolMismatch)
from harness.device.lines import b64, crc32_hex
from harness.device.serial_driver import Dut


@pytest.fixture
def pty():
    """(master fd, slave path); the test's slave fd stays open so the master never sees a hang-up."""
    master, slave, path = make_pty()
    fds = {"master": master, "slave": slave}
    yield fds, path
    for fd in fds.values():
        try:
            os.close(fd)
        except OSError:
            pass


@pytest.fixture
def rig(pty):
    """An open Dut on a pty with a FakeDevice behind it: (dut, device)."""
    fds, path = pty
    device = FakeDevice(fds["master"])
    dut = Dut.open(path, handshake_timeout=2, request_timeout=1, expect_timeout=2)
    yield dut, device
    dut.close()
    device.stop()


def open_with(pty, **device_args):
    fds, path = pty
    return FakeDevice(fds["master"], **device_args), path


# ------------------------------------------------------------------------------------------- handshake


def test_open_handshakes_and_close_stops_the_reader(rig):
    dut, device = rig
    assert dut.info["fw"] == "fake-dut 0.0.1" and "blob" in dut.caps and dut.reset_reason == "ESP_RST_POWERON"
    assert dut.ping() == {}
    assert device.count("HELLO") == 1
    reader = dut._reader
    dut.close()
    dut.close()  # idempotent
    assert not reader.is_alive()
    assert dut.port_state == "closed"


def test_silent_device_raises_handshake_error_in_time(pty):
    device, path = open_with(pty, silent=True)
    start = time.monotonic()
    with pytest.raises(HandshakeError) as info:
        Dut.open(path, handshake_timeout=1.0)
    elapsed = time.monotonic() - start
    device.stop()
    assert 1.0 <= elapsed < 2.0
    text = str(info.value)
    for part in (path, "115200 baud", "--dut-baud", "not flashed", "another program", "download mode"):
        assert part in text
    assert device.count("HELLO") >= 1


def test_handshake_error_recognises_download_mode(pty):
    device, path = open_with(pty)
    device.handlers["HELLO"] = lambda dev, msg: dev.log("rst:0x1 (POWERON_RESET),boot:0x3 (DOWNLOAD_BOOT(UART0))\n"
                                                        "waiting for download")
    with pytest.raises(HandshakeError, match="download mode \\(it printed 'waiting for download'\\)"):
        Dut.open(path, handshake_timeout=0.5)
    device.stop()


def test_banner_with_protocol_2(pty):
    device, path = open_with(pty)
    device.handlers["HELLO"] = lambda dev, msg: dev.send("BOOT", {**BANNER, "proto": 2}, major=2)
    start = time.monotonic()
    with pytest.raises(ProtocolMismatch) as info:
        Dut.open(path, handshake_timeout=3)
    assert time.monotonic() - start < 1.5  # not a timeout
    assert "protocol 2" in str(info.value) and "speaks 1" in str(info.value)
    assert info.value.device == 2 and info.value.host == 1
    device.stop()


def test_err_proto_version_answer(pty):
    device, path = open_with(pty)
    device.handlers["HELLO"] = lambda dev, msg: dev.send(
        "ERR", {"name": "PROTO_VERSION", "proto": 2, "msg": "this device speaks 2"}, msg.id, major=2) or None
    with pytest.raises(ProtocolMismatch, match="protocol 2 \\(an ERR PROTO_VERSION answer\\).*speaks 1"):
        Dut.open(path, handshake_timeout=3)
    device.stop()


def test_hello_lost_while_booting_is_sent_again(pty):
    device, path = open_with(pty)
    device.handlers["HELLO"] = lambda dev, msg: None if dev.count("HELLO") == 1 else ("OK", dict(dev.banner))
    dut = Dut.open(path, handshake_timeout=3)
    assert device.count("HELLO") == 2 and dut.info["fw"]
    dut.close()
    device.stop()


# --------------------------------------------------------------------------------------- line handling


def test_garbage_partial_and_invalid_utf8_lines(rig):
    dut, device = rig
    device.write(b"\x00\xff\xfegarbage\x00\n")
    device.write(b"I (1) half a li")
    device.write(b"ne\r\n@@1 - EVT {broken\n")
    for byte in b"one byte at a time\n":
        device.write(bytes([byte]))
    dut.expect_exact("one byte at a time")
    texts = [line.text for line in dut.log]
    assert texts[:4] == ["\\x00\\xff\\xfegarbage\\x00", "I (1) half a line",
                         "@@1 - EVT {broken", "one byte at a time"]
    assert any("malformed line" in p for p in dut.problems)
    assert dut.ping() == {}  # malformed lines are only recorded


def test_over_long_line_is_cut(rig):
    dut, device = rig
    device.write(b"L" * 5000 + b"\nafter\n")
    dut.expect_exact("after")
    assert dut.log[-2].text == "L" * 4096 and "max_line" in dut.log[-2].note


def test_expect_regex_str_and_bytes_move_the_cursor(rig):
    dut, device = rig
    device.log("I (10) wifi: got ip 192.168.1.7")
    device.log("I (11) wifi: got ip 192.168.1.8")
    assert dut.expect(r"got ip (\S+)").group(1) == "192.168.1.7"
    assert dut.expect(rb"got ip (\S+)").group(1) == b"192.168.1.8"
    with pytest.raises(DeviceTimeout, match="got ip"):
        dut.expect("got ip", timeout=0.2)


# --------------------------------------------------------------------------------------------- events


def test_expect_event_fields_and_cursor(rig):
    dut, device = rig
    device.event("BEFORE_CONNECT")
    device.event("CONNECTED", session_present=False)
    device.event("PUBLISHED", msg_id=4)
    device.event("PUBLISHED", msg_id=5)
    first = dut.expect_event("CONNECTED", session_present=False)
    assert first.seq == 2
    mark = dut.mark()
    assert dut.expect_event("MQTT_EVENT_PUBLISHED", msg_id=5).seq == 4
    with pytest.raises(DeviceTimeout):  # the cursor is past msg_id 4 now
        dut.expect_event("PUBLISHED", msg_id=4, timeout=0.1)
    assert dut.expect_event("PUBLISHED", msg_id=4, since=mark - 2).seq == 3
    assert [e.short for e in dut.events_since(2)] == ["PUBLISHED", "PUBLISHED"]


def test_expect_event_timeout_shows_expected_and_received(rig):
    dut, device = rig
    device.event("CONNECTED", session_present=True)
    device.event("PUBLISHED", msg_id=4)
    device.log("I (99) mqtt: published")
    dut.expect_exact("published")
    with pytest.raises(DeviceTimeout) as info:
        dut.expect_event("PUBLISHED", msg_id=5, timeout=0.2)
    text = str(info.value)
    assert isinstance(info.value, AssertionError)
    assert "expected MQTT_EVENT_PUBLISHED msg_id=5" in text
    assert "EVT #1 MQTT_EVENT_CONNECTED session_present=true" in text
    assert "EVT #2 MQTT_EVENT_PUBLISHED msg_id=4   <- msg_id: wanted 5, got 4" in text
    assert "I (99) mqtt: published" in text
    assert info.value.expected and len(info.value.received) == 2


def test_event_gap_raises_event_lost(rig):
    dut, device = rig
    device.event("PUBLISHED", msg_id=1)
    device.event("PUBLISHED", msg_id=2)
    device.event("PUBLISHED", seq=5, msg_id=5)
    eventually(lambda: len(dut.events) == 3, what="three events")
    with pytest.raises(EventLost, match="#3, #4") as info:
        dut.expect_event("PUBLISHED", msg_id=5)
    assert info.value.missing == [3, 4]
    assert dut.expect_event("PUBLISHED", msg_id=5).seq == 5  # raised once
    assert any("event gap" in p for p in dut.problems)


def test_data_reassembly_and_crc_mismatch(rig):
    dut, device = rig
    payload = os.urandom(7000)

    def pieces(data: bytes, msg_id: int, crc: str):
        for offset in range(0, len(data), 2000):
            piece = data[offset:offset + 2000]
            fields = {"msg_id": msg_id, "data_b64": b64(piece), "data_len": len(piece), "total_data_len": len(data),
                      "current_data_offset": offset, "qos": 1, "retain": False, "dup": False}
            if offset == 0:
                fields["topic"] = "big/one"
            if offset + len(piece) == len(data):
                fields["crc32"] = crc
            device.event("DATA", **fields)

    pieces(payload, 11, crc32_hex(payload))
    msg = dut.expect_message("big/+", payload=payload, qos=1)
    assert msg.msg_id == 11 and len(msg.events) == 4
    pieces(payload, 12, "0x00000000")
    with pytest.raises(DeviceTimeout, match="CRC mismatch in DATA msg_id=12 topic='big/one'"):
        dut.expect_message("big/one", timeout=0.3)
    assert any(f"0x{zlib.crc32(payload):08x}" in p for p in dut.problems)


# -------------------------------------------------------------------------------------------- requests


def test_request_timeout_pings_then_names_port_baud_verb_and_id(rig):
    dut, device = rig
    device.handlers["STATE"] = lambda dev, msg: None
    start = time.monotonic()
    with pytest.raises(DeviceTimeout) as info:
        dut.request("STATE", timeout=0.3)
    assert time.monotonic() - start < 1.5
    state = device.wait_request("STATE")
    text = str(info.value)
    for part in (dut.port, "115200 baud", f"STATE #{state.id}", "it answers PING"):
        assert part in text
    assert device.count("PING") == 1


def test_hung_device_does_not_answer_ping_either(rig):
    dut, device = rig
    device.silent = True
    with pytest.raises(DeviceTimeout, match="does not answer PING either"):
        dut.request("STATE", timeout=0.2)


def test_err_answer_raises_device_error(rig):
    dut, device = rig
    device.handlers["PUBLISH"] = lambda dev, msg: ("ERR", {"name": "BAD_ARGS", "msg": "qos must be 0, 1 or 2"})
    device.handlers["START"] = lambda dev, msg: ("ERR", {"name": "ESP_ERR", "err": "ESP_ERR_INVALID_STATE"})
    with pytest.raises(DeviceError, match="PUBLISH #\\d+ failed on .*: BAD_ARGS: qos must be") as info:
        dut.publish("t", b"x", qos=3)
    assert info.value.name == "BAD_ARGS"
    with pytest.raises(DeviceError) as info:
        dut.start()
    assert info.value.err == "ESP_ERR_INVALID_STATE"


def test_answer_with_unknown_id_is_recorded(rig):
    dut, device = rig
    device.send("OK", {"x": 1}, 777)
    device.log("marker")
    dut.expect_exact("marker")
    assert any("answer to no request (id 777)" in p for p in dut.problems)
    assert dut.ping() == {}


def test_publish_inline_and_large_payload_as_blob(rig):
    dut, device = rig
    published = []

    def publish(dev, msg):
        body = msg.body
        data = bytes(dev.blobs[body["blob"]]) if "blob" in body else __import__("base64").b64decode(
            body.get("payload_b64", ""))
        published.append((body["topic"], data, body["qos"], "blob" in body))
        return "OK", {"msg_id": len(published)}

    device.handlers["PUBLISH"] = publish
    assert dut.publish("a", b"small", qos=1) == 1
    big = os.urandom(10000)
    assert dut.publish("b", big, qos=2, retain=True) == 2
    assert published == [("a", b"small", 1, False), ("b", big, 2, True)]
    assert device.count("BLOB_CHUNK") >= 3 and device.count("BLOB_FREE") == 1


def test_subscribe_forms(rig):
    dut, device = rig
    device.handlers["SUBSCRIBE"] = lambda dev, msg: ("OK", {"msg_id": 3})
    assert dut.subscribe("a/#", qos=1) == 3
    assert dut.subscribe([("x", 0), ("y", 2)]) == 3
    first, second = device.wait_request("SUBSCRIBE"), device.wait_request("SUBSCRIBE", nth=2)
    assert first.body == {"topics": [{"filter": "a/#", "qos": 1}]}
    assert second.body == {"topics": [{"filter": "x", "qos": 0}, {"filter": "y", "qos": 2}]}


def test_aio(rig):
    dut, device = rig
    device.event("CONNECTED")

    async def main():
        await dut.aio.ping()
        return await dut.aio.expect_event("CONNECTED", timeout=2)

    assert asyncio.run(main()).short == "CONNECTED"


# -------------------------------------------------------------------------------------------- reboots


def test_unexpected_reboot_raises_device_rebooted_then_rehandshakes(rig):
    dut, device = rig
    device.log("Guru Meditation Error: Core  0 panic'ed (LoadProhibited)")
    device.boot(reset_reason="ESP_RST_PANIC")
    eventually(lambda: dut.boots, what="the BOOT")
    with pytest.raises(DeviceRebooted, match="ESP_RST_PANIC") as info:
        dut.ping()
    assert "Guru Meditation" in str(info.value) and info.value.reset_reason == "ESP_RST_PANIC"
    assert [b["reset_reason"] for b in dut.unexpected_reboots] == ["ESP_RST_PANIC"]
    assert dut.ping() == {}  # raised once; handshaken again
    assert device.count("HELLO") == 2


def test_reboot_during_a_request_fails_it_at_once(rig):
    dut, device = rig
    device.handlers["STATE"] = lambda dev, msg: dev.boot(reset_reason="ESP_RST_TASK_WDT")
    start = time.monotonic()
    with pytest.raises(DeviceRebooted, match="ESP_RST_TASK_WDT"):
        dut.request("STATE", timeout=3)
    assert time.monotonic() - start < 1.5


def test_reset_verb_is_expected(rig):
    dut, device = rig
    device.event("CONNECTED")
    device.handlers["RESET"] = lambda dev, msg: dev.send("OK", {}, msg.id) or dev.boot(reset_reason="ESP_RST_SW")
    info = dut.reset()
    assert info["fw"] and dut.unexpected_reboots == [] and dut.reset_reason == "ESP_RST_SW"
    with pytest.raises(DeviceTimeout):  # the cursor moved to the BOOT: the old CONNECTED is accounted for
        dut.expect_event("CONNECTED", timeout=0.1)
    assert dut.ping() == {}


def test_expect_reboot_after_crash(rig):
    dut, device = rig
    device.handlers["CRASH"] = lambda dev, msg: dev.boot(reset_reason=msg.body["reason"])
    dut.crash("ESP_RST_INT_WDT")
    assert dut.expect_reboot(timeout=2, reset_reason="ESP_RST_INT_WDT")["reset_reason"] == "ESP_RST_INT_WDT"
    assert dut.unexpected_reboots == []
    assert dut.ping() == {}


# ------------------------------------------------------------------------------------- port loss, URLs


def test_unplug_replug_keeps_every_line(tmp_path):
    master, slave, target = make_pty()
    link = tmp_path / "ttyDUT"
    link.symlink_to(target)
    device = FakeDevice(master)
    dut = Dut.open(str(link), handshake_timeout=2, request_timeout=1, expect_timeout=2, replug_timeout=5)
    fds = [slave]
    try:
        sent = dut.bytes_received
        device.log("before unplug")
        device.event("CONNECTED")
        device.write(b"half a line")
        eventually(lambda: dut.bytes_received >= sent + len(b"before unplug\n") + 62 + len(b"half a line"),
                   what="every byte before the unplug")
        assert dut.events and dut.log_text() == "before unplug"
        device.stop()
        os.close(master)  # unplug
        eventually(lambda: dut.port_state == "lost", what="the driver noticing")
        master2, slave2, target2 = make_pty()  # replug: a new tty under the same name
        fds += [master2, slave2]
        tmp = tmp_path / "ttyDUT.new"
        tmp.symlink_to(target2)
        os.replace(tmp, link)
        device = FakeDevice(master2)
        eventually(lambda: dut.port_state == "open", what="the port coming back")
        device.log("after replug")
        device.event("DISCONNECTED", seq=2)
        dut.expect_exact("after replug")
        assert dut.expect_event("DISCONNECTED").seq == 2
        texts = [line.text for line in dut.log]
        assert texts == ["before unplug", "half a line", "after replug"]
        assert "port was lost" in dut.log[1].note
        assert any(p.startswith("port lost at") and "back after" in p for p in dut.problems)
        assert dut.ping() == {}
        assert device.count("HELLO") == 1  # handshaken again on the new port
    finally:
        dut.close()
        device.stop()
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass


def test_socket_url(tmp_path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    accepted = {}
    thread = threading.Thread(target=lambda: accepted.setdefault("conn", server.accept()[0]), daemon=True)
    thread.start()
    dut = None
    try:
        opener = threading.Thread(target=lambda: accepted.setdefault(
            "dut", Dut.open(f"socket://127.0.0.1:{port}", handshake_timeout=3)), daemon=True)
        opener.start()
        thread.join(timeout=3)
        device = FakeDevice(accepted["conn"].fileno())
        opener.join(timeout=5)
        dut = accepted["dut"]
        assert dut.info["fw"] == "fake-dut 0.0.1" and dut.ping() == {}
        device.event("CONNECTED")
        assert dut.expect_event("CONNECTED").seq == 1
        device.stop()
    finally:
        if dut is not None:
            dut.close()
        if "conn" in accepted:
            accepted["conn"].close()
        server.close()
