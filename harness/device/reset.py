"""Hardware resets of the board (`--dut-reset none|dtr|esptool`).

dtr      the classic ESP32 auto-reset circuit: RTS drives EN, DTR drives IO0 (both inverted through the two
         transistors). EN low with IO0 high, then EN high: a normal boot into the application.
esptool  esptool connects to the ROM loader (reading the chip type and MAC on the way) and hard-resets.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import io
import sys
import time
from dataclasses import dataclass

from harness.device.errors import PortError

MODES = ("none", "dtr", "esptool")
EN_HOLD_S = 0.1  # EN low this long (esptool's value for UART bridges)
EN_HOLD_USB_S = 0.2  # chips on their own USB-Serial/JTAG need longer (esptool)


@dataclass(frozen=True, slots=True)
class ChipInfo:
    """What esptool read from the ROM loader."""

    chip: str
    description: str
    mac: str
    features: tuple[str, ...] = ()


def dtr_reset(port, *, usb_jtag: bool = False, name: str | None = None) -> None:
    """Pulse EN low through RTS with IO0 held high (DTR released): the chip boots its application.
    `port` is an open pyserial port."""
    label = name or getattr(port, "port", None) or "the port"
    try:
        port.dtr = False  # IO0 high: normal boot, not download mode
        port.rts = True  # EN low: in reset
        port.dtr = port.dtr  # Windows usbser.sys applies RTS only with the next DTR write (esptool does this)
        time.sleep(EN_HOLD_USB_S if usb_jtag else EN_HOLD_S)  # reset pulse width, not a wait for anything
        port.rts = False  # EN high: runs
        port.dtr = port.dtr
    except OSError as exc:
        if exc.errno in (errno.ENOTTY, errno.EINVAL):
            raise PortError(f"--dut-reset dtr: {label} has no DTR/RTS lines (a pty, a socket:// port, or an "
                            "adapter without them); use --dut-reset none, or esptool") from None
        raise PortError(f"--dut-reset dtr: setting RTS/DTR on {label} failed: {exc}") from None


def _connect_mode() -> str:
    from esptool.cmds import detect_chip

    default = inspect.signature(detect_chip).parameters["connect_mode"].default
    return "default-reset" if "-" in str(default) else "default_reset"  # esptool 5 renamed the modes


def _mac_text(mac) -> str:
    if isinstance(mac, (bytes, bytearray, tuple, list)):
        return ":".join(f"{b:02x}" for b in mac)
    return str(mac).lower()


def esptool_reset(port: str, *, baud: int = 115200, attempts: int = 3) -> ChipInfo:
    """Connect with esptool (its reset into the ROM loader), read chip and MAC, then hard-reset into the
    application. The port must not be open elsewhere. Raises PortError naming the port and likely causes."""
    try:
        import esptool
        from esptool.cmds import detect_chip
    except ImportError as exc:  # pragma: no cover - esptool is a dependency
        raise PortError(f"--dut-reset esptool needs esptool: pip install esptool ({exc})") from None
    out = io.StringIO()
    esp = None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            esp = detect_chip(port, baud, _connect_mode(), connect_attempts=attempts)
            description = esp.get_chip_description()
            try:
                features = tuple(esp.get_chip_features())
            except Exception:  # noqa: BLE001 - optional detail; some ROMs cannot tell
                features = ()
            try:
                mac = esp.read_mac("BASE_MAC")
            except TypeError:  # esptool 4: read_mac() takes no type
                mac = esp.read_mac()
            uses_usb = bool(getattr(esp, "uses_usb_jtag_serial", lambda: False)())
            esp.hard_reset(uses_usb) if uses_usb else esp.hard_reset()
            chip = esp.CHIP_NAME
    except (esptool.FatalError, OSError, Exception) as exc:  # noqa: BLE001 - esptool raises many kinds
        tail = " | ".join(line.strip() for line in out.getvalue().splitlines()[-4:] if line.strip())
        said = " ".join(str(exc).split())
        raise PortError(
            f"--dut-reset esptool: esptool could not talk to the chip on {port} at {baud} baud: {said}"
            + (f" (esptool said: {tail})" if tail else "")
            + ". Check that no other program holds the port, that the board has the auto-reset circuit (or hold "
              "BOOT while pressing EN), or use --dut-reset dtr / none") from None
    finally:
        if esp is not None:
            with contextlib.suppress(Exception):
                esp._port.close()
    return ChipInfo(chip=str(chip).lower().replace("-", ""), description=str(description), mac=_mac_text(mac),
                    features=features)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise PortError(f"--dut-reset {mode}: use one of {', '.join(MODES)}")
    return mode


if __name__ == "__main__":  # pragma: no cover - manual check: python -m harness.device.reset PORT
    print(esptool_reset(sys.argv[1]))
