"""`mqtt-harness proxy`: run the fault-injecting MQTT proxy in front of a broker until Ctrl-C.

Prints one line per listener on stdout when ready (the proxy URL, then the control API URL if any);
with --trace, one line per packet on stderr. With nothing to decode or record (no --rules, --control,
--trace, --pcap or --tls-terminate) the bytes are forwarded in C (harness.proxy.native), unless
--python-forwarder; the packet tap is kept only when --trace, --pcap or --control can read it.
Exit codes: 0 after Ctrl-C/SIGTERM, 1 on a start failure, 2 on usage errors.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from harness.cli import CliError

EXIT_USAGE = 2


def add_parser(sub) -> None:
    p = sub.add_parser(
        "proxy", help="run the fault-injecting MQTT proxy",
        description="Forward MQTT between clients and a broker, injecting stream faults and applying packet "
                    "rules; faults and rules can change at runtime through --control.")
    p.add_argument("--listen", default="127.0.0.1:1884", help="host:port to listen on; port 0 picks one "
                                                             "(default: %(default)s)")
    p.add_argument("--upstream", required=True,
                   help="broker: host:port, or a URL (mqtt://, mqtts:// to pass TLS through or with "
                        "--tls-terminate, ws:// or wss:// to pass WebSocket through)")
    p.add_argument("--tls-terminate", action="store_true",
                   help="clients speak TLS to the proxy (needs --cert/--key); MQTT is decoded, so rules work")
    p.add_argument("--cert", help="server certificate (PEM) the proxy presents with --tls-terminate")
    p.add_argument("--key", help="its private key (PEM, unencrypted)")
    p.add_argument("--client-ca", help="with --tls-terminate: require client certificates signed by this CA")
    p.add_argument("--upstream-tls", action="store_true",
                   help="TLS to the broker (same as an mqtts:// upstream URL)")
    p.add_argument("--ca", help="CA to verify the broker with when the proxy speaks TLS to it "
                                "(default: the system store)")
    p.add_argument("--upstream-cert", help="client certificate for the broker leg (mutual TLS)")
    p.add_argument("--upstream-key", help="key of --upstream-cert")
    p.add_argument("--rules", metavar="FILE", help="YAML or JSON file with rules and/or faults (see "
                                                    "harness/proxy/README.md)")
    p.add_argument("--pcap", metavar="FILE", help="write the decoded traffic to this pcap file on exit")
    p.add_argument("--control", metavar="HOST:PORT", help="serve the HTTP control API here (loopback only)")
    p.add_argument("--trace", action="store_true", help="print every packet on stderr, both legs")
    p.add_argument("--no-tap", action="store_true",
                   help="record nothing, even with --control (no --trace, no --pcap); without --trace, --pcap "
                        "or --control nothing is recorded anyway, since nothing could read it")
    p.add_argument("--python-forwarder", action="store_true",
                   help="forward in Python even when nothing needs it (by default a proxy without --rules, "
                        "--control, --trace, --pcap or --tls-terminate forwards in C, built with the system "
                        "compiler on first use)")
    p.add_argument("--no-quick-ack", action="store_true",
                   help="let the kernel delay ACKs as a plain forwarder does (by default every read is ACKed at "
                        "once, within 1-2 ms by the C forwarder, which avoids ~40 ms Nagle stalls with peers such "
                        "as mosquitto)")
    p.add_argument("--seed", type=int, help="seed for toxicity draws, jitter and slicer sizes")
    p.set_defaults(func=run)


def _build(args):
    from harness.proxy.config import load_config
    from harness.proxy.proxy import Proxy, ServerTls, upstream_url
    from harness.transport import TlsOptions

    if args.no_tap and (args.trace or args.pcap):
        raise CliError("--no-tap records nothing, so --trace and --pcap cannot work; drop one of them", EXIT_USAGE)
    if args.tls_terminate and not args.cert:
        raise CliError("--tls-terminate needs --cert (and --key unless the certificate file holds it)", EXIT_USAGE)
    if (args.cert or args.key or args.client_ca) and not args.tls_terminate:
        raise CliError("--cert/--key/--client-ca are for --tls-terminate; add it or drop them", EXIT_USAGE)
    if bool(args.upstream_cert) != bool(args.upstream_key):
        raise CliError("--upstream-cert and --upstream-key go together", EXIT_USAGE)
    try:
        upstream = upstream_url(args.upstream)
    except Exception as exc:  # noqa: BLE001 - UrlError or ProxyError, both one line
        raise CliError(str(exc), EXIT_USAGE) from None
    if args.upstream_tls:
        if upstream.scheme != "mqtt":
            raise CliError(f"--upstream-tls applies to host:port or mqtt:// upstreams, not {upstream.scheme}://",
                           EXIT_USAGE)
        upstream = type(upstream)("mqtts", upstream.host, upstream.port)
    upstream_tls = None
    if args.ca or args.upstream_cert:
        if not (upstream.tls and args.tls_terminate):
            raise CliError("--ca/--upstream-cert apply when the proxy speaks TLS to the broker: use --tls-terminate "
                           "with an mqtts:// upstream (or --upstream-tls)", EXIT_USAGE)
        upstream_tls = TlsOptions(ca=args.ca, cert=args.upstream_cert, key=args.upstream_key)
    server_tls = ServerTls(args.cert, args.key, args.client_ca) if args.tls_terminate else None
    faults, rules = [], []
    if args.rules:
        try:
            faults, rules = load_config(args.rules)
        except ValueError as exc:
            raise CliError(str(exc), EXIT_USAGE) from None
    trace = (lambda line: print(line, file=sys.stderr, flush=True)) if args.trace else None
    # A tap nobody can read (no --trace, --pcap or --control) would only grow for as long as the proxy runs.
    tap = not args.no_tap and bool(args.trace or args.pcap or args.control)
    native = not (tap or faults or rules or args.control or server_tls or args.python_forwarder)
    if native:
        from harness.proxy.native import unavailable

        why = unavailable()
        if why:
            print(f"proxy: forwarding in Python; the C forwarder is not available: {why}", file=sys.stderr,
                  flush=True)
            native = False
    try:
        proxy = Proxy(upstream, args.listen, server_tls=server_tls, upstream_tls=upstream_tls, tap=tap,
                      seed=args.seed, trace=trace, quick_ack=not args.no_quick_ack, native=native)
    except Exception as exc:  # noqa: BLE001 - ProxyError/TlsError: one line each
        raise CliError(str(exc)) from None
    if rules and not proxy.mqtt:
        raise CliError(f"{args.rules} has rules, but in {proxy.mode} mode the proxy cannot decode MQTT; "
                       "use --tls-terminate or a plain upstream", EXIT_USAGE)
    return proxy, faults, rules


def run(args) -> int:
    proxy, faults, rules = _build(args)
    return asyncio.run(_serve(proxy, faults, rules, args))


async def _serve(proxy, faults, rules, args) -> int:
    from harness.proxy.control import ControlServer
    from harness.proxy.proxy import ProxyError

    try:
        await proxy.start()
    except ProxyError as exc:
        raise CliError(str(exc)) from None
    control = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        for fault in faults:
            proxy.add_fault(fault)
        for rule in rules:
            proxy.add_rule(rule)
        if args.control:
            try:
                control = ControlServer(proxy, loop, args.control).start()
            except ProxyError as exc:
                raise CliError(str(exc)) from None
        how = f"{proxy.mode}, native forwarder" if proxy.native else proxy.mode
        print(f"proxy {proxy.url} -> {proxy.upstream.display()} ({how})", flush=True)
        if control is not None:
            print(f"control {control.url}", flush=True)
        await stop.wait()
    finally:
        if control is not None:
            control.stop()
        await proxy.close()
        if args.pcap:
            path = proxy.write_pcap(args.pcap)
            print(f"pcap {path}", flush=True)
    return 0
