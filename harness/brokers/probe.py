"""Readiness and capability probes built on the reference client (synchronous entry points)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Callable

from harness.brokers.broker import BrokerError
from harness.client import Client
from harness.errors import ConnectError, ConnectionClosed, MqttConnectError, Timeout
from harness.transport import TlsOptions


def run_sync(coro_factory, timeout: float):
    """Run an async callable to completion from sync code, even when an event loop is already running
    in this thread (pytest-asyncio, the CLI): then it runs on a private loop in a helper thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro_factory())
    box: dict = {}

    def target():
        try:
            box["result"] = asyncio.run(coro_factory())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="mqtt-harness-probe", daemon=True)
    thread.start()
    thread.join(timeout + 5)
    if "error" in box:
        raise box["error"]
    return box.get("result")


def probe_connack(url: str, timeout: float, *, ca: str | None = None, cert: str | None = None,
                  key: str | None = None, username: str | None = None, password: str | None = None,
                  version: str = "3.1.1") -> None:
    """One real MQTT CONNECT/CONNACK (then DISCONNECT) at `url`. Raises a ConnectError subclass
    naming the failing layer, or Timeout."""
    tls = TlsOptions(ca=ca, cert=cert, key=key) if (ca or cert or key) else None

    async def probe():
        client = await Client.connect(url, version=version, tls=tls, username=username, password=password,
                                      timeout=timeout, log=False, client_id=None)
        await client.disconnect(timeout=timeout)

    run_sync(probe, timeout)


def wait_until_ready(url: str, deadline: float, timeout: float, *, name: str,
                     exit_status: Callable[[], str | None], log_tail: Callable[[], str],
                     pause: Callable[[float], object], **tls: str) -> None:
    """Probe `url` until a CONNACK accepts a session. BrokerError if the broker ends (exit_status() returns
    how), refuses the probe, or `deadline` passes. `pause(seconds)` waits between probes; backends pass a
    wait that returns early when the broker dies."""
    delay = 0.005
    last: Exception | None = None
    while True:
        ended = exit_status()
        if ended is not None:
            raise BrokerError(f"{name} {ended} before it was ready (last probe: {last})\n{log_tail()}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrokerError(f"{name} sent no CONNACK on {url} within {timeout:g}s (last probe: {last})\n{log_tail()}")
        try:
            probe_connack(url, timeout=min(2.0, remaining), **tls)
            return
        except MqttConnectError as exc:
            if exc.reason_code:  # it answered, with a refusal: waiting will not change that
                raise BrokerError(f"{name} refused the readiness probe: {exc}\n{log_tail()}") from exc
            last = exc
        except (ConnectError, Timeout, ConnectionClosed) as exc:
            last = exc
        pause(max(0.0, min(delay, deadline - time.monotonic())))
        delay = min(delay * 2, 0.05)


def tls_args_for(kind: str, pki) -> dict[str, str]:
    """The probe's ca/cert/key for a listener kind, from the broker's PKI."""
    if kind in ("mqtts", "wss"):
        return {"ca": str(pki.ca)}
    if kind == "mqtts-mtls":
        return {"ca": str(pki.ca), "cert": str(pki.client_cert), "key": str(pki.client_key)}
    return {}
