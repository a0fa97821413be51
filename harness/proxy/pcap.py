"""Write proxied connections to a pcap file that Wireshark/tshark dissect as MQTT.

Each connection has two TCP legs and each becomes one TCP stream in the file, with the real
addresses and ports: client <-> proxy listener, and proxy <-> broker. Ethernet/IP/TCP headers are
synthesized with struct (scapy took ~1 ms a frame), with consistent sequence and acknowledgement
numbers, valid checksums, a SYN/SYN-ACK/ACK handshake at the start and a FIN (or RST) exchange at
the end; every packet the tap recorded is one TCP segment. For
TLS-terminated connections the file holds the decrypted MQTT. Pass-through connections (TLS or
WebSocket) have no decoded packets and are left out.

tshark decodes MQTT by itself only on port 1883 (and MQTT-over-TLS on 8883). For other ports ask it:
``tshark -r FILE -d tcp.port==PORT,mqtt`` once per server port (decode_as_args() builds the flags), or
write the file with ``server_port=1883`` to relabel every leg's server port as 1883.
"""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

_MAX_SEGMENT = 65000  # stay under the IPv4/IPv6 payload length limit
_SNAPLEN = 0xFFFF
_CLIENT_MAC, _SERVER_MAC = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
_TICK = 1e-6  # spacing of synthesized handshake packets
_FIN, _SYN, _RST, _PSH, _ACK = 0x01, 0x02, 0x04, 0x08, 0x10
_TCP = 6


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
    frames = []
    for conn in connections:
        for client, server, log in legs(conn, server_port):
            frames += _leg_frames(conn, client, server, log)
    frames.sort(key=lambda f: f[0])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, _SNAPLEN, 1))  # microsecond pcap, Ethernet
        for t, frame in frames:
            t += wall_offset
            sec = int(t)
            usec = round((t - sec) * 1e6)
            if usec >= 1_000_000:
                sec, usec = sec + 1, usec - 1_000_000
            out.write(struct.pack("<IIII", sec, usec, len(frame), len(frame)))
            out.write(frame)
    return path


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071). As 2**16 = 1 (mod 0xFFFF), the 16-bit words' one's complement sum
    is the whole buffer read as one big number, mod 0xFFFF (0 only for all-zero words)."""
    if len(data) % 2:
        data += b"\0"
    total = int.from_bytes(data, "big")
    return ~((total - 1) % 0xFFFF + 1 if total else 0) & 0xFFFF


def _leg_frames(conn, client, server, log) -> list[tuple[float, bytes]]:
    """(time, Ethernet frame) for one leg: handshake, one segment per packet (split at _MAX_SEGMENT), close."""
    ips = {"c": ipaddress.ip_address(client[0]), "s": ipaddress.ip_address(server[0])}
    ports = {"c": client[1], "s": server[1]}
    v6 = ips["c"].version == 6
    entries = log.entries
    frames = []
    seq = {"c": 1000, "s": 500000}  # next sequence number each side sends

    def frame(t: float, sender: str, flags: int, payload: bytes = b"") -> None:
        peer = "s" if sender == "c" else "c"
        src, dst = ips[sender].packed, ips[peer].packed
        tcp_len = 20 + len(payload)
        ack = seq[peer] & 0xFFFFFFFF if flags & _ACK else 0
        tcp = struct.pack("!HHIIBBHHH", ports[sender], ports[peer], seq[sender] & 0xFFFFFFFF, ack, 5 << 4, flags,
                          65535, 0, 0)
        pseudo = (struct.pack("!16s16sI3xB", src, dst, tcp_len, _TCP) if v6
                  else struct.pack("!4s4sxBH", src, dst, _TCP, tcp_len))
        tcp = tcp[:16] + struct.pack("!H", _checksum(pseudo + tcp + payload)) + tcp[18:]
        if v6:
            ip = struct.pack("!IHBB16s16s", 6 << 28, tcp_len, _TCP, 64, src, dst)
        else:
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + tcp_len, 1, 0, 64, _TCP, 0, src, dst)
            ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
        src_mac, dst_mac = (_CLIENT_MAC, _SERVER_MAC) if sender == "c" else (_SERVER_MAC, _CLIENT_MAC)
        ether = dst_mac + src_mac + (b"\x86\xdd" if v6 else b"\x08\x00")
        frames.append((t, ether + ip + tcp + payload))
        seq[sender] += len(payload) + (1 if flags & (_SYN | _FIN) else 0)

    start = (entries[0].time if entries else conn.opened_at) - 3 * _TICK
    start = min(start, conn.ready_at or start)
    frame(start, "c", _SYN)
    frame(start + _TICK, "s", _SYN | _ACK)
    frame(start + 2 * _TICK, "c", _ACK)
    # On the client leg, "in" is what the client sent; on the broker leg the proxy is the client side.
    client_sends = "in" if log is conn.client_log else "out"
    for e in entries:
        sender = "c" if e.direction == client_sends else "s"
        data = e.raw
        for i in range(0, len(data), _MAX_SEGMENT):
            frame(e.time, sender, _PSH | _ACK, data[i:i + _MAX_SEGMENT])
    if conn.closed_at is not None:
        end = max(conn.closed_at, entries[-1].time if entries else conn.closed_at)
        if conn.reset:
            frame(end, "s", _RST)
        else:
            frame(end, "c", _FIN | _ACK)
            frame(end + _TICK, "s", _FIN | _ACK)
            frame(end + 2 * _TICK, "c", _ACK)
    return frames
