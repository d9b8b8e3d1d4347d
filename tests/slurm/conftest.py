"""Fixtures for the Slurm tests: a real cluster, unique job names, and cleanup.

The tests marked ``slurm`` run against the cluster ``scripts/slurm-up.sh --nodes 3`` brings
up (or any cluster with three usable nodes and a file system they share with this
machine).  Where Slurm is not running they skip -- unless ``CI`` is set: CI must never pass
by skipping them, so there they fail, saying why.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from slurm_support import SlotNamer, in_ci, slurm_problem

from juliarun_aio.server._slurm_cli import SlurmCli


@pytest.fixture(scope="session")
def slurm() -> SlurmCli:
    """A client of the running cluster; skips (fails in CI) when there is none."""
    cli = SlurmCli(timeout=30)
    problem = slurm_problem(cli)
    if problem is not None:
        hint = "start one with `bash scripts/slurm-up.sh --nodes 3` (as root)"
        if in_ci():
            pytest.fail(f"CI is set, so the Slurm tests may not skip: {problem}; {hint}")
        pytest.skip(f"{problem}; {hint}")
    return cli


@pytest.fixture
def names(slurm: SlurmCli) -> Iterator[SlotNamer]:
    """Slot names unique to this test; every job under them is cancelled afterwards."""
    namer = SlotNamer(job=f"t{secrets.token_hex(6)}", uid=secrets.token_hex(8))
    yield namer
    leftovers = [job.job_id for job in slurm.queue(namer.prefix) if not job.status.state.finished]
    slurm.cancel(leftovers)
