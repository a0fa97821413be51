"""The proxy on its own event loop in a background thread, with a thread-safe, blocking API.

Tests written as plain functions (or running their own asyncio.run) drive it without sharing a loop:
every call is carried out on the proxy's loop and waits for the result. Inside a coroutine, use the
*_async variants of the waits so the calling loop keeps running while it waits.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Callable

from harness.proxy.proxy import Connection, Proxy, ProxyError

_CALL_TIMEOUT = 30.0


class ThreadedProxy:
    """Owns a Proxy and the thread running its loop. Same verbs as Proxy, callable from any thread."""

    def __init__(self, upstream, listen: str = "127.0.0.1:0", **kwargs):
        self.proxy = Proxy(upstream, listen, **kwargs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._cond = threading.Condition()
        self._seq = 0
        self._control = None
        self.proxy.listeners.append(self._notify)

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 10.0) -> "ThreadedProxy":
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.proxy.start())
            except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name=f"mqtt-proxy-{id(self):x}", daemon=True)
        self._thread.start()
        if not started.wait(timeout):
            raise ProxyError(f"proxy thread did not start within {timeout:g}s")
        if failure:
            raise failure[0]
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close every connection and the listener, then end the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        if self._control is not None:
            self._control.stop()
            self._control = None
        try:
            asyncio.run_coroutine_threadsafe(self.proxy.close(), loop).result(timeout)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)

    def __enter__(self) -> "ThreadedProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def serve_control(self, listen: str = "127.0.0.1:0"):
        """Start the HTTP control API (harness.proxy.control) for this proxy; it stops with the proxy."""
        from harness.proxy.control import ControlServer

        if self._control is None:
            self._control = ControlServer(self.proxy, self._loop, listen).start()
        return self._control

    def call(self, fn: Callable, *args, **kwargs):
        """Run fn(*args, **kwargs) on the proxy's loop and return its result (exceptions propagate)."""
        if threading.current_thread() is self._thread:
            return fn(*args, **kwargs)

        async def run():
            return fn(*args, **kwargs)
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(_CALL_TIMEOUT)

    # ------------------------------------------------------------------ the Proxy's verbs
    @property
    def url(self) -> str:
        return self.proxy.url

    @property
    def address(self) -> tuple[str, int]:
        return self.proxy.address

    @property
    def connections(self) -> list[Connection]:
        return self.call(lambda: list(self.proxy.connections))

    @property
    def tap(self):
        return self.proxy.tap

    @property
    def events(self) -> list:
        return self.call(lambda: list(self.proxy.events))

    @property
    def rules(self) -> list:
        return self.call(lambda: list(self.proxy.rules))

    @property
    def faults(self) -> dict:
        return self.call(lambda: dict(self.proxy.faults))

    def add_fault(self, fault):
        return self.call(self.proxy.add_fault, fault)

    def remove_fault(self, name: str):
        return self.call(self.proxy.remove_fault, name)

    def heal(self) -> list[str]:
        return self.call(self.proxy.heal)

    def add_rule(self, rule):
        return self.call(self.proxy.add_rule, rule)

    def remove_rule(self, name: str):
        return self.call(self.proxy.remove_rule, name)

    def clear_rules(self) -> None:
        self.call(self.proxy.clear_rules)

    def held(self, hold: str | None = None) -> list:
        return self.call(self.proxy.held, hold)

    def release(self, hold: str, count: int | None = None) -> int:
        return self.call(self.proxy.release, hold, count)

    def connection(self, conn_id: int | None = None, client_id: str | None = None) -> Connection:
        return self.call(self.proxy.connection, conn_id, client_id)

    def close_connection(self, conn_id: int, reset: bool = False) -> None:
        self.call(self.proxy.close_connection, conn_id, reset)

    def write_pcap(self, path: str | Path, connections: list[int] | None = None,
                   server_port: int | None = None) -> Path:
        if self._thread is not None and self._thread.is_alive():
            return self.call(self.proxy.write_pcap, path, connections, server_port)
        return self.proxy.write_pcap(path, connections, server_port)

    # ------------------------------------------------------------------ waiting
    def _notify(self) -> None:
        with self._cond:
            self._seq += 1
            self._cond.notify_all()

    def wait_until(self, predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition"):
        """Block until predicate() (run on the proxy's loop after each proxy event) is truthy; return it."""
        deadline = time.monotonic() + timeout
        self.call(self._watch, 1)
        try:
            while True:
                with self._cond:
                    seen = self._seq
                value = self.call(predicate)
                if value:
                    return value
                with self._cond:
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._cond.wait_for(lambda: self._seq != seen, left):
                        events = self.call(lambda: self.proxy.events[-5:])
                        raise ProxyError(f"proxy: no {what} within {timeout:g}s; recent events: "
                                         + "; ".join(f"c{e.connection} {e.kind}: {e.detail}" for e in events))
        finally:
            self.call(self._watch, -1)

    def _watch(self, step: int) -> None:
        self.proxy.watch_data += step

    def wait_connection(self, count: int = 1, timeout: float = 10.0) -> Connection:
        """Block until `count` connections are set up; return the count-th."""
        def ready():
            done = [c for c in self.proxy.connections if c.ready_at is not None]
            return done[count - 1] if len(done) >= count else None
        return self.wait_until(ready, timeout, f"{count} connection(s)")

    def wait_held(self, hold: str, count: int = 1, timeout: float = 10.0) -> list:
        """Block until at least `count` packets are held under `hold`."""
        return self.wait_until(lambda: len(self.proxy.held(hold)) >= count and self.proxy.held(hold),
                               timeout, f"{count} packet(s) held under {hold!r}")

    def wait_closed(self, conn_id: int, timeout: float = 10.0) -> Connection:
        return self.wait_until(lambda: (c := self.proxy.connection(conn_id)) and not c.is_open and c,
                               timeout, f"close of connection {conn_id}")

    async def wait_until_async(self, predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition"):
        return await asyncio.to_thread(self.wait_until, predicate, timeout, what)

    async def wait_connection_async(self, count: int = 1, timeout: float = 10.0) -> Connection:
        return await asyncio.to_thread(self.wait_connection, count, timeout)

    async def wait_held_async(self, hold: str, count: int = 1, timeout: float = 10.0) -> list:
        return await asyncio.to_thread(self.wait_held, hold, count, timeout)

    async def wait_closed_async(self, conn_id: int, timeout: float = 10.0) -> Connection:
        return await asyncio.to_thread(self.wait_closed, conn_id, timeout)
