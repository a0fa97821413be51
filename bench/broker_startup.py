"""Broker start-up and teardown: spawn to first CONNACK (the backend's own readiness probe), and stop() to gone.

    .venv/bin/python -m bench.broker_startup                          # rabbitmq, activemq, ejabberd; 5 each
    .venv/bin/python -m bench.broker_startup mosquitto nats --runs 10

Each start serves every listener kind the broker's profile lists (TLS ones with a fresh test PKI). Prints the
median and range per broker. A script, not a test: it asserts nothing about timing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

from harness.brokers import definitions
from harness.brokers.backends.process import ProcessBroker
from harness.brokers.broker import BrokerError, BrokerUnavailable
from harness.pki import generate_pki


def measure(defn: definitions.BrokerDef, runs: int, pki) -> tuple[list[float], list[float]]:
    ready, down = [], []
    for _ in range(runs):
        broker = ProcessBroker(defn, listeners=list(defn.listeners), pki=pki)
        broker.start(timeout=60)
        ready.append(broker.startup_seconds)
        began = time.monotonic()
        broker.stop()
        down.append(time.monotonic() - began)
    return ready, down


def _span(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s [{min(values):.2f}-{max(values):.2f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("brokers", nargs="*", default=["rabbitmq", "activemq", "ejabberd"],
                        help="broker definitions (brokers/<name>), process backend (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=5, help="starts per broker (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    try:
        defns = [definitions.load(name) for name in args.brokers]
    except BrokerError as exc:
        parser.error(str(exc))
    with tempfile.TemporaryDirectory(prefix="mh-startup-") as tmp:
        pki = generate_pki(tmp)
        for defn in defns:
            try:
                ready, down = measure(defn, args.runs, pki)
            except BrokerUnavailable as exc:
                print(f"{defn.name}: skipped: {exc}", flush=True)
                continue
            print(f"{defn.name}: ready {_span(ready)}, stop {_span(down)} ({args.runs} starts)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
