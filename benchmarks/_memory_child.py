"""Stream one job's log in a fresh process and print its peak RSS growth as JSON.

``python -m benchmarks._memory_child URL TOKEN JOB LINES sdk|bare``

A fresh process per measurement, so that nothing the harness allocated before counts.
Before measuring, the last lines of the same log are streamed once (imports, the
connection, the path choice).  The peak is the kernel's ``ru_maxrss`` when streaming
raised it, else the highest RSS a sampling thread saw (every 2 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import resource
import sys
import threading

import psutil

from juliarun_aio import Context, JobRef

from ._support import NAMESPACE, pooled_client, signed_url

WARMUP_LINES = 1000


class _Sampler:
    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._process = psutil.Process()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


async def _read(ctx: Context, job: JobRef, mode: str, after: int) -> int:
    lines = 0
    if mode == "bare":
        url = signed_url(ctx, "streamLogs", job, {"cursor": str(after), "follow": "false"})
        async with pooled_client(ctx).stream("GET", url) as response:
            async for chunk in response.aiter_bytes():
                lines += chunk.count(b"\n")
        return lines - 1
    tail = ctx.tail_logs(job, follow=False, since=after)
    async with contextlib.aclosing(tail):
        async for _ in tail:
            lines += 1
    return lines


def _max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


async def main(url: str, token: str, name: str, lines: int, mode: str) -> None:
    job = JobRef("JuliaBatch", name)
    async with Context(url, token, NAMESPACE) as ctx:
        await _read(ctx, job, mode, lines - WARMUP_LINES)
        gc.collect()
        before = psutil.Process().memory_info().rss
        max_before = _max_rss()
        with _Sampler() as sampler:
            count = await _read(ctx, job, mode, 0)
        max_after = _max_rss()
    peak = max_after if max_after > max_before else max(sampler.peak, before)
    print(json.dumps({"growth": max(0, peak - before), "lines": count, "before": before}))


if __name__ == "__main__":
    url, token, name, lines, mode = sys.argv[1:]
    asyncio.run(main(url, token, name, int(lines), mode))
