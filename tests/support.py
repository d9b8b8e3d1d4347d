"""Helpers shared by the test folders: polling, job scripts and the processes they leave."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psutil

from juliarun_aio import Context
from juliarun_aio._http import HttpLayer

__all__ = [
    "QUICK_KILL",
    "SPAWN_STRAYS",
    "cleanup_mechanisms",
    "http_layer",
    "marked_processes",
    "wait_until",
    "write_script",
]

T = TypeVar("T")

#: Server command-line arguments that make stopping job processes quick.
QUICK_KILL = ("--kill-grace", "0.5")

#: Lines of a Python job script (which imported os and subprocess and set ``stray`` to an
#: argv) that start ``stray`` three ways a job must not leave behind: as a plain background
#: child, in a session of its own (setsid), and as a double-forked daemon.
SPAWN_STRAYS = """\
subprocess.Popen(stray)
subprocess.Popen(stray, start_new_session=True)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(stray[0], stray)
    os._exit(0)
os.wait()
"""


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


def http_layer(ctx: Context) -> HttpLayer:
    """The HTTP layer of ``ctx``: its pool, slots and pollers, for tests that count them."""
    return ctx._http


def write_script(directory: Path, name: str, text: str) -> str:
    """Write an executable script into a volume directory and return its name."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    path.chmod(0o755)
    return name


def marked_processes(variable: str, value: str) -> list[psutil.Process]:
    """The live processes (zombies aside) whose environment holds ``variable=value``."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get(variable) == value:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def cleanup_mechanisms() -> list[str]:
    """The process-tree cleanups of the local server this machine offers, strongest first."""
    from juliarun_aio.server._launcher import describe_cleanup  # noqa: PLC0415 - server extra

    return [
        mode for mode in ("cgroup2", "cgroup1", "subreaper") if describe_cleanup(mode)[0] == mode
    ]
