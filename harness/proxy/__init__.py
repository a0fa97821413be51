"""A fault-injecting, MQTT-aware proxy: Toxiproxy's stream faults plus packet rules, a tap and pcap.

    async with Proxy("127.0.0.1:1883") as proxy:
        proxy.add_fault(faults.latency(50, direction="downstream"))
        proxy.add_rule(when("PUBACK", direction="downstream", nth=2).drop())
        ...connect a client to proxy.url...

See README.md in this directory for the API, the rule schema, the HTTP control API and the CLI.
"""

from harness.proxy import faults
from harness.proxy.direction import BOTH, DOWNSTREAM, UPSTREAM
from harness.proxy.faults import Fault
from harness.proxy.proxy import Connection, Proxy, ProxyError, ProxyEvent, ServerTls
from harness.proxy.rules import Match, Rule, topic_matches, when
from harness.proxy.tap import DELIVERED, RECEIVED, TapEntry
from harness.proxy.threaded import ThreadedProxy

__all__ = [
    "Proxy", "ThreadedProxy", "Connection", "ProxyError", "ProxyEvent", "ServerTls", "Fault", "faults",
    "Rule", "Match", "when", "topic_matches", "TapEntry", "UPSTREAM", "DOWNSTREAM", "BOTH", "RECEIVED",
    "DELIVERED",
]
