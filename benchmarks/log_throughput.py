"""3. Log throughput: ``tail_logs(follow=False)`` over a finished job's whole log.

- the wire floor: the same ``streamLogs`` request (one object per line: the stored log
  as it is on disk) with bare httpx, bytes read and
  newlines counted, nothing parsed;
- a hand-written peer: the same request with bare httpx, ``aiter_lines`` and
  ``json.loads`` per line (what parsing costs without the SDK);
- ours: the stream path of ``tail_logs`` (every line parsed into a ``LogLine``), and of
  ``tail_log_batches`` (a ``LogBatch`` per chunk), each with the JSON decoder the
  install has (orjson with the ``fast`` extra) and with the json module alone, reading
  the ``format=columns`` stream the SDK asks the local server for, and one object per
  line (``format=lines``, as from a server without that extension);
- the polling path (``mode="poll"``): ``tailJob`` windows, as against a plain JuliaRun
  server.  Its window is capped (``MAX_POLL_WINDOW``), so on a log longer than that it
  yields only the newest lines and warns of the gap; the row says how many it yielded.
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator

import httpx

from juliarun_aio import Context, JuliaBatch
from juliarun_aio import _logs as logs
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


async def batched_lines(ctx: Context, job: JuliaBatch) -> int:
    lines = 0
    batches = ctx.tail_log_batches(job, follow=False)
    async with contextlib.aclosing(batches):
        async for batch in batches:
            lines += len(batch)
    return lines


@contextlib.contextmanager
def json_module_only() -> Iterator[None]:
    """Parse the stream with the json module, as without the ``fast`` extra."""
    saved = logs._fast_loads
    logs._fast_loads = lambda: None  # type: ignore[assignment]
    try:
        yield
    finally:
        logs._fast_loads = saved


@contextlib.contextmanager
def lines_format_only() -> Iterator[None]:
    """Read the stream one object per line, as from a server without ``format=columns``."""
    saved = logs.COLUMNS_EXTENSION
    logs.COLUMNS_EXTENSION = "not offered"
    try:
        yield
    finally:
        logs.COLUMNS_EXTENSION = saved


def decoder_name() -> str:
    return "orjson" if logs._fast_loads() is not None else "json module"


async def _rate(read: Callable[[], Awaitable[int]], expected: int) -> float:
    started = time.perf_counter()
    count = await read()
    assert count == expected, count
    return count / (time.perf_counter() - started)


async def run(server: ServerProcess, sizes: Sizes) -> list[Row]:
    async with server.context() as ctx, bare_client() as bare:
        job = await bulk_log(server, ctx, sizes.log_lines)
        small = await bulk_log(server, ctx, sizes.small_log_lines)
        # Warm up: imports, the path choice, connections, the server's page cache.
        await wire_lines(bare, _url(ctx, small))
        await parsed_lines(bare, _url(ctx, small))
        await sdk_lines(ctx, small)
        await batched_lines(ctx, small)
        await sdk_lines(ctx, small, "poll")
        floors, peers, streams, polls = [], [], [], []
        batched, plain_streams, plain_batched = [], [], []
        line_streams, line_batched = [], []
        n = sizes.log_lines
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
            streams.append(await _rate(lambda: sdk_lines(ctx, job), n))
            batched.append(await _rate(lambda: batched_lines(ctx, job), n))
            with json_module_only():
                plain_streams.append(await _rate(lambda: sdk_lines(ctx, job), n))
                plain_batched.append(await _rate(lambda: batched_lines(ctx, job), n))
            with lines_format_only():
                line_streams.append(await _rate(lambda: sdk_lines(ctx, job), n))
                line_batched.append(await _rate(lambda: batched_lines(ctx, job), n))
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", LogGapWarning)
                started = time.perf_counter()
                polled = await sdk_lines(ctx, job, "poll")
                polls.append(polled / (time.perf_counter() - started))
            gap = any(issubclass(w.category, LogGapWarning) for w in caught)
    f, h, s, p = median(floors), median(peers), median(streams), median(polls)
    b, ps, pb = median(batched), median(plain_streams), median(plain_batched)
    ls, lb = median(line_streams), median(line_batched)
    decoder = decoder_name()
    coverage = f"{polled:,} of {sizes.log_lines:,} lines" + ("; gap warned" if gap else "")
    return [
        Row(
            f"3. log throughput: {sizes.log_lines:,} lines, stream path",
            f"bare httpx bytes {fmt_rate(f, 'lines')}",
            f"tail_logs {fmt_rate(s, 'lines')} ({decoder})",
            s / f,
            ">= 0.25",
            s / f >= 0.25,
            {"floor_lines_per_s": f, "stream_lines_per_s": s},
        ),
        Row(
            f"3d. log throughput: {sizes.log_lines:,} lines, batches, stream path",
            f"bare httpx bytes {fmt_rate(f, 'lines')}",
            f"tail_log_batches {fmt_rate(b, 'lines')} ({decoder})",
            b / f,
            ">= 0.5",
            b / f >= 0.5,
            {"batch_lines_per_s": b},
        ),
        Row(
            f"3e. log throughput: {sizes.log_lines:,} lines, json module only",
            f"bare httpx bytes {fmt_rate(f, 'lines')}",
            f"tail_logs {fmt_rate(ps, 'lines')}, tail_log_batches {fmt_rate(pb, 'lines')}",
            pb / f,
            "report",
            None,
            {"plain_stream_lines_per_s": ps, "plain_batch_lines_per_s": pb},
        ),
        Row(
            f"3f. log throughput: {sizes.log_lines:,} lines, one object per line",
            f"bare httpx bytes {fmt_rate(f, 'lines')}",
            f"format=lines (no streamLogsColumns): tail_logs {fmt_rate(ls, 'lines')}, "
            f"tail_log_batches {fmt_rate(lb, 'lines')} ({decoder})",
            lb / f,
            "report",
            None,
            {"lines_format_stream_lines_per_s": ls, "lines_format_batch_lines_per_s": lb},
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
