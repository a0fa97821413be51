"""Write proxied connections to a pcap file that Wireshark/tshark dissect as MQTT.

Each connection has two TCP legs and each becomes one TCP stream in the file, with the real
addresses and ports: client <-> proxy listener, and proxy <-> broker. Ethernet/IP/TCP headers are
synthesized with consistent sequence and acknowledgement numbers, a SYN/SYN-ACK/ACK handshake at the
start and a FIN (or RST) exchange at the end; every packet the tap recorded is one TCP segment. For
TLS-terminated connections the file holds the decrypted MQTT. Pass-through connections (TLS or
WebSocket) have no decoded packets and are left out.

tshark decodes MQTT by itself only on port 1883 (and MQTT-over-TLS on 8883). For other ports ask it:
``tshark -r FILE -d tcp.port==PORT,mqtt`` once per server port (decode_as_args() builds the flags), or
write the file with ``server_port=1883`` to relabel every leg's server port as 1883.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

_MAX_SEGMENT = 65000  # stay under the IPv4/IPv6 payload length limit
_CLIENT_MAC, _SERVER_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
_TICK = 1e-6  # spacing of synthesized handshake packets


def _scapy():
    try:
        from scapy.layers.inet import IP, TCP
        from scapy.layers.inet6 import IPv6
        from scapy.layers.l2 import Ether
        from scapy.packet import Raw
        from scapy.utils import PcapWriter
    except ImportError:  # pragma: no cover - depends on the environment
        raise RuntimeError("writing pcap files needs scapy: .venv/bin/pip install scapy "
                           "(it is in the 'test' extra of pyproject.toml)") from None
    return Ether, IP, IPv6, TCP, Raw, PcapWriter


def legs(conn, server_port: int | None = None) -> list[tuple[tuple, tuple, object]]:
    """(client address, server address, PacketLog) for each recorded leg of a connection."""
    out = []
    for log, client, server in ((conn.client_log, conn.client_addr, conn.listen_addr),
                                (conn.broker_log, conn.upstream_local, conn.upstream_addr)):
        if log is None or not client or not server:
            continue
        server = (server[0], server_port or server[1])
        out.append((client[:2], server[:2], log))
    return out


def decode_as_args(connections, server_port: int | None = None) -> list[str]:
    """tshark flags that decode every leg's server port as MQTT (none needed for 1883)."""
    ports = sorted({server[1] for conn in connections for _, server, _ in legs(conn, server_port)} - {1883})
    return [arg for p in ports for arg in ("-d", f"tcp.port=={p},mqtt")]


def write_pcap(path: str | Path, connections, *, wall_offset: float, server_port: int | None = None) -> Path:
    """Write `connections` (harness.proxy.Connection objects) to `path`; returns the path.

    `wall_offset` turns the tap's monotonic times into epoch seconds. Call with the tap not being
    written to (the proxy holds its log lock around this)."""
    Ether, IP, IPv6, TCP, Raw, PcapWriter = _scapy()
    frames = []
    for conn in connections:
        for client, server, log in legs(conn, server_port):
            frames += _leg_frames(conn, client, server, log, wall_offset, Ether, IP, IPv6, TCP, Raw)
    frames.sort(key=lambda f: f.time)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = PcapWriter(str(path), linktype=1, sync=False)
    try:
        for frame in frames:
            writer.write(frame)
    finally:
        writer.close()
    return path


def _leg_frames(conn, client, server, log, wall_offset, Ether, IP, IPv6, TCP, Raw) -> list:
    v6 = ipaddress.ip_address(client[0]).version == 6
    entries = log.entries
    frames = []
    seq = {"c": 1000, "s": 500000}  # next sequence number each side sends

    def frame(t: float, sender: str, flags: str, payload: bytes = b""):
        src, dst = (client, server) if sender == "c" else (server, client)
        peer = "s" if sender == "c" else "c"
        ip = (IPv6(src=src[0], dst=dst[0]) if v6 else IP(src=src[0], dst=dst[0]))
        mac = (_CLIENT_MAC, _SERVER_MAC) if sender == "c" else (_SERVER_MAC, _CLIENT_MAC)
        tcp = TCP(sport=src[1], dport=dst[1], flags=flags, seq=seq[sender],
                  ack=seq[peer] if "A" in flags else 0, window=65535)
        pkt = Ether(src=mac[0], dst=mac[1]) / ip / tcp
        if payload:
            pkt = pkt / Raw(payload)
        pkt.time = t + wall_offset
        frames.append(pkt)
        seq[sender] += len(payload) + (1 if ("S" in flags or "F" in flags) else 0)

    start = (entries[0].time if entries else conn.opened_at) - 3 * _TICK
    start = min(start, conn.ready_at or start)
    frame(start, "c", "S")
    frame(start + _TICK, "s", "SA")
    frame(start + 2 * _TICK, "c", "A")
    # On the client leg, "in" is what the client sent; on the broker leg the proxy is the client side.
    client_sends = "in" if log is conn.client_log else "out"
    for e in entries:
        sender = "c" if e.direction == client_sends else "s"
        data = e.raw
        for i in range(0, len(data), _MAX_SEGMENT):
            frame(e.time, sender, "PA", data[i:i + _MAX_SEGMENT])
    if conn.closed_at is not None:
        end = max(conn.closed_at, entries[-1].time if entries else conn.closed_at)
        if conn.reset:
            frame(end, "s", "R")
        else:
            frame(end, "c", "FA")
            frame(end + _TICK, "s", "FA")
            frame(end + 2 * _TICK, "c", "A")
    return frames
