"""How long `mqtt-harness diagnose` takes against a healthy TLS broker on loopback (target: 0.5 s or less).

Two measurements against one local mosquitto (process backend, harness PKI, mqtts listener, MQTT 3.1.1):
  api   harness.diagnose.diagnose() in a warm process: the walk itself, per layer
  cli   `python -m harness diagnose URL --ca ca.pem` as a user runs it: interpreter start and imports included

Also the mutual-TLS listener (api) and the system-store path (api, --ca omitted: loads and parses the system CA
bundle once per process; the certificate layer then fails, which is expected). Not a test: nothing asserts.

  python -m bench.diagnose [--reps N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.brokers.backends.process import ProcessBroker
from harness.brokers.broker import MQTT, MQTTS, MQTTS_MTLS
from harness.diagnose import LAYERS, Options, diagnose
from harness.pki import generate_pki

REPO = Path(__file__).resolve().parent.parent
TARGET_S = 0.5


def _stats(values: list[float]) -> str:
    return f"median {statistics.median(values):7.1f}  min {min(values):7.1f}  max {max(values):7.1f}"


async def _api(url: str, options: Options, reps: int) -> tuple[list[float], dict[str, list[float]], set]:
    totals, layers, failed = [], {name: [] for name in LAYERS}, set()
    await diagnose(url, options)  # warm-up: imports, first trust-store load
    for _ in range(reps):
        start = time.perf_counter()
        result = await diagnose(url, options)
        totals.append((time.perf_counter() - start) * 1000)
        failed.add(result.failed_layer)
        for layer in result.layers:
            layers[layer.name].append(layer.ms)
    return totals, layers, failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.diagnose")
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mh-bench-diagnose-") as work:
        pki = generate_pki(Path(work) / "pki")
        broker = ProcessBroker("mosquitto", listeners=(MQTT, MQTTS, MQTTS_MTLS), pki=pki)
        broker.start()
        try:
            url = broker.urls()[MQTTS]
            print(f"mosquitto pid {broker.pid}, {url}, {args.reps} reps (ms)\n")
            runs = [
                ("api mqtts --ca", url, Options(ca=str(pki.ca))),
                ("api mqtts-mtls --ca --cert", broker.urls()[MQTTS_MTLS],
                 Options(ca=str(pki.ca), cert=str(pki.client_cert), key=str(pki.client_key))),
                ("api mqtts, system store", url, Options()),
            ]
            for label, target, options in runs:
                totals, layers, failed = asyncio.run(_api(target, options, args.reps))
                print(f"{label:<28} total {_stats(totals)}   failed_layer {sorted(map(str, failed))}")
                for name, values in layers.items():
                    if values:
                        print(f"    {name:<20} {_stats(values)}")
            cli = []
            command = [sys.executable, "-m", "harness", "diagnose", url, "--ca", str(pki.ca)]
            for _ in range(args.reps):
                start = time.perf_counter()
                proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
                cli.append((time.perf_counter() - start) * 1000)
                if proc.returncode != 0:
                    print(proc.stdout, proc.stderr)
                    return 1
            print(f"{'cli (process start to exit)':<28} total {_stats(cli)}")
            worst = max(statistics.median(cli), statistics.median(asyncio.run(_api(url, Options(ca=str(pki.ca)),
                                                                                     3))[0]))
            verdict = "within" if worst <= TARGET_S * 1000 else "ABOVE"
            print(f"\ntarget {TARGET_S:g} s: the CLI median {statistics.median(cli):.0f} ms is {verdict} it")
        finally:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
