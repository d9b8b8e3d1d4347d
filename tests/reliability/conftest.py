"""Fixtures of the reliability suite: local servers, clients, and the figures summary."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from reliability_support import FAST_SERVER, FIGURES

from juliarun_aio import Context
from juliarun_aio.server import LocalServer
from juliarun_aio.server._config import generate_token

#: The second namespace of :func:`server`, for isolation tests.
OTHER_NAMESPACE = "other"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalServer]:
    """A local server on a free loopback port with namespaces ``default`` and ``other``."""
    tokens = {"default": generate_token(24), OTHER_NAMESPACE: generate_token(24)}
    with LocalServer(tmp_path / "data", tokens=tokens, **FAST_SERVER) as running:
        yield running


@pytest.fixture
def volume(server: LocalServer) -> Path:
    """The run volume ``work`` of namespace ``default``."""
    path = server.data_dir / "namespaces" / server.namespace / "volumes" / "work"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
async def clean(server: LocalServer) -> AsyncIterator[Context]:
    """A Context straight to the server (no proxy), to check what really happened."""
    async with Context(server.url, server.token, server.namespace) as ctx:
        yield ctx


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the figures the reliability tests recorded."""
    if not FIGURES:
        return
    terminalreporter.section("reliability figures")
    for test, figures in sorted(FIGURES.items()):
        shown = ", ".join(f"{key}={value}" for key, value in figures.items())
        terminalreporter.write_line(f"{test}: {shown}")
