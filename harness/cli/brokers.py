"""`mqtt-harness brokers ...` (run brokers under test by hand) and `mqtt-harness certs DIR` (write a test PKI)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from harness.brokers import definitions as brokerdefs, reaper
from harness.brokers.backends import BACKENDS, load_backend
from harness.brokers.broker import LISTENER_KINDS, BrokerError
from harness.cli import CliError
from harness.pki import generate_pki

DEFAULT_CERTS = brokerdefs.BROKERS_DIR.parent / "certs"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    brokers = subparsers.add_parser("brokers", help="list, start and stop brokers under test")
    sub = brokers.add_subparsers(dest="brokers_command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser("list", help="broker definitions, which can run here (and why not), running instances")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("up", help="start a broker and print its URLs; runs until Ctrl-C unless --detach")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--backend", choices=BACKENDS,
                   help="how to run it; default: as `mqtt-harness run` chooses (docker where it works, else process)")
    p.add_argument("--listeners", metavar="KINDS",
                   help=f"comma-separated listener kinds ({','.join(LISTENER_KINDS)}); default: the broker's own")
    p.add_argument("--certs", metavar="DIR", type=Path, default=DEFAULT_CERTS,
                   help="PKI directory for TLS listeners, generated if missing or stale (default: %(default)s)")
    p.add_argument("--detach", action="store_true", help="leave it running; stop it with `brokers down NAME`")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for a CONNACK (default: %(default)s)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="stop brokers left running by `brokers up --detach`")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("logs", help="print the log of each running instance of a broker")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("build", help="build a broker's docker image locally (docker backend)")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("probe", help="discover what the broker at a URL supports (CONNACK properties and probes)")
    p.add_argument("url", help="mqtt://, mqtts://, ws:// or wss:// URL of any broker")
    p.add_argument("--ca")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("-u", "--username")
    p.add_argument("-P", "--password")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per probe (default %(default)s)")
    p.set_defaults(func=cmd_probe)

    certs = subparsers.add_parser("certs", help="write a test PKI (CA, server/client certs, broken ones) and README")
    certs.add_argument("dir", metavar="DIR", type=Path)
    certs.add_argument("--force", action="store_true", help="regenerate even if a fresh set is there")
    certs.set_defaults(func=cmd_certs)


def _definition(name: str) -> brokerdefs.BrokerDef:
    try:
        return brokerdefs.load(name)
    except BrokerError as exc:
        raise CliError(str(exc)) from None


def _availability(defn: brokerdefs.BrokerDef, backend: str) -> str:
    """"available", or why not (with the fix)."""
    if getattr(defn, backend) is None:
        return f"no {backend} definition"
    try:
        module = load_backend(backend)
    except BrokerError as exc:
        return str(exc)
    check = getattr(module, "unavailable_reason", None)
    if check is None:
        return f"harness.brokers.backends.{backend} cannot tell (no unavailable_reason())"
    return check(defn) or "available"


def cmd_list(args: argparse.Namespace) -> int:
    reaper.reap_once()
    for defn in brokerdefs.load_all():
        print(f"{defn.name}: {defn.display_name} - {defn.product}")
        print(f"  MQTT {', '.join(defn.capabilities.versions)}; max QoS {defn.capabilities.max_qos}; "
              f"listeners {', '.join(defn.listeners)}"
              + (" (one per instance)" if defn.one_listener_per_instance else ""))
        for backend in BACKENDS:
            if getattr(defn, backend) is not None:
                print(f"  {backend}: {_availability(defn, backend)}")
    records = reaper.list_records()
    if records:
        print("\nrunning:")
        for rec in records:
            how = "detached" if rec.detached else f"held by pid {rec.owner_pid}"
            print(f"  {rec.name} ({rec.backend}, {how}, id {rec.id})")
            for kind, url in rec.urls.items():
                print(f"    {kind:<11} {url}")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    defn = _definition(args.name)
    image = None
    if args.backend is None:
        from harness.plugin.brokers import choose_backend

        spec = choose_backend(defn)  # the same choice `run` makes
        args.backend, image = spec.backend, spec.image
        print(f"backend: {spec.backend} ({spec.chosen_because}); --backend overrides", flush=True)
    try:
        backend = load_backend(args.backend)
    except BrokerError as exc:
        raise CliError(str(exc)) from None
    listeners = [k.strip() for k in args.listeners.split(",")] if args.listeners else None
    wants_tls = any(k in brokerdefs.TLS_KINDS for k in (listeners or defn.default_listeners))
    pki = generate_pki(args.certs) if wants_tls else None

    # Ctrl-C, SIGTERM and SIGHUP all become KeyboardInterrupt: start() cleans up after it, the finally below too.
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)
    try:
        extra = {"image": image} if image else {}
        broker = backend.create(defn, listeners=listeners, pki=pki, detached=args.detach, **extra)
        broker.start(timeout=args.timeout)
    except BrokerError as exc:
        raise CliError(str(exc), 3) from None  # set-up failed
    try:
        print(f"{defn.display_name} is up ({args.backend} backend):")
        for kind, url in broker.urls().items():
            print(f"  {kind:<11} {url}")
        if pki is not None:
            print(f"  CA {pki.ca}; client certificate {pki.client_cert}, key {pki.client_key} "
                  f"(see {pki.dir}/README.md)")
        if args.detach:
            print(f"Left running. Logs: mqtt-harness brokers logs {defn.name}; "
                  f"stop: mqtt-harness brokers down {defn.name}")
            return 0
        print("Press Ctrl-C to stop.", flush=True)
        wait = getattr(broker, "wait", None)
        if wait is None:
            threading.Event().wait()
        code = wait()
        print(f"{defn.name} exited by itself with code {code}. Its log:\n{broker.logs()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"stopping {defn.name}")
        return 0
    finally:
        if not args.detach:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
            broker.stop()


def cmd_down(args: argparse.Namespace) -> int:
    records = [r for r in reaper.list_records() if r.name == args.name]
    detached = [r for r in records if r.detached]
    held = [r for r in records if not r.detached and r.owner_alive()]
    if not detached:
        if held:
            raise CliError(f"{args.name} was started by `brokers up` (pid {held[0].owner_pid}) or a test run, not "
                           "detached; stop it there (Ctrl-C)")
        raise CliError(f"no detached {args.name} is running (see `mqtt-harness brokers list`)")
    for record in detached:
        try:
            reaper.teardown(record)
        except BrokerError as exc:
            raise CliError(f"could not stop {record.id}: {exc}") from None
        print(f"stopped {record.name} ({record.backend}, id {record.id})")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    records = [r for r in reaper.list_records() if r.name == args.name]
    if not records:
        raise CliError(f"no {args.name} instance is running (see `mqtt-harness brokers list`)")
    for record in records:
        if len(records) > 1:
            print(f"==> {record.name} ({record.backend}, id {record.id}) <==")
        if record.log_path:
            try:
                print(Path(record.log_path).read_text(errors="replace"), end="")
            except FileNotFoundError:
                print(f"(log {record.log_path} is gone)")
            continue
        fetch = getattr(load_backend(record.backend), "record_logs", None)
        if fetch is None:
            raise CliError(f"the {record.backend} backend cannot show logs of {record.id}")
        print(fetch(record), end="")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    defn = _definition(args.name)
    if defn.docker is None:
        raise CliError(f"{defn.name} has no docker definition; it runs as a process (`brokers up {defn.name}`)")
    try:
        docker = load_backend("docker")
    except BrokerError as exc:
        raise CliError(f"building images needs the docker backend: {exc}") from None
    try:
        image = docker.build(defn)
    except BrokerError as exc:
        raise CliError(str(exc)) from None
    how = f"built in {image.seconds:.2f}s" if image.built else "up to date"
    print(f"{image.tag} ({image.image_id[:19]}, {image.size_bytes / 1e6:.1f} MB): {how}")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    import asyncio

    from harness.brokers.discovery import discover
    from harness.errors import HarnessError
    from harness.transport import TlsOptions

    tls = TlsOptions(ca=args.ca, cert=args.cert, key=args.key) if (args.ca or args.cert or args.key) else None
    try:
        found = asyncio.run(discover(args.url, tls=tls, username=args.username, password=args.password,
                                     timeout=args.timeout))
    except (BrokerError, HarnessError) as exc:
        raise CliError(str(exc), 3) from None  # not reachable, or not as an MQTT broker
    caps = found.capabilities
    print(f"{args.url}{'  (' + found.version + ')' if found.version else ''}")
    print(f"  MQTT versions          {', '.join(caps.versions)}")
    print(f"  maximum QoS            {caps.max_qos}")
    print(f"  retain                 {'yes' if caps.retain else 'no'}")
    print(f"  wildcard subscriptions {'yes' if caps.wildcards else 'no'}")
    print(f"  shared subscriptions   {'yes' if caps.shared_subscriptions else 'no'}")
    print(f"  maximum packet size    {caps.max_packet_size if caps.max_packet_size else 'not declared'}")
    print(f"  receive maximum        {caps.receive_maximum if caps.receive_maximum else 'not declared'}")
    for note in found.notes:
        print(f"  - {note}")
    return 0


def cmd_certs(args: argparse.Namespace) -> int:
    pki = generate_pki(args.dir, force=args.force)
    print(f"test PKI in {pki.dir} (what each file is: {pki.dir / 'README.md'})")
    for attr, path in pki.paths().items():
        print(f"  {attr:<24} {path}")
    return 0
