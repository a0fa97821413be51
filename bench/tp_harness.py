"""The harness client as one publisher or subscriber process for the lab's throughput driver.

Same command line and stdout protocol as the lab's tp_client.py (subscriber: 'READY' after SUBACK, then one
JSON line; publisher: one JSON line), and the same Recorder and payloads, imported from it. Libraries:
  mqtt-harness        harness.client.Client with its packet log on (the default)
  mqtt-harness-nolog  the same with log=False
Publisher: publish_nowait() for every message, then wait for the socket to drain (QoS 0) or until nothing is in
flight (wait_acked, QoS 1/2); the session keeps its 3.1.1 window: 100 flows in flight, at most 20 of them QoS 2
(mosquitto drops QoS 2 beyond its 20, perf-baselines §3.1).
Subscriber: `await client.receive()` in a loop.

Started by bench/throughput.py, with PYTHONPATH holding the repo and the perf lab.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys

import tp_client as lab  # the perf lab's client module (PYTHONPATH set by the driver)

from harness.client import Client
from harness.errors import Timeout

LIBS = {"mqtt-harness": True, "mqtt-harness-nolog": False}  # name -> packet log on
POLL = 0.2  # how often the subscriber checks its idle/overall deadlines while no message arrives


async def _connect(a, role: str) -> Client:
    return await Client.connect(f"mqtt://{a.host}:{a.port}", version="3.1.1", client_id=f"{role}-{os.getpid()}",
                                log=LIBS[a.lib], max_inflight=a.inflight or None, timeout=30)


async def publish(a, payloads: list[bytes]) -> dict:
    client = await _connect(a, "pub")
    topic, qos = a.topic, a.qos
    publish_nowait = client.publish_nowait
    cpu0 = lab.cpu_now()
    t0 = lab.mono()
    if qos == 0:
        for p in payloads:
            publish_nowait(topic, p, 0)
        t_loop = lab.mono()
        await client.drain(a.timeout)
        completed = len(payloads)
    else:
        for p in payloads:
            publish_nowait(topic, p, qos, track=False)
        t_loop = lab.mono()
        try:
            await client.wait_acked(a.timeout)
        except Timeout:
            pass  # counted below: whatever is still in flight did not complete
        completed = len(payloads) - len(client.session.outgoing)
    t_done = lab.mono()
    cpu = lab.cpu_now() - cpu0
    await client.disconnect()
    return {"t0": t0, "t_loop_done": t_loop, "t_done": t_done, "completed": completed, "cpu_s": cpu}


async def subscribe(a, rec) -> dict:
    client = await _connect(a, "sub")
    await client.subscribe(a.topic, a.qos)
    rec.ready()
    deadline = lab.mono() + a.timeout
    receive, msg = client.receive, rec.msg
    while rec.unique < rec.n:
        try:
            m = await receive(POLL)
        except Timeout:
            if rec.idle_expired() or lab.mono() > deadline:
                break
            continue
        msg(m.payload)
    res = rec.result()
    await client.disconnect()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", required=True, choices=sorted(LIBS))
    ap.add_argument("--role", required=True, choices=["pub", "sub"])
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--qos", type=int, default=0, choices=[0, 1, 2])
    ap.add_argument("--inflight", type=int, default=0, help="outgoing window for QoS 1 and 2 (0 = the session's default: 100, of which at most 20 QoS 2, in 3.1.1)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--topic", default="perf/tp")
    ap.add_argument("--idle", type=float, default=10.0)
    ap.add_argument("--timeout", type=float, default=300.0)
    a = ap.parse_args()
    if a.role == "pub":
        d = asyncio.run(publish(a, lab.make_payloads(a.n, a.size)))
        d.update(role="pub", lib=a.lib, maxrss_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    else:
        d = asyncio.run(subscribe(a, lab.Recorder(a.n, a.idle)))
        d.update(lib=a.lib)
    lab.emit(d)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
