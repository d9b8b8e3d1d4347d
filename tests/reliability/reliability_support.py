"""Helpers of the reliability suite: scaling, figures, free ports."""

from __future__ import annotations

import os
import socket
from typing import Any

from juliarun_aio import RetryPolicy

__all__ = [
    "FAST_SERVER",
    "FIGURES",
    "SCALE",
    "free_port",
    "record",
    "scaled",
]

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
