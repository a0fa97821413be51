"""Which serial port is the board? USB VID:PID -> likely USB-UART bridge or chip, and `--dut auto[:...]`.

    auto                    the only port that looks like an ESP board
    auto:serial=0001        by USB serial number
    auto:location=1-1.2     by USB location (the physical socket: stays put when ttyUSBn numbers change)
    auto:10c4:ea60          by VID:PID
Anything else (a path, rfc2217://, socket://, loop://) is used as given.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from harness.device.errors import PortError

# VID:PID -> (bridge or chip, what it usually sits on)
USB_IDS: dict[tuple[int, int], tuple[str, str]] = {
    (0x10C4, 0xEA60): ("Silicon Labs CP210x", "ESP32 DevKitC and most classic ESP32 boards"),
    (0x1A86, 0x7523): ("WCH CH340", "cheap ESP32 / ESP8266 boards"),
    (0x1A86, 0x55D4): ("WCH CH9102", "ESP32 DevKitC v4 (newer batches), LilyGO boards"),
    (0x1A86, 0x55D3): ("WCH CH343", "ESP32-S3 / C3 DevKits with a UART bridge"),
    (0x0403, 0x6001): ("FTDI FT232R", "ESP32 boards with an FTDI bridge"),
    (0x0403, 0x6010): ("FTDI FT2232", "ESP-WROVER-KIT, ESP-Prog (JTAG + UART)"),
    (0x0403, 0x6014): ("FTDI FT232H", "ESP32 boards with an FTDI bridge"),
    (0x0403, 0x6015): ("FTDI FT231X/FT230X", "ESP32 boards with an FTDI bridge"),
    (0x303A, 0x1001): ("Espressif USB-Serial/JTAG", "ESP32-S3/C3/C6/H2 built-in USB"),
    (0x303A, 0x1002): ("Espressif ESP USB Bridge", "an ESP32-S2/S3 acting as a USB-UART bridge"),
    (0x303A, 0x0002): ("Espressif native USB (ROM/TinyUSB CDC)", "ESP32-S2/S3 USB-OTG, often in download mode"),
    (0x303A, 0x4001): ("Espressif TinyUSB CDC", "ESP32-S2/S3 running a TinyUSB console"),
}
USB_JTAG = {(0x303A, 0x1001)}  # needs esptool's USB-JTAG reset sequence


@dataclass(frozen=True, slots=True)
class PortInfo:
    device: str
    vid: int | None = None
    pid: int | None = None
    serial_number: str | None = None
    location: str | None = None
    description: str = ""
    manufacturer: str | None = None
    product: str | None = None

    @property
    def vid_pid(self) -> str | None:
        return None if self.vid is None or self.pid is None else f"{self.vid:04x}:{self.pid:04x}"

    @property
    def known(self) -> bool:
        return (self.vid, self.pid) in USB_IDS

    @property
    def chip(self) -> str:
        """Likely bridge/chip, '' if the VID:PID is not one ESP boards use."""
        name = USB_IDS.get((self.vid, self.pid))  # type: ignore[arg-type]
        return f"{name[0]} ({name[1]})" if name else ""

    @property
    def usb_jtag(self) -> bool:
        return (self.vid, self.pid) in USB_JTAG

    def as_dict(self) -> dict:
        return {**asdict(self), "vid_pid": self.vid_pid, "chip": self.chip}


def _from_pyserial(p) -> PortInfo:
    return PortInfo(device=p.device, vid=p.vid, pid=p.pid, serial_number=p.serial_number, location=p.location,
                    description=p.description if p.description not in (None, "n/a") else "",
                    manufacturer=p.manufacturer, product=p.product)


def list_ports() -> list[PortInfo]:
    """Every serial port the OS lists, sorted by device name."""
    from serial.tools import list_ports as lp

    return sorted((_from_pyserial(p) for p in lp.comports()), key=lambda p: p.device)


def find_ports(serial_number: str | None = None, location: str | None = None,
               vid_pid: str | tuple[int, int] | None = None) -> list[PortInfo]:
    """USB serial ports matching every given criterion. With none given: the ports that look like ESP boards
    (a known VID:PID), or every USB serial port if none does."""
    ports = [p for p in list_ports() if p.vid is not None]
    if isinstance(vid_pid, str):
        vid_pid = parse_vid_pid(vid_pid)
    if serial_number is None and location is None and vid_pid is None:
        known = [p for p in ports if p.known]
        return known or ports
    return [p for p in ports
            if (serial_number is None or p.serial_number == serial_number)
            and (location is None or p.location == location)
            and (vid_pid is None or (p.vid, p.pid) == vid_pid)]


def parse_vid_pid(text: str) -> tuple[int, int]:
    try:
        vid, pid = text.split(":")
        return int(vid, 16), int(pid, 16)
    except ValueError:
        raise PortError(f"{text!r} is not VID:PID in hex, e.g. 10c4:ea60") from None


def lookup(device: str) -> PortInfo | None:
    """The listing entry of a device path, None for URLs and unlisted paths."""
    import os

    real = os.path.realpath(device)
    for p in list_ports():
        if p.device in (device, real):
            return p
    return None


def resolve_port(text: str) -> str:
    """The port to open for a --dut value: `auto[...]` resolved to a device path, anything else unchanged."""
    if text != "auto" and not text.startswith("auto:"):
        return text
    criteria: dict = {}
    spec = text[5:]
    for part in filter(None, spec.split(",")):
        key, sep, value = part.partition("=")
        if sep and key in ("serial", "serial_number"):
            criteria["serial_number"] = value
        elif sep and key == "location":
            criteria["location"] = value
        elif sep and key in ("vid_pid", "usb"):
            criteria["vid_pid"] = value
        elif not sep and ":" in part:
            criteria["vid_pid"] = part
        else:
            raise PortError(f"--dut {text}: cannot read {part!r}; use auto, auto:serial=XXXX, "
                            "auto:location=1-1.2 or auto:VID:PID (e.g. auto:10c4:ea60)")
    found = find_ports(**criteria)
    if len(found) == 1:
        return found[0].device
    how = "pick one with --dut auto:serial=XXXX or --dut auto:location=1-1.2 (or give the path)"
    if not found:
        listed = list_ports()
        extra = ("; serial ports present: " + ", ".join(describe_port(p) for p in listed)) if listed else \
            "; no serial ports at all: is the board plugged in (and the cable a data cable)?"
        raise PortError(f"--dut {text}: no matching USB serial port{extra}")
    raise PortError(f"--dut {text}: {len(found)} candidates, {how}:\n" +
                    "\n".join("  " + describe_port(p) for p in found))


def describe_port(p: PortInfo) -> str:
    bits = [p.device]
    if p.vid_pid:
        bits.append(p.vid_pid)
    if p.serial_number:
        bits.append(f"serial={p.serial_number}")
    if p.location:
        bits.append(f"location={p.location}")
    if p.chip:
        bits.append(p.chip)
    elif p.description:
        bits.append(p.description)
    return " ".join(bits)
