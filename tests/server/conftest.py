"""Fixtures for the server tests: a running server and a client speaking the protocol.

The server runs jobs on the local backend, or -- for the tests marked with
``server_support.BOTH_BACKENDS`` -- once on each backend (``backend`` fixture).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_support import FAST, Api, backend_settings
from support import cancel_slurm_jobs

from juliarun_aio.server import LocalServer


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """``local``, or ``slurm`` where a test is parametrized so (skips without Slurm)."""
    name: str = getattr(request, "param", "local")
    if name == "slurm":
        request.getfixturevalue("slurm")
    return name


@pytest.fixture
def server(tmp_path: Path, backend: str) -> Iterator[LocalServer]:
    """A running server on a free port, with a fresh data directory."""
    with LocalServer(tmp_path / "data", **FAST, **backend_settings(backend)) as running:
        yield running


@pytest.fixture
def api(server: LocalServer) -> Iterator[Api]:
    """A protocol client authenticated for the server's namespace."""
    client = Api(server.url, server.token, server.namespace, ca_bundle=server.ca_bundle)
    yield client
    client.close()


@pytest.fixture
def volume(server: LocalServer) -> Path:
    """The directory of the run volume ``work`` of the default namespace."""
    path = server.data_dir / "namespaces" / server.namespace / "volumes" / "work"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def data_dir(tmp_path: Path, backend: str) -> Iterator[Path]:
    """A data directory for server processes; job processes that wrote a ``.pid`` file into a
    volume (and the Slurm jobs of its submissions) are ended after the test."""
    path = tmp_path / "data"
    yield path
    if backend == "slurm":
        cancel_slurm_jobs(path)
    for pid_file in path.glob("namespaces/*/volumes/*/*.pid"):
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            continue
