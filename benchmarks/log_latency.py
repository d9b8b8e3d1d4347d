"""4. Log latency: from the job writing a line to ``tail_logs`` yielding it.

A job writes ``tick <i> <wall clock>`` lines at a steady rate (flushed each time); the
reader notes the wall clock when the line reaches it.  Job and reader are on the same
machine, so the clocks agree.  Three readers, each on a job of its own, one after another:

- the floor: bare httpx on the ``streamLogs`` NDJSON (what the server's collector and
  the wire allow);
- ours: the stream path of ``tail_logs(follow=True)``;
- the polling path (``mode="poll"``, the default ``PollPolicy``).

The first tenth of each run is dropped (start-up).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

from juliarun_aio import Context, JuliaBatch

from ._support import Row, ServerProcess, Sizes, bare_client, fmt_ms, percentile, signed_url


def _written_at(text: str) -> float | None:
    parts = text.split()
    if len(parts) == 3 and parts[0] == "tick":
        return float(parts[2])
    return None


async def _bare(
    ctx: Context, job: JuliaBatch, note: Callable[[str], None], **client_options: Any
) -> None:
    params = {"cursor": "0", "follow": "true", "heartbeat": "1"}
    url = signed_url(ctx, "streamLogs", job.ref, params)
    async with bare_client(**client_options) as client, client.stream("GET", url) as response:
        response.raise_for_status()
        async for raw in response.aiter_lines():
            event = json.loads(raw)
            if event.get("end"):
                return
            if "text" in event:
                note(event["text"])


async def _sdk(ctx: Context, job: JuliaBatch, note: Callable[[str], None], mode: str) -> None:
    tail = ctx.tail_logs(job, mode=mode)  # type: ignore[arg-type]
    async with contextlib.aclosing(tail):
        async for line in tail:
            note(line.text)


async def latencies(
    server: ServerProcess, ctx: Context, sizes: Sizes, reader: str, **client_options: Any
) -> list[float]:
    """Write -> read seconds of a tick job's lines read by ``reader`` (``bare``, ``stream``,
    ``poll``), the first tenth dropped; ``client_options`` go to the bare client."""
    job = server.tick_job(f"tick-{reader}", sizes.tick_rate, sizes.tick_seconds)
    latencies: list[float] = []

    def note(text: str) -> None:
        now = time.time()
        written = _written_at(text)
        if written is not None:
            latencies.append(now - written)

    await ctx.submit_job(job)
    if reader == "bare":
        await _bare(ctx, job, note, **client_options)
    else:
        await _sdk(ctx, job, note, reader)
    expected = int(sizes.tick_rate * sizes.tick_seconds)
    assert len(latencies) == expected, (reader, len(latencies), expected)
    return latencies[expected // 10 :]


async def run(server: ServerProcess, sizes: Sizes) -> list[Row]:
    results: dict[str, tuple[float, float]] = {}
    async with server.context() as ctx:
        await ctx.server_info()  # the path choice, made before timing
        for reader in ("bare", "stream", "poll"):
            values = await latencies(server, ctx, sizes, reader)
            results[reader] = (percentile(values, 50), percentile(values, 99))
    (b50, b99), (s50, s99), (p50, p99) = results["bare"], results["stream"], results["poll"]
    rate = f"{sizes.tick_rate:g} lines/s for {sizes.tick_seconds:g} s"
    return [
        Row(
            f"4. log latency, stream path ({rate})",
            f"bare httpx p50 {fmt_ms(b50)}, p99 {fmt_ms(b99)}",
            f"tail_logs p50 {fmt_ms(s50)}, p99 {fmt_ms(s99)}",
            s50 / b50,
            "p50 <= 50 ms",
            s50 <= 0.050,
            {"bare_p50_s": b50, "bare_p99_s": b99, "stream_p50_s": s50, "stream_p99_s": s99},
        ),
        Row(
            "4b. log latency, polling path",
            f"bare httpx p50 {fmt_ms(b50)}, p99 {fmt_ms(b99)}",
            f"tail_logs(mode='poll') p50 {fmt_ms(p50)}, p99 {fmt_ms(p99)}",
            p50 / b50,
            "report",
            None,
            {"poll_p50_s": p50, "poll_p99_s": p99},
        ),
    ]
