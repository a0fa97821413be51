"""Broker URLs: ``mqtt://``, ``mqtts://``, ``ws://`` and ``wss://``.

Default ports follow esp-mqtt: 1883, 8883, 80, 443. A WebSocket URL without a path gets
``/mqtt``, the path paho's JavaScript client, HiveMQ and EMQX use. esp-mqtt sends ``/`` when its
URI has no path, and mosquitto answers on any path, so give the path explicitly when a broker cares.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

from harness.errors import UrlError

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883, "ws": 80, "wss": 443}
DEFAULT_WS_PATH = "/mqtt"

# Schemes other clients use for the same thing; named in the error so the fix is one edit away.
_SCHEME_HINTS = {"tcp": "mqtt", "ssl": "mqtts", "tls": "mqtts", "mqtt+ssl": "mqtts", "http": "ws", "https": "wss"}
# Letters, digits, '-', '_' and '.'; '_' is not valid DNS but Docker and /etc/hosts names use it.
_HOSTNAME = re.compile(r"^[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?\.?$")


@dataclass(frozen=True)
class BrokerUrl:
    """Where a broker listens and how to reach it. ``str()`` and ``repr()`` never show the password."""

    scheme: str
    host: str  # IPv6 literals without brackets
    port: int
    path: str = ""  # HTTP request target for ws/wss (path and query); "" for mqtt/mqtts
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def tls(self) -> bool:
        return self.scheme in ("mqtts", "wss")

    @property
    def ws(self) -> bool:
        return self.scheme in ("ws", "wss")

    @property
    def address(self) -> str:
        """``host:port``, with IPv6 literals in brackets; the form error messages use."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def display(self) -> str:
        """The URL with the password replaced by ``***``, ports and paths spelled out."""
        userinfo = ""
        if self.username is not None or self.password is not None:
            userinfo = quote(self.username or "", safe="")
            if self.password is not None:
                userinfo += ":***"
            userinfo += "@"
        return f"{self.scheme}://{userinfo}{self.address}{self.path}"

    def __str__(self) -> str:
        return self.display()


def parse_url(url: str) -> BrokerUrl:
    """Parse a broker URL. Raises UrlError naming what is wrong and how to write it instead.

    User name and password are percent-decoded (write ``@`` as ``%40``, ``:`` as ``%3A``).
    """
    if not isinstance(url, str) or not url.strip():
        raise UrlError("empty broker URL; write e.g. mqtt://localhost:1883")
    url = url.strip()
    bent = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):/*(.*)$", url)
    if "://" not in url and bent and bent[1].lower() in DEFAULT_PORTS:  # mqtt:/x, mqtt:x, mqtt:///x
        raise UrlError(f"{_hide_password(url)!r}: the scheme needs '://' after it; write "
                       f"{bent[1].lower()}://{bent[2].lstrip('/') or 'localhost'}")
    if "://" not in url:
        raise UrlError(f"{url!r} has no scheme; write e.g. mqtt://{url} (supported: {_supported()})")
    scheme = url.split("://", 1)[0].lower()
    if scheme not in DEFAULT_PORTS:
        hint = f"; use {_SCHEME_HINTS[scheme]}:// instead" if scheme in _SCHEME_HINTS else ""
        raise UrlError(f"unknown scheme {scheme!r} in {_hide_password(url)!r}{hint} (supported: {_supported()})")

    try:
        parts = urlsplit(url)
    except ValueError as e:  # unbalanced or invalid [IPv6] brackets
        raise UrlError(f"malformed URL {_hide_password(url)!r}: {e}; IPv6 hosts look like mqtt://[::1]:1883") from None
    shown = _hide_password(url)
    hostport = parts.netloc.rpartition("@")[2]

    if not hostport.startswith("[") and hostport.count(":") > 1:
        raise UrlError(f"IPv6 address in {shown!r} needs brackets, e.g. {scheme}://[::1]:{DEFAULT_PORTS[scheme]}")
    if not hostport or hostport.startswith(":"):
        raise UrlError(f"no host in {shown!r}; write e.g. {scheme}://localhost")
    host = parts.hostname or ""
    if not host:
        raise UrlError(f"no host in {shown!r}; write e.g. {scheme}://localhost")
    if not hostport.startswith("[") and not _HOSTNAME.match(host):
        raise UrlError(f"host {host!r} in {shown!r} is not a valid host name or IP address")

    port = _port(hostport, scheme, shown)

    if parts.fragment:
        raise UrlError(f"{shown!r} has a '#' fragment, which is never sent to a broker; remove it")
    if scheme in ("ws", "wss"):
        path = parts.path or DEFAULT_WS_PATH
        if parts.query:
            path += "?" + parts.query
    else:
        if parts.path not in ("", "/") or parts.query:
            raise UrlError(
                f"{shown!r} has a path or query, which only ws:// and wss:// use; remove it or use a WebSocket URL"
            )
        path = ""

    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    if username == "" and password is None:
        username = None  # "mqtt://@host": an '@' with nothing before it
    return BrokerUrl(scheme, host, port, path, username, password)


def _port(hostport: str, scheme: str, shown: str) -> int:
    # Read the port ourselves: urlsplit's errors don't say what to write instead.
    after = hostport.rpartition("]")[2] if hostport.startswith("[") else hostport
    if ":" not in after:
        return DEFAULT_PORTS[scheme]
    text = after.rpartition(":")[2]
    if not text:
        raise UrlError(f"empty port after ':' in {shown!r}; remove the ':' to use {DEFAULT_PORTS[scheme]}")
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise UrlError(f"bad port {text!r} in {shown!r}; a port is a number from 1 to 65535")
    return int(text)


def _hide_password(url: str) -> str:
    # Error messages quote the URL the user wrote, minus the secret.
    return re.sub(r"^([^:/]+://[^:@/]*:)[^/]*@", r"\1***@", url)


def _supported() -> str:
    return ", ".join(f"{s}://" for s in DEFAULT_PORTS)
