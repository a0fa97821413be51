"""A loopback TCP server that hands each connection to `_handle` on its own thread: the base of the diagnosis
test endpoints (the ALPN gate, the scripted credentials broker). Subclasses set `host` and implement _handle."""

from __future__ import annotations

import socket
import threading


class ThreadedServer:
    host = "127.0.0.1"
    name = "mh-endpoint"

    def _listen(self) -> None:
        """Bind an ephemeral port and start accepting; sets `port`."""
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = getattr(self, "_threads", [])
        self._sock = socket.create_server((self.host, 0))
        self._sock.settimeout(0.1)  # the accept loop notices stop() within this
        self.port = self._sock.getsockname()[1]
        t = threading.Thread(target=self._accept_loop, daemon=True, name=f"{self.name}-{self.port}")
        t.start()
        self._threads.append(t)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
        sock = getattr(self, "_sock", None)
        if sock is not None:
            sock.close()
        for t in getattr(self, "_threads", []):
            t.join(timeout=5)

    def __exit__(self, *exc) -> None:
        self.stop()
