"""`mqtt-harness run`: run the conformance suites against brokers, show progress and a summary, write reports.

It is pytest with the mqtt-harness plugin underneath: `mqtt-harness run --broker X -k retain` is
`pytest SUITES --broker X -k retain --report-dir reports/<timestamp> --mqtt-progress`, plus the summary table.
The suites are found at --suites, else $MQTT_HARNESS_SUITES, else the suites/ folder of the checkout this harness
is installed from (editable installs), else ./suites.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import shlex
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

from harness.cli import CliError, interrupted
from harness.report import FILES, ReportError, load
from harness.report.model import ERROR, FAILED, OUTCOMES, PASSED, SKIPPED, XFAILED, XPASSED, Report
from harness.report.text import measured, slowest

SUITES_ENV = "MQTT_HARNESS_SUITES"
CHECKOUT_SUITES = Path(__file__).resolve().parents[2] / "suites"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run", help="run the conformance suites against brokers and write reports",
        description="Run the conformance suites (pytest + the mqtt-harness plugin) and write report.json, "
                    "report.html and junit.xml.",
        epilog="exit codes: 0 all passed, 1 tests failed, 2 usage error (or no test matched), 3 set-up failed, "
               "130 interrupted")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="suite files or folders (default: every suite), e.g. suites/test_smoke.py")
    p.add_argument("--broker", action="append", default=[], metavar="NAME|URL",
                   help="broker under test, repeatable: mosquitto, mosquitto:docker, mosquitto:process, nats, ... "
                        "or URL(s) of a running broker; default: mosquitto (docker where it works)")
    dev = p.add_argument_group("devices under test (the device suites in suites/device; README 'Devices')")
    dev.add_argument("--dut", action="append", default=[], metavar="PORT|URL|auto|virtual[:BUG,..]|host[:asan]",
                     help="device under test, repeatable: a serial port, a pyserial URL, auto, virtual (a virtual "
                          "ESP32 on a pseudo-terminal) or host (the firmware's C core built for Linux)")
    dev.add_argument("--dut-baud", type=int, metavar="BAUD", help="serial speed (default 115200)")
    dev.add_argument("--dut-reset", choices=("none", "dtr", "esptool"), help="reset the device first")
    dev.add_argument("--dut-host", metavar="ADDRESS",
                     help="this machine's address as the device reaches it (default 127.0.0.1; a board on Wi-Fi "
                          "needs the LAN address)")
    p.add_argument("-k", metavar="EXPR", help="only tests matching this pytest -k expression")
    p.add_argument("-m", metavar="EXPR", help="only tests matching this pytest -m marker expression")
    p.add_argument("-n", metavar="N", help="parallel workers (pytest-xdist): a number or 'auto' (the default where "
                                           "pytest-xdist is installed: 3 per CPU, as the suites mostly wait on broker "
                                           "timers; -n 0: one process); each worker starts its own brokers")
    p.add_argument("-x", "--exitfirst", action="store_true", help="stop at the first failure")
    p.add_argument("--statement", action="append", default=[], metavar="ID",
                   help="only the tests tagged with this OASIS statement ID, repeatable; a prefix selects every ID "
                        "below it (MQTT-3.3.1-6, MQTT-3.3, 3.3.1-6)")
    p.add_argument("--list", action="store_true", help="list the test ids that would run (with -k/-m/PATH "
                                                       "applied), one per line, and exit")
    p.add_argument("--mqtt-version", choices=("3.1.1", "5", "all"), default="all",
                   help="run each test at this MQTT version, or at both (default: %(default)s)")
    p.add_argument("--broken", metavar="NAME", help="broken-broker mode: put a proxy that breaks one rule set "
                   "(e.g. qos2-delivered-twice, will-dropped) in front of every broker, to see the suites catch it "
                   "(suites/README.md)")
    p.add_argument("--report-dir", type=Path, metavar="DIR",
                   help="where the reports go (default: reports/<UTC timestamp> under the current directory)")
    p.add_argument("--suites", type=Path, metavar="DIR", help=f"suites folder (default: ${SUITES_ENV}, the "
                                                               "checkout's suites/, or ./suites)")
    tls = p.add_argument_group("URL brokers (TLS and credentials)")
    tls.add_argument("--ca", metavar="PEM", help="CA certificate that signed the URL broker's certificate")
    tls.add_argument("--cert", metavar="PEM", help="client certificate for mutual TLS")
    tls.add_argument("--key", metavar="PEM", help="client private key for mutual TLS")
    tls.add_argument("--username", help="user name the clients send in CONNECT")
    tls.add_argument("--password", help="password the clients send in CONNECT")
    tls.add_argument("--mtls-url", metavar="URL", help="listener that requires client certificates")
    tls.add_argument("--profile", metavar="NAME", help="documented limits for URL brokers: those of this broker "
                     "definition (default: the product named in its $SYS/broker/version)")
    tls.add_argument("--known-limits", type=Path, metavar="YAML",
                     help="known limits of brokers: {broker: {test or statement ID: reason}} (strict xfail)")
    timing = p.add_argument_group("timing")
    timing.add_argument("--keepalive-seconds", type=int, metavar="N", help="keepalive the keepalive tests use")
    timing.add_argument("--mqtt-timeout", type=float, metavar="SECONDS", help="time limit of each test")
    timing.add_argument("--wait-timeout", type=float, metavar="SECONDS", help="default wait for a packet")
    p.add_argument("--pytest", metavar="ARGS", default="", help="more pytest arguments, quoted: --pytest '--lf -v'")
    p.set_defaults(func=cmd_run)


def find_suites(explicit: Path | None) -> Path:
    candidates = [explicit] if explicit else [Path(os.environ[SUITES_ENV])] if os.environ.get(SUITES_ENV) else [
        CHECKOUT_SUITES, Path.cwd() / "suites"]
    for path in candidates:
        if path.is_dir():
            return path
    shown = ", ".join(str(p) for p in candidates)
    raise CliError(f"no suites folder at {shown}; pass --suites DIR or set {SUITES_ENV}")


def pytest_args(args: argparse.Namespace, report_dir: Path | None) -> list[str]:
    """pytest's arguments for this run; report_dir None: for collecting only (no reports, progress or workers)."""
    suites = find_suites(args.suites)
    argv = [str(p) for p in args.paths] or [str(suites)]
    # The plugin prints one line per result; pytest's own terminal output would interleave with it.
    argv += ["-p", "no:terminal"]
    if report_dir is not None:
        argv += ["--mqtt-progress", "--report-dir", str(report_dir)]
    argv += ["--mqtt-version", args.mqtt_version]
    for broker in args.broker:
        argv += ["--broker", broker]
    for dut in args.dut:
        argv += ["--dut", dut]
    for statement_id in args.statement:
        argv += ["--statement", statement_id]
    for option in ("k", "m"):
        if getattr(args, option):
            argv += [f"-{option}", getattr(args, option)]
    if args.n and report_dir is not None:
        if importlib.util.find_spec("xdist") is None:
            raise CliError("-n needs pytest-xdist: .venv/bin/pip install pytest-xdist")
        argv += ["-n", args.n]
    if args.exitfirst:
        argv.append("-x")
    for name in ("ca", "cert", "key", "username", "password", "mtls_url", "known_limits", "keepalive_seconds",
                 "mqtt_timeout", "wait_timeout", "dut_baud", "dut_reset", "dut_host", "broken", "profile"):
        value = getattr(args, name)
        if value is not None:
            argv += [f"--{name.replace('_', '-')}", str(value)]
    return argv + shlex.split(args.pytest)


def list_tests(args: argparse.Namespace) -> int:
    """The test ids pytest would run, without running anything (brokers are not started)."""
    import pytest

    argv = pytest_args(args, None)

    class Ids:
        def __init__(self):
            self.ids: list[str] = []

        def pytest_collection_finish(self, session):
            self.ids = [item.nodeid for item in session.items]

    ids = Ids()
    code = pytest.main([*argv, "--collect-only"], plugins=[ids])
    if code not in (0, pytest.ExitCode.NO_TESTS_COLLECTED):
        return _exit_code(int(code), args)
    for nodeid in ids.ids:
        print(nodeid)
    if not ids.ids:
        return _exit_code(int(pytest.ExitCode.NO_TESTS_COLLECTED), args)
    print(f"{len(ids.ids)} tests", file=sys.stderr)
    return 0


def profile_line(spec, args: argparse.Namespace) -> str:
    """Which documented limits a URL broker gets (--profile, or what it says it is), as the run will use them."""
    from harness.brokers import definitions as brokerdefs
    from harness.plugin.brokers import BrokerPool, ClientTls

    if args.profile and args.profile not in brokerdefs.names():
        raise CliError(f"--profile {args.profile}: no such broker definition; use one of "
                       f"{', '.join(brokerdefs.names())}", 2)
    pool = BrokerPool(client_tls=ClientTls(ca=args.ca, cert=args.cert, key=args.key, username=args.username,
                                           password=args.password), profile=args.profile)
    name, why = pool.profile_of(spec)
    if name is None:
        return f"profile: none for {spec.id} ({why}); its deviations show as failures"
    return f"profile: {spec.id} gets the documented limits of {name} ({why}); --profile overrides"


def check_reachable(spec, args: argparse.Namespace) -> None:
    """A broker given by URL that does not answer CONNECT stops the run here, once, instead of failing every test."""
    from harness.errors import ConnectError, HarnessError, MqttConnectError
    from harness.brokers.probe import probe_connack

    url = next((url for kind, url in spec.urls if kind in ("mqtt", "mqtts", "ws", "wss")), None)
    if url is None:
        return
    try:
        probe_connack(url, 10.0, ca=args.ca, cert=args.cert, key=args.key, username=args.username,
                      password=args.password)
    except MqttConnectError:
        return  # it answers; a refusal is for the tests to report
    except (ConnectError, HarnessError, TimeoutError, OSError) as exc:
        raise CliError(f"broker {url} is unreachable, so no test can run: {' '.join(str(exc).split())}", 3) \
            from None


def check_writable(report_dir: Path) -> None:
    """Fail before any test runs when the reports could not be written at the end."""
    try:
        report_dir.mkdir(parents=True, exist_ok=True)
        probe = report_dir / ".write-check"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise CliError(f"--report-dir {report_dir}: cannot write reports there ({exc.strerror or exc}); "
                       "give a folder you can write to", 2) from None


def cmd_run(args: argparse.Namespace) -> int:
    import pytest

    from harness.plugin.brokers import BrokerSpecError, default_broker, parse_broker

    try:
        specs = [parse_broker(b) for b in args.broker] or [default_broker()]
    except BrokerSpecError as exc:
        raise CliError(str(exc), 2) from None
    if args.list:
        return list_tests(args)
    report_dir = args.report_dir or Path("reports") / dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    check_writable(report_dir)
    for spec in specs:
        check_reachable(spec, args)
        if spec.backend == "external":
            print(profile_line(spec, args), flush=True)
    if args.n is None and importlib.util.find_spec("xdist") is not None:
        args.n = "auto"  # -n 0 runs in one process
    argv = pytest_args(args, report_dir)
    for spec in specs:
        why = f" ({spec.chosen_because})" if spec.chosen_because else ""
        print(f"broker under test: {spec.id}{why}")
    for dut in args.dut:
        print(f"device under test: {dut}")
    print(f"pytest {' '.join(shlex.quote(a) for a in argv)}\n", flush=True)
    code = _exit_code(int(_pytest_main(argv)), args)
    if code == 2:
        return code  # nothing ran: no summary of nothing
    try:
        report = load(report_dir / FILES["json"])
    except ReportError:
        report = None  # pytest stopped before writing it (usage error, interrupted): its message is above
    if report is None:
        return code or 1
    print()
    print(summary_table(report))
    for part in (slowest(report), measured(report)):  # (empty when nothing ran or was measured)
        if part:
            print(f"\n{part}")
    print(f"\nreports: {report_dir / FILES['html']}\n         {report_dir / FILES['json']}\n"
          f"         {report_dir / FILES['junit']}")
    failed = [r for r in report.results if r.outcome in ("failed", "error")]
    if failed:
        print(f"\n{len(failed)} failed:")
        for result in failed:
            where = "/".join(x for x in (result.broker, result.device) if x)
            reason = " ".join((result.reason or "").split())
            print(f"  {where} {result.test}" + (f" [MQTT {result.mqtt_version}]" if result.mqtt_version else "")
                  + (f"\n      {textwrap.shorten(reason, 160, placeholder=' ...')}" if reason else ""))
        print(f"details: {report_dir / FILES['html']}")
    if report.failed:
        return code or 1
    return code


def _pytest_main(argv: list[str]) -> int:
    """pytest.main, where anything raised after a Ctrl-C counts as the interrupt it follows.

    pytest formats the KeyboardInterrupt as it stops, and on Python 3.11 that formatting can itself fail: an
    ast.parse interrupted by a garbage-collected finaliser whose exception pytest formats with ast.parse again ends
    in "SystemError: AST constructor recursion depth mismatch". pytest has run its teardown by then (it does that
    in a finally), so the brokers and devices are stopped; the user asked to stop, and gets 130, not a traceback.
    (harness.cli.main notes the Ctrl-C; it does the same for every other command, with its generic message.)
    """
    import pytest

    try:
        return pytest.main(argv)
    except Exception as exc:
        if not interrupted():
            raise
        print(f"mqtt-harness run: pytest failed while reporting the interrupt "
              f"({type(exc).__name__}: {' '.join(str(exc).split())})", file=sys.stderr, flush=True)
        return pytest.ExitCode.INTERRUPTED


def _exit_code(pytest_code: int, args: argparse.Namespace) -> int:
    """pytest's exit codes in the harness convention: 0 passed, 1 failed, 2 usage, 3 set-up failed, 130 Ctrl-C."""
    import pytest

    if pytest_code == pytest.ExitCode.INTERRUPTED:
        print("mqtt-harness run: interrupted; brokers and devices this run started are stopped", flush=True)
        return 130
    if pytest_code == pytest.ExitCode.NO_TESTS_COLLECTED:
        what = " and ".join([f"{flag} {value!r}" for flag, value in (("-k", args.k), ("-m", args.m)) if value]
                            + [f"--statement {s}" for s in args.statement])
        print(f"mqtt-harness run: no test matches {what or 'the paths given'}; see `mqtt-harness run --list`",
              flush=True)
        return 2
    if pytest_code == pytest.ExitCode.USAGE_ERROR:
        return 2
    if pytest_code == pytest.ExitCode.INTERNAL_ERROR:
        return 3
    return pytest_code


def summary_table(report: Report) -> str:
    """Areas as rows, brokers as columns, outcome counts in the cells; collection errors listed below."""
    brokers = [b.id for b in report.brokers]
    cells: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(lambda: dict.fromkeys(OUTCOMES, 0)))
    for result in report.results:
        if result.broker:
            column = f"{result.broker}/{result.device}" if result.device else result.broker
            if column not in brokers:
                brokers.append(column)
            cells[result.area][column][result.outcome] += 1
            cells["TOTAL"][column][result.outcome] += 1
    order = sorted(a for a in cells if a != "TOTAL") + (["TOTAL"] if cells else [])
    rows = [["area", *brokers]] + [[area, *(_cell(cells[area][b]) for b in brokers)] for area in order]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(text.ljust(width) for text, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if len(lines) > 3:
        lines.insert(len(lines) - 1, lines[1])
    errors = [r for r in report.results if not r.broker and r.outcome == ERROR]
    for result in errors:
        lines.append(f"collection error: {result.nodeid}: {result.reason}")
    if report.run.rerun_plugin:
        lines.append(f"reruns were enabled ({report.run.rerun_plugin}, up to {report.run.max_reruns} per test); "
                     f"{sum(r.reruns for r in report.results)} reruns happened")
    return "\n".join(lines)


def _cell(counts: dict[str, int]) -> str:
    short = {PASSED: "passed", FAILED: "failed", ERROR: "errors", SKIPPED: "skipped", XFAILED: "xfailed",
             XPASSED: "xpassed"}
    text = ", ".join(f"{counts[o]} {short[o]}" for o in OUTCOMES if counts[o])
    return text or "-"
