"""8. The server: ``getJobStatus`` latency with many live jobs, submit throughput, and
how soon a submitted job runs.

A fresh server process of its own.  Latency is measured with a bare pooled httpx client
(so it is the server's, not the SDK's), as the median of sequential calls for one probe
job: first with no other job, then after ``short_jobs`` short jobs were submitted (one
after another through ``Context.submit_job``, timed: jobs/s) and ``live_jobs`` jobs that
keep running were started.

Submit -> running (row 8c), with no other job than the probe: ``started_jobs`` jobs are
submitted one after another; for each, the time from calling ``submit_job`` until
``getJobStatus`` (asked every millisecond) says ``running``, and until its program ran
its first command (``date``, whose output is read from the log afterwards; same clock).
They are deleted before the rest.
"""

from __future__ import annotations

import time
from typing import Any

import anyio

from juliarun_aio import Context

from ._support import (
    Row,
    ServerProcess,
    Sizes,
    bare_client,
    fmt_ms,
    median,
    server_process,
    signed_url,
    wait_finished,
    wait_running,
)

#: The calls are timed in this many blocks; the median block is reported.
BLOCKS = 5


async def status_latency(url: str, sizes: Sizes, **client_options: Any) -> float:
    """Seconds per sequential ``url`` call of a bare pooled client: the median block's."""
    calls = sizes.status_calls
    async with bare_client(**client_options) as client:
        for _ in range(sizes.warmup):
            (await client.get(url)).raise_for_status()
        blocks = []
        for _ in range(BLOCKS):
            started = time.perf_counter()
            for _ in range(calls // BLOCKS):
                (await client.get(url)).raise_for_status()
            blocks.append((time.perf_counter() - started) / (calls // BLOCKS))
    return median(blocks)


def _polls(interval: float, timeout: float = 60.0) -> range:
    """Enough polls ``interval`` apart for ``timeout`` seconds; a job not there by then hangs."""
    return range(int(timeout / interval))


async def _start_latency(server: ServerProcess, ctx: Context, jobs: int) -> tuple[float, float]:
    """Median seconds from ``submit_job`` to ``running`` status, and to the program's start.

    The server says ``running`` once it started the job's launcher; the program starts
    when the launcher has set up its slot (goal row 8c is on that).
    """
    to_status, to_program = [], []
    for i in range(jobs):
        job = server.started_job(f"started-{i}")
        submitted = time.time()
        started = time.perf_counter()
        await ctx.submit_job(job)
        for _ in _polls(0.001):
            if (await ctx.get_job_status(job)).phase == "running":
                break
            await anyio.sleep(0.001)
        to_status.append(time.perf_counter() - started)
        for _ in _polls(0.01):
            first = await ctx.tail_job(job, count=1)
            if first:
                break
            await anyio.sleep(0.01)
        to_program.append(float(first) - submitted)
        await ctx.delete_job(job, force=True)
    return median(to_status), median(to_program)


async def run(sizes: Sizes) -> list[Row]:
    with server_process() as server:
        async with server.context() as ctx:
            probe = server.sleep_job("probe")
            await ctx.submit_job(probe)
            await wait_running(ctx, [probe])
            url = str(signed_url(ctx, "getJobStatus", probe.ref, {}))
            idle = await status_latency(url, sizes)
            to_status, to_program = await _start_latency(server, ctx, sizes.started_jobs)

            short = [server.short_job(f"short-{i}") for i in range(sizes.short_jobs)]
            started = time.perf_counter()
            for job in short:
                await ctx.submit_job(job)
            submit_rate = len(short) / (time.perf_counter() - started)
            for job in short:
                await wait_finished(ctx, job)

            live = [server.sleep_job(f"live-{i}") for i in range(sizes.live_jobs)]
            started = time.perf_counter()
            for job in live:
                await ctx.submit_job(job)
            live_submit_rate = len(live) / (time.perf_counter() - started)
            await wait_running(ctx, live)
            busy = await status_latency(url, sizes)
    ratio = busy / idle
    return [
        Row(
            f"8. server: getJobStatus latency, {sizes.live_jobs} live jobs",
            f"no other job {fmt_ms(idle)}",
            f"{sizes.live_jobs} live jobs {fmt_ms(busy)}",
            ratio,
            "<= 2",
            ratio <= 2,
            {"idle_s": idle, "busy_s": busy},
        ),
        Row(
            f"8b. server: submit throughput, {sizes.short_jobs} short jobs",
            f"status call {1 / idle:.0f} calls/s",
            f"submitJob {submit_rate:.1f} jobs/s (live jobs: {live_submit_rate:.1f} jobs/s)",
            submit_rate * idle,
            "report",
            None,
            {"submit_per_s": submit_rate, "live_submit_per_s": live_submit_rate},
        ),
        Row(
            f"8c. server: submit -> running, p50 of {sizes.started_jobs} jobs",
            f"status call {fmt_ms(idle)}",
            f"program started in {fmt_ms(to_program)} (status running in {fmt_ms(to_status)})",
            to_program / idle,
            "p50 <= 50 ms",
            to_program <= 0.05,
            {"submit_to_running_s": to_status, "submit_to_program_s": to_program},
        ),
    ]
