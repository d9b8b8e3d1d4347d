"""Shared fixtures: every async test runs on asyncio and on trio; the Slurm cluster.

Hypothesis runs without per-example deadlines: the suite shares two cores with real job
processes and a server, and a slow example there is load, not a bug.  Set
``HYPOTHESIS_PROFILE=thorough`` for a longer search.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, settings
from support import in_ci, slurm_problem

if TYPE_CHECKING:
    from juliarun_aio.server._slurm_cli import SlurmCli

settings.register_profile(
    "default",
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    deadline=None,
    max_examples=1000,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(("trio", {}), id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    """Run each ``@pytest.mark.anyio`` test once per event-loop backend."""
    backend: tuple[str, dict[str, object]] = request.param
    return backend


@pytest.fixture(scope="session")
def slurm() -> SlurmCli:
    """A client of the running Slurm cluster; skips (fails in CI) when there is none.

    The tests marked ``slurm`` run against the cluster ``scripts/slurm-up.sh --nodes 3``
    brings up (or any cluster with three usable nodes and a file system they share with
    this machine).  Where Slurm is not running they skip -- unless ``CI`` is set: CI must
    never pass by skipping them, so there they fail, saying why.
    """
    from juliarun_aio.server._slurm_cli import SlurmCli  # noqa: PLC0415 - server extra

    cli = SlurmCli(timeout=30)
    problem = slurm_problem(cli)
    if problem is not None:
        hint = "start one with `bash scripts/slurm-up.sh --nodes 3` (as root)"
        if in_ci():
            pytest.fail(f"CI is set, so the Slurm tests may not skip: {problem}; {hint}")
        pytest.skip(f"{problem}; {hint}")
    return cli
