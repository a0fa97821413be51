"""The proxy's native (C) forwarder: bytes both ways, closes, shutdown, refusals, the CLI's choice of forwarder."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from harness.client import Client
from harness.proxy import DOWNSTREAM, UPSTREAM
from harness.proxy.native import unavailable
from harness.proxy.proxy import Proxy, ProxyError

ROOT = Path(__file__).resolve().parent.parent
WHY_NOT = unavailable()
needs_native = pytest.mark.skipif(WHY_NOT is not None, reason=f"the C forwarder cannot be built here: {WHY_NOT}")
BLOB = 4 * 1024 * 1024  # more than loopback's socket buffers hold, so the forwarder has to wait for writes


def run(coro, timeout: float = 60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Peer:
    """A TCP server standing in for a broker: keeps what it reads, can send and close."""

    def __init__(self, send: bytes = b"", close_at_once: bool = False):
        self.send, self.close_at_once = send, close_at_once
        self.got = bytearray()
        self.eof = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> "Peer":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()

    @property
    def address(self) -> str:
        return "127.0.0.1:%d" % self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.close_at_once:
            writer.close()
            return
        writer.write(self.send)
        while chunk := await reader.read(1 << 16):
            self.got += chunk
        self.eof.set()
        writer.close()


async def _read_all(reader: asyncio.StreamReader, n: int) -> bytes:
    return await asyncio.wait_for(reader.readexactly(n), 20)


def _native_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("proxy-native-")]


@needs_native
def test_bytes_cross_both_ways_intact_and_a_client_close_is_passed_on():
    up, down = os.urandom(BLOB), os.urandom(BLOB)

    async def main():
        async with Peer(send=down) as peer, Proxy(peer.address, tap=False, native=True) as proxy:
            reader, writer = await asyncio.open_connection(*proxy.address)
            writer.write(up)
            got = await _read_all(reader, len(down))
            writer.close()  # FIN right behind the last bytes: they must all reach the peer first
            await asyncio.wait_for(peer.eof.wait(), 20)
            conn = await proxy.wait_until(lambda: not proxy.connections[0].is_open and proxy.connections[0], 10,
                                          "the connection to close")
            return got, bytes(peer.got), conn

    got, peer_got, conn = run(main())
    assert got == down and peer_got == up
    assert conn.close_reason == "client closed the connection"
    assert conn.received == {UPSTREAM: BLOB, DOWNSTREAM: BLOB}
    assert not _native_threads()


@needs_native
def test_a_broker_close_reaches_the_client():
    async def main():
        async with Peer(close_at_once=True) as peer, Proxy(peer.address, tap=False, native=True) as proxy:
            reader, writer = await asyncio.open_connection(*proxy.address)
            assert await asyncio.wait_for(reader.read(1), 10) == b""  # EOF, not a hang
            writer.close()
            conn = await proxy.wait_until(lambda: not proxy.connections[0].is_open and proxy.connections[0], 10,
                                          "the connection to close")
            return conn.close_reason

    assert run(main()) == "broker closed the connection"


@needs_native
def test_closing_the_proxy_ends_open_connections_and_their_threads():
    async def main():
        async with Peer() as peer:
            proxy = await Proxy(peer.address, tap=False, native=True).start()
            reader, writer = await asyncio.open_connection(*proxy.address)
            await proxy.wait_connection()
            assert _native_threads()
            await proxy.close()
            assert await asyncio.wait_for(reader.read(1), 10) == b""
            writer.close()
            return proxy.connections[0].close_reason

    assert run(main()) == "proxy shut down"
    assert not _native_threads()


@needs_native
def test_a_native_proxy_refuses_rules_faults_and_a_tap():
    with pytest.raises(ProxyError, match="needs tap=False"):
        Proxy("127.0.0.1:1883", native=True)
    proxy = Proxy("127.0.0.1:1883", tap=False, native=True)
    for add, item in ((proxy.add_rule, {"name": "r", "match": {"type": "PUBLISH"}, "actions": ["drop"]}),
                      (proxy.add_fault, {"type": "latency", "attributes": {"latency": 5}})):
        with pytest.raises(ProxyError, match="--rules or --control select the Python forwarder"):
            add(item)


@needs_native
def test_mqtt_qos1_round_trip_through_the_native_forwarder(mosquitto):
    async def main():
        async with Proxy(mosquitto.url("mqtt"), tap=False, native=True) as proxy:
            async with Client(proxy.url, client_id="native-rt") as c:
                await c.subscribe("native/t", qos=1)
                await c.publish("native/t", b"x" * 70000, qos=1)
                msg = await c.receive(timeout=5)
            return msg.payload

    assert run(main()) == b"x" * 70000


def _cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness", "proxy", "--listen", "127.0.0.1:0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, **(env or {})})


def _ready_line(proc: subprocess.Popen) -> str:
    line = proc.stdout.readline()  # the proxy prints it once listening, or exits (EOF)
    assert line.startswith("proxy "), f"no ready line; exit {proc.poll()}, stderr: {proc.stderr.read()}"
    return line.strip()


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    return err


@needs_native
def test_cli_forwards_natively_when_nothing_needs_python(mosquitto):
    proc = _cli("--upstream", mosquitto.url("mqtt").removeprefix("mqtt://"))
    try:
        line = _ready_line(proc)
        assert line.endswith("(tcp, native forwarder)"), line

        async def main():
            async with Client(line.split()[1]) as c:
                await c.subscribe("cli/native", qos=1)
                await c.publish("cli/native", b"n", qos=1)
                return (await c.receive(timeout=5)).payload
        assert run(main()) == b"n"
    finally:
        err = _stop(proc)
    assert err == ""


def test_cli_without_a_compiler_forwards_in_python_and_says_why(mosquitto, tmp_path):
    proc = _cli("--upstream", mosquitto.url("mqtt").removeprefix("mqtt://"),
                env={"MQTT_HARNESS_CC": "no-such-cc", "XDG_CACHE_HOME": str(tmp_path)})
    try:
        line = _ready_line(proc)
        assert line.endswith("(tcp)"), line
    finally:
        err = _stop(proc)
    assert "forwarding in Python; the C forwarder is not available: MQTT_HARNESS_CC=no-such-cc is not an " \
           "executable" in err


def test_a_compiler_that_fails_is_reported_with_its_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "harness.proxy.native"], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "MQTT_HARNESS_CC": "false", "XDG_CACHE_HOME": str(tmp_path)}, timeout=60)
    assert out.returncode == 1
    assert "native forwarder unavailable:" in out.stderr and "could not build forward.c" in out.stderr


@needs_native
def test_cli_keeps_python_when_something_reads_the_packets(mosquitto, tmp_path):
    proc = _cli("--upstream", mosquitto.url("mqtt").removeprefix("mqtt://"), "--control", "127.0.0.1:0")
    try:
        assert _ready_line(proc).endswith("(tcp)")
    finally:
        _stop(proc)
