"""wait_for_workers, watch_job and their shared pollers (respx, no real waiting)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
import respx
from streaming_support import URL, envelope, mock_context, not_found, server_context, write_script

from juliarun_aio import (
    JobNotFoundError,
    JobRef,
    JobScale,
    JobStatus,
    JuliaBatch,
    JuliaParBatch,
    WaitTimeoutError,
)
from juliarun_aio._watch import PollPolicy
from juliarun_aio.server import LocalServer

JOB = JobRef("JuliaParBatch", "par1")
NO_WAIT = PollPolicy(initial=0.0, maximum=0.0)
SCALE = f"{URL}/getJobScale/JuliaParBatch/"
STATUS = f"{URL}/getJobStatus/JuliaParBatch/"


def answers(*data: object) -> Iterator[httpx.Response]:
    """Answer with each of ``data`` in turn, then keep repeating the last one."""
    for item in data:
        yield envelope(item)
    while True:
        yield envelope(data[-1])


def test_poll_policy_backs_off_with_jitter() -> None:
    """The interval grows by factor up to maximum; jitter spreads it both ways."""
    policy = PollPolicy(initial=1.0, maximum=3.0, factor=2.0, jitter=0.5)
    assert [policy.grow(x) for x in (0.0, 1.0, 2.0)] == [2.0, 2.0, 3.0]
    assert policy.spread(2.0, rand=lambda: 0.0) == 1.0
    assert policy.spread(2.0, rand=lambda: 0.5) == 2.0
    assert policy.spread(2.0, rand=lambda: 1.0) == 3.0


@pytest.mark.anyio
async def test_wait_for_workers_yields_changes_until_n_run() -> None:
    """Each change is yielded once; the generator ends at running >= n."""
    scales = answers([0, 2], [0, 2], [1, 2], [1, 2], [2, 2], [3, 3])
    async with respx.mock() as router, mock_context() as ctx:
        route = router.get(SCALE).mock(side_effect=lambda _: next(scales))
        got = [s async for s in ctx.wait_for_workers(JOB, 2, poll=NO_WAIT)]
        assert route.call_count == 5
    assert got == [JobScale(0, 2), JobScale(1, 2), JobScale(2, 2)]


@pytest.mark.anyio
async def test_wait_for_scale_returns_the_final_scale() -> None:
    """wait_for_scale returns the first scale with enough running workers."""
    scales = answers([1, 4], [4, 4])
    async with respx.mock() as router, mock_context() as ctx:
        router.get(SCALE).mock(side_effect=lambda _: next(scales))
        assert await ctx.wait_for_scale(JOB, 3, poll=NO_WAIT) == JobScale(4, 4)


@pytest.mark.anyio
async def test_wait_for_workers_timeout_says_running_and_requested() -> None:
    """The timeout error names the running and requested workers."""
    async with respx.mock() as router, mock_context() as ctx:
        router.get(SCALE).mock(return_value=envelope([1, 3]))
        with pytest.raises(WaitTimeoutError, match=r"reach 3 running.*1 running, 3 requested"):
            await ctx.wait_for_scale(JOB, 3, timeout=0.05, poll=PollPolicy(0.01, 0.01))


@pytest.mark.anyio
async def test_watch_job_ends_on_success_on_a_plain_server() -> None:
    """A plain server's statuses (no phase) end the watch once succeeded is true."""
    pending = {"succeeded": False, "created": False}
    running = {"succeeded": False, "created": True}
    statuses = answers(pending, running, running, {"succeeded": True, "created": True})
    async with respx.mock() as router, mock_context() as ctx:
        router.get(STATUS).mock(side_effect=lambda _: next(statuses))
        got = [s async for s in ctx.watch_job(JOB, poll=NO_WAIT)]
    assert [(s.created, s.succeeded) for s in got] == [(False, False), (True, False), (True, True)]


@pytest.mark.anyio
async def test_wait_for_job_returns_a_failure() -> None:
    """On servers that report failures, wait_for_job returns the failed status."""
    statuses = answers(
        {"succeeded": False, "phase": "running", "failed": False},
        {"succeeded": False, "phase": "failed", "failed": True},
    )
    async with respx.mock() as router, mock_context() as ctx:
        router.get(STATUS).mock(side_effect=lambda _: next(statuses))
        final = await ctx.wait_for_job(JOB, poll=NO_WAIT)
    assert (final.phase, final.failed, final.completed) == ("failed", True, True)


@pytest.mark.anyio
async def test_watch_job_timeout_and_not_found() -> None:
    """A job that never completes times out; a deleted job raises JobNotFoundError."""
    async with respx.mock() as router, mock_context() as ctx:
        route = router.get(STATUS).mock(return_value=envelope({"phase": "running"}))
        with pytest.raises(WaitTimeoutError, match=r"did not complete within 0\.05 s"):
            await ctx.wait_for_job(JOB, timeout=0.05, poll=PollPolicy(0.01, 0.01))
        route.mock(return_value=not_found())
        with pytest.raises(JobNotFoundError):
            await ctx.wait_for_job(JOB, poll=NO_WAIT)


@pytest.mark.anyio
async def test_many_watchers_share_one_poller() -> None:
    """200 concurrent watchers of one job cost the requests of one, and all see the end."""
    progress = iter(range(10_000))

    def status(_: httpx.Request) -> httpx.Response:
        n = next(progress)
        return envelope({"succeeded": n >= 20, "nworkers_succeeded": min(n, 20)})

    async with respx.mock() as router, mock_context() as ctx:
        route = router.get(STATUS).mock(side_effect=status)
        finals: list[JobStatus] = []

        async def watcher() -> None:
            finals.append(await ctx.wait_for_job(JOB, poll=PollPolicy(0.001, 0.001)))

        async with anyio.create_task_group() as tg:
            for _ in range(200):
                tg.start_soon(watcher)
        assert len(finals) == 200
        assert all(f.succeeded for f in finals)
        assert route.call_count <= 25
        assert ctx.loop_state().pollers == {}


@pytest.mark.anyio
async def test_a_shared_error_reaches_every_watcher() -> None:
    """A failed poll is raised in every watcher sharing it, each with its own copy."""
    async with respx.mock() as router, mock_context() as ctx:
        route = router.get(STATUS).mock(return_value=not_found())
        errors: list[BaseException] = []

        async def watcher() -> None:
            try:
                await ctx.wait_for_job(JOB, poll=NO_WAIT)
            except JobNotFoundError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(watcher)
        assert len(errors) == 20
        assert len({id(e) for e in errors}) == 20
        assert all(isinstance(e, JobNotFoundError) and e.status_code == 404 for e in errors)
        assert route.call_count == 1


@pytest.mark.anyio
async def test_leaving_a_watch_hands_polling_to_the_others() -> None:
    """A watcher that breaks out leaves no poller behind and does not stall the others."""
    scales = answers([0, 1], [0, 1], [0, 1], [1, 1])
    async with respx.mock() as router, mock_context() as ctx:
        router.get(SCALE).mock(side_effect=lambda _: next(scales))
        policy = PollPolicy(0.001, 0.001)
        async with contextlib.aclosing(ctx.wait_for_workers(JOB, 1, poll=policy)) as first:
            async for _scale in first:
                break
        assert ctx.loop_state().pollers == {}
        assert await ctx.wait_for_scale(JOB, 1, poll=policy) == JobScale(1, 1)


def test_bad_arguments_raise_at_once() -> None:
    """Argument errors are raised by the call, before any iteration."""
    ctx = mock_context()
    with pytest.raises(ValueError, match="n must be"):
        ctx.wait_for_workers(JOB, -1)
    with pytest.raises(ValueError, match="timeout"):
        ctx.watch_job(JOB, timeout=-1)


# -- against the local server -------------------------------------------------------------

FAST_POLL = PollPolicy(initial=0.02, maximum=0.1)
MASTER = "import os, time\nwhile not os.path.exists('stop'):\n    time.sleep(0.05)\n"
WORKER = "import time\ntime.sleep(60)\n"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalServer]:
    """A local server on a free loopback port."""
    with LocalServer(tmp_path / "data", kill_grace=0.5) as running:
        yield running


@pytest.mark.anyio
async def test_wait_for_workers_follows_a_scale_up(server: LocalServer) -> None:
    """Scaling a parallel job to 2 is followed until 2 run; 3 of 1 times out."""
    write_script(server, "master.py", MASTER)
    write_script(server, "worker.py", WORKER)
    spec = JuliaParBatch(
        name="par", start_script="master.py", worker_start_script="worker.py", run_volume="work"
    )
    async with server_context(server) as ctx:
        await ctx.submit_job(spec)
        await ctx.set_job_scale(spec, 2)
        seen = [s async for s in ctx.wait_for_workers(spec, 2, timeout=20, poll=FAST_POLL)]
        assert seen[-1] == JobScale(2, 2)
        assert [s.running for s in seen] == sorted(s.running for s in seen)
        await ctx.set_job_scale(spec, 1)
        await ctx.wait_for_scale(spec, 1, poll=FAST_POLL)
        with pytest.raises(WaitTimeoutError, match=r"3 running.*1 running, 1 requested"):
            await ctx.wait_for_scale(spec, 3, timeout=0.3, poll=FAST_POLL)
        await ctx.delete_job(spec, force=True)


@pytest.mark.anyio
@pytest.mark.parametrize(("code", "phase"), [(0, "succeeded"), (3, "failed")])
async def test_watch_job_ends_when_the_job_ends(server: LocalServer, code: int, phase: str) -> None:
    """watch_job's last status is the job's outcome, success or failure."""
    write_script(server, "job.py", f"import sys, time\ntime.sleep(0.3)\nsys.exit({code})\n")
    spec = JuliaBatch(name="once", start_script="job.py", run_volume="work")
    async with server_context(server) as ctx:
        await ctx.submit_job(spec)
        seen = [s async for s in ctx.watch_job(spec, timeout=20, poll=FAST_POLL)]
    assert seen[-1].phase == phase
    assert seen[-1].failed == (code != 0)
    assert all(not s.completed for s in seen[:-1])
