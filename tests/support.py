"""Helpers shared by the test folders: polling and job scripts."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

__all__ = ["QUICK_KILL", "wait_until", "write_script"]

T = TypeVar("T")

#: Server command-line arguments that make stopping job processes quick.
QUICK_KILL = ("--kill-grace", "0.5")


def wait_until(check: Callable[[], T], timeout: float = 15.0, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last value {value!r}")
        time.sleep(0.02)


def write_script(directory: Path, name: str, text: str) -> str:
    """Write an executable script into a volume directory and return its name."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    path.chmod(0o755)
    return name
