"""1. Call overhead: sequential ``get_job_status`` through Context vs bare httpx.

Three ways to make the same GET of the same URL, one after another, alternating rounds:

- the floor: a pooled ``httpx.AsyncClient`` (keep-alive), body read but not parsed;
- ours: ``Context.get_job_status`` (URL signing, slot, envelope, typed result);
- the naive peer: a new ``httpx.AsyncClient`` per call (a new connection every time).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from ._support import Row, ServerProcess, Sizes, bare_client, ensure_job, fmt_us, median


async def _per_call(call: Callable[[], Awaitable[Any]], n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        await call()
    return (time.perf_counter() - started) / n


async def run(server: ServerProcess, sizes: Sizes) -> list[Row]:
    async with server.context() as ctx, bare_client() as bare:
        job = await ensure_job(ctx, server.sleep_job("probe"))
        url = ctx.build_url("getJobStatus", job.ref, {})

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
        floors, sdks, naives = [], [], []
        for _ in range(sizes.repeats):
            floors.append(await _per_call(floor, sizes.calls))
            sdks.append(await _per_call(ours, sizes.calls))
            naives.append(await _per_call(naive, sizes.naive_calls))
    f, s, n = median(floors), median(sdks), median(naives)
    ratio = s / f
    return [
        Row(
            "1. call overhead: sequential get_job_status",
            f"bare pooled httpx {fmt_us(f)}/call",
            f"Context {fmt_us(s)}/call",
            ratio,
            "<= 1.15",
            ratio <= 1.15,
            {"floor_s": f, "sdk_s": s},
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
