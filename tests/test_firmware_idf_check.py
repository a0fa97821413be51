"""The ESP-IDF platform glue of the device firmware (firmware/esp32-dut/main) compiled on the host against the
declaration-only ESP-IDF stubs (firmware/esp32-dut/host/idf-stubs): target idf_main_check of the host CMake project,
every console/network/IDF-version variant, with -Wall -Wextra -Werror. Objects only: nothing is linked or run."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from harness.device import host_build
from harness.toolchain import c_compiler

pytestmark = pytest.mark.timeout(300)

FIRMWARE = host_build.FIRMWARE
STUBS = host_build.HOST_SOURCE / "idf-stubs"
VARIANTS = sorted(p.name for p in (STUBS / "variants").iterdir() if p.is_dir())


def _need_toolchain():
    missing = host_build.missing_packages()
    if missing:
        pytest.skip(f"host build needs {', '.join(missing)}: {host_build.APT_HINT}")


def _compiler() -> str:
    cc = c_compiler(os.environ.get("CC")) or c_compiler()
    if cc:
        return cc
    pytest.skip(f"no C compiler: {host_build.APT_HINT}")


def test_idf_main_check_builds(tmp_path):
    _need_toolchain()
    build = tmp_path / "build"
    cfg = subprocess.run(["cmake", "-S", str(host_build.HOST_SOURCE), "-B", str(build), "-DDUT_TESTS=OFF",
                          "-DDUT_IDF_CHECK=ON"], capture_output=True, text=True, timeout=120)
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    out = subprocess.run(["cmake", "--build", str(build), "--target", "idf_main_check", "-j2"],
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    objects = {p.name for p in build.rglob("*.c.o")}
    assert {"app_main.c.o", "platform_esp32.c.o", "net_esp32.c.o"} <= objects
    # one object directory per variant: idf_main_check is the default one, the others idf_main_check_<variant>
    dirs = {p.name for p in (build / "CMakeFiles").iterdir() if p.name.startswith("idf_main_check")}
    expected = {"idf_main_check.dir"} | {f"idf_main_check_{v}.dir" for v in VARIANTS if v != "idf53_uart_wifi"}
    assert expected <= dirs, sorted(dirs)


def test_stub_headers_name_what_they_mirror():
    headers = sorted(p for p in STUBS.rglob("*.h") if "variants" not in p.parts)
    assert len(headers) >= 30
    for h in headers:
        first = h.read_text().splitlines()[0]
        assert first.startswith("/*") and "ESP-IDF" in first, f"{h.relative_to(STUBS)}: {first}"


@pytest.mark.parametrize("variant", ["idf53_uart_wifi", "idf51_uart_wifi"])
def test_stubs_catch_a_wrong_call(tmp_path, variant):
    """The check has teeth: a call with a missing argument (against the real uart_set_baudrate signature) fails."""
    cc = _compiler()
    src = (FIRMWARE / "main" / "platform_esp32.c").read_text()
    good = "uart_set_baudrate(CONSOLE_UART, CONFIG_DUT_CONSOLE_BAUD);"
    assert good in src
    bad = tmp_path / "platform_esp32.c"
    bad.write_text(src.replace(good, "uart_set_baudrate(CONFIG_DUT_CONSOLE_BAUD);"))
    minor, patch = {"idf53_uart_wifi": ("3", "1"), "idf51_uart_wifi": ("1", "4")}[variant]
    argv = [cc, "-std=gnu17", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", f"-DDUT_STUB_IDF_MINOR={minor}",
            f"-DDUT_STUB_IDF_PATCH={patch}", f"-I{STUBS / 'variants' / variant}", f"-I{STUBS}",
            f"-I{FIRMWARE / 'main'}", f"-I{FIRMWARE / 'components' / 'dut_core' / 'include'}"]
    ok = subprocess.run(argv + [str(FIRMWARE / "main" / "platform_esp32.c")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    broken = subprocess.run(argv + [str(bad)], capture_output=True, text=True)
    assert broken.returncode != 0
    assert "uart_set_baudrate" in broken.stderr and "argument" in broken.stderr, broken.stderr


def test_variants_are_the_ones_cmake_builds():
    cmake = (host_build.HOST_SOURCE / "CMakeLists.txt").read_text()
    for v in VARIANTS:
        assert f'"{v}|' in cmake, v
    assert Path(STUBS / "sdkconfig.h").exists()
