"""`mqtt-harness dut ...` as a user runs it: a subprocess each, against the virtual device or a pty we write."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dut_fake import make_pty
from harness.cli.dut import flash_command
from harness.cli import CliError
from harness.device.lines import Message, encode_message
from harness.device.virtual.bugs import BUGS

ROOT = Path(__file__).resolve().parent.parent


def mh(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def virtual():
    from harness.device.virtual.spawn import spawn

    dev = spawn()
    yield dev
    dev.stop()


def test_list_json_is_a_list_of_ports():
    proc = mh("dut", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    ports = json.loads(proc.stdout)
    assert isinstance(ports, list)
    for port in ports:
        assert {"device", "vid_pid", "serial_number", "location", "chip"} <= set(port), port


def test_probe_shows_the_banner_and_sysinfo(virtual):
    proc = mh("dut", "probe", virtual.path)
    assert proc.returncode == 0, proc.stderr
    assert "firmware" in proc.stdout and "platform virtual" in proc.stdout and "uptime" in proc.stdout, proc.stdout
    proc = mh("dut", "probe", virtual.path, "--json")
    report = json.loads(proc.stdout)
    assert report["info"]["platform"] == "virtual" and report["sysinfo_error"] is None


def test_probe_of_a_silent_port_names_port_and_baud_within_the_timeout():
    master, slave, path = make_pty()
    try:
        proc = mh("dut", "probe", path, "--timeout", "1", timeout=30)
    finally:
        os.close(master)
        os.close(slave)
    assert proc.returncode == 1
    assert path in proc.stderr and "115200" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_probe_of_a_missing_port_says_how_to_find_one():
    proc = mh("dut", "probe", "/dev/ttyUSB-not-there")
    assert proc.returncode == 1 and "dut list" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_console_decodes_protocol_lines_and_shows_log_plain():
    master, slave, path = make_pty()
    proc = subprocess.Popen([sys.executable, "-m", "harness", "dut", "console", path, "--duration", "20"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "Ctrl-C to stop" in proc.stderr.readline()  # the console has the port open
        os.write(master, b"I (120) wifi: connected\r\n")
        os.write(master, encode_message(Message("EVT", {"seq": 1, "t_ms": 5, "event": "MQTT_EVENT_CONNECTED",
                                                        "session_present": False})))
        seen = [proc.stdout.readline().strip() for _ in range(2)]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        os.close(master)
        os.close(slave)
    assert seen[0] == "I (120) wifi: connected"
    assert seen[1].startswith("EVT #1 MQTT_EVENT_CONNECTED") and "session_present=false" in seen[1], seen


def test_virtual_lists_every_seeded_bug():
    proc = mh("dut", "virtual", "--list-bugs")
    assert proc.returncode == 0
    assert {line.split()[0] for line in proc.stdout.splitlines() if line.strip()} >= set(BUGS)


def _build(tmp_path: Path, files: dict[str, str], extra: dict | None = None) -> Path:
    build = tmp_path / "build"
    build.mkdir()
    for path in files.values():
        (build / path).parent.mkdir(parents=True, exist_ok=True)
        (build / path).write_bytes(b"\0" * 16)
    (build / "flasher_args.json").write_text(json.dumps({
        "write_flash_args": ["--flash_mode", "dio", "--flash_size", "4MB", "--flash_freq", "40m"],
        "flash_files": files, "extra_esptool_args": extra or {"chip": "esp32s3", "before": "default_reset",
                                                              "after": "hard_reset", "stub": True}}))
    return tmp_path


def test_flash_command_follows_idf_flasher_args(tmp_path):
    files = {"0x10000": "mqtt-dut.bin", "0x0": "bootloader/bootloader.bin", "0x8000": "partition_table/pt.bin"}
    project = _build(tmp_path, files)
    argv = flash_command("/dev/ttyUSB0", project, esptool_major=4)
    assert argv[:10] == ["--chip", "esp32s3", "--port", "/dev/ttyUSB0", "--baud", "460800", "--before",
                         "default_reset", "--after", "hard_reset"]
    tail = argv[argv.index("write_flash") + 1:]
    assert tail[:6] == ["--flash_mode", "dio", "--flash_size", "4MB", "--flash_freq", "40m"]
    assert tail[6:] == ["0x0", str(project / "build/bootloader/bootloader.bin"), "0x8000",
                        str(project / "build/partition_table/pt.bin"), "0x10000", str(project / "build/mqtt-dut.bin")]
    modern = flash_command("/dev/ttyUSB0", project, esptool_major=5)
    assert "write-flash" in modern and "--flash-mode" in modern and "default-reset" in modern


def test_flash_without_a_build_or_with_a_missing_image_says_build_first(tmp_path):
    with pytest.raises(CliError, match="idf.py build"):
        flash_command("/dev/ttyUSB0", tmp_path, esptool_major=4)
    project = _build(tmp_path, {"0x10000": "app.bin"})
    (project / "build" / "app.bin").unlink()
    with pytest.raises(CliError, match="missing: .*app.bin.*idf.py build"):
        flash_command("/dev/ttyUSB0", project, esptool_major=4)
