"""`mqtt-harness diagnose URL`: which layer of a connection fails, why, what to change, and what an esp-mqtt or
ESPEasy device would report in the same situation (docs/troubleshooting-tls.md).

Exit codes: 0 every layer passed; 2 usage; 10 dns, 11 tcp, 12 tls, 13 certificate, 14 client_certificate,
15 mqtt, 16 roundtrip failed (10 + the layer's index).
"""

from __future__ import annotations

import asyncio
import datetime as dt

from harness.cli import CliError

EXIT_USAGE = 2

EPILOG = """layers, in order (the walk stops at the first that fails; exit code 10 + index):
  10 dns, 11 tcp, 12 tls, 13 certificate, 14 client_certificate, 15 mqtt, 16 roundtrip
  0: every layer passed; 2: usage error

examples:
  mqtt-harness diagnose mqtts://xxxx.s1.eu.hivemq.cloud:8883 --username u --password p
  mqtt-harness diagnose mqtts://broker:8883 --ca ca.pem --device espeasy --device-timeout 100
  mqtt-harness diagnose mqtts://broker:8883 --ca ca.pem --clock 2000-01-01T00:00:00Z --json
"""


def add_parser(sub) -> None:
    import argparse

    p = sub.add_parser(
        "diagnose", help="find which layer of a connection fails, and why",
        description="Walk dns, tcp, tls, certificate, client_certificate, mqtt and roundtrip, timing each; stop at "
                    "the first that fails, print likely causes and the fix, and what an esp-mqtt or ESPEasy device "
                    "would report in the same situation.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url", metavar="URL", help="mqtt://, mqtts://, ws:// or wss:// URL (user:password@ allowed)")
    p.add_argument("--ca", help="CA certificate(s) (PEM file or directory) to trust; default: the system store")
    p.add_argument("--cert", help="client certificate (PEM) for mutual TLS")
    p.add_argument("--key", help="its private key (PEM, unencrypted)")
    p.add_argument("--username", help="MQTT user name")
    p.add_argument("--password", help="MQTT password")
    p.add_argument("--client-id", help="MQTT client id (default: mh-diag-<random>)")
    p.add_argument("--alpn", action="append", metavar="PROTOCOL", help="ALPN protocol to offer (repeatable)")
    p.add_argument("--sni", help="server name to send and to check the certificate against (default: URL host)")
    p.add_argument("--mqtt-version", default="3.1.1", choices=("3.1", "3.1.1", "5"),
                   help="MQTT version of the CONNECT (default: %(default)s)")
    p.add_argument("--tls-version", choices=("1.2", "1.3"),
                   help="speak only this TLS version, as a device that supports only it would")
    p.add_argument("--clock", metavar="ISO8601",
                   help="validate certificates as a device whose clock says this, e.g. 2000-01-01T00:00:00Z (a "
                        "device that was never NTP-synced); a time without zone is UTC")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="seconds each layer may take on this machine (default: %(default)s)")
    p.add_argument("--device", choices=("esp-mqtt", "espeasy"),
                   help="judge as this device: its connect timeout decides the tcp layer")
    p.add_argument("--device-timeout", type=int, metavar="MS",
                   help="the device's own connect timeout in ms (defaults: espeasy 100, esp-mqtt 10000); without "
                        "--device it applies to both")
    p.add_argument("--older-idf", action="store_true",
                   help="show esp-tls error numbers of older ESP-IDF releases (names are the same)")
    p.add_argument("--topic", help="topic for the roundtrip (default: mqtt-harness/diagnose/<client id>)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=run)


def parse_clock(text: str) -> dt.datetime:
    """ISO 8601 date or date-time; no zone means UTC. ValueError with the accepted forms otherwise."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"--clock {text!r} is not an ISO 8601 date-time; write e.g. 2000-01-01T00:00:00Z, "
                         "2030-06-01T12:00:00+02:00 or 2000-01-01") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC)


def build_options(args):
    from harness.diagnose import Options

    clock = None
    if args.clock is not None:
        try:
            clock = parse_clock(args.clock)
        except ValueError as exc:
            raise CliError(str(exc), EXIT_USAGE) from None
    if args.timeout <= 0:
        raise CliError("--timeout must be more than 0 seconds", EXIT_USAGE)
    if args.device_timeout is not None and args.device_timeout <= 0:
        raise CliError("--device-timeout must be more than 0 ms", EXIT_USAGE)
    if bool(args.key) and not args.cert:
        raise CliError("--key needs --cert", EXIT_USAGE)
    return Options(ca=args.ca, cert=args.cert, key=args.key, username=args.username, password=args.password,
                   client_id=args.client_id, alpn=tuple(args.alpn or ()), sni=args.sni, version=args.mqtt_version,
                   clock=clock, timeout=args.timeout, device=args.device, device_timeout_ms=args.device_timeout,
                   tls_version=args.tls_version, topic=args.topic, older_idf=args.older_idf)


def run(args, *, resolve=None) -> int:
    from harness.diagnose import UsageError, diagnose
    from harness.diagnose.render import to_json, to_text
    from harness.errors import UrlError

    options = build_options(args)
    try:
        result = asyncio.run(diagnose(args.url, options, resolve=resolve))
    except (UrlError, UsageError) as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    print(to_json(result) if args.json else to_text(result), flush=True)
    return result.exit_code
