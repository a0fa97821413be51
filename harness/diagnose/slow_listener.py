"""A TCP listener whose connects are really slow, or never complete: the -1002 reproduction without netem.

A proxy cannot delay a TCP handshake (the kernel completes it before accept), so SlowListener keeps its accept
queue full instead: it listens with a backlog of 0 and parks one connection of its own in the queue, never
accepted. The kernel then drops every client SYN (it counts them as ListenOverflows in /proc/net/netstat) and
the client retransmits after its initial retransmission timeout, 1 s on Linux. Nothing is faked: the client's
connect() really takes that long.

- mode "slow": once a SYN was dropped, the filler is accepted (making room), so the retransmitted SYN gets
  through; that connection is relayed to `upstream` (e.g. a TLS mosquitto listener) byte for byte. The queue is
  then filled again for the next client.
- mode "blackhole": the queue stays full; connects time out (a firewall that drops packets).

Runs in threads, so it serves clients of any event loop in the same process.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time

POLL = 0.002  # seconds between looks at the overflow counter
_NETSTAT = "/proc/net/netstat"


def listen_overflows() -> int:
    """TcpExt ListenOverflows of this network namespace: SYNs dropped because an accept queue was full."""
    with open(_NETSTAT) as f:
        lines = f.read().splitlines()
    for head, values in zip(lines[::2], lines[1::2]):
        if head.startswith("TcpExt:"):
            return int(dict(zip(head.split()[1:], values.split()[1:]))["ListenOverflows"])
    raise RuntimeError(f"no TcpExt ListenOverflows in {_NETSTAT}")


def accept_queue(sock: socket.socket) -> tuple[int, int]:
    """(connections waiting in the accept queue, its maximum) of a listening socket, from TCP_INFO
    (tcpi_unacked / tcpi_sacked on a listener)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    values = struct.unpack("8B24I", info[:104])
    return values[8 + 4], values[8 + 5]


class SlowListener:
    def __init__(self, upstream: tuple[str, int] | None = None, *, mode: str = "slow", host: str = "127.0.0.1"):
        if mode not in ("slow", "blackhole"):
            raise ValueError("mode is 'slow' or 'blackhole'")
        if mode == "slow" and upstream is None:
            raise ValueError("a slow listener relays to an upstream (host, port)")
        self.upstream = upstream
        self.mode = mode
        self.host = host
        self.port: int | None = None
        self.accepted: list[float] = []  # monotonic times client connections were accepted
        self.releases = 0
        self._listener: socket.socket | None = None
        self._fillers: list[socket.socket] = []
        self._open: list[socket.socket] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._armed = threading.Event()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> SlowListener:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        sock.listen(0)
        self._listener = sock
        self.port = sock.getsockname()[1]
        thread = threading.Thread(target=self._run, name=f"slow-listener-{self.port}", daemon=True)
        thread.start()
        self._threads.append(thread)
        self.wait_armed(10)
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            for s in self._fillers + self._open + ([self._listener] if self._listener else []):
                with contextlib.suppress(OSError):
                    s.close()
            self._fillers.clear()
            self._open.clear()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> SlowListener:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def url(self, scheme: str = "mqtts") -> str:
        return f"{scheme}://{self.host}:{self.port}"

    # ------------------------------------------------------------------ queue
    def wait_armed(self, timeout: float) -> None:
        """Wait until the queue is full again and the listener waits for a dropped SYN (between two clients)."""
        if not self._armed.wait(timeout):
            raise TimeoutError(f"slow listener on port {self.port} not re-armed within {timeout:g}s")

    def _fill(self) -> None:
        """Park one connection of ours in the accept queue, so that it is full (backlog 0 holds one). A client
        that got in first (the queue had room) is served instead while the filler waits."""
        filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        filler.setblocking(False)
        filler.connect_ex((self.host, self.port))
        with self._lock:
            self._fillers.append(filler)
        deadline = time.monotonic() + 30
        while not self._stop.is_set():
            _, done, _ = select.select([], [filler], [], 0.05)
            if done and filler.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"cannot fill the accept queue of port {self.port}")
            ready, _, _ = select.select([self._listener], [], [], 0)
            if ready:  # someone else's connection holds the slot: serve it, the filler's retransmit comes later
                conn, _peer = self._listener.accept()
                self._serve(conn)
        if self._stop.is_set():
            return
        queued, maximum = accept_queue(self._listener)
        if queued <= maximum:
            raise RuntimeError(f"accept queue not full after filling ({queued} queued, maximum {maximum})")

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._fill()
                if self.mode == "blackhole":
                    self._armed.set()
                    self._stop.wait()
                    return
                base = listen_overflows()
                self._armed.set()
                while not self._stop.is_set() and listen_overflows() == base:
                    # the kernel announces a dropped SYN only in this counter: poll it, stoppable
                    self._stop.wait(POLL)
                self._armed.clear()
                if self._stop.is_set():
                    return
                self._release_and_serve()
        except OSError:
            if not self._stop.is_set():
                raise

    def _release_and_serve(self) -> None:
        """Accept our filler (making room), then the first client connection that arrives."""
        self.releases += 1
        with self._lock:
            filler_ports = {f.getsockname()[1] for f in self._fillers}
        deadline = time.monotonic() + 10  # the retransmitted SYN comes ~1 s after the first
        while not self._stop.is_set() and time.monotonic() < deadline:
            ready, _, _ = select.select([self._listener], [], [], 0.05)
            if not ready:
                continue
            conn, peer = self._listener.accept()
            if peer[1] in filler_ports:  # our own filler, now accepted: it made room for the client
                conn.close()
                continue
            self._serve(conn)
            break
        with self._lock:
            for f in self._fillers:
                with contextlib.suppress(OSError):
                    f.close()
            self._fillers.clear()

    def _serve(self, conn: socket.socket) -> None:
        self.accepted.append(time.monotonic())
        t = threading.Thread(target=self._relay, args=(conn,), daemon=True, name=f"slow-relay-{self.port}")
        t.start()
        self._threads.append(t)

    # ------------------------------------------------------------------ relay
    def _relay(self, conn: socket.socket) -> None:
        try:
            up = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            conn.close()
            return
        up.settimeout(None)
        for s in (conn, up):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._open += [conn, up]
        pump = threading.Thread(target=_pump, args=(up, conn), daemon=True, name=f"slow-relay-{self.port}")
        pump.start()
        _pump(conn, up)
        pump.join()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
            # ACK at once, as the client itself does (see runner._quick_ack): a relay that delays its ACKs would
            # add mosquitto's ~40 ms Nagle stall that the client avoids.
            with contextlib.suppress(OSError, AttributeError):
                src.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
