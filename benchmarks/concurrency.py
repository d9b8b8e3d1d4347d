"""2. Concurrency: many ``get_job_status`` calls at once on one Context vs bare httpx.

Both clients get the same pool limits (the Context default, 20 connections), so the
comparison is of the SDK's work per call, not of pool sizes.  Connections are counted
where they are opened: in each client's connection pool (:class:`CountingBackend`).
The goal is on the most connections held at once (sampled from the kernel's table every
50 ms); the total opened is shown too: the server closes connections idle for 5 s
(uvicorn's keep-alive timeout) -- httpx reuses the first idle connection, so the last
ones of a pool can idle that long -- and the pool then opens new ones.
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
    pooled_client,
    run_concurrently,
    sampling_held,
    signed_url,
)


async def run(server: ServerProcess, sizes: Sizes) -> list[Row]:
    total, workers = sizes.concurrent_calls, sizes.concurrency
    limit = DEFAULT_LIMITS.max_connections
    assert limit is not None
    async with server.context() as ctx, bare_client(limits=DEFAULT_LIMITS) as bare:
        sdk_conns = count_connections(pooled_client(ctx))
        bare_conns = count_connections(bare)
        job = await ensure_job(ctx, server.sleep_job("probe"))
        url = signed_url(ctx, "getJobStatus", job.ref, {})

        async def floor() -> None:
            response = await bare.get(url)
            response.raise_for_status()

        async def ours() -> None:
            await ctx.get_job_status(job)

        await run_concurrently(floor, max(workers, total // 10), workers)
        await run_concurrently(ours, max(workers, total // 10), workers)
        floors, sdks = [], []
        async with sampling_held(bare_conns, sdk_conns) as held:
            for _ in range(sizes.concurrent_repeats):
                for call, rates in ((floor, floors), (ours, sdks)):
                    started = time.perf_counter()
                    await run_concurrently(call, total, workers)
                    rates.append(total / (time.perf_counter() - started))
    bare_held, sdk_held = held
    f, s = median(floors), median(sdks)
    ratio = s / f
    ok = ratio >= 0.9 and sdk_held <= limit
    return [
        Row(
            f"2. concurrency: {total} calls at {workers} in flight",
            f"bare pooled httpx {fmt_rate(f, 'calls')}, {bare_held} conns held",
            f"Context {fmt_rate(s, 'calls')}, {sdk_held} conns held ({sdk_conns.opened} opened)",
            ratio,
            f">= 0.9; conns <= {limit}",
            ok,
            {
                "floor_per_s": f,
                "sdk_per_s": s,
                "sdk_held": sdk_held,
                "sdk_opened": sdk_conns.opened,
                "bare_held": bare_held,
            },
        )
    ]
