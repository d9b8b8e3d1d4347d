"""6. Many watchers: ``watch_job`` generators on one Context for a while.

``watchers`` generators watch a handful of live jobs (which do not change, so the poll
schedule backs off as it would for a long job).  A quarter of them are careless
consumers: they take the first status and then never iterate again, or iterate only
every few seconds, or drop the generator without closing it.  Requests reaching the
server are counted on the client (an httpx request hook); connections held are sampled
from the kernel's table.

The baseline runs at the same time on a second Context: one watcher per job, i.e. the
poll schedule alone.  The goal: the many watchers cost the requests of one per job,
and never hold more connections than the pool allows.
"""

from __future__ import annotations

import contextlib

import anyio

from juliarun_aio import Context, JuliaBatch
from juliarun_aio._config import DEFAULT_LIMITS

from ._support import (
    RequestCounter,
    Row,
    ServerProcess,
    Sizes,
    count_connections,
    ensure_job,
    pooled_client,
    sampling_held,
    wait_running,
)


async def _prompt(ctx: Context, job: JuliaBatch) -> None:
    statuses = ctx.watch_job(job)
    async with contextlib.aclosing(statuses):
        async for _ in statuses:
            pass


async def _stalled(ctx: Context, job: JuliaBatch) -> None:
    statuses = ctx.watch_job(job)
    async with contextlib.aclosing(statuses):
        await anext(statuses)
        await anyio.sleep_forever()


async def _slow(ctx: Context, job: JuliaBatch) -> None:
    statuses = ctx.watch_job(job)
    async with contextlib.aclosing(statuses):
        async for _ in statuses:
            await anyio.sleep(3)


async def _dropped(ctx: Context, job: JuliaBatch) -> None:
    statuses = ctx.watch_job(job)
    await anext(statuses)
    del statuses  # never closed: left to the garbage collector
    await anyio.sleep_forever()


async def run(server: ServerProcess, sizes: Sizes) -> list[Row]:
    limit = DEFAULT_LIMITS.max_connections
    assert limit is not None
    jobs_count = sizes.watched_jobs
    async with server.context() as setup:
        jobs = [
            await ensure_job(setup, server.sleep_job(f"watched-{i}")) for i in range(jobs_count)
        ]
        await wait_running(setup, jobs)
    async with server.context() as many, server.context() as one:
        many_requests = RequestCounter(pooled_client(many))
        one_requests = RequestCounter(pooled_client(one))
        conns = count_connections(pooled_client(many))
        careless = (_stalled, _slow, _dropped)
        with anyio.move_on_after(sizes.watch_seconds):
            async with sampling_held(conns, every=0.5) as held, anyio.create_task_group() as group:
                for job in jobs:
                    group.start_soon(_prompt, one, job)
                for i in range(sizes.watchers):
                    kind = careless[i % 12] if i % 12 < len(careless) else _prompt
                    group.start_soon(kind, many, jobs[i % jobs_count])
        seconds = sizes.watch_seconds
    many_rate, one_rate = many_requests.count / seconds, one_requests.count / seconds
    ratio = many_rate / one_rate
    ok = ratio <= 1.5 and held[0] <= limit
    return [
        Row(
            f"6. {sizes.watchers} watch_job on {jobs_count} jobs for {seconds:g} s",
            f"{jobs_count} watchers (1/job) {one_rate:.2f} req/s",
            f"{sizes.watchers} watchers {many_rate:.2f} req/s, "
            f"{held[0]} conns held ({conns.opened} opened)",
            ratio,
            f"<= 1.5x; conns <= {limit}",
            ok,
            {
                "one_req_per_s": one_rate,
                "many_req_per_s": many_rate,
                "connections_held": held[0],
                "connections_opened": conns.opened,
            },
        )
    ]
