"""The proxy's outside interfaces: pcap files read by tshark, the HTTP control API, the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest

from harness.cli import main as cli_main
from harness.client import Client
from harness.core.packets import Puback
from harness.proxy import DOWNSTREAM, UPSTREAM
from harness.proxy.pcap import decode_as_args
from harness.transport import TlsOptions

TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed (setup.sh installs it via apt)")


def run(coro, timeout: float = 60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def _traffic(url: str, tls: TlsOptions | None = None, version: str = "5") -> None:
    async with Client(url, version=version, tls=tls, client_id="pcap-client") as c:
        await c.subscribe("pcap/t", qos=2)
        await c.publish("pcap/t", b"p" * 70000, qos=1)  # spans several TCP segments in the file
        assert (await c.receive(timeout=5)).payload == b"p" * 70000


def _tshark(path, *args: str) -> list[list[str]]:
    out = subprocess.run([TSHARK, "-r", str(path), *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [line.split("\t") for line in out.stdout.splitlines() if line]


# ------------------------------------------------------------------------------------ pcap

@needs_tshark
@pytest.mark.parametrize("mode", ["tcp", "tls-terminate"])
def test_pcap_opens_in_tshark_with_mqtt_decoded(proxy, mosquitto, pki, tmp_path, mode):
    tls = "terminate" if mode == "tls-terminate" else None
    p = proxy(mosquitto.url("mqtts" if tls else "mqtt"), tls=tls, pcap=False)
    run(_traffic(p.url, TlsOptions(ca=str(pki.ca)) if tls else None))
    conn = p.wait_until(lambda: not p.proxy.connections[0].is_open and p.proxy.connections[0])
    path = p.write_pcap(tmp_path / "capture.pcap")
    ports = decode_as_args([conn])
    assert ports[1::2] == [f"tcp.port=={port},mqtt" for port in sorted((conn.listen_addr[1], conn.upstream_addr[1]))]
    rows = _tshark(path, *ports, "-Y", "mqtt", "-T", "fields", "-e", "tcp.stream", "-e", "mqtt.msgtype",
                   "-e", "mqtt.topic", "-e", "mqtt.clientid")
    by_stream: dict[str, list[str]] = {}
    for stream, msgtypes, *_ in rows:
        by_stream.setdefault(stream, []).extend(msgtypes.split(","))
    assert len(by_stream) == 2  # the client leg and the broker leg
    for types in by_stream.values():  # CONNECT, CONNACK, SUBSCRIBE, SUBACK, PUBLISH x2, PUBACK, DISCONNECT
        assert {"1", "2", "3", "4", "8", "9", "14"} <= set(types), types
    assert any(r[3] == "pcap-client" for r in rows)
    assert any(r[2] == "pcap/t" for r in rows)
    # Consistent sequence numbers: tshark flags no retransmissions, gaps or malformed packets.
    assert _tshark(path, *ports, "-Y", "tcp.analysis.flags || _ws.malformed") == []
    handshake = _tshark(path, "-Y", "tcp.flags.syn == 1 || tcp.flags.fin == 1", "-T", "fields", "-e", "tcp.flags.str")
    assert len(handshake) == 2 * 2 + 2 * 2  # SYN and SYN-ACK, then FIN both ways, on each leg


@needs_tshark
def test_pcap_relabelled_as_port_1883_needs_no_decode_flags(proxy, mosquitto, tmp_path):
    p = proxy(mosquitto.url("mqtt"), pcap=False)
    run(_traffic(p.url, version="3.1.1"))
    p.wait_until(lambda: not p.proxy.connections[0].is_open)
    path = p.write_pcap(tmp_path / "as1883.pcap", server_port=1883)
    rows = _tshark(path, "-Y", "mqtt.msgtype == 1", "-T", "fields", "-e", "tcp.dstport")
    assert [r[0] for r in rows] == ["1883", "1883"]


def test_pcap_file_is_written_without_tshark(proxy, mosquitto, tmp_path):
    p = proxy(mosquitto.url("mqtt"))
    run(_traffic(p.url))
    path = p.write_pcap(tmp_path / "early.pcap")
    assert path.stat().st_size > 70000 and path.read_bytes()[:4] == b"\xd4\xc3\xb2\xa1"  # little-endian pcap


# ------------------------------------------------------------------------------------ control API

def _http(base: str, method: str, path: str, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
            return resp.status, (json.loads(raw) if resp.headers["Content-Type"] == "application/json" else raw)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_control_api_drives_the_proxy(proxy, mosquitto):
    p = proxy(mosquitto.url("mqtt"))
    base = p.serve_control().url
    assert base.startswith("http://127.0.0.1:")

    assert _http(base, "POST", "/faults", {"type": "latency", "stream": "downstream",
                                           "attributes": {"latency": 1}, "name": "lag"})[0] == 200
    gate = {"name": "gate", "match": {"type": "PUBLISH", "direction": "upstream"}, "actions": [{"hold": "g"}]}
    status, rules = _http(base, "POST", "/rules", gate)
    assert status == 200 and rules[0]["name"] == "gate"
    assert [f["name"] for f in _http(base, "GET", "/faults")[1]] == ["lag"]
    assert [r["name"] for r in _http(base, "GET", "/rules")[1]] == ["gate"]

    async def main():
        async with Client(p.url, client_id="ctl") as c:
            ack = c.publish_nowait("ctl/t", b"x", qos=1)
            await p.wait_held_async("g")
            status, holds = await asyncio.to_thread(_http, base, "GET", "/holds")
            assert holds[0]["hold"] == "g" and "ctl/t" in holds[0]["packet"]
            assert (await asyncio.to_thread(_http, base, "POST", "/release/g"))[1] == {"released": 1}
            assert isinstance(await asyncio.wait_for(ack, 5), Puback)
            conns = (await asyncio.to_thread(_http, base, "GET", "/connections"))[1]
            assert conns[0]["client_id"] == "ctl" and conns[0]["open"] and conns[0]["faults"][DOWNSTREAM] == ["lag"]
            assert (await asyncio.to_thread(_http, base, "POST", "/heal"))[1] == {"removed": ["lag"]}
            assert (await asyncio.to_thread(_http, base, "DELETE", "/rules/gate"))[0] == 200
    run(main())
    # the client's DISCONNECT reaches the proxy asynchronously: read the tap once the proxy saw the close
    p.wait_closed(1)
    tap = _http(base, "GET", "/tap")[1]
    assert {"CONNECT", "PUBLISH", "PUBACK", "DISCONNECT"} <= {e["type"] for e in tap}
    assert any(e["kind"] == "rule" for e in _http(base, "GET", "/events")[1])
    status, pcap = _http(base, "GET", "/pcap")
    assert status == 200 and pcap[:4] == b"\xd4\xc3\xb2\xa1"
    status, none = _http(base, "GET", "/pcap?connection=99")
    assert status == 200 and len(none) == 24  # just the file header: no such connection
    status, err = _http(base, "POST", "/faults", {"type": "lag"})
    assert status == 400 and "unknown fault type" in err["error"]
    assert _http(base, "DELETE", "/faults/nope")[0] == 404
    assert _http(base, "GET", "/nowhere")[0] == 404


def test_control_api_binds_loopback_only(proxy, mosquitto):
    from harness.proxy import ProxyError

    p = proxy(mosquitto.url("mqtt"))
    with pytest.raises(ProxyError, match="loopback only"):
        p.serve_control("0.0.0.0:0")


# ------------------------------------------------------------------------------------ CLI

def test_cli_usage_errors(capsys, tmp_path):
    bad = tmp_path / "rules.yaml"
    bad.write_text("rules:\n  - actions: [explode]\n")
    cases = [
        (["--upstream", "127.0.0.1:1", "--tls-terminate"], "--tls-terminate needs --cert"),
        (["--upstream", "127.0.0.1:1", "--no-tap", "--trace"], "--no-tap records nothing"),
        (["--upstream", "nowhere"], "not host:port"),
        (["--upstream", "127.0.0.1:1", "--rules", str(bad)], "rules[0]: unknown action 'explode'"),
        (["--upstream", "mqtts://127.0.0.1:1", "--rules", str(bad)], "rules[0]"),
        (["--upstream", "127.0.0.1:1", "--ca", "x.pem"], "--ca/--upstream-cert apply"),
    ]
    for args, message in cases:
        assert cli_main(["proxy", *args]) == 2
        assert message in capsys.readouterr().err


def test_cli_starts_forwards_applies_rules_and_writes_pcap(mosquitto, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n"
        "  - name: mark-retained\n"
        "    match: {direction: downstream, type: PUBLISH, topic: cli/#}\n"
        "    actions: [{rewrite: {retain: true}}]\n"
        "faults:\n"
        "  - {type: latency, stream: upstream, attributes: {latency: 1}}\n")
    pcap = tmp_path / "cli.pcap"
    upstream = mosquitto.url("mqtt").removeprefix("mqtt://")
    with subprocess.Popen(
            [sys.executable, "-m", "harness", "proxy", "--listen", "127.0.0.1:0", "--upstream", upstream,
             "--rules", str(rules), "--pcap", str(pcap), "--control", "127.0.0.1:0", "--trace"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=os.path.dirname(os.path.dirname(__file__))) as proc:
        lines, errors = _lines(proc.stdout), _lines(proc.stderr)
        try:
            first = _readline(proc, lines, 15)
            assert first.startswith("proxy mqtt://127.0.0.1:") and "(tcp)" in first, first
            url = first.split()[1]
            control = _readline(proc, lines, 5).split()[1]

            async def main():
                async with Client(url) as c:
                    await c.subscribe("cli/x", qos=1)
                    await c.publish("cli/x", b"via cli", qos=1)
                    msg = await c.receive(timeout=5)
                    assert msg.retain and msg.payload == b"via cli"
            run(main())
            conns = _http(control, "GET", "/connections")[1]
            assert conns and conns[0]["faults"][UPSTREAM] == ["latency_upstream"]
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out = list(iter(lambda: lines.get(timeout=5), None))
        err = "\n".join(iter(lambda: errors.get(timeout=5), None))
    assert proc.returncode == 0, err
    assert out == [f"pcap {pcap}"] and pcap.stat().st_size > 0
    assert "C>   CONNECT" in err and "C<   PUBLISH" in err and "retain" in err


def _lines(stream) -> queue.Queue:
    """A child's output lines, read by a thread so its pipe never fills (None at EOF)."""
    q: queue.Queue = queue.Queue()

    def pump():
        for line in stream:
            q.put(line.rstrip("\n"))
        q.put(None)
    threading.Thread(target=pump, daemon=True).start()
    return q


def _readline(proc: subprocess.Popen, lines: queue.Queue, timeout: float) -> str:
    """The next stdout line of the child, or fail naming what happened."""
    try:
        line = lines.get(timeout=timeout)
    except queue.Empty:
        proc.kill()
        raise AssertionError(f"no output from the proxy CLI within {timeout}s") from None
    if line is None:
        raise AssertionError(f"the proxy CLI exited with {proc.wait()} before printing a line")
    return line


def test_pcap_frames_match_what_scapy_builds(proxy, mosquitto, tmp_path):
    """The writer builds Ethernet/IP/TCP headers itself (scapy took ~1 ms a frame); scapy reads every frame
    and computes the same IP and TCP checksums, and the TCP payloads carry MQTT scapy can dissect."""
    from scapy.contrib.mqtt import MQTT
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    from scapy.utils import rdpcap

    p = proxy(mosquitto.url("mqtt"), pcap=False)
    run(_traffic(p.url, version="3.1.1"))
    p.wait_until(lambda: not p.proxy.connections[0].is_open)
    frames = rdpcap(str(p.write_pcap(tmp_path / "scapy.pcap")))
    assert len(frames) > 10
    types = set()
    for frame in frames:
        assert frame.haslayer(IP) and frame.haslayer(TCP)
        rebuilt = frame.copy()
        del rebuilt[IP].chksum, rebuilt[TCP].chksum
        rebuilt = Ether(bytes(rebuilt))
        assert (rebuilt[IP].chksum, rebuilt[TCP].chksum) == (frame[IP].chksum, frame[TCP].chksum)
        payload = bytes(frame[TCP].payload)
        if payload and payload[0] >> 4 in (1, 8, 12, 14):  # packets that start a segment: CONNECT, SUBSCRIBE, ...
            types.add(MQTT(payload).type)
    assert {1, 8, 14} <= types
