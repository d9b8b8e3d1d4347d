"""1. Call overhead: sequential ``get_job_status`` through Context vs bare httpx.

Three ways to make the same GET of the same URL, one after another:

- the floor: a pooled ``httpx.AsyncClient`` (keep-alive), body read but not parsed;
- ours: ``Context.get_job_status`` (URL signing, slot, envelope, typed result);
- the naive peer: a new ``httpx.AsyncClient`` per call (a new connection every time).

Floor and ours alternate in short blocks (:data:`BLOCK` calls each), so that a change
of load on a shared machine hits both alike; the ratio is the median of the per-pair
ratios.  Besides wall time, the client's own CPU time per call (``process_time``) is
reported: it does not include the server's time or other processes' interference, so
it isolates what the SDK adds.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from ._support import (
    Row,
    ServerProcess,
    Sizes,
    bare_client,
    ensure_job,
    fmt_us,
    median,
    signed_url,
)

#: Calls per timed block.
BLOCK = 20


async def _block(call: Callable[[], Awaitable[Any]], n: int) -> tuple[float, float]:
    """Wall and CPU seconds per call over ``n`` calls."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        await call()
    return (time.perf_counter() - wall) / n, (time.process_time() - cpu) / n


async def run(server: ServerProcess, sizes: Sizes) -> list[Row]:
    async with server.context() as ctx, bare_client() as bare:
        job = await ensure_job(ctx, server.sleep_job("probe"))
        url = signed_url(ctx, "getJobStatus", job.ref, {})

        async def floor() -> None:
            response = await bare.get(url)
            response.raise_for_status()

        async def ours() -> None:
            await ctx.get_job_status(job)

        async def naive() -> None:
            async with httpx.AsyncClient(timeout=30) as client:
                response = await client.get(url)
                response.raise_for_status()
                response.json()

        for _ in range(sizes.warmup):
            await floor()
            await ours()
        await naive()
        floors: list[tuple[float, float]] = []
        sdks: list[tuple[float, float]] = []
        naives = []
        block = min(BLOCK, sizes.calls)
        for _ in range(sizes.repeats):
            for _ in range(max(1, sizes.calls // block)):
                floors.append(await _block(floor, block))
                sdks.append(await _block(ours, block))
            naives.append((await _block(naive, sizes.naive_calls))[0])
    ratio = median([s[0] / f[0] for f, s in zip(floors, sdks, strict=True)])
    cpu_ratio = median([s[1] / f[1] for f, s in zip(floors, sdks, strict=True) if f[1]])
    f, s, n = median([x[0] for x in floors]), median([x[0] for x in sdks]), median(naives)
    f_cpu, s_cpu = median([x[1] for x in floors]), median([x[1] for x in sdks])
    return [
        Row(
            "1. call overhead: sequential get_job_status",
            f"bare pooled httpx {fmt_us(f)}/call (client CPU {fmt_us(f_cpu)})",
            f"Context {fmt_us(s)}/call (client CPU {fmt_us(s_cpu)}, {cpu_ratio:.2f}x)",
            ratio,
            "<= 1.15",
            ratio <= 1.15,
            {
                "floor_s": f,
                "sdk_s": s,
                "floor_cpu_s": f_cpu,
                "sdk_cpu_s": s_cpu,
                "cpu_ratio": cpu_ratio,
            },
        ),
        Row(
            "1b. call overhead vs naive peer (new client per call)",
            f"new client per call {fmt_us(n)}/call",
            f"Context {fmt_us(s)}/call",
            s / n,
            "report",
            None,
            {"naive_s": n, "sdk_s": s},
        ),
    ]
