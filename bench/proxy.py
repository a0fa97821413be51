"""What our proxy costs: throughput and QoS 1 latency through it, next to direct, socat and the lab's forwarder.

One mosquitto (the perf lab's config on a free port). For every measurement, the path's forwarder is started
as its own process (so it has its own CPU, and no tap data carries over), waited for by connecting to it, and
stopped by PID right after:

  direct            the broker itself
  proxy             mqtt-harness proxy --listen 127.0.0.1:P --upstream 127.0.0.1:B   (as users run it: with
                    nothing to decode or record, the C forwarder)
  proxy-python      the same with --python-forwarder (the asyncio forwarder, no tap)
  proxy-tap         the same with --control 127.0.0.1:0 (the Python forwarder with the tap on, as the pytest
                    fixture and every proxy whose rules can change at runtime run)
  proxy-pcap        the same with --pcap FILE (tap on); the file is written when the proxy stops, and that time
                    is kept
  proxy-noqa        `proxy` with --no-quick-ack (delayed ACKs left to the kernel; not in the default set)
  socat             socat TCP-LISTEN:P,bind=127.0.0.1,reuseaddr,fork TCP:127.0.0.1:B
  socat-nodelay     the same with ,nodelay on both addresses (plain socat leaves Nagle on)
  asyncio-protocol  the perf lab's fwd_proxy.py --mode protocol (40 lines of asyncio.Protocol)

Throughput: the lab's bench_throughput.run_one (the client set-up of bench.throughput) against the path's
port. Latency: the lab's lat_client.py (paho) and bench/lat_harness.py (ours). Within a rep, the paths take
turns for each client/size/QoS in an order that rotates per rep; every ratio is taken within one rep.

  python -m bench.proxy [--quick] [--reps N] [--clients a,b] [--lat-clients a,b] [--paths a,b] [--qos 0,1]
                        [--sizes 64,16384]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from bench import lat_harness, perflab, report, throughput
from bench.mosquitto import Mosquitto
from harness.brokers.broker import BrokerError
from harness.brokers.ports import release_ports, reserve_ports
from harness.brokers.probe import wait_until_ready
from harness.brokers.reaper import is_running, start_time

DIRECT, PROXY, PYTHON, TAP, PCAP, NOQA, SOCAT, SOCAT_NODELAY, LAB = (
    "direct", "proxy", "proxy-python", "proxy-tap", "proxy-pcap", "proxy-noqa", "socat", "socat-nodelay",
    "asyncio-protocol")
PATHS = (DIRECT, PROXY, PYTHON, TAP, PCAP, SOCAT, SOCAT_NODELAY, LAB)  # the default set
KNOWN_PATHS = (*PATHS, NOQA)
DEFAULT_CLIENTS = ("mqtt-harness", "paho-thread")
DEFAULT_LAT_CLIENTS = ("mqtt-harness", "paho-thread", "paho-loop")
LAB_LAT_LIBS = ("paho-thread", "paho-loop", "gmqtt")  # what the lab's lat_client.py runs
QOS = (0, 1)
LAT_N, LAT_N_QUICK, LAT_WARMUP = 2000, 500, 100
LAT_TIMEOUT = 120.0
PIDFILE = "forwarder.pid"
PCAP_NAME = "proxy-pcap.pcap"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
PCAP_STOP_TIMEOUT = 600.0  # the proxy writes its pcap on the way out
ATTEMPTS = 5  # a process outside the harness's port registry may take the port before the forwarder binds it

# Targets (judged on the default proxy, as users run it): medians of same-rep ratios.
MIN_VS_DIRECT = 0.80
MIN_VS_SOCAT = 1.00
MAX_ADDED_P50_US = 100.0


def _argv(path: str, port: int | str, broker: int | str, run_dir: Path) -> list[str]:
    listen, up = f"127.0.0.1:{port}", f"127.0.0.1:{broker}"
    if path in (PROXY, PYTHON, TAP, PCAP, NOQA):
        cli = Path(sys.executable).with_name("mqtt-harness")
        if not cli.exists():
            raise SystemExit(f"{cli} not found: install the harness into this venv (pip install -e .)")
        extra = {PROXY: [], PYTHON: ["--python-forwarder"], TAP: ["--control", "127.0.0.1:0"],
                 PCAP: ["--pcap", str(run_dir / PCAP_NAME)],
                 NOQA: ["--no-quick-ack"]}[path]
        return [str(cli), "proxy", "--listen", listen, "--upstream", up, *extra]
    if path in (SOCAT, SOCAT_NODELAY):
        exe = shutil.which("socat")
        if exe is None:
            raise SystemExit("socat is not installed: apt-get install socat (or leave it out with --paths)")
        nodelay = ",nodelay" if path == SOCAT_NODELAY else ""
        return [exe, f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork{nodelay}", f"TCP:{up}{nodelay}"]
    if path == LAB:
        script = perflab.lab_dir() / "fwd_proxy.py"
        if not script.is_file():
            raise SystemExit(f"{script} not found; set PERF_LAB, or leave {LAB} out with --paths")
        return [sys.executable, str(script), "--listen", str(port), "--upstream", str(broker), "--mode", "protocol"]
    raise ValueError(path)


# ----------------------------------------------------------------------------------- forwarders

def reap(results: Path) -> None:
    """Stop forwarders left behind by runs that are gone (their pid file names pid, start time and owner)."""
    for pidfile in Path(results).glob(f"*/{PIDFILE}"):
        try:
            pid, start, owner, owner_start = map(int, pidfile.read_text().split())
        except (OSError, ValueError):
            continue
        if is_running(owner, owner_start):
            continue  # its run is still going
        if is_running(pid, start):  # the same process, not a reused PID
            _signal_group(pid, signal.SIGKILL)
        pidfile.unlink(missing_ok=True)


def _listens(pid: int, port: int) -> bool:
    """Does process `pid` hold the socket listening on 127.0.0.1:`port`? (Not just anyone who took the port.)"""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                return True
        except OSError:
            continue
    return False


class Forwarder:
    """One path's forwarder process for one measurement: `with Forwarder(...) as f: f.port, f.pid`.

    Leaving the block normally stops it with SIGTERM and records how long it took (`stop_s`: for proxy-pcap,
    the pcap write); leaving on an exception kills it. `direct` starts nothing (port = the broker's)."""

    def __init__(self, path: str, broker_port: int, run_dir: Path, log):
        self.path = path
        self.broker_port = broker_port
        self.run_dir = run_dir
        self.log = log
        self.pidfile = run_dir / PIDFILE
        self.proc: subprocess.Popen | None = None
        self.port = broker_port
        self.stop_s: float | None = None
        self.peak_rss_kb: int | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def __enter__(self) -> "Forwarder":
        if self.path == DIRECT:
            return self
        for _ in range(ATTEMPTS):
            self.port = reserve_ports(1)[0]  # kept from other harness processes until _stop()
            self.proc = subprocess.Popen(_argv(self.path, self.port, self.broker_port, self.run_dir),
                                         stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
            me = os.getpid()
            self.pidfile.write_text(f"{self.proc.pid} {start_time(self.proc.pid)} {me} {start_time(me)}\n")
            if self._wait_listening():
                return self
            self._stop(kill=True)
        raise SystemExit(f"{self.path} did not start listening after {ATTEMPTS} attempts; see {self.log.name}")

    def _wait_listening(self) -> bool:
        """Ready once a CONNACK comes back through the forwarder (harness.brokers.probe, as for brokers) and it is our
        process that listens on the port, not one that took it meanwhile."""
        proc = self.proc

        def pause(seconds: float) -> None:  # returns at once if the forwarder exits
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(seconds)

        try:
            wait_until_ready(f"mqtt://127.0.0.1:{self.port}", time.monotonic() + START_TIMEOUT, START_TIMEOUT,
                             name=self.path, log_tail=lambda: "", pause=pause,
                             exit_status=lambda: None if proc.poll() is None else f"exited ({proc.returncode})")
        except BrokerError:
            return False  # usually: the port was taken meanwhile
        return _listens(proc.pid, self.port)

    def __exit__(self, exc_type, *_) -> None:
        if self.proc is not None:
            self._stop(kill=exc_type is not None)

    def _stop(self, kill: bool) -> None:
        proc = self.proc
        self.peak_rss_kb = _peak_rss_kb(proc.pid)
        t0 = time.monotonic()
        _signal_group(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(PCAP_STOP_TIMEOUT if self.path == PCAP else STOP_TIMEOUT)
        except BaseException:  # it hangs, or Ctrl-C while a pcap is being written
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(STOP_TIMEOUT)
            raise
        finally:
            self.pidfile.unlink(missing_ok=True)
            release_ports([self.port])
        self.stop_s = time.monotonic() - t0

    def pcap_bytes(self) -> int | None:
        """Size of the pcap the proxy wrote (then deleted: it is only measured)."""
        path = self.run_dir / PCAP_NAME
        if self.path != PCAP or not path.exists():
            return None
        size = path.stat().st_size
        path.unlink()
        return size


def _signal_group(pid: int, sig: int) -> None:
    """Signal the forwarder's session (it was started in its own): socat's forked children too."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def _peak_rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


# ----------------------------------------------------------------------------------- measuring

def _latency(bt, lib: str, port: int, n: int, fwd: Forwarder, tag: str) -> dict:
    script = Path(lat_harness.__file__) if lib in lat_harness.LIBS else perflab.lab_dir() / "lat_client.py"
    cmd = [sys.executable, str(script), "--lib", lib, "--n", str(n), "--warmup", str(LAT_WARMUP),
           "--port", str(port), "--topic", f"perf/lat/{tag}"]
    cpu0 = bt.proc_cpu(fwd.pid) if fwd.pid else None
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=LAT_TIMEOUT, env=perflab.subprocess_env())
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {LAT_TIMEOUT:g}s"}
    cpu1 = bt.proc_cpu(fwd.pid) if fwd.pid else None
    lines = [line for line in p.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"error": (p.stderr.strip().splitlines() or [f"exit {p.returncode}, no output"])[-1]}
    r = json.loads(lines[-1])
    if cpu0 is not None and cpu1 is not None:
        r["proxy_cpu_s"] = round(cpu1 - cpu0, 3)
    return r


def run(sizes, qos_levels, clients, lat_clients, paths, reps: int, lat_n: int, run_dir: Path,
        idle: float = throughput.IDLE, timeout: float = throughput.TIMEOUT, echo=print) -> dict:
    """Measure every (rep, size, QoS, client, path) and (rep, latency client, path).

    Returns {"config", "broker", "commands", "rows", "latency"}; rows are the lab's dicts plus stop_s, pcap_bytes,
    fwd_peak_rss_kb; latency rows are lat_client's dicts plus kind, lib, path, rep, proxy_cpu_s (and the same three)."""
    bt = perflab.load("bench_throughput")
    os.environ.update(perflab.subprocess_env())  # the lab driver starts clients with our environment
    bt.PY = sys.executable
    reap(run_dir.parent)
    rows, lat_rows = [], []
    with Mosquitto(run_dir) as broker, open(run_dir / "proxy.jsonl", "a") as out, \
            open(run_dir / "forwarders.log", "ab") as fwd_log:
        echo(f"mosquitto pid {broker.pid} on 127.0.0.1:{broker.port}, config {broker.config_path}")
        args = SimpleNamespace(host="127.0.0.1", idle=idle, timeout=timeout, tmpdir=str(run_dir))

        def forwarder(path):
            return Forwarder(path, broker.port, run_dir, fwd_log)

        def keep(r, fwd):
            r.update(stop_s=round(fwd.stop_s, 3) if fwd.stop_s is not None else None,
                     pcap_bytes=fwd.pcap_bytes(), fwd_peak_rss_kb=fwd.peak_rss_kb)
            out.write(report.json_line(r))
            out.flush()

        for rep in range(reps):
            k = rep % len(paths)
            order = list(paths[k:]) + list(paths[:k])
            for size, n in sizes:
                for qos in qos_levels:
                    for cfg in clients:
                        for path in order:
                            bt.TP = str(throughput.HARNESS_SCRIPT if throughput._is_ours(cfg)
                                        else perflab.lab_dir() / "tp_client.py")
                            with forwarder(path) as fwd:
                                args.port, args.label = fwd.port, path
                                watch = {"broker": broker.pid, **({"proxy": fwd.pid} if fwd.pid else {})}
                                r = bt.run_one(args, cfg, qos, size, n, watch, rep)
                            keep(r, fwd)
                            rows.append(r)
                            echo(f"rep{rep} {cfg:14s} q{qos} {size:5d}B {path:16s} "
                                 f"{report.fnum(r.get('msgs_per_s'))} msgs/s lost={r.get('lost')} "
                                 f"proxy={r.get('proxy_cpu_util')} broker={r.get('broker_cpu_util')}"
                                 + (f" pcap written in {r['stop_s']:.1f}s" if path == PCAP else "")
                                 + (f" ERROR {r['error']}" if "error" in r else ""))
            for lib in lat_clients:
                for path in order:
                    with forwarder(path) as fwd:
                        r = _latency(bt, lib, fwd.port, lat_n, fwd, f"{lib}-{path}-r{rep}-{os.getpid()}")
                    r.update(kind="latency", lib=lib, path=path, rep=rep)
                    keep(r, fwd)
                    lat_rows.append(r)
                    echo(f"rep{rep} latency {lib:14s} {path:16s} p50={r.get('p50_us')}µs p99={r.get('p99_us')}µs "
                         f">10ms={r.get('over_10ms')}" + (f" ERROR {r['error']}" if "error" in r else ""))
        broker_info = {"version": broker.version(), "config": broker.config_path.read_text()}
    return {"config": {"sizes": [list(s) for s in sizes], "qos": list(qos_levels), "clients": list(clients),
                       "lat_clients": list(lat_clients), "paths": list(paths), "reps": reps, "lat_n": lat_n,
                       "idle_s": idle, "protocol": "MQTT 3.1.1"},
            "broker": broker_info,
            "commands": {p: " ".join(_argv(p, "P", "B", Path("RUN_DIR"))) for p in paths if p != DIRECT},
            "rows": rows, "latency": lat_rows}


# ----------------------------------------------------------------------------------- summaries

def _clean(r: dict | None) -> bool:
    return r is not None and "error" not in r and r.get("lost") == 0 and r.get("dup") == 0


def _tp_index(result) -> dict:
    return {(r["size"], r["qos"], r["client"], r["label"], r["rep"]): r for r in result["rows"]}


def _tp_ratios(idx, reps, key, a, b) -> list[float | None]:
    """Per rep: path a msgs/s ÷ path b msgs/s (None unless both delivered everything)."""
    out = []
    for rep in range(reps):
        ra, rb = idx.get((*key, a, rep)), idx.get((*key, b, rep))
        out.append(ra["msgs_per_s"] / rb["msgs_per_s"] if _clean(ra) and _clean(rb) else None)
    return out


def _lat_index(result) -> dict:
    return {(r["lib"], r["path"], r["rep"]): r for r in result["latency"] if "error" not in r}


def _lat_added(idx, reps, lib, path, base, field) -> list[float | None]:
    """Per rep: path's percentile − base's percentile, µs."""
    out = []
    for rep in range(reps):
        a, b = idx.get((lib, path, rep)), idx.get((lib, base, rep))
        out.append(a[field] - b[field] if a and b else None)
    return out


def _groups(cfg):
    for size, n in cfg["sizes"]:
        for qos in cfg["qos"]:
            for client in cfg["clients"]:
                yield size, n, qos, client


def _signed(xs, digits=0) -> str:
    text = report.spread(xs, digits)
    return text if text.startswith("-") or text == "–" else "+" + text


def markdown(result: dict) -> str:
    cfg = result["config"]
    reps, paths = cfg["reps"], cfg["paths"]
    others = [p for p in paths if p != DIRECT]
    idx = _tp_index(result)
    out = [f"## Proxy overhead ({cfg['protocol']}, {reps} rep(s), {result['broker']['version']})", "",
           "Paths: " + "; ".join(f"`{p}` = `{c}`" for p, c in result["commands"].items()) + ". Each forwarder is "
           "its own process, started for each measurement and stopped after it; paths take turns within a rep."]
    if result["rows"]:
        out += ["", "### Throughput, proxied ÷ direct (same rep)", "",
                "msgs/s as in the throughput section (one publisher + one subscriber process, both through the "
                "path). Cells: median (min–max) over reps of path ÷ direct; direct in msgs/s. `proxy ÷ socat` "
                "compares our proxy (as users run it) with plain socat in the same rep. lost / dup per rep if any.", "",
                "| size | QoS | client | direct msgs/s | " + " | ".join(others)
                + (" | proxy ÷ socat" if {PROXY, SOCAT} <= set(paths) else "") + " | lost / dup |",
                "|---" * (5 + len(others) + ({PROXY, SOCAT} <= set(paths))) + "|"]
        for size, n, qos, client in _groups(cfg):
            key = (size, qos, client)
            runs = [r for r in (idx.get((*key, p, rep)) for p in paths for rep in range(reps)) if r]
            direct = [idx.get((*key, DIRECT, rep), {}).get("msgs_per_s") for rep in range(reps)]
            cells = [report.spread(_tp_ratios(idx, reps, key, p, DIRECT), 2) for p in others]
            if {PROXY, SOCAT} <= set(paths):
                cells.append(report.spread(_tp_ratios(idx, reps, key, PROXY, SOCAT), 2))
            out.append(f"| {size} | {qos} | {client} | {report.spread(direct)} | " + " | ".join(cells)
                       + f" | {_loss(runs)} |")
        out += ["", "### Forwarder CPU, µs per message (median over reps)", "",
                "CPU-seconds of the forwarder process (socat: with its forked children) ÷ messages; "
                "broker for reference.", "",
                "| size | QoS | client | broker (direct) | " + " | ".join(others) + " |",
                "|---" * (4 + len(others)) + "|"]
        for size, n, qos, client in _groups(cfg):
            key = (size, qos, client)

            def per_msg(path, who):
                vals = [(idx.get((*key, path, rep)) or {}).get("cpu", {}).get(who) for rep in range(reps)]
                return report.fnum(report.median([v / n * 1e6 for v in vals if v is not None]), 1)
            out.append(f"| {size} | {qos} | {client} | {per_msg(DIRECT, 'broker')} | "
                       + " | ".join(per_msg(p, "proxy") for p in others) + " |")
        if {TAP, PYTHON} <= set(paths):
            has_pcap = PCAP in paths
            out += ["", "### Cost of the tap and of pcap capture (throughput)", "",
                    f"Ratios in the same rep; no-tap is `{PYTHON}`, so both sides forward in Python. The proxy "
                    "writes its pcap file when it stops, after the measurement: "
                    "`stop s` is SIGTERM to exit (tap on, without and with the pcap written), `pcap MB` the "
                    "file's size. Peak RSS (VmHWM) of the proxy process at the end of the measurement.", "",
                    "| size | QoS | client | tap ÷ no-tap |"
                    + (" pcap ÷ no-tap | stop s tap / pcap | pcap MB |" if has_pcap else "")
                    + " peak RSS MB no-tap / tap" + (" / pcap" if has_pcap else "") + " |",
                    "|---" * (5 + 3 * has_pcap) + "|"]
            for size, n, qos, client in _groups(cfg):
                key = (size, qos, client)

                def field(path, name, scale=1.0, digits=1):
                    vals = [(idx.get((*key, path, rep)) or {}).get(name) for rep in range(reps)]
                    return report.fnum(report.median([v * scale for v in vals if v is not None]), digits)
                line = f"| {size} | {qos} | {client} | {report.spread(_tp_ratios(idx, reps, key, TAP, PYTHON), 2)} |"
                if has_pcap:
                    line += (f" {report.spread(_tp_ratios(idx, reps, key, PCAP, PYTHON), 2)} | "
                             f"{field(TAP, 'stop_s', digits=2)} / {field(PCAP, 'stop_s', digits=2)} | "
                             f"{field(PCAP, 'pcap_bytes', 2 ** -20)} |")
                line += " " + " / ".join(field(p, "fwd_peak_rss_kb", 1 / 1024, 0)
                                         for p in (PYTHON, TAP, PCAP) if p in paths) + " |"
                out.append(line)
    if result["latency"]:
        lidx = _lat_index(result)
        out += ["", f"### QoS 1 round-trip latency ({cfg['lat_n']:,} sequential round trips, 64 B)", "",
                "Per run: p50 / p99 / max in µs; cells are medians (min–max) over reps. `added` = the path's "
                "percentile − direct's in the same rep. `>10ms` = round trips over 10 ms, per rep. "
                "Forwarder CPU µs per round trip.", "",
                "| client | path | p50 µs | p99 µs | max µs | >10ms | added p50 µs | added p99 µs "
                "| forwarder CPU µs/RTT |",
                "|---|---|---|---|---|---|---|---|---|"]
        for lib in cfg["lat_clients"]:
            for path in paths:
                runs = [lidx.get((lib, path, rep)) for rep in range(reps)]
                ok = [r for r in runs if r]
                errs = [r for r in result["latency"] if r["lib"] == lib and r["path"] == path and "error" in r]
                if not ok:
                    out.append(f"| {lib} | {path} | ERROR: {errs[0]['error'] if errs else 'no run'} |||||||")
                    continue
                added = ("–", "–") if path == DIRECT else (
                    _signed(_lat_added(lidx, reps, lib, path, DIRECT, "p50_us")),
                    _signed(_lat_added(lidx, reps, lib, path, DIRECT, "p99_us")))
                cpu = report.fnum(report.median([r["proxy_cpu_s"] / r["n"] * 1e6 for r in ok
                                                 if r.get("proxy_cpu_s") is not None]), 1)
                out.append(f"| {lib} | {path} | {report.spread([r['p50_us'] for r in ok])} | "
                           f"{report.spread([r['p99_us'] for r in ok])} | {report.spread([r['max_us'] for r in ok])} | "
                           f"{'/'.join(str(r['over_10ms']) for r in ok)} | {added[0]} | {added[1]} | "
                           f"{cpu if path != DIRECT else '–'} |")
        if {TAP, PYTHON} <= set(paths):
            out += ["", "### Cost of the tap and of pcap capture (latency)", "",
                    f"Percentile through the path − the same through `{PYTHON}`, same rep, µs.", "",
                    "| client | tap − no-tap p50 | tap − no-tap p99 |"
                    + (" pcap − no-tap p50 | pcap − no-tap p99 | pcap write s |" if PCAP in paths else ""),
                    "|---|---|---|" + ("---|---|---|" if PCAP in paths else "")]
            for lib in cfg["lat_clients"]:
                line = (f"| {lib} | {_signed(_lat_added(lidx, reps, lib, TAP, PYTHON, 'p50_us'))} | "
                        f"{_signed(_lat_added(lidx, reps, lib, TAP, PYTHON, 'p99_us'))} |")
                if PCAP in paths:
                    writes = [(lidx.get((lib, PCAP, rep)) or {}).get("stop_s") for rep in range(reps)]
                    line += (f" {_signed(_lat_added(lidx, reps, lib, PCAP, PYTHON, 'p50_us'))} | "
                             f"{_signed(_lat_added(lidx, reps, lib, PCAP, PYTHON, 'p99_us'))} | "
                             f"{report.spread(writes, 2)} |")
                out.append(line)
    return "\n".join(out)


def _loss(runs) -> str:
    bad = []
    for r in runs:
        if "error" in r:
            bad.append(f"{r['label']} r{r['rep']}: {r['error']}")
        elif not _clean(r):
            bad.append(f"{r['label']} r{r['rep']}: {r.get('lost')} / {r.get('dup')}")
    return "; ".join(bad) or "0 / 0"


def targets(result: dict) -> list[dict]:
    """Our proxy (as users run it) against direct and socat (throughput) and direct (added p50 latency)."""
    cfg = result["config"]
    reps, paths = cfg["reps"], cfg["paths"]
    found = []
    if PROXY not in paths:
        return found
    idx = _tp_index(result)
    for size, n, qos, client in _groups(cfg):
        key = (size, qos, client)
        runs = [idx.get((*key, PROXY, rep)) for rep in range(reps)]
        lost = "/".join(str(r.get("lost")) if r else "?" for r in runs)
        for ref, minimum, what in ((DIRECT, MIN_VS_DIRECT, f"≥ {MIN_VS_DIRECT:.2f} × direct"),
                                   (SOCAT, MIN_VS_SOCAT, "≥ socat")):
            if ref not in paths:
                continue
            ratios = _tp_ratios(idx, reps, key, PROXY, ref)
            med = report.median(ratios)
            found.append({"target": f"proxy throughput {what}, {client} {size} B QoS {qos}",
                          "measured": f"× {report.spread(ratios, 2)}; lost {lost}", "ratio_median": med,
                          "met": bool(all(_clean(r) for r in runs) and med is not None and med >= minimum)})
    lidx = _lat_index(result)
    for lib in cfg["lat_clients"]:
        added = _lat_added(lidx, reps, lib, PROXY, DIRECT, "p50_us")
        med = report.median(added)
        p99 = _lat_added(lidx, reps, lib, PROXY, DIRECT, "p99_us")
        found.append({"target": f"proxy adds ≤ {MAX_ADDED_P50_US:.0f} µs to QoS 1 RTT p50, {lib}",
                      "measured": f"{_signed(added)} µs (p99 {_signed(p99)} µs)", "added_p50_us": med,
                      "met": med is not None and med <= MAX_ADDED_P50_US})
    return found


# ----------------------------------------------------------------------------------- command line

def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--quick", action="store_true", help="smoke run: 5,000 × 64 B and 500 × 16 KiB, "
                                                         f"{LAT_N_QUICK} round trips, 1 rep")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 3; 1 with --quick)")
    ap.add_argument("--clients", default=",".join(DEFAULT_CLIENTS), help="throughput clients (lab names or ours)")
    ap.add_argument("--lat-clients", default=",".join(DEFAULT_LAT_CLIENTS),
                    help="latency clients: mqtt-harness, mqtt-harness-nolog, paho-thread, paho-loop, gmqtt")
    ap.add_argument("--paths", default=",".join(PATHS), help=f"paths to measure (default: %(default)s; also {NOQA})")
    ap.add_argument("--qos", default=",".join(map(str, QOS)), help="throughput QoS levels")
    ap.add_argument("--sizes", default=None,
                    help="payload sizes to measure, of 64 and 16384 (default: both)")


def options(**given) -> argparse.Namespace:
    """This part's options at their defaults, with `given` ones replaced (how bench.run configures it)."""
    ap = argparse.ArgumentParser()
    add_arguments(ap)
    a = ap.parse_args([])
    vars(a).update(given)
    return a


def parse(a) -> tuple:
    """(sizes, qos levels, clients, latency clients, paths, reps, latency N) from parsed options."""
    sizes, qos_levels, _, reps = throughput.parse(SimpleNamespace(quick=a.quick, reps=a.reps, qos=a.qos, clients=""))
    if getattr(a, "sizes", None):
        try:
            wanted = {int(x) for x in a.sizes.split(",") if x}
        except ValueError:
            raise SystemExit(f"--sizes {a.sizes!r}: write sizes like 64,16384") from None
        if wanted - {s for s, _ in sizes}:
            raise SystemExit(f"--sizes {a.sizes!r}: choose from {', '.join(str(s) for s, _ in sizes)}")
        sizes = tuple((s, n) for s, n in sizes if s in wanted)
    paths = [p for p in a.paths.split(",") if p]
    if set(paths) - set(KNOWN_PATHS) or DIRECT not in paths:
        raise SystemExit(f"--paths {a.paths!r}: choose from {', '.join(KNOWN_PATHS)}; {DIRECT} is needed for the ratios")
    clients = [c for c in a.clients.split(",") if c]
    lat_clients = [c for c in a.lat_clients.split(",") if c]
    bt, lab_libs = perflab.load("bench_throughput"), perflab.load("tp_client").LIBS
    bad = [c for c in clients if not throughput._is_ours(c) and bt.parse_cfg(c)[0] not in lab_libs]
    bad += [c for c in lat_clients if c not in lat_harness.LIBS and c not in LAB_LAT_LIBS]
    if bad:
        raise SystemExit(f"unknown client(s) {', '.join(bad)}; throughput: {', '.join([*throughput.OURS, *lab_libs])}; "
                         f"latency: {', '.join([*lat_harness.LIBS, *LAB_LAT_LIBS])}")
    return sizes, qos_levels, clients, lat_clients, paths, reps, LAT_N_QUICK if a.quick else LAT_N


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    a = ap.parse_args(argv)
    parsed = parse(a)
    throughput.stop_on_sigterm()
    run_dir = report.new_run_dir()
    env = report.environment()
    result = run(*parsed, run_dir=run_dir)
    found = targets(result)
    md = markdown(result) + "\n\n### Targets\n\n" + report.targets_markdown(found)
    report.write(run_dir, {"environment": env, "proxy": result, "targets": found}, md)
    print("\n" + md + f"\n\nwritten to {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
