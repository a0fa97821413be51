"""End-to-end throughput: the harness client (packet log on and off) against gmqtt and paho-mqtt in one run.

One mosquitto (the perf lab's config on a free port), one subscriber process and one publisher process per
measurement, driven by the lab's own driver (bench_throughput.run_one) so the method is exactly theirs:
msgs/s = unique messages received ÷ (last receipt − first publish); lost/duplicated from sequence numbers;
CPU of publisher, subscriber and broker. Clients take turns within each rep; the order rotates per rep.

  python -m bench.throughput [--quick] [--reps N] [--clients a,b,...] [--qos 0,1,2]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from types import SimpleNamespace

from bench import perflab, report
from bench.mosquitto import Mosquitto

HARNESS_SCRIPT = Path(__file__).with_name("tp_harness.py")
OURS = ("mqtt-harness", "mqtt-harness-nolog")  # packet log on, off
REF_GMQTT, REF_PAHO = "gmqtt", "paho-thread"  # paho-thread: paho 2.x loop_start(), default window 20
DEFAULT_CLIENTS = (*OURS, REF_GMQTT, REF_PAHO)
FULL_SIZES = ((64, 50_000), (16_384, 5_000))
QUICK_SIZES = ((64, 5_000), (16_384, 500))
IDLE = 8.0  # a subscriber gives up after this long without a new message (the lab's value)
TIMEOUT = 240.0
LOG_COST_MIN = 0.95  # target: log on reaches at least this share of log off's msgs/s


def _is_ours(cfg: str) -> bool:
    return cfg.split("-if")[0] in OURS


def run(sizes, qos_levels, clients, reps: int, run_dir: Path, idle: float = IDLE, timeout: float = TIMEOUT,
        echo=print) -> dict:
    """Measure every (rep, size, QoS, client); returns {"config", "broker", "rows"} (rows = the lab's dicts)."""
    bt = perflab.load("bench_throughput")
    lab_libs = perflab.load("tp_client").LIBS
    unknown = [c for c in clients if not _is_ours(c) and bt.parse_cfg(c)[0] not in lab_libs]
    if unknown:
        raise SystemExit(f"unknown client(s) {', '.join(unknown)}; choose from "
                         f"{', '.join([*OURS, *sorted(lab_libs)])} (suffix -ifK sets the window to K)")
    os.environ.update(perflab.subprocess_env())  # the lab driver starts clients with our environment
    bt.PY = sys.executable  # the lab driver's default is its own venv; ours has the same client versions
    rows = []
    with Mosquitto(run_dir) as broker, open(run_dir / "throughput.jsonl", "a") as out:
        echo(f"mosquitto pid {broker.pid} on 127.0.0.1:{broker.port}, config {broker.config_path}")
        args = SimpleNamespace(host="127.0.0.1", port=broker.port, idle=idle, timeout=timeout,
                               tmpdir=str(run_dir), label="direct")
        for rep in range(reps):
            k = rep % len(clients)
            order = list(clients[k:]) + list(clients[:k])
            for size, n in sizes:
                for qos in qos_levels:
                    for cfg in order:
                        bt.TP = str(HARNESS_SCRIPT if _is_ours(cfg) else perflab.lab_dir() / "tp_client.py")
                        r = bt.run_one(args, cfg, qos, size, n, {"broker": broker.pid}, rep)
                        rows.append(r)
                        out.write(report.json_line(r))
                        out.flush()
                        echo(f"rep{rep} {cfg:20s} q{qos} {size:5d}B n={n}: {report.fnum(r.get('msgs_per_s'))} msgs/s "
                             f"lost={r.get('lost')} dup={r.get('dup')} pub={r.get('pub_cpu_util')} "
                             f"sub={r.get('sub_cpu_util')} broker={r.get('broker_cpu_util')}"
                             + (f" ERROR {r['error']} (see {run_dir / 'client-stderr.log'})" if "error" in r else ""))
        broker_info = {"version": broker.version(), "config": broker.config_path.read_text()}
    return {"config": {"sizes": [list(s) for s in sizes], "qos": list(qos_levels), "clients": list(clients),
                       "reps": reps, "idle_s": idle, "protocol": "MQTT 3.1.1"},
            "broker": broker_info, "rows": rows}


# ----------------------------------------------------------------------------------- summaries

def _index(rows) -> dict:
    return {(r["size"], r["n"], r["qos"], r["client"], r["rep"]): r for r in rows}


def _clean(r: dict | None) -> bool:
    return r is not None and "error" not in r and r.get("lost") == 0 and r.get("dup") == 0


def _ratios(idx, reps, key, cfg, ref) -> list[float | None]:
    """Per rep: cfg msgs/s ÷ ref msgs/s; None where either is missing or the reference lost messages."""
    out = []
    for rep in range(reps):
        a, b = idx.get((*key, cfg, rep)), idx.get((*key, ref, rep))
        ok = a is not None and b is not None and _clean(b) and a.get("msgs_per_s") and b.get("msgs_per_s")
        out.append(a["msgs_per_s"] / b["msgs_per_s"] if ok else None)
    return out


def _ratio_cell(idx, reps, key, cfg, ref, clients) -> str:
    if ref not in clients or cfg == ref:
        return "–" if cfg != ref else "1.00"
    ratios = _ratios(idx, reps, key, cfg, ref)
    if all(x is None for x in ratios):
        return f"– ({ref} lost)"
    return report.spread(ratios, 2)


def _loss_cell(runs) -> str:
    if any("error" in r for r in runs):
        return "ERROR: " + next(r["error"] for r in runs if "error" in r)
    lost = [r.get("lost") for r in runs]
    dup = [r.get("dup") for r in runs]
    return f"{'/'.join(map(str, lost))} / {'/'.join(map(str, dup))}" if any(lost) or any(dup) else "0 / 0"


def _cpu_cell(runs, n) -> str:
    def per_msg(values):
        return report.fnum(report.median([v / n * 1e6 for v in values if v is not None]), 1)
    return " / ".join((per_msg(r.get("pub_cpu_s") for r in runs), per_msg(r.get("sub_cpu_s") for r in runs),
                       per_msg((r.get("cpu") or {}).get("broker") for r in runs)))


def _groups(result):
    cfg = result["config"]
    for size, n in cfg["sizes"]:
        for qos in cfg["qos"]:
            yield size, n, qos


def markdown(result: dict) -> str:
    cfg = result["config"]
    rows, reps, clients = result["rows"], cfg["reps"], cfg["clients"]
    idx = _index(rows)
    out = [f"## Throughput ({cfg['protocol']}, {reps} rep(s), one publisher + one subscriber process, "
           f"{result['broker']['version']})", "",
           "msgs/s = unique received ÷ (last receipt − first publish); median (min–max) over reps. "
           f"× {REF_GMQTT} / × {REF_PAHO} = median (min–max) of per-rep ratios, measured minutes apart in the same "
           "rep; '– (X lost)' = the reference lost messages, so no ratio. lost / dup listed per rep. "
           "CPU µs/msg = CPU-seconds ÷ messages, medians."]
    for size, n in cfg["sizes"]:
        out += ["", f"### {size} B payload × {n:,} messages", "",
                f"| QoS | client | msgs/s | × {REF_GMQTT} | × {REF_PAHO} | lost / dup "
                "| CPU µs/msg pub / sub / broker |",
                "|---|---|---|---|---|---|---|"]
        for qos in cfg["qos"]:
            key = (size, n, qos)
            for c in clients:
                runs = [idx[(*key, c, rep)] for rep in range(reps) if (*key, c, rep) in idx]
                out.append(f"| {qos} | {c} | {report.spread([r.get('msgs_per_s') for r in runs])} | "
                           f"{_ratio_cell(idx, reps, key, c, REF_GMQTT, clients)} | "
                           f"{_ratio_cell(idx, reps, key, c, REF_PAHO, clients)} | {_loss_cell(runs)} | "
                           f"{_cpu_cell(runs, n)} |")
    if all(c in clients for c in OURS):
        out += ["", "### Cost of the packet log (mqtt-harness log on ÷ log off, same rep)", "",
                "| size | QoS | log on msgs/s | log off msgs/s | on ÷ off |", "|---|---|---|---|---|"]
        for size, n, qos in _groups(result):
            key = (size, n, qos)
            on = [idx.get((*key, OURS[0], rep), {}).get("msgs_per_s") for rep in range(reps)]
            off = [idx.get((*key, OURS[1], rep), {}).get("msgs_per_s") for rep in range(reps)]
            out.append(f"| {size} | {qos} | {report.spread(on)} | {report.spread(off)} | "
                       f"{report.spread(_ratios(idx, reps, key, OURS[0], OURS[1]), 2)} |")
    return "\n".join(out)


def targets(result: dict) -> list[dict]:
    """The issue's throughput targets, judged on medians of same-rep ratios."""
    cfg = result["config"]
    rows, reps, clients = result["rows"], cfg["reps"], cfg["clients"]
    idx = _index(rows)
    found = []

    def judge(text, key, cfg_name, ref, minimum):
        ratios = _ratios(idx, reps, key, cfg_name, ref)
        runs = [idx.get((*key, cfg_name, rep)) for rep in range(reps)]
        clean = all(_clean(r) for r in runs)
        med = report.median(ratios)
        lost = "/".join(str(r.get("lost")) if r else "?" for r in runs)
        found.append({"target": text, "measured": f"× {report.spread(ratios, 2)}; lost {lost}",
                      "ratio_median": med, "met": bool(clean and med is not None and med >= minimum)})

    for ours in (c for c in OURS if c in clients):
        for size, n, qos in _groups(result):
            if size == 64 and qos in (0, 1) and REF_GMQTT in clients:
                judge(f"{ours} ≥ {REF_GMQTT}, 64 B, QoS {qos}, no loss", (size, n, qos), ours, REF_GMQTT, 1.0)
            if qos == 2 and REF_PAHO in clients:
                judge(f"{ours} ≥ 2 × {REF_PAHO}, {size} B, QoS 2, zero loss", (size, n, qos), ours, REF_PAHO, 2.0)
    if all(c in clients for c in OURS):
        ratios = [x for size, n, qos in _groups(result) for x in _ratios(idx, reps, (size, n, qos), *OURS)]
        med = report.median(ratios)
        found.append({"target": f"packet log on ≥ {LOG_COST_MIN:.2f} × log off (median over every size/QoS/rep)",
                      "measured": f"× {report.spread(ratios, 2)}", "ratio_median": med,
                      "met": med is not None and med >= LOG_COST_MIN})
    return found


def stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so the broker is stopped by the `with` block."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--quick", action="store_true", help="smoke run: 5,000 × 64 B and 500 × 16 KiB, 1 rep")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 3; 1 with --quick)")
    ap.add_argument("--clients", default=",".join(DEFAULT_CLIENTS), help="comma-separated; lab names or ours")
    ap.add_argument("--qos", default="0,1,2")


def parse(a) -> tuple:
    sizes = QUICK_SIZES if a.quick else FULL_SIZES
    reps = a.reps if a.reps is not None else (1 if a.quick else 3)
    if reps < 1:
        raise SystemExit("--reps must be at least 1")
    try:
        qos_levels = [int(q) for q in a.qos.split(",")]
    except ValueError:
        raise SystemExit(f"--qos {a.qos!r}: write QoS levels like 0,1,2") from None
    if any(q not in (0, 1, 2) for q in qos_levels):
        raise SystemExit(f"--qos {a.qos!r}: levels are 0, 1 and 2")
    clients = [c for c in a.clients.split(",") if c]
    return sizes, qos_levels, clients, reps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    a = ap.parse_args(argv)
    sizes, qos_levels, clients, reps = parse(a)
    stop_on_sigterm()
    run_dir = report.new_run_dir()
    env = report.environment()
    result = run(sizes, qos_levels, clients, reps, run_dir)
    found = targets(result)
    md = markdown(result) + "\n\n### Targets\n\n" + report.targets_markdown(found)
    report.write(run_dir, {"environment": env, "throughput": result, "targets": found}, md)
    print("\n" + md + f"\n\nwritten to {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
