"""The virtual device process: the firmware core served on a real pseudo-terminal, its MQTT transports on
loopback sockets, one selector loop, time from time.monotonic().

stdout carries only serial port paths, one per line: the first once the pty exists, then one per SIGUSR1
("unplug and replug": the old pty goes away, a new one appears, the device powers on again). Diagnostics go
to stderr; the device log goes to the pty, as on a board. Exits 0 on SIGTERM/SIGINT and when the parent dies.
A record in harness.brokers.reaper's state dir (owner: the parent) lets a later run reap a device a crash left behind.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import selectors
import signal
import socket
import sys
import termios
import time
import tty
from dataclasses import dataclass, field

from harness.device.lines import DEFAULT_MAX_LINE
from harness.device.virtual import net as net_mod
from harness.device.virtual.firmware import Firmware
from harness.device.virtual.transport import Resolver

OUTPUT_LIMIT = 1 << 20  # console bytes kept while nobody reads the port; older lines are dropped like a full UART
PARENT_CHECK_S = 0.5
RECORD_NAME = "virtual-device"


@dataclass
class Options:
    bugs: frozenset[str] = frozenset()
    resolve: dict[str, str] = field(default_factory=dict)
    link: str | None = None
    mac: bytes | None = None
    max_line: int = DEFAULT_MAX_LINE


def default_mac(pid: int | None = None) -> bytes:
    """Espressif's OUI plus the low 24 bits of the pid: parallel devices differ."""
    pid = os.getpid() if pid is None else pid
    return bytes((0x24, 0x0A, 0xC4, (pid >> 16) & 0xFF, (pid >> 8) & 0xFF, pid & 0xFF))


class Server:
    def __init__(self, options: Options, *, stdout=None, stderr=None):
        self.opts = options
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.t0 = time.monotonic()
        self.sel = selectors.DefaultSelector()
        self.firmware = Firmware(mac=options.mac or default_mac(), bugs=options.bugs,
                                 resolver=Resolver(dict(options.resolve)), max_line=options.max_line,
                                 host_epoch_offset=time.time() - (time.monotonic() - self.t0))
        self.net = net_mod.Net(self.sel, self.firmware, clock_ms=self.now)
        self.master: int | None = None
        self.slave: int | None = None
        self.path: str | None = None
        self.out = bytearray()
        self.out_lines: list[bytes] = []
        self.dropped = 0
        self._stop = False
        self._replug = False
        self.ppid = os.getppid()
        self.record = None

    def now(self) -> int:
        return int((time.monotonic() - self.t0) * 1000)

    # ------------------------------------------------------------------ main loop

    def run(self) -> int:
        wake_r, wake_w = socket.socketpair()
        for s in (wake_r, wake_w):
            s.setblocking(False)
        old = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
        old_fd = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        self.sel.register(wake_r, selectors.EVENT_READ, "wake")
        try:
            self._register()
            self._open_pty()
            self._announce()
            self.firmware.boot(self.now())
            while not self._stop:
                self._flush_outputs()
                timeout = self._timeout()
                for key, mask in self.sel.select(timeout):
                    now = self.now()
                    if key.data == "wake":
                        with contextlib.suppress(BlockingIOError):
                            wake_r.recv(512)
                    elif key.data == "pty":
                        self._pty_ready(mask, now)
                    else:
                        self.net.ready(key, mask, now)
                    self._flush_outputs()
                now = self.now()
                self.net.check_timeouts(now)
                self.firmware.tick(now)
                if self._replug:
                    self._replug = False
                    self._do_replug()
                if os.getppid() != self.ppid:
                    self._stop = True  # the parent died: a device nobody drives is a leftover
            return 0
        finally:
            self.net.close_all()
            self._close_pty()
            if self.opts.link:
                with contextlib.suppress(OSError):
                    if os.path.islink(self.opts.link):
                        os.unlink(self.opts.link)
            self._unregister()
            signal.set_wakeup_fd(old_fd)
            for sig, handler in old.items():
                signal.signal(sig, handler)
            wake_r.close()
            wake_w.close()

    def _on_signal(self, signum, _frame) -> None:
        if signum == signal.SIGUSR1:
            self._replug = True
        else:
            self._stop = True

    def _timeout(self) -> float:
        now = self.now()
        deadlines = [d for d in (self.firmware.next_deadline(), self.net.next_deadline()) if d is not None]
        timeout = PARENT_CHECK_S
        if deadlines:
            timeout = min(timeout, max(0.0, (min(deadlines) - now) / 1000))
        if self._replug or self._stop:
            timeout = 0.0
        return timeout

    def _flush_outputs(self) -> None:
        now = self.now()
        for _ in range(100):  # acting on actions can produce more (a refused connect -> events, reconnect...)
            serial, actions = self.firmware.take_output()
            self._queue(serial)
            if not actions:
                break
            for action in actions:
                self.net.perform(action, now)
        self._write_serial()

    # ------------------------------------------------------------------ the serial port

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line editing: bytes pass as over a UART
        attrs = termios.tcgetattr(slave)
        attrs[4] = attrs[5] = termios.B115200
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        os.set_blocking(master, False)
        # Our own slave fd keeps the pty alive while the host closes and reopens the port.
        self.master, self.slave = master, slave
        self.path = os.ttyname(slave)
        self.sel.register(master, selectors.EVENT_READ, "pty")
        if self.opts.link:
            tmp = f"{self.opts.link}.{os.getpid()}.tmp"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            os.symlink(self.path, tmp)
            os.replace(tmp, self.opts.link)

    def _close_pty(self) -> None:
        if self.master is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(self.master)
            os.close(self.master)
        if self.slave is not None:
            os.close(self.slave)
        self.master = self.slave = None

    def _announce(self) -> None:
        try:
            self.stdout.write(self.path + "\n")
            self.stdout.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass

    def _do_replug(self) -> None:
        print(f"virtual device: replug ({self.path} goes away)", file=self.stderr, flush=True)
        self._close_pty()
        self.out.clear()  # what was still in the cable is lost
        self.out_lines.clear()
        self._open_pty()
        self._announce()
        self.firmware.boot(self.now(), "ESP_RST_POWERON")

    def _pty_ready(self, mask: int, now: int) -> None:
        if mask & selectors.EVENT_READ:
            try:
                data = os.read(self.master, 65536)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:  # EIO: cannot happen while we hold the slave; be safe anyway
                data = None
            if data:
                self.firmware.feed(data, now)
        if mask & selectors.EVENT_WRITE:
            self._write_serial()

    def _queue(self, lines: list[bytes]) -> None:
        self.out_lines.extend(lines)
        size = sum(map(len, self.out_lines)) + len(self.out)
        while size > OUTPUT_LIMIT and self.out_lines:
            size -= len(self.out_lines[0])
            self.dropped += len(self.out_lines.pop(0))

    def _write_serial(self) -> None:
        if self.master is None:
            return
        while self.out or self.out_lines:
            if not self.out:
                self.out += self.out_lines.pop(0)  # one line per write(): nothing can land inside it
            try:
                n = os.write(self.master, self.out)
            except BlockingIOError:
                break
            except OSError:
                self.out.clear()
                break
            del self.out[:n]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if (self.out or self.out_lines) else 0)
        if self.sel.get_key(self.master).events != events:
            self.sel.modify(self.master, events, "pty")

    # ------------------------------------------------------------------ reaper record

    def _register(self) -> None:
        try:
            from harness.brokers.reaper import TAG_ENV, Record, start_time, write_record
            owner_start = start_time(self.ppid)
            if owner_start is None:
                return
            ident = os.environ.get(TAG_ENV) or f"{RECORD_NAME}-{secrets.token_hex(4)}"
            self.record = Record(id=ident, name=RECORD_NAME, backend="process", owner_pid=self.ppid,
                                 owner_start=owner_start, pid=os.getpid(), start_time=start_time(os.getpid()),
                                 extra={"kind": "virtual-device"})
            write_record(self.record)
        except Exception as exc:  # reaping is a safety net; never a reason not to run
            print(f"virtual device: could not write a reaper record: {exc}", file=self.stderr, flush=True)
            self.record = None

    def _unregister(self) -> None:
        if self.record is not None:
            from harness.brokers.reaper import remove_record
            with contextlib.suppress(OSError):
                remove_record(self.record)
