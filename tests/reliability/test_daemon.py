"""Long-running clients: a daemon's waits through server restarts, one Context across loops."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import anyio
import httpx
import psutil
import pytest
import trio
from reliability_support import free_port, record, scaled
from support import QUICK_KILL, write_script

from juliarun_aio import Context, JobStatus, JuliaBatch, JuliaRunError
from juliarun_aio._watch import PollPolicy
from juliarun_aio.server import LocalServer, ServerProcess

#: Each job sleeps SLEEP seconds, a little longer than the one before, then exits with CODE.
SLEEPER = (
    "import os, sys, time\n"
    "time.sleep(float(os.environ['SLEEP']))\n"
    "sys.exit(int(os.environ['CODE']))\n"
)
POLL = PollPolicy(initial=0.1, maximum=1.0)


@pytest.mark.slow
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_a_daemon_waiting_on_jobs_survives_server_restarts(tmp_path: Path) -> None:
    """Waits on 20 jobs ride out three server restarts in a row and see every true end."""
    count = scaled(20, 4)
    data_dir = tmp_path / "data"
    write_script(data_dir / "namespaces" / "default" / "volumes" / "work", "sleeper.py", SLEEPER)
    # Ends spread over the restarts: some jobs end while the server is down.
    codes = {f"job-{i}": (3 if i % 4 == 0 else 0) for i in range(count)}
    jobs = {
        name: JuliaBatch(
            name=name,
            start_script="sleeper.py",
            run_volume="work",
            envvars={"SLEEP": f"{1 + 12 * i / count:.2f}", "CODE": str(codes[name])},
        )
        for i, name in enumerate(codes)
    }
    server = ServerProcess(data_dir, port=free_port(), args=QUICK_KILL).start()
    finals: dict[str, JobStatus] = {}
    errors: list[BaseException] = []
    downtimes: list[float] = []
    try:
        async with Context(server.url, server.token, server.namespace) as ctx:
            for spec in jobs.values():
                await ctx.submit_job(spec)

            async def wait(name: str) -> None:
                try:
                    finals[name] = await ctx.wait_for_job(jobs[name], poll=POLL)
                except JuliaRunError as exc:
                    errors.append(exc)

            def restart(how: str) -> None:
                began = time.monotonic()
                server.kill() if how == "kill" else server.stop()
                server.start()
                downtimes.append(time.monotonic() - began)

            with anyio.fail_after(120):
                async with anyio.create_task_group() as tg:
                    for name in jobs:
                        tg.start_soon(wait, name)
                    await anyio.sleep(0.5)
                    for how in ("stop", "kill", "stop"):
                        await anyio.to_thread.run_sync(restart, how)
                        await anyio.sleep(0.3)
    finally:
        server.stop()

    assert errors == []
    assert set(finals) == set(jobs)
    true_ends = 0
    for name, final in finals.items():
        assert final.completed, final
        assert final.failed == (codes[name] != 0), (name, final)
        assert final.extra["exit_codes"]["master"] == codes[name], (name, final)
        true_ends += 1
    record(
        "daemon under restarts",
        server_restarts=len(downtimes),
        jobs_waited=count,
        true_ends_seen=true_ends,
        waits_failed=len(errors),
        longest_restart_s=round(max(downtimes), 2),
    )


def _open_connections(port: int) -> int:
    return sum(
        1
        for conn in psutil.Process().net_connections("tcp")
        if conn.raddr and conn.raddr.port == port and conn.status == psutil.CONN_ESTABLISHED
    )


@pytest.mark.slow
def test_one_context_through_many_event_loops(server: LocalServer, volume: Path) -> None:
    """One Context used in loop after loop (asyncio and trio in turn) works in each,
    prints nothing, and leaves no connection open once closed."""
    loops = scaled(30, 4)
    write_script(volume, "hello.py", "print('hello')\n")
    spec = JuliaBatch(name="hello", start_script="hello.py", run_volume="work")
    ctx = Context(server.url, server.token, server.namespace)
    calls = 0

    async def one_loop() -> None:
        nonlocal calls
        assert await ctx.get_system_status()
        status = await ctx.wait_for_job(spec, timeout=30, poll=POLL)
        assert status.succeeded
        async with contextlib.aclosing(ctx.tail_logs(spec, follow=False)) as lines:
            assert [line.text async for line in lines] == ["hello"]
        assert "hello" in await ctx.list_jobs()
        calls += 4

    async def setup() -> None:
        await ctx.submit_job(spec)

    unraisable: list[Any] = []
    previous = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    runtime_errors = 0
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            asyncio.run(setup())
            for i in range(loops):
                try:
                    if i % 2:
                        trio.run(one_loop)
                    else:
                        asyncio.run(one_loop())
                except RuntimeError:
                    runtime_errors += 1
                    raise
            asyncio.run(ctx.aclose())
            gc.collect()
    finally:
        sys.unraisablehook = previous
    port = httpx.URL(server.url).port
    assert port is not None
    left_open = _open_connections(port)
    assert [str(w.message) for w in caught] == []
    assert [repr(u.exc_value) for u in unraisable] == []
    assert left_open == 0
    record(
        "event-loop reuse",
        event_loops=loops,
        calls=calls,
        raw_runtime_errors=runtime_errors,
        warnings_printed=len(caught) + len(unraisable),
        connections_left_open=left_open,
    )
