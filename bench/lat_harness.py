"""The harness client in the lab's latency test: sequential QoS 1 round trips on one connection.

Same method, command line and JSON line as the lab's lat_client.py, whose payloads and summary it imports:
the connection subscribes at QoS 1 to a topic and publishes to it; message i+1 is published only after
message i came back. RTT = perf_counter() at publish_nowait() -> receive() returning that message.
  mqtt-harness        harness.client.Client with its packet log on (the default)
  mqtt-harness-nolog  the same with log=False

Started by bench/proxy.py, with PYTHONPATH holding the repo.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

from bench import perflab
from harness.client import Client

LIBS = {"mqtt-harness": True, "mqtt-harness-nolog": False}  # name -> packet log on
WAIT = 5.0  # the lab's per-message timeout


async def run(a) -> dict:
    lab = perflab.load("lat_client")  # the perf lab's latency client: payloads, summary, CPU clock
    client = await Client.connect(f"mqtt://{a.host}:{a.port}", version="3.1.1", client_id=f"lat-{os.getpid()}",
                                  log=LIBS[a.lib], timeout=10)
    await client.subscribe(a.topic, 1)
    pc = time.perf_counter
    rtts = []
    cpu0 = w0 = 0.0
    for i in range(a.warmup + a.n):
        if i == a.warmup:
            cpu0, w0 = lab.cpu_now(), pc()
        p = lab.payload(i, a.size)
        want = p[:10]
        t = pc()
        client.publish_nowait(a.topic, p, 1, track=False)
        while (await client.receive(WAIT)).payload[:10] != want:
            pass  # a stale copy (redelivery): keep waiting for this one
        if i >= a.warmup:
            rtts.append(pc() - t)
    res = lab.summarize(rtts, lab.cpu_now() - cpu0, pc() - w0)
    await client.disconnect()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", required=True, choices=sorted(LIBS))
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--topic", default=None)
    a = ap.parse_args()
    a.topic = a.topic or f"perf/lat/{os.getpid()}"
    r = asyncio.run(run(a))
    r.update(lib=a.lib, port=a.port, size=a.size)
    print(json.dumps(r), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
