"""Name resolution for diagnose, injectable: the system resolver for real use, StubResolver for tests.

A resolver is `async resolve(host, port) -> [(family, sockaddr), ...]` (the harness.transport.Resolver shape) and
raises OSError (socket.gaierror) when the name does not resolve. Tests must never use real DNS: they pass a
StubResolver, which answers only the names it was given.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Mapping, Sequence


async def system_resolve(host: str, port: int) -> list[tuple[int, tuple]]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [(family, sockaddr) for family, _type, _proto, _name, sockaddr in infos]


class StubResolver:
    """Answers from a table: host -> list of IP addresses. Any other name fails like NXDOMAIN does
    (socket.gaierror EAI_NONAME), without touching the network. `calls` records every lookup."""

    def __init__(self, table: Mapping[str, Sequence[str]] | None = None):
        self.table = {name.lower().rstrip("."): list(addresses) for name, addresses in (table or {}).items()}
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[tuple[int, tuple]]:
        self.calls.append(host)
        addresses = self.table.get(host.lower().rstrip("."))
        if addresses is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        out = []
        for address in addresses:
            ip = ipaddress.ip_address(address)
            if ip.version == 6:
                out.append((socket.AF_INET6, (address, port, 0, 0)))
            else:
                out.append((socket.AF_INET, (address, port)))
        return out
