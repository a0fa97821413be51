"""The device firmware's C core built for Linux (firmware/esp32-dut/host) and driven over its real pty: the
cmocka unit tests, the banner, one answer per request, bad input, a publish/subscribe round trip through a real
mosquitto, refused/unresolvable brokers, TLS, reset, and the ASan+UBSan build doing the same round trip clean."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import subprocess
import time
import zlib

import pytest

from harness.device import host_build
from harness.device.errors import DeviceError
from harness.device.lines import Message, encode_message
from harness.device.serial_driver import Dut
from harness.brokers.ports import release_ports, reserve_ports
from rawlink import RawLink

pytestmark = pytest.mark.timeout(300)
EVENT_TIMEOUT = 10.0


def _build(sanitize: bool):
    try:
        return host_build.build(sanitize=sanitize)
    except host_build.HostBuildError as exc:
        if exc.missing:
            pytest.skip(str(exc))
        raise


@pytest.fixture(scope="module")
def host_binary():
    return _build(False)


@pytest.fixture(scope="module")
def asan_binary():
    return _build(True)


@pytest.fixture
def host_device(host_binary):
    dev = host_build.spawn(build_first=False)
    yield dev
    dev.stop()


@pytest.fixture
def dut(host_device):
    d = Dut.open(host_device.path, name="host")
    yield d
    d.close()
    assert not d.problems, f"protocol problems: {d.problems}"


def _libmosquitto_version() -> str:
    lib = ctypes.CDLL(ctypes.util.find_library("mosquitto") or "libmosquitto.so.1")
    major, minor, rev = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    lib.mosquitto_lib_version(ctypes.byref(major), ctypes.byref(minor), ctypes.byref(rev))
    return f"{major.value}.{minor.value}.{rev.value}"


@pytest.fixture
def raw(host_device):
    link = RawLink(host_device.path)
    yield link
    link.close()


# ---------------------------------------------------------------------------------------------- build


def test_unit_tests_pass_under_ctest(host_binary):
    if not host_build.have_cmocka() or not shutil.which("ctest"):
        pytest.skip("cmocka (libcmocka-dev) or ctest missing: " + host_build.APT_HINT)
    proc = subprocess.run(["ctest", "--test-dir", str(host_build.build_dir(False)), "--output-on-failure"],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "100% tests passed" in proc.stdout


def test_second_build_is_a_no_op(host_binary):
    started = time.monotonic()
    assert host_build.build() == host_binary
    assert time.monotonic() - started < 5  # nothing changed: no cmake run


# ------------------------------------------------------------------------------------- banner, framing


def test_banner_announces_the_host_platform(raw):
    boot = raw.wait(lambda m: m.kind == "BOOT")
    banner = boot.body
    assert (banner["proto"], banner["platform"], banner["chip"]) == (1, "host", "host")
    assert banner["libmosquitto"] == _libmosquitto_version()
    assert banner["reset_reason"] == "ESP_RST_POWERON"
    assert banner["max_line"] == 4096
    assert {"mqtt5", "tls", "blob", "dns", "tcp_probe", "set_time", "reset"} <= set(banner["caps"])
    assert not {"ws", "wss"} & set(banner["caps"])
    assert banner["mac"].startswith("02:")
    raw.send(encode_message(Message("HELLO", {"proto": 1, "host": "test"}, id=1)))
    hello = raw.wait(lambda m: m.id == 1)
    assert hello.kind == "OK"
    assert {k: hello.body[k] for k in banner} == banner  # every banner field, same values


def test_bad_lines_get_one_err_each_and_log_lines_none(raw):
    raw.wait(lambda m: m.kind == "BOOT")
    long_line = b"@@1 7 PUBLISH {\"topic\":\"" + b"x" * 5000 + b"\"}\n"
    raw.send(b"@@1 1 PING {\"a\":\n"
             b"@@1 2 PING [1]\n"
             b"@@1 3 FROBNICATE {}\n"
             b"@@2 4 PING {}\n"
             b"@@1 5 ping {}\n"
             + long_line +
             b"just a line of text\n"
             b"I (12) wifi: lost its newline@@1 8 PING {}\r\n"
             b"@@1 9 PUBLISH {\"topic\":\"t\"}\n"
             b"@@1 10 INIT {\"config\":{\"session\":{\"keepalive\":\"soon\"}}}\n")
    raw.wait(lambda m: m.id == 10)
    want = {1: "BAD_JSON", 2: "BAD_JSON", 3: "UNKNOWN_VERB", 4: "PROTO_VERSION", 5: "BAD_FRAME",
            7: "LINE_TOO_LONG", 8: None, 9: "NO_CLIENT", 10: "BAD_ARGS"}
    for ident, name in want.items():
        [answer] = raw.answers(ident)
        assert answer.major == 1
        if name is None:
            assert answer.kind == "OK"
        else:
            assert (answer.kind, answer.body["name"]) == ("ERR", name), answer
    assert "session.keepalive" in raw.answers(10)[0].body["msg"]
    assert raw.answers(4)[0].body["proto"] == 1
    assert all(len(line) <= 4096 for line in raw.lines)


def test_every_verb_answers_exactly_once(dut):
    requests = [
        ("PING", {}), ("SYSINFO", {}), ("SET_TIME", {"epoch": int(time.time())}),
        ("LOGLEVEL", {"tag": "mqtt_client", "level": "INFO"}), ("BLOB_BEGIN", {"name": "b", "size": 1}),
        ("BLOB_CHUNK", {"name": "b", "offset": 0, "b64": "YQ=="}),
        ("BLOB_END", {"name": "b", "crc32": f"0x{zlib.crc32(b'a'):08x}"}), ("BLOB_FREE", {"name": "b"}),
        ("STATE", {}), ("OUTBOX", {}), ("START", {}), ("STOP", {}), ("DISCONNECT", {}), ("RECONNECT", {}),
        ("CONFIG", {"config": {}}), ("SET_URI", {"uri": "mqtt://127.0.0.1:1"}), ("PUBLISH", {"topic": "t"}),
        ("ENQUEUE", {"topic": "t"}), ("SUBSCRIBE", {"topics": [{"filter": "t", "qos": 0}]}),
        ("UNSUBSCRIBE", {"topic": "t"}), ("DESTROY", {}),
        ("INIT", {"config": {"broker": {"address": {"uri": "mqtt://127.0.0.1:1"}},
                             "network": {"disable_auto_reconnect": True}}}),
        ("INIT", {}), ("CONFIG", {"config": {"session": {"keepalive": 30}}}),
        ("SET_URI", {"uri": "mqtt://127.0.0.1:2"}), ("STATE", {}), ("OUTBOX", {}),
        ("PUBLISH", {"topic": "t", "qos": 0}), ("PUBLISH", {"topic": "t", "qos": 1}),
        ("ENQUEUE", {"topic": "t", "qos": 1, "store": True}), ("SUBSCRIBE", {"topics": [{"filter": "t", "qos": 1}]}),
        ("UNSUBSCRIBE", {"topic": "t"}), ("RECONNECT", {}), ("DISCONNECT", {}), ("STOP", {}), ("DESTROY", {}),
        ("DESTROY", {}), ("DNS", {"host": "localhost"}), ("TCP_PROBE", {"host": "127.0.0.1", "port": 1}),
    ]
    outcomes = []
    for verb, body in requests:
        try:
            outcomes.append((verb, "OK", dut.request(verb, body)))
        except DeviceError as exc:
            outcomes.append((verb, exc.name, exc.body))
    dut.ping()  # barrier: a second answer to anything would show up as a stray answer in dut.problems
    got = dict(zip(range(len(outcomes)), [(kind, body) for _, kind, body in outcomes]))
    kinds = [kind for kind, _ in got.values()]
    assert kinds[8:20] == ["NO_CLIENT"] * 12  # client verbs before INIT
    assert kinds[20:22] == ["OK", "OK"]  # DESTROY without a client is OK, then INIT
    assert kinds[22] == "CLIENT_EXISTS"
    assert got[27][1]["msg_id"] == -1  # QoS 0 while not connected: lost, -1 verbatim
    assert got[28][1]["msg_id"] > 0 and got[29][1]["msg_id"] > 0  # QoS 1: queued
    assert got[30][1]["msg_id"] == -1 and got[31][1]["msg_id"] == -1  # (un)subscribe needs a connection
    assert kinds[32] == "ESP_ERR" and got[32][1]["err"] == "ESP_FAIL"  # RECONNECT when not waiting
    assert kinds[34] == "ESP_ERR"  # STOP when not started
    assert [k for k in kinds[35:37]] == ["OK", "OK"]
    assert outcomes[-2][2]["addresses"] == ["127.0.0.1"]
    assert outcomes[-1][2]["connected"] is False and outcomes[-1][2]["errno"]["name"] == "ECONNREFUSED"
    assert dut.problems == []


# ------------------------------------------------------------------------------------------ with a broker


def _connect(dut, uri: str, **config) -> dict:
    cfg = {"broker": {"address": {"uri": uri}}, "network": {"reconnect_timeout_ms": 300, "timeout_ms": 3000}}
    for key, value in config.items():
        cfg.setdefault(key, {}).update(value)
    answer = dut.init(cfg)
    mark = dut.mark()
    dut.start()
    dut.expect_event("CONNECTED", timeout=EVENT_TIMEOUT, since=mark)
    return answer


def _round_trip(dut, uri: str, request) -> None:
    topic = f"fw/{request.node.name}/{os.getpid()}/"
    _connect(dut, uri, credentials={"client_id": f"fw-{os.getpid()}-{request.node.name}"[:23]})
    mark = dut.mark()
    sub = dut.subscribe([(topic + "#", 2)])
    subscribed = dut.expect_event("SUBSCRIBED", msg_id=sub, since=mark)
    assert subscribed.data == b"\x02"  # granted QoS 2, as esp-mqtt puts the SUBACK codes in data
    for qos in (0, 1, 2):
        payload = bytes(range(256)) * 3 + bytes([qos])
        mark = dut.mark()
        msg_id = dut.publish(topic + f"q{qos}", payload, qos=qos)
        assert (msg_id == 0) if qos == 0 else (msg_id > 0)
        message = dut.expect_message(topic + f"q{qos}", payload=payload)
        assert message.qos == qos
        if qos:
            dut.expect_event("PUBLISHED", msg_id=msg_id, since=mark)
    big = os.urandom(50_000)  # more than a line and than esp-mqtt's buffer: pieces, blob upload, CRC
    mark = dut.mark()
    big_id = dut.publish(topic + "big", big, qos=1)
    message = dut.expect_message(topic + "big")
    assert message.payload == big
    assert len(message.events) > 10
    dut.expect_event("PUBLISHED", msg_id=big_id, since=mark)
    assert dut.outbox_size() == 0  # acknowledged: out of the outbox
    assert dut.state() == "MQTT_STATE_CONNECTED"
    mark = dut.mark()
    dut.unsubscribe(topic + "#")
    dut.expect_event("UNSUBSCRIBED", since=mark)
    dut.stop()
    assert dut.state() == "MQTT_STATE_DISCONNECTED"
    dut.destroy()


def test_publish_subscribe_round_trip_through_mosquitto(dut, mosquitto, request):
    _round_trip(dut, mosquitto.url("mqtt"), request)
    names = [e.short for e in dut.events]
    assert names[:2] == ["BEFORE_CONNECT", "CONNECTED"]


def test_refused_port_gives_failed_connect_to_host_with_econnrefused(dut):
    [port] = reserve_ports(1)  # reserved, nobody listens
    try:
        dut.init({"broker": {"address": {"uri": f"mqtt://127.0.0.1:{port}"}},
                  "network": {"disable_auto_reconnect": True}})
        mark = dut.mark()
        dut.start()
        error = dut.expect_event("ERROR", since=mark)
        dut.expect_event("DISCONNECTED", since=mark)
    finally:
        release_ports([port])
    assert error.tls_error == "ESP_ERR_ESP_TLS_FAILED_CONNECT_TO_HOST"
    handle = error.error_handle
    assert handle["error_type"] == "MQTT_ERROR_TYPE_TCP_TRANSPORT"
    assert handle["esp_transport_sock_errno"]["name"] == "ECONNREFUSED"
    assert dut.state() == "MQTT_STATE_WAIT_RECONNECT"
    mark = dut.mark()
    dut.reconnect()  # a second attempt on request, as esp-mqtt without auto-reconnect
    dut.expect_event("ERROR", since=mark, tls_error="ESP_ERR_ESP_TLS_FAILED_CONNECT_TO_HOST")
    dut.destroy()


def test_unresolvable_name_never_reaches_dns(dut):
    assert dut.dns("broker.invalid")["addresses"] == []
    dut.init({"broker": {"address": {"uri": "mqtt://broker.invalid:1883"}},
              "network": {"disable_auto_reconnect": True}})
    mark = dut.mark()
    dut.start()
    error = dut.expect_event("ERROR", since=mark)
    assert error.tls_error == "ESP_ERR_ESP_TLS_CANNOT_RESOLVE_HOSTNAME"
    dut.destroy()


def test_resolve_table_names_a_broker(host_binary, mosquitto):
    broker_port = int(mosquitto.url("mqtt").rsplit(":", 1)[1])
    with host_build.spawn(resolve={"broker.test": "127.0.0.1"}, build_first=False) as dev, \
            Dut.open(dev.path) as dut:
        assert dut.dns("broker.test")["addresses"] == ["127.0.0.1"]
        assert dut.dns("localhost")["addresses"] == ["127.0.0.1"]
        assert dut.tcp_probe("broker.test", broker_port)["connected"] is True
        _connect(dut, f"mqtt://broker.test:{broker_port}")
        dut.destroy()
        assert not dut.problems


def test_default_client_id_comes_from_the_mac(dut, mosquitto):
    answer = _connect(dut, mosquitto.url("mqtt"))
    mac = dut.info["mac"].split(":")
    assert answer["client_id"] == f"ESP32_{mac[3].lower()}{mac[4].upper()}{mac[5].upper()}"
    dut.destroy()


def test_reset_reboots_on_the_same_pty(dut):
    dut.set_time(1_000_000_000)
    info = dut.reset()
    assert info["reset_reason"] == "ESP_RST_SW"
    assert dut.boots[-1]["reset_reason"] == "ESP_RST_SW"
    assert dut.sysinfo()["time_source"] == "set"  # the clock survives a software reset, as the RTC does
    dut.crash("ESP_RST_TASK_WDT")
    assert dut.expect_reboot(reset_reason="ESP_RST_TASK_WDT")["reset_reason"] == "ESP_RST_TASK_WDT"
    dut.ping()
    # serial_driver keeps the reboot in `problems` even after expect_reboot() took it: it was asked for here
    dut.problems[:] = [p for p in dut.problems if "ESP_RST_TASK_WDT" not in p]


# ------------------------------------------------------------------------------------------------- TLS


def _tls_error(dut, uri: str, **config):
    cfg = {"broker": {"address": {"uri": uri}}, "network": {"disable_auto_reconnect": True, "timeout_ms": 3000}}
    for key, value in config.items():
        cfg.setdefault(key, {}).update(value)
    dut.init(cfg)
    mark = dut.mark()
    dut.start()
    error = dut.expect_event("ERROR", since=mark)
    dut.expect_event("DISCONNECTED", since=mark)
    assert not [e for e in dut.events_since(mark) if e.short == "CONNECTED"]
    dut.destroy()
    return error


def test_tls_server_verification_and_mutual_tls(dut, pki, mosquitto):
    tls, mtls = mosquitto.url("mqtts"), mosquitto.url("mqtts-mtls")
    for name in ("ca", "unknown_ca", "client_cert", "client_key"):
        dut.upload_blob(name, getattr(pki, name).read_bytes())
    _connect(dut, tls, broker={"verification": {"certificate": {"blob": "ca"}}})
    dut.destroy()
    _connect(dut, mtls,
             broker={"verification": {"certificate": {"blob": "ca"}}},
             credentials={"authentication": {"certificate": {"blob": "client_cert"}, "key": {"blob": "client_key"}}})
    dut.destroy()

    error = _tls_error(dut, tls, broker={"verification": {"certificate": {"blob": "unknown_ca"}}})
    assert error.tls_error == "ESP_ERR_MBEDTLS_SSL_HANDSHAKE_FAILED"
    assert error.error_handle["esp_tls_stack_err"]["hex"] == "0x2700"
    assert "MBEDTLS_X509_BADCERT_NOT_TRUSTED" in error.error_handle["esp_tls_cert_verify_flags"]["names"]

    error = _tls_error(dut, tls,
                       broker={"verification": {"certificate": {"blob": "ca"}, "common_name": "not-this.example"}})
    assert "MBEDTLS_X509_BADCERT_CN_MISMATCH" in error.error_handle["esp_tls_cert_verify_flags"]["names"]

    error = _tls_error(dut, tls)  # no CA and no skip: esp-tls refuses to set up
    assert error.tls_error == "ESP_ERR_MBEDTLS_SSL_SETUP_FAILED"

    error = _tls_error(dut, mtls, broker={"verification": {"certificate": {"blob": "ca"}}})
    assert error.tls_error == "ESP_ERR_MBEDTLS_SSL_HANDSHAKE_FAILED"  # the broker wants a client certificate

    dut.set_time(int(time.time()) + 20 * 365 * 86400)  # a clock far past the certificate's end
    try:
        error = _tls_error(dut, tls, broker={"verification": {"certificate": {"blob": "ca"}}})
    finally:
        dut.set_time(int(time.time()))
    assert "MBEDTLS_X509_BADCERT_EXPIRED" in error.error_handle["esp_tls_cert_verify_flags"]["names"]


# ------------------------------------------------------------------------------------------- sanitizers


def test_sanitizer_build_round_trip_is_clean(asan_binary, mosquitto, request):
    dev = host_build.spawn(sanitize=True, build_first=False)
    try:
        with Dut.open(dev.path, name="host-asan") as dut:
            assert dut.info["build"] == "asan+ubsan"
            _round_trip(dut, mosquitto.url("mqtt"), request)
            with pytest.raises(DeviceError):
                dut.request("INIT", {"config": {"broker": []}})
            dut.write_raw(b"x" * 9000 + b"\n")  # an over-long line of noise: dropped, logged
            dut.ping()
            dut.upload_blob("ca", b"not a certificate")
            error = _tls_error(dut, mosquitto.url("mqtts"), broker={"verification": {"certificate": {"blob": "ca"}}})
            assert error.tls_error == "ESP_ERR_MBEDTLS_X509_CRT_PARSE_FAILED"
            dut.reset()  # the re-exec under ASan
            dut.ping()
    finally:
        dev.stop()  # raises with the report if ASan or UBSan said anything


def test_libfuzzer_run_of_the_line_parser_and_dispatch_finds_nothing(tmp_path):
    """The fuzz target (clang libFuzzer + ASan + UBSan) over the seed corpus: a short run in CI, the long run is
    documented in firmware/esp32-dut/README.md. Any crash, leak or sanitizer report fails."""
    if not shutil.which("clang") or host_build.missing_packages():
        pytest.skip("the fuzz target needs clang and the host build packages: " + host_build.APT_HINT + " clang")
    build = host_build.HOST_SOURCE / "build" / "fuzz"
    env = {**os.environ, "CC": "clang"}
    for cmd in (["cmake", "-S", str(host_build.HOST_SOURCE), "-B", str(build), "-DDUT_FUZZ=ON"],
                ["cmake", "--build", str(build), "--target", "fuzz_dispatch", "-j2"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    corpus = tmp_path / "corpus"
    shutil.copytree(host_build.HOST_SOURCE / "fuzz" / "corpus", corpus)
    proc = subprocess.run([str(build / "fuzz_dispatch"), "-runs=5000", "-max_len=4096", "-max_total_time=120",
                           f"-artifact_prefix={tmp_path}/", str(corpus)], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Done 5000 runs" in proc.stderr, proc.stderr[-2000:]
    assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("leak-*"))
