"""Helpers of the local server tests: a protocol client and its polling, the backends."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from support import SLURM_ARGS, SLURM_HOST, SLURM_SERVER, Api, encode_token

__all__ = [
    "BOTH_BACKENDS",
    "FAST",
    "Api",
    "backend_settings",
    "encode_token",
    "server_process",
]

from juliarun_aio.server import ServerProcess

#: Short grace and backoff so that tests about stopping and restarting are quick.
FAST: dict[str, Any] = {"kill_grace": 0.5, "restart_backoff": 0.05, "restart_backoff_max": 0.2}

#: Runs a test once per backend (``local``, and ``slurm`` on the test cluster): for the
#: guarantees every backend must keep.  Tests without it run on the local backend only.
BOTH_BACKENDS = pytest.mark.parametrize(
    "backend", ["local", pytest.param("slurm", marks=pytest.mark.slurm)], indirect=True
)


def backend_settings(backend: str) -> Mapping[str, Any]:
    """The ``LocalServer`` settings of a server on ``backend``."""
    return SLURM_SERVER if backend == "slurm" else {}


def server_process(
    data_dir: Path, backend: str, args: Sequence[str] = (), **options: Any
) -> ServerProcess:
    """A (not yet started) ``ServerProcess`` on ``backend``."""
    if backend == "slurm":
        return ServerProcess(data_dir, host=SLURM_HOST, args=(*SLURM_ARGS, *args), **options)
    return ServerProcess(data_dir, args=args, **options)
