"""The native forwarder (forward.c): built with the system C compiler on first use, run through ctypes.

A proxy with nothing to decode or record (no rules, no faults, no tap) hands each connection's two sockets
to mh_forward() in a thread of their own; the loop runs in C with the GIL released. The shared library is
cached per source hash under $XDG_CACHE_HOME/mqtt-harness (or ~/.cache/mqtt-harness), so a second run only
loads it. Without a compiler the proxy keeps its Python forwarder and says why (``unavailable()``).

  python -m harness.proxy.native        build (or find) the library and print its path
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from harness.toolchain import c_compiler

SOURCE = Path(__file__).with_name("forward.c")
CC_ENV = "MQTT_HARNESS_CC"  # the compiler to use (default: cc, gcc or clang, whichever is found first)
ACK_DELAY_US = 1000  # each read is quick-ACKed at the first wake-up this long after it (see forward.c); 0 = every read at once, -1 = kernel's way
CLIENT_CLOSED, BROKER_CLOSED, CLIENT_FAILED, BROKER_FAILED, STOPPED, SETUP_FAILED = range(1, 7)
_REASONS = {CLIENT_CLOSED: "client closed the connection", BROKER_CLOSED: "broker closed the connection",
            CLIENT_FAILED: "client socket error", BROKER_FAILED: "broker socket error",
            STOPPED: "proxy shut down", SETUP_FAILED: "native forwarder could not start"}

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_why_not: str | None = None


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mqtt-harness"


def _build() -> ctypes.CDLL:
    """Compile forward.c into the cache (atomically: concurrent workers may race) and load it."""
    source = SOURCE.read_bytes()
    target = cache_dir() / f"forward-{hashlib.sha256(source).hexdigest()[:16]}.so"
    if not target.exists():
        named = os.environ.get(CC_ENV)
        cc = c_compiler(named)
        if cc is None:
            raise RuntimeError(f"{CC_ENV}={named} is not an executable" if named else
                               "no C compiler found (install gcc, or set MQTT_HARNESS_CC)")
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            done = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", tmp, str(SOURCE)],
                                  capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                raise RuntimeError(f"{cc} could not build {SOURCE.name}: {done.stderr.strip()[-400:]}")
            os.replace(tmp, target)
            for old in target.parent.glob("forward-*.so"):  # builds of earlier sources; unlinking is safe
                if old != target:                           # even while another process has one loaded
                    old.unlink(missing_ok=True)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(target))
    lib.mh_forward.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                               ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_int)]
    lib.mh_forward.restype = ctypes.c_int
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded library, building it once per process; None (see unavailable()) when it cannot be built."""
    global _lib, _why_not
    with _lock:
        if _lib is None and _why_not is None:
            try:
                _lib = _build()
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                _why_not = str(exc)
        return _lib


def unavailable() -> str | None:
    """Why the native forwarder cannot run here, or None when it can."""
    return None if library() is not None else _why_not


def forward(client_fd: int, broker_fd: int, stop_fd: int, ack_delay_us: int = ACK_DELAY_US) -> tuple[int, str, list[int]]:
    """Forward until one end closes or stop_fd becomes readable: (result code, reason, [bytes up, bytes down]).
    Blocks; the GIL is released meanwhile. The sockets stay open: closing them is the caller's."""
    lib = library()
    if lib is None:
        raise RuntimeError(f"the native forwarder is not available: {_why_not}")
    moved = (ctypes.c_uint64 * 2)()
    err = ctypes.c_int(0)
    code = lib.mh_forward(client_fd, broker_fd, stop_fd, ack_delay_us, moved, ctypes.byref(err))
    reason = _REASONS.get(code, f"native forwarder returned {code}")
    if err.value and code in (CLIENT_FAILED, BROKER_FAILED, SETUP_FAILED):
        reason += f": {os.strerror(err.value)}"
    return code, reason, [moved[0], moved[1]]


def main() -> int:
    lib = library()
    if lib is None:
        print(f"native forwarder unavailable: {_why_not}", file=sys.stderr)
        return 1
    print(lib._name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
