"""Readiness and capability probes built on the reference client (synchronous entry points)."""

from __future__ import annotations

import asyncio
import threading

from harness.client import Client
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
