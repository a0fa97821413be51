"""The `proxy` pytest fixture: a factory of proxies scoped to one test.

    def test_x(proxy, mosquitto):
        p = proxy(mosquitto.url("mqtt"))                   # plain TCP, MQTT decoded
        p = proxy(mosquitto.url("mqtts"), tls="terminate")  # TLS ends at the proxy (test PKI), MQTT decoded
        p = proxy(mosquitto.url("mqtts"))                  # TLS passed through: byte faults only

Each proxy runs on its own event loop in a background thread (harness.proxy.threaded.ThreadedProxy),
so plain test functions and tests that run asyncio.run() both use it; inside a coroutine use the
*_async waits. Rules and faults die with the proxy at the end of the test, and each proxy's decoded
traffic is written to the test's tmp_path as proxy-N.pcap (pcap=False skips that).
"""

from __future__ import annotations

import pytest

from harness.proxy.proxy import ServerTls, upstream_url
from harness.proxy.threaded import ThreadedProxy
from harness.transport import TlsOptions


@pytest.fixture
def proxy(request, tmp_path):
    """Factory: proxy(upstream, tls=None | "terminate" | ServerTls, pcap=True, **Proxy kwargs) -> ThreadedProxy."""
    made: list[tuple[ThreadedProxy, bool]] = []

    def factory(upstream, *, tls=None, pcap: bool = True, **kwargs) -> ThreadedProxy:
        if tls == "terminate":
            pki = request.getfixturevalue("pki")
            kwargs["server_tls"] = ServerTls(str(pki.server_cert), str(pki.server_key))
            if upstream_url(upstream).tls:
                kwargs.setdefault("upstream_tls", TlsOptions(ca=str(pki.ca)))
        elif isinstance(tls, ServerTls):
            kwargs["server_tls"] = tls
        elif tls is not None:
            raise ValueError(f"tls={tls!r}: use None, 'terminate' or a ServerTls")
        p = ThreadedProxy(upstream, **kwargs).start()
        made.append((p, pcap))
        return p

    yield factory
    for i, (p, pcap) in enumerate(made, 1):
        p.stop()
        if pcap and any(c.client_log is not None for c in p.proxy.connections):
            p.write_pcap(tmp_path / f"proxy-{i}.pcap")
