"""The device comes back by itself after its broker restarts: a private mosquitto process is stopped and started
again on the same port behind the proxy."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time

import pytest

from harness.core.packets import Connect
from harness.brokers.ports import release_ports, reserve_ports
from harness.brokers.probe import wait_until_ready

from harness.device.wire import EVENT_TIMEOUT, device_entries, device_url, start_device

pytestmark = [pytest.mark.device, pytest.mark.v311_only]
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


class RestartableMosquitto:
    """mosquitto on one fixed loopback port, which can be stopped and started again (a broker restart)."""

    def __init__(self, port: int):
        self.port = port
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([MOSQUITTO, "-p", str(self.port)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        proc = self.proc
        wait_until_ready(f"mqtt://127.0.0.1:{self.port}", time.monotonic() + 10, 10, name="mosquitto",
                         exit_status=lambda: None if proc.poll() is None else f"exited with {proc.returncode}",
                         log_tail=lambda: "", pause=time.sleep)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


@pytest.fixture
def restartable():
    if not shutil.which(MOSQUITTO):
        pytest.skip("mosquitto is not installed (apt install mosquitto): the restart test runs its own")
    [port] = reserve_ports(1)
    broker = RestartableMosquitto(port)
    broker.start()
    yield broker
    broker.stop()
    release_ports([port])


@pytest.mark.spec("§4.1")
async def test_device_reconnects_by_itself_after_the_broker_restarts(dut, proxy, restartable, device_config, dut_host):
    front = proxy(f"mqtt://127.0.0.1:{restartable.port}", listen=f"{dut_host}:0")
    await start_device(dut, device_config(uri=device_url(front, dut_host)))
    mark = dut.mark()
    await asyncio.to_thread(restartable.stop)
    await dut.aio.expect_event("DISCONNECTED", timeout=EVENT_TIMEOUT, since=mark)
    await asyncio.to_thread(restartable.start)
    await dut.aio.expect_event("CONNECTED", timeout=EVENT_TIMEOUT, since=mark)
    assert len(device_entries(front, Connect)) >= 2
