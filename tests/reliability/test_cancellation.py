"""Lifecycle: long-running helpers cancelled at random points leave nothing behind."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import sys
import warnings
from collections import Counter
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import sniffio
from reliability_support import QUICK_RETRY, record, scaled
from support import http_layer, wait_until, write_script

from juliarun_aio import Context, JuliaBatch
from juliarun_aio._watch import PollPolicy
from juliarun_aio.server import LocalServer

CHATTY = """\
import time
i = 0
while True:
    i += 1
    print(f"tick {i} " + "y" * (i % 200), flush=True)
    time.sleep(0.002)
"""

FAST_POLL = PollPolicy(initial=0.005, maximum=0.02, factor=1.5, jitter=0.2)
#: How a consumer stops.  "abandon" leaves the generator to the garbage collector; trio
#: warns about that by design (ResourceWarning "... garbage collected before it had been
#: exhausted"), so it is a careless-code case for asyncio only.
HOW = ("deadline", "break", "aclosing-break", "outer-cancel")
HOW_ASYNCIO = (*HOW, "abandon")


def _tasks() -> set[object]:
    """Every task of the running event loop (asyncio or trio)."""
    if sniffio.current_async_library() == "asyncio":
        return set(asyncio.all_tasks())
    import trio  # noqa: PLC0415 - only when running under trio

    found: set[object] = set()

    def walk(task: trio.lowlevel.Task) -> None:
        found.add(task)
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    walk(root)
    return found


def _busy_connections(ctx: Context) -> list[str]:
    """Connections of ``ctx``'s pool that are not idle or closed (mid-request, streaming)."""
    pool: Any = http_layer(ctx).loop_state().client._transport._pool  # type: ignore[attr-defined]
    busy = [repr(c) for c in pool.connections if not (c.is_idle() or c.is_closed())]
    busy += [f"queued request {r!r}" for r in pool._requests]
    return busy


class _Unraisables:
    """Collects what would otherwise go to ``sys.unraisablehook`` (e.g. ``__del__`` warnings)."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, unraisable: Any) -> None:
        self.seen.append(f"{unraisable.exc_type.__name__}: {unraisable.exc_value}")


@pytest.fixture
def unraisables() -> Iterator[_Unraisables]:
    """Record unraisable exceptions and warnings of the test instead of printing them."""
    hook = _Unraisables()
    previous = sys.unraisablehook
    sys.unraisablehook = hook
    try:
        yield hook
    finally:
        sys.unraisablehook = previous


@pytest.mark.slow
@pytest.mark.anyio
async def test_cancelled_generators_leave_no_connection_task_or_warning(
    server: LocalServer, volume: Path, unraisables: _Unraisables
) -> None:
    """Lifecycle: 1,000 helpers cancelled at random points leave no connection, task, warning."""
    write_script(volume, "chatty.py", CHATTY)
    job = JuliaBatch(name="chatty", start_script="chatty.py", run_volume="work")
    count = scaled(1000, 60)
    rng = random.Random(1234)
    hows = HOW_ASYNCIO if sniffio.current_async_library() == "asyncio" else HOW
    outcomes: Counter[str] = Counter()
    received: Counter[str] = Counter()
    errors: list[BaseException] = []

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with Context(server.url, server.token, server.namespace, retries=QUICK_RETRY) as ctx:
            await ctx.submit_job(job)
            await anyio.to_thread.run_sync(
                lambda: wait_until(lambda: _has_lines(server), 30, "the job's first lines")
            )
            baseline = _tasks()

            def helper(kind: str) -> AsyncGenerator[Any, None]:
                if kind == "tail_logs":
                    return ctx.tail_logs(
                        job, since=rng.choice((None, 0, 10)), idle_timeout=2.0, poll=FAST_POLL
                    )
                if kind == "wait_for_workers":
                    return ctx.wait_for_workers(job, 1, timeout=None, poll=FAST_POLL)
                return ctx.watch_job(job, poll=FAST_POLL)

            async def consume(gen: AsyncGenerator[Any, None], kind: str, limit: int) -> None:
                async for _ in gen:
                    received[kind] += 1
                    limit -= 1
                    if limit <= 0:
                        break

            async def one(index: int) -> None:
                kind = rng.choice(("tail_logs", "wait_for_workers", "watch_job"))
                how = rng.choice(hows)
                delay = rng.choice((0.0, rng.uniform(0, 0.02), rng.uniform(0, 0.3)))
                outcomes[f"{kind}/{how}"] += 1
                gen = helper(kind)
                try:
                    if how == "deadline":
                        with anyio.move_on_after(delay):
                            await consume(gen, kind, sys.maxsize)
                        await gen.aclose()
                    elif how == "break":
                        async for _ in gen:
                            break
                        await gen.aclose()
                    elif how == "aclosing-break":
                        # Watchers yield on change only: the deadline ends a quiet one.
                        async with contextlib.aclosing(gen):
                            with anyio.move_on_after(delay * 2):
                                await consume(gen, kind, rng.randint(1, 300))
                    elif how == "outer-cancel":
                        async with anyio.create_task_group() as tg:
                            tg.start_soon(consume, gen, kind, sys.maxsize)
                            await anyio.sleep(delay)
                            tg.cancel_scope.cancel()
                        await gen.aclose()
                    else:
                        # Left to the garbage collector mid-iteration, as careless code does.
                        with anyio.move_on_after(delay):
                            async for _ in gen:
                                break
                        del gen
                except Exception as exc:  # any error from a helper is a finding
                    errors.append(exc)

            limiter = anyio.CapacityLimiter(40)

            async def limited(index: int) -> None:
                async with limiter:
                    await one(index)

            async with anyio.create_task_group() as tg:
                for index in range(count):
                    tg.start_soon(limited, index)

            # Abandoned generators are finalized by the event loop after collection.
            for _ in range(5):
                gc.collect()
                await anyio.sleep(0.05)
            leftover_tasks = [repr(t) for t in _tasks() - baseline]
            busy = _busy_connections(ctx)
            slots_in_use = http_layer(ctx).loop_state().slots.borrowed_tokens
            pollers = http_layer(ctx).loop_state().pollers
            alive = await ctx.get_system_status()
        gc.collect()
    resource_warnings = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    record(
        "cancelled generators",
        generators=count,
        **{f"items {k}": v for k, v in sorted(received.items())},
        **{f"mix {k}": v for k, v in sorted(outcomes.items())},
    )
    assert not errors, errors[:5]
    assert alive
    assert not busy, busy[:5]
    assert not leftover_tasks, leftover_tasks[:5]
    assert slots_in_use == 0
    assert not pollers, list(pollers)
    assert not resource_warnings, resource_warnings[:5]
    assert not unraisables.seen, unraisables.seen[:5]


def _has_lines(server: LocalServer) -> bool:
    log = server.data_dir / "namespaces" / "default" / "jobs" / "chatty" / "logs"
    combined = log / "combined.ndjson"
    return combined.exists() and combined.stat().st_size > 10_000
