"""The device half's cost: line parsing over a pty, request round trips to the virtual device, the suite's wall time.

Three parts, in one run, the readers taking turns within each rep (the order rotates per rep), so every ratio
compares measurements taken moments apart:

  parse    N mixed lines (EVT lines with JSON bodies, made by the virtual device's own firmware core, and plain
           ESP-IDF log lines, 1:1) pushed by a writer thread into a fresh pty; lines/s until the reader has the
           last one. Readers:
             harness-dut       harness.device.serial_driver.Dut (reader thread + sans-IO core), after its
                               handshake (answered by the same firmware core), waits with expect_event(seq=last)
             harness-core      DeviceProtocol.receive_data() fed from pyserial read(in_waiting) in one thread
             pytest-embedded   pytest-embedded-serial's SerialDut (DutFactory.create(embedded_services="serial")),
                               one dut.expect(EVT regex) per EVT line, each body json.loads()ed
             pyserial-readline serial.readline() per line (pyserial's own line reading)
             pyserial-read     read(in_waiting) + bytes.split(b"\\n"): the floor, no parsing at all
  latency  one virtual device process (harness.device.virtual.spawn); PING round trips: our Dut.ping() against
           pytest-embedded's dut.write("@@1 <id> PING {}") + dut.expect(rb"@@1 <id> OK"), p50/p95/p99
  suite    .venv/bin/pytest -q suites/device --dut virtual --broker mosquitto:process -n auto (and -n 0), timed
           as a subprocess (skipped with --quick)

  python -m bench.device [--quick] [--reps N] [--lines N] [--pings N] [--skip parse,latency,suite] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
import tty
from pathlib import Path

from bench import perflab, report

PARSERS = ("harness-dut", "harness-core", "pytest-embedded", "pyserial-readline", "pyserial-read")
FULL_LINES, QUICK_LINES = 10_000, 4_000
FULL_PINGS, QUICK_PINGS, PING_WARMUP = 500, 150, 20
BAUD = 115200
UART_BYTES_S = BAUD / 10  # 8N1: what a real 115200-baud UART can carry at most
PARSE_TIMEOUT = 300.0
SUITE_TARGET_S = 90.0
SUITE_TIMEOUT = 900.0
SUITE_MODES = ("auto", "0")
EVT_RE = re.compile(rb"@@1 - EVT (\{[^\n]*\})\r?\n")


def _suite_cmd(workers: str) -> list[str]:
    return [str(perflab.REPO / ".venv" / "bin" / "pytest"), "-q", "suites/device", "--dut", "virtual",
            "--broker", "mosquitto:process", "-n", workers]


class _Stop(Exception):
    """SIGTERM: unwind like Ctrl-C so every finally block closes its pty, device and Dut."""


def _on_sigterm(_signum, _frame):
    raise _Stop("SIGTERM")


# ------------------------------------------------------------------------------------------ the stream

def make_stream(n: int):
    """(boot bytes, the N lines as one bytes object, last EVT seq, EVT count, firmware core): lines as the
    virtual device prints them, built by its firmware core (harness.device.virtual.firmware)."""
    from harness.device.virtual import espmqtt
    from harness.device.virtual.firmware import Firmware

    fw = Firmware(mac=bytes((0x24, 0x0A, 0xC4, 0, 0, 1)))
    fw.boot(0)
    boot = b"".join(fw.take_output()[0])
    lines: list[bytes] = []
    payload = bytes(range(64))
    evts = 0
    for i in range(n - 1):  # then one last EVT: the readers stop when they have it
        now = 1000 + i
        if i % 2 == 0:
            if i % 4 == 0:
                ev = espmqtt.Event("MQTT_EVENT_PUBLISHED", now, "3.1.1", msg_id=i % 65535 + 1)
            else:
                ev = espmqtt.Event("MQTT_EVENT_DATA", now, "3.1.1", msg_id=i % 65535 + 1, topic=b"bench/t/1",
                                   data=payload, total_data_len=len(payload), qos=1)
            fw._event(ev)  # noqa: SLF001 - the firmware's own EVT rendering, so the lines are the real ones
            evts += 1
        else:
            fw._log("I" if i % 3 else "W", "mqtt_client" if i % 3 else "outbox",  # noqa: SLF001
                    f"bench log line {i}: sent publish data to broker, msg_id={i % 65535 + 1}", now)
        lines += fw.take_output()[0]
    fw._event(espmqtt.Event("MQTT_EVENT_PUBLISHED", 1000 + n, "3.1.1", msg_id=1))  # noqa: SLF001
    lines += fw.take_output()[0]
    evts += 1
    assert len(lines) == n, (len(lines), n)  # one line per event or log call (the log level lets I and W through)
    return boot, b"".join(lines), fw.seq, evts, len(lines), fw


def _hello_firmware():
    """A booted firmware core that answers the harness-dut reader's HELLO (its banner lines are not sent)."""
    from harness.device.virtual.firmware import Firmware

    fw = Firmware(mac=bytes((0x24, 0x0A, 0xC4, 0, 0, 1)))
    fw.boot(0)
    fw.take_output()
    return fw


class Pty:
    """A fresh pseudo-terminal in raw mode at 115200 (as the virtual device sets it up); closed on exit."""

    def __init__(self):
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)

    def close(self):
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Writer(threading.Thread):
    """Writes the boot lines, answers HELLOs through the firmware core (for harness-dut), then on go() writes
    the stream as fast as the pty takes it (blocking writes: the reader sets the pace)."""

    def __init__(self, pty: Pty, boot: bytes, stream: bytes, fw, serve_hello: bool):
        super().__init__(daemon=True, name="bench-writer")
        self.pty, self.boot, self.stream, self.fw, self.serve_hello = pty, boot, stream, fw, serve_hello
        self._go = threading.Event()
        self._halt = threading.Event()
        self._started = threading.Event()  # set once t0 is taken, or when the thread ends without writing
        self.t0: float | None = None
        self.t_end: float | None = None
        self.error: BaseException | None = None

    def go(self) -> float:
        self._go.set()
        self._started.wait(timeout=30)
        return self.t0 or time.monotonic()

    def stop(self):
        self._halt.set()
        self._go.set()

    def run(self):
        try:
            fd = self.pty.master
            os.write(fd, self.boot)
            while not self._go.is_set():  # answer HELLOs while waiting
                r, _, _ = select.select([fd], [], [], 0.02)
                if r:
                    data = os.read(fd, 65536)
                    if self.serve_hello:
                        self.fw.feed(data, 500)
                        out = b"".join(self.fw.take_output()[0])
                        if out:
                            os.write(fd, out)
            if self._halt.is_set():
                return
            view = memoryview(self.stream)
            self.t0 = time.monotonic()
            self._started.set()
            off = 0
            while off < len(view) and not self._halt.is_set():
                off += os.write(fd, view[off:off + 65536])
            self.t_end = time.monotonic()
        except OSError as exc:  # the pty was closed under us (Ctrl-C)
            self.error = exc
        finally:
            self._started.set()  # go() must not wait for a start that will not come


# --------------------------------------------------------------------------------------------- readers

def _read_harness_dut(pty: Pty, writer: Writer, last: int, **_) -> dict:
    from harness.device.serial_driver import Dut

    with Dut.open(pty.path, baud=BAUD, handshake_timeout=10) as dut:
        start_events, start_log = len(dut.events), len(dut.log)
        t0 = writer.go()
        dut.expect_event(None, seq=last, timeout=PARSE_TIMEOUT)
        t1 = time.monotonic()
        return {"t0": t0, "t1": t1, "events": len(dut.events) - start_events, "log": len(dut.log) - start_log,
                "problems": len(dut.problems)}


def _read_harness_core(pty: Pty, writer: Writer, last: int, **_) -> dict:
    from harness.device import link
    from harness.device.protocol import DeviceProtocol, Event, LogLine

    port = link.open_port(pty.path, BAUD)
    try:
        core = DeviceProtocol()
        t0 = writer.go()
        events = logs = 0
        deadline = t0 + PARSE_TIMEOUT
        done = False
        while not done:
            data = port.read(port.in_waiting or 1)
            for item in core.receive_data(data, time.time()):
                if isinstance(item, Event):
                    events += 1
                    if item.seq == last:
                        done = True
                elif isinstance(item, LogLine):
                    logs += 1
            if time.monotonic() > deadline:
                raise TimeoutError("harness-core: the last EVT did not arrive")
        t1 = time.monotonic()
        return {"t0": t0, "t1": t1, "events": events, "log": logs}
    finally:
        port.close()


def _read_pyserial_readline(pty: Pty, writer: Writer, last: int, n_lines: int, **_) -> dict:
    import serial

    port = serial.serial_for_url(pty.path, baudrate=BAUD, timeout=0.05)
    try:
        end = b'"seq":%d,' % last
        t0 = writer.go()
        count = 0
        deadline = t0 + PARSE_TIMEOUT
        while True:
            line = port.readline()
            if line.endswith(b"\n"):
                count += 1
                if count >= n_lines and end in line:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("pyserial-readline: the last line did not arrive")
        return {"t0": t0, "t1": time.monotonic(), "lines": count}
    finally:
        port.close()


def _read_pyserial_read(pty: Pty, writer: Writer, last: int, n_lines: int, **_) -> dict:
    import serial

    port = serial.serial_for_url(pty.path, baudrate=BAUD, timeout=0.05)
    try:
        end = b'"seq":%d,' % last
        t0 = writer.go()
        count, rest = 0, b""
        deadline = t0 + PARSE_TIMEOUT
        while True:
            data = port.read(port.in_waiting or 1)
            if not data:
                if time.monotonic() > deadline:
                    raise TimeoutError("pyserial-read: the last line did not arrive")
                continue
            parts = (rest + data).split(b"\n")
            rest = parts.pop()
            count += len(parts)
            if count >= n_lines and parts and end in parts[-1]:
                break
        return {"t0": t0, "t1": time.monotonic(), "lines": count}
    finally:
        port.close()


_DUT_FOLDERS = itertools.count()


class PytestEmbedded:
    """pytest-embedded's DutFactory outside pytest: its MessageQueueManager (what its session fixture starts) and
    the fixture cache DutFactory.create reads. The listener process it spawns prints every line to stdout: that
    goes to a file in the run folder. close() is DutFactory.close() + manager.shutdown()."""

    def __init__(self, logdir: Path):
        from pytest_embedded import plugin
        from pytest_embedded.log import MessageQueueManager

        self.logdir = logdir
        logdir.mkdir(parents=True, exist_ok=True)
        self.manager = MessageQueueManager()
        self.manager.start()
        plugin._MP_MANAGER = self.manager  # noqa: SLF001 - what its _mp_manager session fixture sets
        self.duts = 0

    def create(self, path: str):
        from pytest_embedded.dut_factory import DutFactory, set_parametrized_fixtures_cache
        from pytest_embedded.utils import Meta

        # A folder per Dut: after DutFactory.close() the next Dut is custom-dut-0 again, and its pexpect reads
        # that log file from the start, so in a shared folder it would match the previous Dut's lines.
        folder = self.logdir / f"dut-{next(_DUT_FOLDERS)}"
        folder.mkdir(parents=True, exist_ok=True)
        set_parametrized_fixtures_cache({"_meta": Meta(str(folder), {}, {}), "_services": ["base", "serial"],
                                         "test_case_name": "bench-device"})
        out = open(folder / "listener-stdout.txt", "wb")  # noqa: SIM115
        saved = os.dup(1)
        sys.stdout.flush()
        try:
            os.dup2(out.fileno(), 1)  # the listener process inherits fd 1 when it starts
            dut = DutFactory.create(embedded_services="serial", port=path, baud=BAUD)
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
            out.close()
        self.duts += 1
        return dut

    @staticmethod
    def close_duts():
        from pytest_embedded.dut_factory import DutFactory

        DutFactory.close()

    def close(self):
        with contextlib.suppress(Exception):
            self.close_duts()
        with contextlib.suppress(Exception):
            self.manager.shutdown()


def _read_pytest_embedded(pty: Pty, writer: Writer, last: int, evts: int, pe: PytestEmbedded, **_) -> dict:
    try:
        dut = pe.create(pty.path)
        os.write(pty.master, b"I (1) bench: sync\n")
        dut.expect(re.compile(rb"bench: sync"), timeout=30)  # the listener process is up and passing lines on
        t0 = writer.go()
        got = 0
        body = None
        deadline = t0 + PARSE_TIMEOUT
        for _ in range(evts):
            m = dut.expect(EVT_RE, timeout=max(1.0, deadline - time.monotonic()))
            body = json.loads(m.group(1))
            got += 1
        t1 = time.monotonic()
        if not body or body.get("seq") != last:
            raise RuntimeError(f"pytest-embedded: the last EVT was seq {body and body.get('seq')}, not {last}")
        return {"t0": t0, "t1": t1, "events": got}
    finally:
        pe.close_duts()


READERS = {"harness-dut": _read_harness_dut, "harness-core": _read_harness_core,
           "pytest-embedded": _read_pytest_embedded, "pyserial-readline": _read_pyserial_readline,
           "pyserial-read": _read_pyserial_read}


def run_parse(n: int, reps: int, parsers, pe_factory, echo=print) -> dict:
    boot, stream, last, evts, n_lines, _ = make_stream(n)
    rows = []
    pe = None
    try:
        for rep in range(reps):
            order = list(parsers[rep % len(parsers):]) + list(parsers[:rep % len(parsers)])
            for name in order:
                if name == "pytest-embedded" and pe is None:
                    pe = pe_factory()
                fw = _hello_firmware() if name == "harness-dut" else None
                with Pty() as pty:
                    writer = Writer(pty, boot, stream, fw, serve_hello=name == "harness-dut")
                    writer.start()
                    cpu0 = time.process_time()
                    try:
                        r = READERS[name](pty, writer, last=last, evts=evts, n_lines=n_lines, pe=pe)
                    finally:
                        writer.stop()
                        cpu = time.process_time() - cpu0
                    writer.join(5)
                elapsed = r["t1"] - r["t0"]
                row = {"rep": rep, "parser": name, "lines": n_lines, "bytes": len(stream), "elapsed_s": elapsed,
                       "lines_s": n_lines / elapsed, "mb_s": len(stream) / elapsed / 1e6,
                       "cpu_us_line": cpu * 1e6 / n_lines,  # this process, all threads, set-up included
                       **{k: v for k, v in r.items() if k not in ("t0", "t1")}}
                rows.append(row)
                echo(f"parse rep{rep} {name:18s} {report.fnum(row['lines_s'])} lines/s "
                     f"({row['mb_s']:.2f} MB/s, {elapsed:.3f} s)")
    finally:
        if pe is not None:
            pe.close()
    for r in rows:
        floor = next((f for f in rows if f["parser"] == "pyserial-read" and f["rep"] == r["rep"]), None)
        if floor:
            r["vs_floor"] = r["lines_s"] / floor["lines_s"]
        pe_row = next((f for f in rows if f["parser"] == "pytest-embedded" and f["rep"] == r["rep"]), None)
        if pe_row:
            r["vs_pytest_embedded"] = r["lines_s"] / pe_row["lines_s"]
    return {"config": {"lines": n_lines, "evt_lines": evts, "bytes": len(stream), "reps": reps,
                       "parsers": list(parsers), "mean_line_bytes": len(stream) / n_lines},
            "rows": rows}


# --------------------------------------------------------------------------------------------- latency

def _pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return None
    k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
    return xs[k]


def _ping_ours(path: str, n: int) -> list[float]:
    from harness.device.serial_driver import Dut

    with Dut.open(path, baud=BAUD) as dut:
        for _ in range(PING_WARMUP):
            dut.ping()
        out = []
        for _ in range(n):
            t = time.perf_counter()
            dut.ping()
            out.append(time.perf_counter() - t)
        return out


def _ping_pe(path: str, n: int, pe: PytestEmbedded, first_id: int) -> list[float]:
    try:
        dut = pe.create(path)
        ident = first_id
        out = []
        for i in range(PING_WARMUP + n):
            ident += 1
            t = time.perf_counter()
            dut.write(f"@@1 {ident} PING {{}}")
            dut.expect(re.compile(rb"@@1 %d OK " % ident), timeout=10)
            if i >= PING_WARMUP:
                out.append(time.perf_counter() - t)
        return out
    finally:
        pe.close_duts()


def run_latency(n: int, reps: int, pe_factory, echo=print) -> dict:
    from harness.device.virtual.spawn import spawn

    rows = []
    pe = None
    dev = spawn()
    try:
        for rep in range(reps):
            for name in (("harness-dut", "pytest-embedded") if rep % 2 == 0 else ("pytest-embedded", "harness-dut")):
                if name == "harness-dut":
                    xs = _ping_ours(dev.path, n)
                else:
                    if pe is None:
                        pe = pe_factory()
                    xs = _ping_pe(dev.path, n, pe, first_id=1_000_000 + rep * 100_000)
                row = {"rep": rep, "client": name, "n": len(xs), "p50_ms": _pct(xs, 50) * 1e3,
                       "p95_ms": _pct(xs, 95) * 1e3, "p99_ms": _pct(xs, 99) * 1e3, "max_ms": max(xs) * 1e3}
                rows.append(row)
                echo(f"latency rep{rep} {name:16s} p50 {row['p50_ms']:.3f} ms p95 {row['p95_ms']:.3f} ms "
                     f"p99 {row['p99_ms']:.3f} ms")
    finally:
        if pe is not None:
            pe.close()
        dev.stop()
    return {"config": {"pings": n, "warmup": PING_WARMUP, "reps": reps,
                       "device": "python -m harness.device.virtual (no bugs), one process for the whole part"},
            "rows": rows}


# ----------------------------------------------------------------------------------------------- suite

_SUMMARY = re.compile(r"(\d+) (passed|failed|error|errors|skipped|xfailed|xpassed)")


def run_suite(modes, run_dir: Path, echo=print) -> dict:
    rows = []
    for workers in modes:
        cmd = _suite_cmd(workers)
        log = run_dir / f"suite-n{workers}.log"
        with open(log, "wb") as out:
            t0 = time.monotonic()
            proc = subprocess.Popen(cmd, cwd=perflab.REPO, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                code = proc.wait(SUITE_TIMEOUT)
            except BaseException:  # Ctrl-C, SIGTERM or the timeout: its whole process group, by its PID
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
                raise
            wall = time.monotonic() - t0
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        counts = {k: int(v) for v, k in _SUMMARY.findall(tail[0])}
        row = {"workers": workers, "wall_s": wall, "exit": code, "summary": tail[0], "counts": counts,
               "cmd": " ".join(cmd[1:]), "log": str(log)}
        rows.append(row)
        echo(f"suite -n {workers}: {wall:.1f} s, exit {code}: {tail[0]}")
    return {"config": {"modes": list(modes), "target_s": SUITE_TARGET_S}, "rows": rows}


# ----------------------------------------------------------------------------------------------- output

def markdown(result: dict) -> str:
    out = []
    if "parse" in result:
        cfg, rows = result["parse"]["config"], result["parse"]["rows"]
        out += [f"## Line parsing over a pty ({cfg['lines']:,} lines, {cfg['evt_lines']:,} of them EVT, "
                f"{cfg['mean_line_bytes']:.0f} B a line on average; {cfg['reps']} rep(s))", "",
                "median (min–max) over reps; ratios are per rep. A real 115200-baud UART carries at most "
                f"{UART_BYTES_S / cfg['mean_line_bytes']:,.0f} of these lines/s; a USB-JTAG/CDC console far more.",
                "", "| reader | lines/s | MB/s | × pytest-embedded | ÷ pyserial-read floor | CPU µs/line |",
                "|---|---|---|---|---|---|"]
        for name in cfg["parsers"]:
            mine = [r for r in rows if r["parser"] == name]
            out.append(f"| {name} | {report.spread([r['lines_s'] for r in mine])} | "
                       f"{report.spread([r['mb_s'] for r in mine], 2)} | "
                       f"{report.spread([r.get('vs_pytest_embedded') for r in mine], 2)} | "
                       f"{report.spread([r.get('vs_floor') for r in mine], 3)} | "
                       f"{report.spread([r['cpu_us_line'] for r in mine], 1)} |")
        out.append("")
    if "latency" in result:
        cfg, rows = result["latency"]["config"], result["latency"]["rows"]
        out += [f"## PING round trip to the virtual device ({cfg['pings']} per rep after {cfg['warmup']} warm-up; "
                f"{cfg['reps']} rep(s))", "", "median (min–max) over reps of each rep's percentile", "",
                "| client | p50 ms | p95 ms | p99 ms | max ms |", "|---|---|---|---|---|"]
        for name in ("harness-dut", "pytest-embedded"):
            mine = [r for r in rows if r["client"] == name]
            out.append(f"| {name} | " + " | ".join(report.spread([r[k] for r in mine], 3)
                                                  for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms")) + " |")
        out.append("")
    if "suite" in result:
        rows = result["suite"]["rows"]
        out += ["## Device suite wall time (`pytest -q suites/device --dut virtual --broker mosquitto:process`)", "",
                "| -n | wall s | result | target |", "|---|---|---|---|"]
        for r in rows:
            target = (("met" if r["wall_s"] <= SUITE_TARGET_S and r["exit"] == 0 else "**NOT MET**")
                      + f" (≤ {SUITE_TARGET_S:.0f} s, no failures)") if r["workers"] == "auto" else "–"
            out.append(f"| {r['workers']} | {r['wall_s']:.1f} | {r['summary']} | {target} |")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help=f"{QUICK_LINES:,} lines, {QUICK_PINGS} pings, 1 rep, no suite run")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 3; 1 with --quick)")
    ap.add_argument("--lines", type=int, default=None, help=f"lines per parse measurement (default {FULL_LINES:,})")
    ap.add_argument("--pings", type=int, default=None, help=f"round trips per rep and client (default {FULL_PINGS})")
    ap.add_argument("--parsers", default=",".join(PARSERS), help="comma-separated readers for the parse part")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: parse, latency, suite")
    ap.add_argument("--suite-modes", default=",".join(SUITE_MODES), help="-n values for the suite part")
    ap.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON here")
    a = ap.parse_args(argv)
    reps = a.reps if a.reps is not None else (1 if a.quick else 3)
    n = a.lines or (QUICK_LINES if a.quick else FULL_LINES)
    pings = a.pings or (QUICK_PINGS if a.quick else FULL_PINGS)
    skip = {s for s in a.skip.split(",") if s}
    if a.quick:
        skip.add("suite")
    if skip - {"parse", "latency", "suite"}:
        raise SystemExit(f"--skip {a.skip!r}: parts are parse, latency, suite")
    parsers = [p for p in a.parsers.split(",") if p]
    if set(parsers) - set(PARSERS):
        raise SystemExit(f"--parsers: choose from {', '.join(PARSERS)}")
    if reps < 1 or n < 2 or pings < 1:
        raise SystemExit("--reps and --pings must be at least 1, --lines at least 2")

    signal.signal(signal.SIGTERM, _on_sigterm)
    run_dir = report.new_run_dir()

    def pe_factory():
        return PytestEmbedded(run_dir / "pytest-embedded")

    results: dict = {"environment": report.environment()}
    results["environment"]["packages"].update(_versions())
    if "parse" not in skip:
        results["parse"] = run_parse(n, reps, parsers, pe_factory)
    if "latency" not in skip:
        results["latency"] = run_latency(pings, reps, pe_factory)
    if "suite" not in skip:
        results["suite"] = run_suite([m for m in a.suite_modes.split(",") if m], run_dir)
    results["environment"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    env = results["environment"]
    md = (f"# mqtt-harness device benchmark, {env['time_utc']}\n\ncommit {env['commit']}; {env['cpus']} × "
          f"{env['cpu_model']}; load {' '.join(env['loadavg'])} → {' '.join(env['loadavg_end'])}; Python "
          f"{env['python']}; " + ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v) + "\n\n"
          + markdown(results))
    report.write(run_dir, results, md)
    if a.json:
        a.json.write_text(json.dumps(results, indent=1) + "\n")
    print("\n" + md + f"\nwritten to {run_dir}")
    return 0


def _versions() -> dict:
    from importlib import metadata

    out = {}
    for name in ("pyserial", "pytest-embedded", "pytest-embedded-serial", "pexpect"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


if __name__ == "__main__":  # the guard matters: pytest-embedded's listener is a multiprocessing 'spawn' child
    try:
        sys.exit(main())
    except (KeyboardInterrupt, _Stop):
        sys.exit(130)
