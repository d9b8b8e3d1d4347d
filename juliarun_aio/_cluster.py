"""Helpers for code running inside a JuliaRun job: who am I, and scale me.

These are the Python counterparts of JuliaRunClient.jl's ``self()``, ``initParallel()``
and ``waitForWorkers(n)``: a Python job has no Julia ``ElasticManager``, so "initialize the
cluster" means "scale the current job to ``n`` workers and wait until ``n`` run".
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ._errors import ApiError, ConfigurationError
from ._jobs import JobRef
from ._models import JobScale

if TYPE_CHECKING:
    from ._context import Context
    from ._watch import PollPolicy

__all__ = ["initialize_cluster", "release_cluster", "self_job"]

#: How long :func:`initialize_cluster` waits for workers by default, in seconds.
DEFAULT_CLUSTER_TIMEOUT = 600.0


def self_job(env: Mapping[str, str] | None = None) -> JobRef:
    """Return the reference of the job this code runs in.

    Built from ``JRUN_TYPE`` and ``JRUN_NAME``, which JuliaRun sets in every job.

    Raises:
        ConfigurationError: the variables are missing (the code is not running in a job).
    """
    env = os.environ if env is None else env
    kind, name = env.get("JRUN_TYPE"), env.get("JRUN_NAME")
    if not kind or not name:
        raise ConfigurationError(
            "not running inside a JuliaRun job: JRUN_TYPE and JRUN_NAME are not set"
        )
    return JobRef(kind, name)


async def initialize_cluster(
    ctx: Context,
    n: int,
    *,
    timeout: float = DEFAULT_CLUSTER_TIMEOUT,
    poll: PollPolicy | None = None,
) -> JobScale:
    """Scale the current job to ``n`` workers and wait until ``n`` are running.

    Args:
        ctx: The Context to use (``Context()`` works inside a job).
        n: The number of workers wanted.
        timeout: Seconds to wait for the workers.
        poll: How often to poll the scale (default: the watchers' default rhythm).

    Returns:
        The scale once at least ``n`` workers run.

    Raises:
        ConfigurationError: not running inside a JuliaRun job.
        ApiError: the server refused the new scale (it answered ``false``), so there is
            nothing to wait for.
        WaitTimeoutError: fewer than ``n`` workers ran within ``timeout``.
    """
    job = self_job()
    if not await ctx.set_job_scale(job, n):
        raise ApiError(
            f"the server refused to scale job {job.name!r} to {n} worker(s); check that "
            f"{job.kind} jobs can be scaled and that the namespace has room",
            verb="setJobScale",
            job=job.name,
        )
    return await ctx.wait_for_scale(job, n, timeout=timeout, poll=poll)


async def release_cluster(ctx: Context) -> bool:
    """Scale the current job down to zero workers.

    Returns:
        The server's answer to the scale request.
    """
    return await ctx.set_job_scale(self_job(), 0)
