"""Opening the serial port: pyserial's serial_for_url (a device path, rfc2217://, socket://, loop://), without
resetting the board on the way, and errors that say what to do."""

from __future__ import annotations

import errno
import os

from harness.device.errors import PortError

READ_TIMEOUT_S = 0.05  # how long a read blocks: bounds how late the reader notices close()


def is_path(url: str) -> bool:
    return "://" not in url


def open_port(url: str, baud: int, *, timeout: float = READ_TIMEOUT_S):
    """An open pyserial port. Raises PortError naming the port and the likely fix."""
    import serial

    kwargs = {"exclusive": True} if is_path(url) and os.name == "posix" else {}
    try:
        port = serial.serial_for_url(url, baudrate=baud, timeout=timeout, write_timeout=5.0, do_not_open=True,
                                     **kwargs)
        # Opening a tty asserts DTR and RTS. Dropping RTS first and DTR after keeps the auto-reset circuit
        # (EN low needs RTS asserted alone) from seeing a reset pulse.
        port.dtr = True
        port.rts = False
        port.open()
        if port.dtr:
            try:
                port.dtr = False
            except OSError:  # a pty or socket has no modem lines: nothing to release
                pass
        return port
    except (serial.SerialException, OSError, ValueError) as exc:
        raise PortError(explain_open_error(url, baud, exc)) from None


def explain_open_error(url: str, baud: int, exc: BaseException) -> str:
    code = getattr(exc, "errno", None)
    text = str(exc)
    head = f"cannot open --dut {url} ({baud} baud): {text}"
    if code == errno.ENOENT or "No such file" in text:
        return (f"{head}. The port does not exist: is the board plugged in (with a data cable)? "
                "`mqtt-harness dut list` shows the ports; --dut auto picks the only ESP-looking one")
    if code in (errno.EACCES, errno.EPERM) or "Permission denied" in text:
        return (f"{head}. Permission denied: add yourself to the group owning {url} (dialout on Debian/Ubuntu, "
                "uucp on Arch): sudo usermod -aG dialout $USER, then log in again")
    if code in (errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK) or "lock" in text.lower():
        return f"{head}. Another program holds the port{_holders_text(url)}: close it (idf.py monitor, screen, minicom)"
    if "://" in url and ("refused" in text.lower() or code == errno.ECONNREFUSED):
        return f"{head}. Nothing listens there: is the serial server (or the virtual device) running?"
    return head


def holders(path: str) -> list[tuple[int, str]]:
    """(pid, command line) of the processes of this user that have `path` open (Linux /proc), for hints."""
    real = os.path.realpath(path)
    found = []
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return found
    for pid in pids:
        if int(pid) == os.getpid():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") == real for fd in fds):
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
                found.append((int(pid), cmd[:80]))
        except OSError:
            continue
    return found


def _holders_text(url: str) -> str:
    if not is_path(url):
        return ""
    found = holders(url)
    return (" (" + "; ".join(f"pid {pid}: {cmd}" for pid, cmd in found[:3]) + ")") if found else ""


def holders_hint(url: str) -> str:
    """'; pid 123 (idf.py monitor) also has it open' or ''."""
    if not is_path(url):
        return ""
    found = holders(url)
    return "".join(f"; pid {pid} ({cmd}) also has it open" for pid, cmd in found[:3])
