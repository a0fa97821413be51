"""A small HTTP control API for a running proxy, bound to the loopback only.

Same verbs as the Python API, JSON in and out (README.md lists them). The server runs in its own
thread (stdlib http.server); each request is carried out on the proxy's event loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from harness.core.codec import summary
from harness.proxy.proxy import Proxy, ProxyError, parse_endpoint

_CALL_TIMEOUT = 30.0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ControlServer:
    """Serves the control API for `proxy`, whose loop is `loop`, on host:port (port 0 picks one)."""

    def __init__(self, proxy: Proxy, loop: asyncio.AbstractEventLoop, listen: str = "127.0.0.1:0"):
        host, port = parse_endpoint(listen, "control address")
        if not is_loopback(host):
            raise ProxyError(f"the control API listens on the loopback only (it has no authentication); "
                             f"use 127.0.0.1 or ::1, not {host}")
        self.proxy = proxy
        self.loop = loop
        server_cls = type("Server", (ThreadingHTTPServer,), {"address_family": _family(host), "daemon_threads": True})
        try:
            self.httpd = server_cls((host, port), _Handler)
        except OSError as exc:
            raise ProxyError(f"cannot listen on {listen} for the control API: {exc.strerror or exc}") from None
        self.httpd.control = self
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> "ControlServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="mqtt-proxy-control", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def call(self, fn, *args):
        async def run():
            return fn(*args)
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(_CALL_TIMEOUT)

    # ------------------------------------------------------------------ routes
    def handle(self, method: str, parts: list[str], query: dict, body) -> tuple[int, object]:
        p = self.proxy
        route = (method, parts[0] if parts else "", len(parts))
        if route == ("GET", "connections", 1):
            return 200, self.call(lambda: [c.info() for c in p.connections])
        if route == ("POST", "connections", 3) and parts[2] in ("close", "reset"):
            self.call(p.close_connection, int(parts[1]), parts[2] == "reset")
            return 200, {"closed": int(parts[1])}
        if route == ("GET", "faults", 1):
            return 200, self.call(lambda: [f.to_dict() for f in p.faults.values()])
        if route == ("POST", "faults", 1):
            items = body if isinstance(body, list) else [body]
            return 200, self.call(lambda: [p.add_fault(dict(i)).to_dict() for i in items])
        if route == ("DELETE", "faults", 2):
            return 200, self.call(p.remove_fault, parts[1]).to_dict()
        if route == ("DELETE", "faults", 1) or route == ("POST", "heal", 1):
            return 200, {"removed": self.call(p.heal)}
        if route == ("GET", "rules", 1):
            return 200, self.call(lambda: [r.to_dict() for r in p.rules])
        if route == ("POST", "rules", 1):
            items = body if isinstance(body, list) else [body]
            return 200, self.call(lambda: [p.add_rule(dict(i)).to_dict() for i in items])
        if route == ("DELETE", "rules", 2):
            return 200, self.call(p.remove_rule, parts[1]).to_dict()
        if route == ("DELETE", "rules", 1):
            names = self.call(lambda: [r.name for r in p.rules])
            self.call(p.clear_rules)
            return 200, {"removed": names}
        if route == ("GET", "holds", 1):
            return 200, self.call(lambda: [{"connection": cid, "hold": h.hold, "direction": h.direction,
                                            "packet": summary(h.packet), "time": h.time} for cid, h in p.held()])
        if route == ("POST", "release", 2):
            count = (body or {}).get("count") if isinstance(body, dict) else None
            return 200, {"released": self.call(p.release, parts[1], count)}
        if route == ("GET", "tap", 1):
            since = int(query.get("since", ["0"])[0])
            conn = query.get("connection", [None])[0]
            view = p.tap if conn is None else self.call(p.connection, int(conn)).log
            return 200, view.to_json(since)
        if route == ("GET", "events", 1):
            return 200, self.call(lambda: [{"t": e.time, "conn": e.connection, "kind": e.kind, "detail": e.detail}
                                           for e in p.events])
        if route == ("GET", "pcap", 1):
            wanted = query.get("connection")
            ids = [int(i) for v in wanted for i in v.split(",")] if wanted else None
            with tempfile.TemporaryDirectory() as tmp:
                path = self.call(p.write_pcap, Path(tmp) / "proxy.pcap", ids)
                return 200, path.read_bytes()
        raise LookupError(f"no such endpoint: {method} /{'/'.join(parts)}; see harness/proxy/README.md")


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class _Handler(BaseHTTPRequestHandler):
    server_version = "mqtt-harness-proxy"

    def log_message(self, *args) -> None:  # quiet: the CLI prints what matters
        pass

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        body = None
        length = int(self.headers.get("Content-Length") or 0)
        try:
            if length:
                body = json.loads(self.rfile.read(length))
            status, result = self.server.control.handle(method, parts, parse_qs(url.query), body)
        except json.JSONDecodeError as exc:
            status, result = 400, {"error": f"request body is not JSON: {exc}"}
        except LookupError as exc:  # KeyError: unknown fault/rule/connection; LookupError: endpoint
            status, result = 404, {"error": exc.args[0] if exc.args else str(exc)}
        except (ValueError, TypeError, ProxyError) as exc:
            status, result = 400, {"error": str(exc)}
        if isinstance(result, bytes):
            payload, ctype = result, "application/vnd.tcpdump.pcap"
        else:
            payload, ctype = json.dumps(result, default=str).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")
