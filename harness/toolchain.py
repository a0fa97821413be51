"""The system C compiler, for what the harness builds natively: the proxy's forwarder, the firmware's host build."""

from __future__ import annotations

import shutil

NAMES = ("cc", "gcc", "clang")


def c_compiler(named: str | None = None) -> str | None:
    """The path of `named` when given (None if that is not an executable), else of the first of cc, gcc and clang."""
    if named:
        return shutil.which(named)
    return next((path for path in map(shutil.which, NAMES) if path), None)
