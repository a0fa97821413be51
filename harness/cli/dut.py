"""`mqtt-harness dut`: the device under test.

    dut list                      serial ports, with the chip or USB bridge their VID:PID suggests
    dut probe PORT                handshake and SYSINFO, readably
    dut console PORT              every line as it arrives, protocol lines decoded
    dut flash PORT FIRMWARE_DIR   esptool with ESP-IDF's build/flasher_args.json
    dut virtual ... / dut host ...  the Python stand-in / the firmware core built for Linux

PORT is a path, a pyserial URL (rfc2217://, socket://) or auto[:serial=..|:location=..|:VID:PID].
Exit codes: 0 ok, 1 failure, 2 usage, 130 after Ctrl-C in the console.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shlex
import sys
import time
from pathlib import Path

from harness.cli import CliError

EXIT_USAGE = 2
PORT_HELP = "a device path, a pyserial URL (rfc2217://host:port, socket://host:port) or auto[:serial=..]"
FIRMWARE_HINT = "build the firmware first: idf.py build in firmware/esp32-dut"


def add_parser(sub) -> None:
    p = sub.add_parser("dut", help="the ESP32 device under test: ports, probe, console, flash, stand-ins",
                       description="Work with the device under test (docs/dut-protocol.md).")
    dsub = p.add_subparsers(dest="dut_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: _usage(p))

    q = dsub.add_parser("list", help="list serial ports and the chip each one likely is")
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    q.set_defaults(func=run_list)

    q = dsub.add_parser("probe", help="handshake with the device and show what it is")
    q.add_argument("port", metavar="PORT", help=PORT_HELP)
    _serial_args(q)
    q.add_argument("--reset", choices=("none", "dtr", "esptool"), default="none",
                   help="reset the board first (default: %(default)s)")
    q.add_argument("--timeout", type=float, default=5.0, help="handshake timeout in seconds (default: %(default)s)")
    q.add_argument("--json", action="store_true", help="print the HELLO and SYSINFO answers as JSON")
    q.set_defaults(func=run_probe)

    q = dsub.add_parser("console", help="show the device's output line by line until Ctrl-C")
    q.add_argument("port", metavar="PORT", help=PORT_HELP)
    _serial_args(q)
    q.add_argument("--raw", action="store_true", help="print protocol lines as they are, undecoded")
    q.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: until Ctrl-C)")
    q.set_defaults(func=run_console)

    q = dsub.add_parser("flash", help="flash a built firmware with esptool")
    q.add_argument("port", metavar="PORT", help=PORT_HELP)
    q.add_argument("firmware_dir", metavar="FIRMWARE_DIR",
                   help="the ESP-IDF project (with build/flasher_args.json), e.g. firmware/esp32-dut")
    q.add_argument("--baud", type=int, default=460800, help="flashing baud rate (default: %(default)s)")
    q.add_argument("--chip", default="auto",
                   help="esp32, esp32s3, ...; auto: the chip the firmware was built for (default: %(default)s)")
    q.set_defaults(func=run_flash)

    _delegate(dsub, "virtual", "harness.device.virtual.cli", "run the Python stand-in device")
    _delegate(dsub, "host", "harness.device.host_build", "build and run the firmware core on Linux")


def _serial_args(p) -> None:
    p.add_argument("--baud", type=int, default=115200, help="the console's baud rate, as --dut-baud "
                                                            "(default: %(default)s)")


def _usage(parser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def _delegate(dsub, name: str, module_name: str, help_text: str) -> None:
    """Register a subcommand another module implements; if it cannot load, say so when it is used."""
    p = dsub.add_parser(name, help=help_text, add_help=True)
    try:
        module = importlib.import_module(module_name)
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    except Exception as exc:  # noqa: BLE001 - a half-written module must not break `dut list`
        reason = f"{type(exc).__name__}: {exc}"
        p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

        def unavailable(args, reason=reason):
            raise CliError(f"dut {name} is not available: {module_name} does not load ({reason})")

        p.set_defaults(func=unavailable)


def _resolve(text: str) -> str:
    from harness.device.errors import PortError
    from harness.device.ports import resolve_port

    try:
        return resolve_port(text)
    except PortError as exc:
        raise CliError(str(exc)) from None


# ------------------------------------------------------------------------------------------------ list


def run_list(args) -> int:
    from harness.device.ports import list_ports

    found = list_ports()
    if args.json:
        print(json.dumps([p.as_dict() for p in found], indent=2))
        return 0
    if not found:
        print("no serial ports found (is the board plugged in, with a data cable?)")
        return 0
    header = ("PORT", "VID:PID", "SERIAL", "LOCATION", "DESCRIPTION", "LIKELY")
    rows = [(p.device, p.vid_pid or "-", p.serial_number or "-", p.location or "-", p.description or "-",
             p.chip or "-") for p in found]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    return 0


# ----------------------------------------------------------------------------------------------- probe


def run_probe(args) -> int:
    from harness.device.serial_driver import Dut
    from harness.errors import HarnessError

    port = _resolve(args.port)
    try:
        dut = Dut.open(port, baud=args.baud, reset=args.reset, handshake_timeout=args.timeout)
    except HarnessError as exc:
        raise CliError(str(exc)) from None
    try:
        sysinfo, error = {}, None
        try:
            sysinfo = dut.sysinfo()
        except HarnessError as exc:
            error = str(exc)
        chip = dut.chip_info
    finally:
        dut.close()
    if args.json:
        print(json.dumps({"port": port, "baud": args.baud, "info": dut.info, "sysinfo": sysinfo,
                          "sysinfo_error": error, "problems": dut.problems,
                          "esptool": None if chip is None else {"chip": chip.chip, "description": chip.description,
                                                                "mac": chip.mac, "features": list(chip.features)}},
                         indent=2))
        return 0 if error is None else 1
    for label, value in _probe_lines(port, args.baud, dut.info, sysinfo, chip):
        print(f"{label:<10}  {value}")
    for problem in dut.problems:
        print(f"{'problem':<10}  {problem}")
    if error:
        print(f"{'SYSINFO':<10}  failed: {error}")
        return 1
    return 0


_SHOWN = {"proto", "proto_minor", "fw", "idf", "esp_mqtt", "chip", "mac", "reset_reason", "max_line", "platform",
          "caps", "free_heap", "min_free_heap", "uptime_ms", "time", "time_source", "ip", "netif"}


def _probe_lines(port: str, baud: int, info: dict, sysinfo: dict, chip) -> list[tuple[str, str]]:
    both = {**info, **sysinfo}
    out = [("port", f"{port} at {baud} baud"),
           ("firmware", f"{both.get('fw', '?')} (device protocol {both.get('proto', '?')}."
                        f"{both.get('proto_minor', 0)})"),
           ("chip", f"{both.get('chip', '?')}, mac {both.get('mac', '?')}, platform {both.get('platform', '?')}"),
           ("versions", f"ESP-IDF {both.get('idf', '?')}, esp-mqtt {both.get('esp_mqtt', '?')}"),
           ("reset", str(both.get("reset_reason", "?"))),
           ("max line", f"{both.get('max_line', '?')} bytes"),
           ("caps", " ".join(sorted(both.get("caps") or [])) or "none")]
    if chip is not None:
        out.append(("esptool", f"{chip.description}, mac {chip.mac}" +
                    (f" ({', '.join(chip.features)})" if chip.features else "")))
    if sysinfo:
        if "free_heap" in sysinfo:
            out.append(("heap", f"{sysinfo['free_heap']} bytes free (minimum {sysinfo.get('min_free_heap', '?')})"))
        if "uptime_ms" in sysinfo:
            out.append(("uptime", f"{sysinfo['uptime_ms'] / 1000:.1f} s"))
        epoch = sysinfo.get("time")
        when = "not set" if epoch is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))
        out.append(("time", f"{when} (source: {sysinfo.get('time_source', '?')})"))
        out.append(("network", f"{sysinfo.get('netif', '?')} {sysinfo.get('ip') or 'no address'}"))
    extra = {k: v for k, v in both.items() if k not in _SHOWN}
    for key, value in extra.items():
        out.append((key, value if isinstance(value, str) else json.dumps(value)))
    return out


# --------------------------------------------------------------------------------------------- console


def run_console(args) -> int:
    port = _resolve(args.port)
    try:
        return _console(port, args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `| head`: stop quietly, and keep Python from complaining at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _console(port: str, args) -> int:
    from harness.device import link
    from harness.device.errors import PortError
    from harness.device.lines import strip_eol
    from harness.device.protocol import DeviceProtocol, clean_text
    from harness.device.show import describe

    try:
        serial_port = link.open_port(port, args.baud)
    except PortError as exc:
        raise CliError(str(exc)) from None
    deadline = None if args.duration is None else time.monotonic() + args.duration
    core = DeviceProtocol()
    pending = bytearray()  # --raw: our own line splitting, no decoding

    def show(items) -> None:
        for item in items:
            print(describe(item), flush=True)

    print(f"-- {port} at {args.baud} baud; Ctrl-C to stop", file=sys.stderr, flush=True)
    try:
        while deadline is None or time.monotonic() < deadline:
            try:
                data = serial_port.read(serial_port.in_waiting or 1)
            except Exception as exc:  # noqa: BLE001 - SerialException/OSError: unplugged; wait for it
                show(core.flush(time.time(), "incomplete line: the port was lost"))
                print(f"-- port lost ({' '.join(str(exc).split())}); waiting for it to come back", file=sys.stderr,
                      flush=True)
                serial_port = _reopen(port, args.baud, deadline)
                if serial_port is None:
                    return 1
                print("-- port back", file=sys.stderr, flush=True)
                continue
            if not data:
                continue
            if args.raw:
                pending += data
                while b"\n" in pending:
                    raw, _, rest = bytes(pending).partition(b"\n")
                    pending[:] = rest
                    print(clean_text(strip_eol(raw)), flush=True)
            else:
                show(core.receive_data(data, time.time()))
        return 0
    finally:
        try:
            serial_port.close()
        except Exception:  # noqa: BLE001 - closing a lost port
            pass


def _reopen(port: str, baud: int, deadline: float | None):
    from harness.device import link
    from harness.device.errors import PortError

    while deadline is None or time.monotonic() < deadline:
        try:
            return link.open_port(port, baud)
        except PortError:
            time.sleep(0.2)  # a replug takes a moment; Ctrl-C ends the wait
    return None


# ----------------------------------------------------------------------------------------------- flash


def flash_command(port: str, firmware_dir: str | os.PathLike, *, baud: int = 460800, chip: str = "auto",
                  esptool_major: int | None = None) -> list[str]:
    """esptool's arguments to flash the build in `firmware_dir` (the project, or its build directory)."""
    root = Path(firmware_dir)
    build = root / "build" if (root / "build").is_dir() else root
    flasher_args, flash_args = build / "flasher_args.json", build / "flash_args"
    if esptool_major is None:
        import esptool

        esptool_major = int(str(esptool.__version__).split(".")[0])
    if flasher_args.is_file():
        try:
            spec = json.loads(flasher_args.read_text())
            files = dict(spec["flash_files"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CliError(f"{flasher_args} is not ESP-IDF's flasher_args.json ({exc}); {FIRMWARE_HINT}") from None
        options = list(spec.get("write_flash_args") or [])
        extra = spec.get("extra_esptool_args") or {}
    elif flash_args.is_file():
        options, files, extra = [], {}, {}
        for line in flash_args.read_text().splitlines():
            words = shlex.split(line)
            if words and words[0].startswith("--"):
                options += words
            elif len(words) == 2:
                files[words[0]] = words[1]
    else:
        raise CliError(f"no build/flasher_args.json or build/flash_args under {root}: {FIRMWARE_HINT}")
    missing = [str(build / path) for path in files.values() if not (build / path).is_file()]
    if not files or missing:
        raise CliError(f"the build in {build} is incomplete (missing: {', '.join(missing) or 'every image'}); "
                       f"{FIRMWARE_HINT}")
    if chip == "auto":
        chip = extra.get("chip") or "auto"
    before, after = extra.get("before", "default_reset"), extra.get("after", "hard_reset")
    argv = ["--chip", chip, "--port", port, "--baud", str(baud), "--before", before, "--after", after]
    if extra.get("stub") is False:
        argv.append("--no-stub")
    argv += ["write_flash", *options]
    for address in sorted(files, key=lambda a: int(a, 0)):
        argv += [address, str(build / files[address])]
    return _modern(argv) if esptool_major >= 5 else argv


def _modern(argv: list[str]) -> list[str]:
    """esptool 5 spells options, commands and reset modes with hyphens (the old names only warn)."""
    out = []
    for arg in argv:
        if arg.startswith("--") or arg in ("write_flash", "default_reset", "hard_reset", "no_reset",
                                           "no_reset_no_sync", "soft_reset", "watchdog_reset", "usb_reset"):
            arg = arg.replace("_", "-")
        out.append(arg)
    return out


def run_flash(args) -> int:
    import esptool

    port = _resolve(args.port)
    argv = flash_command(port, args.firmware_dir, baud=args.baud, chip=args.chip)
    print("esptool " + " ".join(shlex.quote(a) for a in argv), flush=True)
    try:
        esptool.main(argv)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise CliError(f"esptool failed (exit {exc.code}) flashing {port}; see its output above") from None
    except Exception as exc:  # noqa: BLE001 - esptool.FatalError and serial errors
        said = " ".join(str(exc).split())
        raise CliError(f"esptool could not flash {port}: {said}. Is another program holding the port? Does the "
                       "board enter download mode (hold BOOT, press EN)?") from None
    return 0
