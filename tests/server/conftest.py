"""Fixtures for the local server tests: a running server and a client speaking the protocol."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_support import FAST, Api

from juliarun_aio.server import LocalServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalServer]:
    """A running local server on a free port, with a fresh data directory."""
    with LocalServer(tmp_path / "data", **FAST) as running:
        yield running


@pytest.fixture
def api(server: LocalServer) -> Iterator[Api]:
    """A protocol client authenticated for the server's namespace."""
    client = Api(server.url, server.token, server.namespace)
    yield client
    client.close()


@pytest.fixture
def volume(server: LocalServer) -> Path:
    """The directory of the run volume ``work`` of the default namespace."""
    path = server.data_dir / "namespaces" / server.namespace / "volumes" / "work"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A data directory for server processes; job processes that wrote a ``.pid`` file into a
    volume are killed after the test."""
    path = tmp_path / "data"
    yield path
    for pid_file in path.glob("namespaces/*/volumes/*/*.pid"):
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            continue
