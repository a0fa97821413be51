"""`mqtt-harness pub` and `mqtt-harness sub`: the reference client on the command line.

Exit codes (the same for every mqtt-harness command): 0 success; 1 failure (TLS, a refused CONNECT or
SUBSCRIBE, a protocol error, no ack or fewer messages than -C within --timeout); 2 usage error (checked before
anything is sent); 3 broker unreachable (DNS, TCP, no CONNACK in time). Failures print one line.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from harness.cli import CliError
from harness.core.packets import Will
from harness.errors import ConnectError, ConnectionClosed, DnsError, HarnessError, TcpError, Timeout, UrlError

EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3
EXIT_TIMEOUT = EXIT_ERROR  # an ack or a message that did not come in time: the operation failed
EPILOG = "exit codes: 0 success, 1 failure, 2 usage error, 3 broker unreachable"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default="mqtt://localhost:1883",
                   help="broker URL: mqtt://[user:pass@]host[:port], mqtts://, ws://host:port/path, wss:// "
                        "(default: %(default)s)")
    p.add_argument("-t", "--topic", action="append", required=True, help="topic (sub: filter; repeatable)")
    p.add_argument("-q", "--qos", type=int, choices=(0, 1, 2), default=0,
                   help="QoS of the publish (sub: the maximum QoS asked for) (default: %(default)s)")
    p.add_argument("--mqtt-version", choices=("3.1", "3.1.1", "5"), default="3.1.1",
                   help="protocol version to speak (default: %(default)s)")
    p.add_argument("-i", "--client-id", help="client identifier (default: generated)")
    p.add_argument("--clean", dest="clean", action="store_true", default=True,
                   help="clean session / clean start (default)")
    p.add_argument("--no-clean", dest="clean", action="store_false", help="resume a persistent session")
    p.add_argument("-k", "--keepalive", type=int, default=60, help="keepalive in seconds (default: %(default)s)")
    p.add_argument("--will-topic", help="topic of the will message the broker publishes if we vanish")
    p.add_argument("--will-message", "--will-payload", dest="will_message", default="",
                   help="payload of the will (UTF-8; default: empty)")
    p.add_argument("--will-qos", type=int, choices=(0, 1, 2), default=0, help="QoS of the will (default: 0)")
    p.add_argument("--will-retain", action="store_true", help="publish the will as a retained message")
    p.add_argument("-u", "--username", help="user name for CONNECT (or in the URL: mqtt://user:pass@host)")
    p.add_argument("-P", "--password", help="password for CONNECT")
    p.add_argument("--ca", help="CA certificate file to verify the server (default: system store)")
    p.add_argument("--cert", help="client certificate (mutual TLS)")
    p.add_argument("--key", help="client private key (mutual TLS)")
    p.add_argument("--insecure", action="store_true", help="do not check the server certificate's host name")
    p.add_argument("--sni", help="TLS server name to send (default: the URL's host)")
    p.add_argument("--alpn", action="append", help="TLS ALPN protocol (repeatable)")
    p.add_argument("-C", "--count", type=int, help="pub: publish the message COUNT times; "
                                                    "sub: exit after COUNT messages")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds to wait for the connection, acks and (sub) messages; "
                        "default 10 for pub, forever for sub messages")
    p.add_argument("--trace", action="store_true", help="print every packet, decoded, one line each (stderr)")


def add_parser(sub) -> None:
    pub = sub.add_parser("pub", help="publish a message", epilog=EPILOG,
                         description="Publish a message with the reference client. Everything is checked before "
                                     "anything is sent: the topic name (no wildcards), keepalive, timeout, URL.")
    _common(pub)
    src = pub.add_mutually_exclusive_group()
    src.add_argument("-m", "--message", default=None, help="payload (UTF-8)")
    src.add_argument("-n", "--null-message", action="store_true", help="zero-length payload (clears a retained message)")
    src.add_argument("-f", "--file", help="payload from a file")
    pub.add_argument("-r", "--retain", action="store_true", help="ask the broker to retain the message")
    pub.set_defaults(func=run_pub)

    s = sub.add_parser("sub", help="subscribe and print messages", epilog=EPILOG,
                       description="Subscribe with the reference client and print messages. Topic filters are "
                                   "checked before anything is sent ('+' a whole level, '#' the whole last one).")
    _common(s)
    s.add_argument("-v", "--verbose", action="store_true", help="print 'topic payload' instead of the payload")
    s.add_argument("--retained-only", action="store_true", help="print only messages with the retain flag")
    s.set_defaults(func=run_sub)


def _usage(flag: str, problem: str) -> CliError:
    return CliError(f"{flag}: {problem}", EXIT_USAGE)


def validate(args, command: str) -> None:
    """Everything the user typed, checked before a byte is sent; errors name the flag and the rule."""
    from harness.topics import check_topic_filter, check_topic_name
    from harness.url import parse_url

    try:
        parse_url(args.url)
    except UrlError as exc:
        raise _usage("--url", str(exc).removeprefix("url: ")) from None
    check = check_topic_name if command == "pub" else check_topic_filter
    for topic in args.topic:
        try:
            check(topic)
        except ValueError as exc:
            hint = " (pub takes a topic name; wildcards are for sub)" if command == "pub" and (
                "+" in topic or "#" in topic) else ""
            raise _usage(f"-t {topic!r}", f"{exc}{hint}") from None
    if not 0 <= args.keepalive <= 65535:
        raise _usage(f"-k/--keepalive {args.keepalive}", "keepalive is a 16-bit number of seconds, 0 (off) to 65535 "
                                                         "(§3.1.2.10)")
    if args.timeout is not None and not args.timeout > 0:
        raise _usage(f"--timeout {args.timeout:g}", "give a number of seconds above 0")
    if args.count is not None and args.count < 1:
        raise _usage(f"-C/--count {args.count}", "give 1 or more")
    if args.will_topic is not None:
        try:
            check_topic_name(args.will_topic)
        except ValueError as exc:
            raise _usage(f"--will-topic {args.will_topic!r}", str(exc)) from None
    if args.client_id is not None and len(args.client_id.encode()) > 65535:
        raise _usage("-i/--client-id", "longer than 65535 bytes of UTF-8 [MQTT-1.5.3-1]")


def _client_kwargs(args) -> dict:
    from harness.transport import TlsOptions

    url = args.url
    tls = None
    if args.ca or args.cert or args.key or args.insecure or args.sni or args.alpn:
        if not url.startswith(("mqtts://", "wss://")):
            raise CliError(f"TLS options given but {url} is not mqtts:// or wss://: use mqtts:// or drop "
                           "--ca/--cert/--key", EXIT_USAGE)
        if bool(args.cert) != bool(args.key):
            raise CliError("--cert and --key go together: give both for mutual TLS", EXIT_USAGE)
        tls = TlsOptions(ca=args.ca, cert=args.cert, key=args.key, server_hostname=args.sni,
                         alpn=args.alpn, insecure_skip_hostname_check=args.insecure)
    will = None
    if args.will_topic:
        will = Will(args.will_topic, args.will_message.encode(), args.will_qos, args.will_retain)
    elif args.will_retain or args.will_message:
        raise CliError("--will-message/--will-retain need --will-topic", EXIT_USAGE)
    return dict(version=args.mqtt_version, client_id=args.client_id, clean=args.clean, keepalive=args.keepalive,
                will=will, username=args.username, password=args.password, tls=tls)


def _tracer(args):
    if not args.trace:
        return None

    t0 = []

    def trace(entry) -> None:
        if not t0:
            t0.append(entry.time)
        print(entry.line(t0[0]), file=sys.stderr, flush=True)
    return trace


async def _connect(args, timeout: float):
    from harness.client import Client

    client = Client(args.url, timeout=timeout, **_client_kwargs(args))
    client.log.listener = _tracer(args)
    await client.open(timeout=timeout)
    return client


def _run(coro) -> int:
    try:
        return asyncio.run(coro)
    except (DnsError, TcpError) as exc:
        raise CliError(str(exc), EXIT_UNREACHABLE) from None
    except Timeout as exc:
        raise CliError(str(exc), EXIT_UNREACHABLE if "CONNACK" in str(exc) else EXIT_TIMEOUT) from None
    except (ConnectError, ConnectionClosed, HarnessError, ValueError) as exc:
        raise CliError(str(exc), EXIT_ERROR) from None


def run_pub(args) -> int:
    validate(args, "pub")
    if args.file:
        try:
            with open(args.file, "rb") as fh:
                payload = fh.read()
        except OSError as exc:
            raise CliError(f"cannot read --file: {exc}", EXIT_USAGE) from None
    elif args.null_message:
        payload = b""
    elif args.message is not None:
        payload = args.message.encode()
    else:
        raise CliError("no payload: give -m MESSAGE, -f FILE or -n", EXIT_USAGE)
    if len(args.topic) != 1:
        raise CliError("pub takes exactly one -t TOPIC", EXIT_USAGE)
    timeout = 10.0 if args.timeout is None else args.timeout
    count = args.count or 1

    async def main() -> int:
        client = await _connect(args, timeout)
        try:
            futures = [client.publish_nowait(args.topic[0], payload, args.qos, args.retain) for _ in range(count)]
            if args.qos:
                done = await asyncio.wait_for(asyncio.gather(*futures), timeout)
                failed = [a for a in done if a.reason_code >= 0x80]
                if failed:
                    raise HarnessError(f"broker refused {len(failed)} of {count} message(s): {failed[0]}")
            await client.disconnect(timeout=timeout)
        except asyncio.TimeoutError:
            raise Timeout(f"not all {count} message(s) were acknowledged within {timeout:g}s") from None
        finally:
            await client.close()
        return 0
    return _run(main())


def _closed_after_subscribe(args, client, exc: ConnectionClosed) -> str:
    """What was sent and what the broker did: a bare 'connection closed' leaves the user guessing which filter
    (or option) the broker objected to."""
    from harness.core.reason_codes import reason_name

    sent = ", ".join(repr(t) for t in args.topic)
    did = str(exc) or "closed the connection"
    if client.server_disconnect is not None:
        code = client.server_disconnect.reason_code
        said = client.server_disconnect.properties.get("reason_string")
        did = f"sent DISCONNECT {code:#04x} ({reason_name(code)})" + (f": {said!r}" if said else "")
    return (f"SUBSCRIBE to {sent} at QoS {args.qos} (MQTT {args.mqtt_version}) got no SUBACK: the broker {did}. "
            "A broker closes the connection on a filter or QoS it will not serve (an ACL, a $-prefix or a "
            "shared subscription it does not support); its log says which")


def run_sub(args) -> int:
    validate(args, "sub")
    connect_timeout = 10.0 if args.timeout is None else args.timeout

    async def main() -> int:
        client = await _connect(args, connect_timeout)
        received = 0
        try:
            try:
                suback = await client.subscribe([(t, args.qos) for t in args.topic], timeout=connect_timeout)
            except ConnectionClosed as exc:
                raise ConnectionClosed(_closed_after_subscribe(args, client, exc)) from None
            refused = [t for t, rc in zip(args.topic, suback.reason_codes) if rc >= 0x80]
            if refused:
                raise HarnessError(f"broker refused the subscription to {', '.join(refused)}")
            loop = asyncio.get_running_loop()
            deadline = None if args.timeout is None else loop.time() + args.timeout
            while args.count is None or received < args.count:
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    raise Timeout(f"received {received} of {args.count or 'any'} message(s) within {args.timeout:g}s")
                try:
                    msg = await client.receive(timeout=remaining if remaining is not None else 365 * 86400)
                except Timeout:
                    raise Timeout(f"received {received} of {args.count or 'any'} message(s) "
                                  f"within {args.timeout:g}s") from None
                if args.retained_only and not msg.retain:
                    continue
                text = msg.payload.decode("utf-8", "backslashreplace")
                print(f"{msg.topic} {text}" if args.verbose else text, flush=True)
                received += 1
            await client.disconnect(timeout=connect_timeout)
        finally:
            await client.close()
        return 0
    return _run(main())


__all__ = ["add_parser", "run_pub", "run_sub"]
