"""2. Concurrency: many ``get_job_status`` calls at once on one Context vs bare httpx.

Both clients get the same pool limits (the Context default, 20 connections), so the
comparison is of the SDK's work per call, not of pool sizes.  Connections are counted
where they are opened: in each client's connection pool (:class:`CountingBackend`).
The goal is on the most connections open at once; the total opened is shown too, as
the server closes connections that were idle for 5 s (uvicorn's keep-alive timeout)
and a pool then opens new ones.
"""

from __future__ import annotations

import time

from juliarun_aio._config import DEFAULT_LIMITS

from ._support import (
    Row,
    ServerProcess,
    Sizes,
    bare_client,
    count_connections,
    ensure_job,
    fmt_rate,
    median,
    run_concurrently,
)


async def run(server: ServerProcess, sizes: Sizes) -> list[Row]:
    total, workers = sizes.concurrent_calls, sizes.concurrency
    limit = DEFAULT_LIMITS.max_connections
    assert limit is not None
    async with server.context() as ctx, bare_client(limits=DEFAULT_LIMITS) as bare:
        sdk_conns = count_connections(ctx.http_client)
        bare_conns = count_connections(bare)
        job = await ensure_job(ctx, server.sleep_job("probe"))
        url = ctx.build_url("getJobStatus", job.ref, {})

        async def floor() -> None:
            response = await bare.get(url)
            response.raise_for_status()

        async def ours() -> None:
            await ctx.get_job_status(job)

        await run_concurrently(floor, max(workers, total // 10), workers)
        await run_concurrently(ours, max(workers, total // 10), workers)
        floors, sdks = [], []
        for _ in range(sizes.concurrent_repeats):
            for call, rates in ((floor, floors), (ours, sdks)):
                started = time.perf_counter()
                await run_concurrently(call, total, workers)
                rates.append(total / (time.perf_counter() - started))
    f, s = median(floors), median(sdks)
    ratio = s / f
    ok = ratio >= 0.9 and sdk_conns.max_open <= limit
    return [
        Row(
            f"2. concurrency: {total} calls at {workers} in flight",
            f"bare pooled httpx {fmt_rate(f, 'calls')}, <= {bare_conns.max_open} conns open",
            f"Context {fmt_rate(s, 'calls')}, <= {sdk_conns.max_open} conns open "
            f"({sdk_conns.opened} opened)",
            ratio,
            f">= 0.9; conns <= {limit}",
            ok,
            {
                "floor_per_s": f,
                "sdk_per_s": s,
                "sdk_max_open": sdk_conns.max_open,
                "sdk_opened": sdk_conns.opened,
                "bare_max_open": bare_conns.max_open,
            },
        )
    ]
