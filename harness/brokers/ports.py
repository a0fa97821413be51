"""Free TCP ports on the loopback that no other harness process (e.g. another pytest-xdist worker) holds.

The kernel picks a free port (bind to port 0); a reservation file then keeps other harness processes off it in the
window before the broker binds it. Reservations belong to a process and go stale when it dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Iterable, Iterator

from harness.brokers.broker import BrokerError
from harness.brokers.reaper import is_running, state_dir, this_process

MAX_ATTEMPTS = 200


def _registry(state: str | os.PathLike | None) -> Path:
    path = state_dir(state) / "ports"
    path.mkdir(exist_ok=True)
    return path


@contextlib.contextmanager
def _locked(registry: Path) -> Iterator[None]:
    with open(registry / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _held(entry: Path) -> bool:
    """Is this reservation still owned by a live process?"""
    try:
        owner = json.loads(entry.read_text())
        return is_running(owner["pid"], owner["start"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def reserve_ports(count: int, *, host: str = "127.0.0.1", state: str | os.PathLike | None = None) -> list[int]:
    """`count` distinct free TCP ports on `host`, reserved for this process until release_ports()."""
    registry = _registry(state)
    pid, started = this_process()
    owner = json.dumps({"pid": pid, "start": started})
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    ports: list[int] = []
    probes: list[socket.socket] = []
    with _locked(registry):
        for entry in registry.iterdir():
            if entry.name.isdigit() and not _held(entry):  # owner died: drop it, so the registry stays small
                entry.unlink(missing_ok=True)
        try:
            for _ in range(MAX_ATTEMPTS):
                if len(ports) == count:
                    break
                # Keep each probe socket bound until we are done, so the kernel cannot hand out the same port twice.
                probe = socket.socket(family, socket.SOCK_STREAM)
                probes.append(probe)
                probe.bind((host, 0))
                port = probe.getsockname()[1]
                entry = registry / str(port)
                if entry.exists():
                    continue
                entry.write_text(owner)
                ports.append(port)
            else:
                raise BrokerError(f"could not find {count} free ports on {host} in {MAX_ATTEMPTS} attempts; "
                                  f"stale reservations? see {registry}")
        finally:
            for probe in probes:
                probe.close()
    return ports


def release_ports(ports: Iterable[int], *, state: str | os.PathLike | None = None) -> None:
    """Drop this process's reservations of `ports` (a broker that stopped no longer needs them)."""
    registry = _registry(state)
    pid, _ = this_process()
    with _locked(registry):
        for port in ports:
            entry = registry / str(port)
            with contextlib.suppress(OSError, ValueError, KeyError):
                if json.loads(entry.read_text())["pid"] == pid:
                    entry.unlink()


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Can a server listen on `port` now? (SO_REUSEADDR, as servers do, so TIME_WAIT leftovers do not count.)"""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(1)
        except OSError:
            return False
    return True
