"""`mqtt-harness` entry point: a thin dispatcher; each command group lives in its own module."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading

# command -> module that provides add_parser(subparsers); imported lazily so `pub` stays fast.
COMMANDS = {
    "pub": "harness.cli.client",
    "sub": "harness.cli.client",
    "brokers": "harness.cli.brokers",
    "certs": "harness.cli.brokers",
    "run": "harness.cli.run",
    "report": "harness.cli.report",
    "proxy": "harness.cli.proxy",
    "dut": "harness.cli.dut",
    "diagnose": "harness.cli.diagnose",
    "statements": "harness.cli.statements",
}


# One convention for every command (README "Exit codes")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_CODES = ("exit codes: 0 all passed / done, 1 tests or the operation failed, 2 usage error, "
              "3 broker or device unreachable or set-up failed, 130 interrupted (Ctrl-C)")


class CliError(Exception):
    """A user-facing failure: printed as one line, exit code 1 (or .code)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or (`only`, a command name) just that command's: importing every command's module costs
    a few hundred milliseconds that `mqtt-harness diagnose` and `pub` should not pay."""
    from importlib.metadata import PackageNotFoundError, version

    parser = argparse.ArgumentParser(prog="mqtt-harness", description="MQTT conformance test harness",
                                     epilog=EXIT_CODES)
    try:
        shown = version("mqtt-harness")
    except PackageNotFoundError:  # run from a checkout that was never installed
        shown = "unknown (not installed)"
    parser.add_argument("--version", action="version", version=f"mqtt-harness {shown}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    seen = set()
    wanted = [COMMANDS[only]] if only in COMMANDS else list(dict.fromkeys(COMMANDS.values()))
    for module_name in wanted:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:  # a command group not built yet must not break the others
            if exc.name != module_name:
                raise
            continue
        if module_name not in seen:
            module.add_parser(sub)
            seen.add(module_name)
    return parser


_ctrl_c: list[int] = []  # SIGINTs that reached the command now running


def interrupted() -> bool:
    """Whether Ctrl-C reached the command now running: whatever it raises afterwards follows from the interrupt
    (on Python 3.11 pytest's own report of a KeyboardInterrupt can raise SystemError, see harness.cli.run)."""
    return bool(_ctrl_c)


def _on_sigint(signum, frame):
    _ctrl_c.append(signum)
    signal.default_int_handler(signum, frame)  # raises KeyboardInterrupt, as without us


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    first = next((a for a in given if not a.startswith("-")), None)
    parser = build_parser(first if first in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    # Only over Python's default handler: a SIG_IGN (nohup, a background job) or an embedding program's stays.
    watch = (threading.current_thread() is threading.main_thread()
             and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
    if watch:
        _ctrl_c.clear()
        signal.signal(signal.SIGINT, _on_sigint)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"mqtt-harness {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print(f"mqtt-harness {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `| head` closed our stdout: stop quietly, and keep Python from complaining at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:
        if not interrupted():
            raise
        print(f"mqtt-harness {args.command}: interrupted ({type(exc).__name__} while stopping: "
              f"{' '.join(str(exc).split())})", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if watch:
            signal.signal(signal.SIGINT, signal.default_int_handler)


if __name__ == "__main__":
    sys.exit(main())
