"""Request rules both stand-ins (the virtual device and the host build of the firmware) keep, checked on their real
pty with raw lines: the driver itself never sends these."""

from __future__ import annotations

import pytest

from harness.device.lines import Message, encode_message
from rawlink import RawLink


@pytest.fixture(params=["virtual", "host"])
def standin(request):
    if request.param == "virtual":
        from harness.device.virtual.spawn import spawn

        dev = spawn()
    else:
        from harness.device import host_build

        if host_build.missing_packages():
            pytest.skip(f"the host build needs {', '.join(host_build.missing_packages())}: {host_build.APT_HINT}")
        dev = host_build.spawn()
    link = RawLink(dev.path)
    try:
        link.wait(lambda m: m.kind == "BOOT")
        yield link
    finally:
        link.close()
        dev.stop()


def _send(link: RawLink, ident: int, kind: str, body: dict | None = None) -> None:
    link.send(encode_message(Message(kind, body or {}, id=ident)))


def test_previous_request_id_again_is_refused_and_not_executed(standin):
    """A line sent twice must not run twice (a second PUBLISH); HELLO starts a host session at any id."""
    _send(standin, 5, "HELLO", {"proto": 1})
    _send(standin, 6, "BLOB_BEGIN", {"name": "once", "size": 3})
    _send(standin, 6, "BLOB_BEGIN", {"name": "once", "size": 3})
    _send(standin, 7, "BLOB_FREE", {"name": "once"})
    _send(standin, 8, "BLOB_FREE", {"name": "once"})  # the blob existed once only: this one has nothing to free
    standin.wait(lambda m: m.id == 8 and m.kind in ("OK", "ERR"))
    first, again = standin.answers(6)
    assert first.kind == "OK", first
    assert (again.kind, again.body["name"]) == ("ERR", "DUPLICATE_ID"), again
    assert standin.answers(7)[0].body == {"existed": True}
    assert standin.answers(8)[0].body == {"existed": False}, standin.answers(8)
    _send(standin, 8, "HELLO", {"proto": 1})
    _send(standin, 8, "PING")
    standin.wait(lambda m: len(standin.answers(8)) == 3)
    assert [a.kind for a in standin.answers(8)] == ["OK", "OK", "OK"]


def test_write_sends_a_console_line_the_firmware_logs_as_ignored():
    """dut.write, as pytest-embedded users know it: a plain line; the firmware says it ignored it."""
    from harness.device.serial_driver import Dut
    from harness.device.virtual.spawn import spawn

    dev = spawn()
    try:
        dut = Dut.open(dev.path, handshake_timeout=10)
        try:
            dut.write("help")
            dut.expect(r"ignored a line without the @@ marker \(4 bytes\)", timeout=10)
            assert dut.ping() == {}
        finally:
            dut.close()
    finally:
        dev.stop()
