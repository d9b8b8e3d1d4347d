"""Helpers of the reliability suite: scaling, figures, scripts, a server subprocess."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from juliarun_aio import RetryPolicy

__all__ = [
    "FAST_SERVER",
    "FIGURES",
    "SCALE",
    "ServerProcess",
    "free_port",
    "record",
    "scaled",
    "wait_until",
    "write_script",
]

T = TypeVar("T")

#: ``JRUN_RELIABILITY_SCALE=0.2`` runs every count at a fifth of its default size.
SCALE = float(os.environ.get("JRUN_RELIABILITY_SCALE", "1"))

#: Server settings that make stopping and restarting quick.
FAST_SERVER: dict[str, Any] = {
    "kill_grace": 0.5,
    "restart_backoff": 0.05,
    "restart_backoff_max": 0.2,
}

#: Retries that never wait long, so fault tests run quickly.
QUICK_RETRY = RetryPolicy(
    attempts=5, initial=0.0, maximum=0.01, total_timeout=20.0, max_retry_after=0.05
)

#: Figures of the run (faults injected, calls made...), printed at the end of the session.
FIGURES: dict[str, dict[str, Any]] = {}


def scaled(count: int, minimum: int = 1) -> int:
    """Return ``count`` times :data:`SCALE`, at least ``minimum``."""
    return max(minimum, round(count * SCALE))


def record(test: str, **figures: Any) -> None:
    """Keep figures of a test for the end-of-session summary.

    Counts (ints) of repeated runs (e.g. one per event-loop backend) are summed, durations
    (floats) keep the largest.
    """
    entry = FIGURES.setdefault(test, {})
    for key, value in figures.items():
        old = entry.get(key)
        if isinstance(value, float) and isinstance(old, float):
            entry[key] = max(old, value)
        elif isinstance(value, int) and isinstance(old, int):
            entry[key] = old + value
        else:
            entry[key] = value


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(check: Callable[[], T], timeout: float = 30.0, what: str = "condition") -> T:
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


class ServerProcess:
    """``python -m juliarun_aio.server`` in a subprocess, output kept in files.

    Args:
        data_dir: The server's data directory.
        port: The port to listen on (0: a free one).
        tokens: ``{namespace: raw token}``.
        extra: More command-line arguments.
    """

    def __init__(self, data_dir: Path, port: int, tokens: dict[str, str], *extra: str) -> None:
        self.data_dir = data_dir
        self.port = port
        self.tokens = tokens
        self.extra = extra
        self.runs = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.start()

    @property
    def outputs(self) -> list[Path]:
        """The stdout and stderr files of every run so far."""
        return sorted(self.data_dir.parent.glob(f"{self.data_dir.name}-server-*.txt"))

    def start(self) -> None:
        """Start (or restart) the server and wait until it listens."""
        self.runs += 1
        env = {key: value for key, value in os.environ.items() if not key.startswith("JRUN_")}
        args = [
            sys.executable,
            "-m",
            "juliarun_aio.server",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            "--kill-grace",
            "0.5",
            *(f"--token={ns}={token}" for ns, token in self.tokens.items()),
            *self.extra,
        ]
        stem = self.data_dir.parent / f"{self.data_dir.name}-server-{self.runs}"
        out = stem.with_suffix(".out.txt")
        with out.open("wb") as stdout, stem.with_suffix(".err.txt").open("wb") as stderr:
            self.proc = subprocess.Popen(args, stdout=stdout, stderr=stderr, env=env)
        deadline = time.monotonic() + 30
        while True:
            match = re.search(r"listening on (http://\S+)", out.read_text())
            if match is not None:
                self.url = match.group(1)
                if self.port == 0:
                    self.port = int(self.url.rsplit(":", 1)[1])
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"the server did not start: {self.output()}")
            time.sleep(0.02)

    def output(self) -> str:
        """Everything the server printed so far, all runs."""
        return "\n".join(path.read_text(errors="replace") for path in self.outputs)

    def kill(self) -> None:
        """SIGKILL the server (its job processes survive)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(30)

    def stop(self) -> None:
        """SIGTERM the server and wait for it (job processes keep running)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
        if self.proc is not None:
            self.proc.wait(30)
