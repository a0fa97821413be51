"""`mqtt-harness dut virtual` and `python -m harness.device.virtual`: run one virtual ESP32 in the foreground.

The first stdout line is the serial port path (a pseudo-terminal); SIGUSR1 replugs it (new path on the next
line), SIGTERM/SIGINT stop it."""

from __future__ import annotations

import argparse
import ipaddress
import sys

from harness.device.lines import DEFAULT_MAX_LINE, MIN_MAX_LINE
from harness.device.virtual.bugs import BUGS, describe, parse_bugs


def _bug(value: str) -> frozenset[str]:
    try:
        return parse_bugs([value])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _mac(value: str) -> bytes:
    parts = value.replace("-", ":").split(":")
    try:
        mac = bytes(int(p, 16) for p in parts)
    except ValueError:
        mac = b""
    if len(mac) != 6 or any(len(p) != 2 for p in parts):
        raise argparse.ArgumentTypeError(f"not a MAC address (aa:bb:cc:dd:ee:ff): {value!r}")
    return mac


def _resolve(value: str) -> tuple[str, str]:
    name, sep, ip = value.partition("=")
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        sep = ""
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=IP, got {value!r}")
    return name, ip


def _max_line(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < MIN_MAX_LINE:
        raise argparse.ArgumentTypeError(f"--max-line must be an integer >= {MIN_MAX_LINE}")
    return n


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bug", action="append", default=[], type=_bug, metavar="NAME",
                        help="switch on a seeded device bug (repeatable, or comma-separated); see --list-bugs. "
                             f"One of: {', '.join(BUGS)}")
    parser.add_argument("--list-bugs", action="store_true", help="list the seeded bugs and exit")
    parser.add_argument("--link", metavar="PATH", help="also make PATH a symlink to the port, like /dev/serial/by-id")
    parser.add_argument("--mac", type=_mac, help="base MAC (default: Espressif OUI + the pid)")
    parser.add_argument("--resolve", action="append", default=[], type=_resolve, metavar="NAME=IP",
                        help="a host name the device resolves (no real DNS: localhost and IP literals only "
                             "otherwise); repeatable")
    parser.add_argument("--max-line", type=_max_line, default=DEFAULT_MAX_LINE, metavar="N",
                        help=f"longest protocol line (default {DEFAULT_MAX_LINE})")


def run(args: argparse.Namespace) -> int:
    if args.list_bugs:
        print(describe())
        return 0
    from harness.device.virtual.server import Options, Server

    bugs = frozenset().union(*args.bug) if args.bug else frozenset()
    options = Options(bugs=bugs, resolve=dict(args.resolve), link=args.link, mac=args.mac, max_line=args.max_line)
    return Server(options).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.device.virtual",
                                     description="A virtual ESP32 (esp-mqtt) on a pseudo-terminal, speaking the "
                                                 "mqtt-harness device protocol.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
