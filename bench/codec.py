"""Codec speed without a network: encode + decode a QoS 1 PUBLISH (topic a/b/c, 64 B payload, packet id).

The lab's bench_codec.py does the timing and the correctness check (byte-identical to its struct floor, and a
round trip); this module adds our codec to its table and runs everything in one process, codecs taking turns
within each rep, so every codec's ops/s is a ratio to the struct floor measured moments apart.

  mqtt-harness         encode(Publish(...), 4) and Decoder.feed(raw) on one long-lived Decoder (the client's path)
  mqtt-harness-decode  encode(Publish(...), 4) and decode(raw) (a fresh Decoder per packet)
Our decoder returns the topic as str; it is encoded back to bytes for the lab's check, inside the timing.

  python -m bench.codec [--quick] [--reps N] [--n N] [--codecs struct,mqtt-harness,...]
"""

from __future__ import annotations

import argparse
import sys

from bench import perflab, report
from harness.core.codec import Decoder, decode, encode
from harness.core.packets import MQTT_3_1_1, Publish

FLOOR, PAHO = "struct", "paho"
OURS = "mqtt-harness"
DEFAULT_CODECS = (FLOOR, OURS, "mqtt-harness-decode", PAHO, "scapy")
FULL_N, QUICK_N = 100_000, 5_000


def _ours(streaming: bool):
    def factory():
        lab = perflab.load("bench_codec")
        topic, payload, pid_of = lab.TOPIC, lab.PAYLOAD, lab.pid_of

        def enc(i):
            return encode(Publish(topic, payload, 1, False, False, pid_of(i)), MQTT_3_1_1)

        if streaming:
            feed = Decoder(MQTT_3_1_1).feed

            def dec(raw):
                p = feed(raw)[0]
                return p.topic.encode(), p.packet_id, p.payload
        else:
            def dec(raw):
                p = decode(raw, MQTT_3_1_1)
                return p.topic.encode(), p.packet_id, p.payload

        return enc, dec, {"encode": "harness.core.codec.encode(Publish(...), 4)",
                          "decode": "Decoder(4).feed(raw) (one decoder)" if streaming else "decode(raw, 4)"}
    return factory


def run(n: int, reps: int, codecs, echo=print) -> dict:
    lab = perflab.load("bench_codec")
    lab.CODECS.setdefault(OURS, _ours(streaming=True))
    lab.CODECS.setdefault("mqtt-harness-decode", _ours(streaming=False))
    unknown = [c for c in codecs if c not in lab.CODECS]
    if unknown:
        raise SystemExit(f"unknown codec(s) {', '.join(unknown)}; choose from {', '.join(lab.CODECS)}")
    if FLOOR not in codecs:
        codecs = [FLOOR, *codecs]  # every ratio is to the floor of the same rep
    rows = []
    for rep in range(reps):
        for name in codecs:
            r = lab.bench(name, n)
            r["rep"] = rep
            rows.append(r)
            echo(f"rep{rep} {name:20s} enc {report.fnum(r['enc_ops'])}/s dec {report.fnum(r.get('dec_ops'))}/s "
                 f"enc+dec {report.fnum(r.get('encdec_ops'))}/s")
    for r in rows:
        floor = next(f for f in rows if f["codec"] == FLOOR and f["rep"] == r["rep"])
        if r.get("encdec_ops"):
            r["vs_floor"] = r["encdec_ops"] / floor["encdec_ops"]
    return {"config": {"n": n, "reps": reps, "codecs": list(codecs),
                       "packet": "PUBLISH QoS 1, topic 'a/b/c', 64 B payload, packet id, MQTT 3.1.1"},
            "rows": rows}


def _column(rows, name, key):
    return [r.get(key) for r in rows if r["codec"] == name]


def markdown(result: dict) -> str:
    cfg, rows = result["config"], result["rows"]
    out = [f"## Codec ({cfg['packet']}; N = {cfg['n']:,} per op, {cfg['reps']} rep(s), no network)", "",
           "ops/s median (min–max) over reps; 'vs struct' = median (min–max) of per-rep enc+dec ratios to the "
           "lab's hand-written struct floor.", "",
           "| codec | encode ops/s | decode ops/s | enc+dec ops/s | vs struct | what is timed |",
           "|---|---|---|---|---|---|"]
    for name in cfg["codecs"]:
        mine = [r for r in rows if r["codec"] == name]
        notes = mine[0].get("notes", {}) if mine else {}
        what = "; ".join(f"{k}: {v}" for k, v in notes.items())
        out.append(f"| {name} | {report.spread(_column(rows, name, 'enc_ops'))} | "
                   f"{report.spread(_column(rows, name, 'dec_ops'))} | "
                   f"{report.spread(_column(rows, name, 'encdec_ops'))} | "
                   f"{report.spread(_column(rows, name, 'vs_floor'), 3)} | {what} |")
    return "\n".join(out)


def targets(result: dict) -> list[dict]:
    """Ours ÷ struct ≥ paho ÷ struct in the same rep is ours ≥ paho in that rep: judged on the median of
    those per-rep ratios (a noisy floor moves both alike)."""
    rows, codecs = result["rows"], result["config"]["codecs"]
    if OURS not in codecs or PAHO not in codecs:
        return []
    ours, paho = _column(rows, OURS, "vs_floor"), _column(rows, PAHO, "vs_floor")
    per_rep = [o / p for o, p in zip(ours, paho)]
    med = report.median(per_rep)
    return [{"target": f"codec: {OURS} enc+dec ratio to struct ≥ {PAHO}'s (same rep)",
             "measured": f"{report.spread(ours, 3)} vs {report.spread(paho, 3)}; ours ÷ paho per rep "
                         f"{report.spread(per_rep, 2)}",
             "ratio_median": med, "met": med is not None and med >= 1.0}]


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--quick", action="store_true", help=f"N = {QUICK_N:,}, 1 rep")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 3; 1 with --quick)")
    ap.add_argument("--n", type=int, default=None, help=f"packets per op (default {FULL_N:,})")
    ap.add_argument("--codecs", default=",".join(DEFAULT_CODECS),
                    help="comma-separated; also the lab's paho-full, amqtt, gmqtt (encode only)")


def parse(a) -> tuple:
    n = a.n or (QUICK_N if a.quick else FULL_N)
    reps = a.reps if a.reps is not None else (1 if a.quick else 3)
    if reps < 1 or n < 1:
        raise SystemExit("--reps and --n must be at least 1")
    return n, reps, [c for c in a.codecs.split(",") if c]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    n, reps, codecs = parse(ap.parse_args(argv))
    run_dir = report.new_run_dir()
    env = report.environment()
    result = run(n, reps, codecs)
    found = targets(result)
    md = markdown(result) + "\n\n### Targets\n\n" + report.targets_markdown(found)
    report.write(run_dir, {"environment": env, "codec": result, "targets": found}, md)
    print("\n" + md + f"\n\nwritten to {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
