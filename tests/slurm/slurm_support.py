"""Helpers for the Slurm tests: slot names, waiting for a job's state, the test nodes."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from typing import TypeVar

import attrs

from juliarun_aio.server._slurm_cli import (
    QueuedJob,
    SlotName,
    SlurmCli,
    SlurmError,
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
NODES = {"node1": "10.231.0.1", "node2": "10.231.2.2", "node3": "10.231.3.2"}

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


_USABLE = ("IDLE", "MIXED", "ALLOCATED", "COMPLETING")


def in_ci() -> bool:
    """Whether this run is a CI run (``CI`` set to anything but empty, 0 or false)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def slurm_problem(cli: SlurmCli) -> str | None:
    """Why the Slurm tests cannot run here, or None when they can."""
    if shutil.which("sbatch") is None or shutil.which("squeue") is None:
        return "Slurm's commands (sbatch, squeue...) are not installed"
    conf = os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")
    if not os.path.exists(conf):
        # Without a config Slurm's commands look the controller up in DNS: ask nothing.
        return f"Slurm is not configured here ({conf} does not exist)"
    try:
        nodes = cli.nodes()
    except SlurmError as error:
        return f"Slurm does not answer: {error}"
    usable = sorted(name for name, info in nodes.items() if info.state.split("+")[0] in _USABLE)
    if len(usable) < len(NODES):
        states = ", ".join(f"{name} {info.state}" for name, info in sorted(nodes.items()))
        return f"the tests need {len(NODES)} usable nodes, Slurm has: {states or 'none'}"
    return None
