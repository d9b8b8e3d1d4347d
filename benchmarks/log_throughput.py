"""3. Log throughput: ``tail_logs(follow=False)`` over a finished job's whole log.

- the wire floor: the same ``streamLogs`` request with bare httpx, bytes read and
  newlines counted, nothing parsed;
- a hand-written peer: the same request with bare httpx, ``aiter_lines`` and
  ``json.loads`` per line (what parsing costs without the SDK);
- ours: the stream path of ``tail_logs`` (every line parsed into a ``LogLine``);
- the polling path (``mode="poll"``): ``tailJob`` windows, as against a plain JuliaRun
  server.  Its window is capped (``MAX_POLL_WINDOW``), so on a log longer than that it
  yields only the newest lines and warns of the gap; the row says how many it yielded.
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings

import httpx

from juliarun_aio import Context, JuliaBatch
from juliarun_aio._logs import LogGapWarning

from ._support import (
    Row,
    ServerProcess,
    Sizes,
    bare_client,
    bulk_log,
    fmt_rate,
    median,
    signed_url,
)


def _url(ctx: Context, job: JuliaBatch) -> httpx.URL:
    return signed_url(ctx, "streamLogs", job.ref, {"cursor": "0", "follow": "false"})


async def wire_lines(client: httpx.AsyncClient, url: httpx.URL) -> int:
    """Read a whole ``streamLogs`` body with bare httpx; return its newline count."""
    lines = 0
    async with client.stream("GET", url) as response:
        response.raise_for_status()
        async for chunk in response.aiter_bytes():
            lines += chunk.count(b"\n")
    return lines - 1  # the end marker


async def parsed_lines(client: httpx.AsyncClient, url: httpx.URL) -> int:
    """Read and parse a ``streamLogs`` body by hand; return the log lines seen."""
    lines = 0
    async with client.stream("GET", url) as response:
        response.raise_for_status()
        async for raw in response.aiter_lines():
            if "text" in json.loads(raw):
                lines += 1
    return lines


async def sdk_lines(ctx: Context, job: JuliaBatch, mode: str = "auto") -> int:
    lines = 0
    tail = ctx.tail_logs(job, follow=False, mode=mode)  # type: ignore[arg-type]
    async with contextlib.aclosing(tail):
        async for _ in tail:
            lines += 1
    return lines


async def run(server: ServerProcess, sizes: Sizes) -> list[Row]:
    async with server.context() as ctx, bare_client() as bare:
        job = await bulk_log(server, ctx, sizes.log_lines)
        small = await bulk_log(server, ctx, sizes.small_log_lines)
        # Warm up: imports, the path choice, connections, the server's page cache.
        await wire_lines(bare, _url(ctx, small))
        await parsed_lines(bare, _url(ctx, small))
        await sdk_lines(ctx, small)
        await sdk_lines(ctx, small, "poll")
        floors, peers, streams, polls = [], [], [], []
        polled = 0
        gap = False
        for _ in range(sizes.log_repeats):
            started = time.perf_counter()
            count = await wire_lines(bare, _url(ctx, job))
            floors.append(count / (time.perf_counter() - started))
            assert count == sizes.log_lines, count
            started = time.perf_counter()
            count = await parsed_lines(bare, _url(ctx, job))
            peers.append(count / (time.perf_counter() - started))
            assert count == sizes.log_lines, count
            started = time.perf_counter()
            count = await sdk_lines(ctx, job)
            streams.append(count / (time.perf_counter() - started))
            assert count == sizes.log_lines, count
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", LogGapWarning)
                started = time.perf_counter()
                polled = await sdk_lines(ctx, job, "poll")
                polls.append(polled / (time.perf_counter() - started))
            gap = any(issubclass(w.category, LogGapWarning) for w in caught)
    f, h, s, p = median(floors), median(peers), median(streams), median(polls)
    coverage = f"{polled:,} of {sizes.log_lines:,} lines" + ("; gap warned" if gap else "")
    return [
        Row(
            f"3. log throughput: {sizes.log_lines:,} lines, stream path",
            f"bare httpx bytes {fmt_rate(f, 'lines')}",
            f"tail_logs {fmt_rate(s, 'lines')}",
            s / f,
            ">= 0.5",
            s / f >= 0.5,
            {"floor_lines_per_s": f, "stream_lines_per_s": s},
        ),
        Row(
            f"3b. log throughput: {sizes.log_lines:,} lines, polling path",
            f"bare httpx bytes {fmt_rate(f, 'lines')}",
            f"tail_logs(mode='poll') {fmt_rate(p, 'lines')} ({coverage})",
            p / f,
            "report",
            None,
            {"poll_lines_per_s": p, "poll_lines": polled},
        ),
        Row(
            f"3c. log throughput: {sizes.log_lines:,} lines, vs hand-written parser",
            f"httpx aiter_lines + json.loads {fmt_rate(h, 'lines')}",
            f"tail_logs {fmt_rate(s, 'lines')}",
            s / h,
            "report",
            None,
            {"hand_parsed_lines_per_s": h},
        ),
    ]
