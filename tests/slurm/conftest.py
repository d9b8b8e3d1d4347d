"""Fixtures for the Slurm tests: unique job names, and cleanup.

The ``slurm`` fixture (the cluster, skipping or failing in CI without one) is shared by
every test folder: ``tests/conftest.py``.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from slurm_support import SlotNamer

from juliarun_aio.server._slurm_cli import SlurmCli


@pytest.fixture
def names(slurm: SlurmCli) -> Iterator[SlotNamer]:
    """Slot names unique to this test; every job under them is cancelled afterwards."""
    namer = SlotNamer(job=f"t{secrets.token_hex(6)}", uid=secrets.token_hex(8))
    yield namer
    leftovers = [job.job_id for job in slurm.queue(namer.prefix) if not job.status.state.finished]
    slurm.cancel(leftovers)
