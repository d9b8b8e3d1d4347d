"""Helpers for the Slurm tests: slot names, waiting for a job's state, the test nodes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import attrs
from support import SLURM_NODES, in_ci, slurm_problem

from juliarun_aio.server._slurm_cli import (
    QueuedJob,
    SlotName,
    SlurmCli,
    job_name_prefix,
)

__all__ = [
    "NAMESPACE",
    "NODES",
    "SlotNamer",
    "eventually",
    "in_ci",
    "slurm_problem",
    "wait_for_job",
]

#: The nodes of ``scripts/slurm-up.sh --nodes 3`` and their addresses.
NODES = SLURM_NODES

#: The namespace part of every job name the tests submit.
NAMESPACE = "pytest"

_T = TypeVar("_T")


@attrs.frozen
class SlotNamer:
    """Slot names of one test's job: ``jr.pytest.<job>.<uid>.<slot>``."""

    job: str
    uid: str

    @property
    def prefix(self) -> str:
        """The prefix of every name this namer gives."""
        return job_name_prefix(NAMESPACE, self.job)

    def __call__(self, slot: str = "master") -> str:
        return str(SlotName(NAMESPACE, self.job, self.uid, slot))


def eventually(check: Callable[[], _T | None], what: str, timeout: float = 60) -> _T:
    """Poll ``check`` every 0.1 s until it returns something other than None."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def wait_for_job(
    cli: SlurmCli,
    job_id: int,
    prefix: str,
    accept: Callable[[QueuedJob], bool],
    what: str,
    timeout: float = 60,
) -> QueuedJob:
    """Poll ``squeue`` until job ``job_id`` satisfies ``accept``; return its line."""

    def check() -> QueuedJob | None:
        for job in cli.queue(prefix):
            if job.job_id == job_id and accept(job):
                return job
        return None

    return eventually(check, f"job {job_id} {what}", timeout)
