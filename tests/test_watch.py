"""wait_for_workers, watch_job and their shared pollers (respx, no real waiting)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import anyio
import httpx
import pytest
import respx
from streaming_support import URL, envelope, mock_context, not_found, server_context, write_script
from support import http_layer

from juliarun_aio import (
    JobNotFoundError,
    JobRef,
    JobScale,
    JobStateError,
    JobStatus,
    JuliaBatch,
    JuliaParBatch,
    PermissionDeniedError,
    TransportError,
    WaitTimeoutError,
)
from juliarun_aio._watch import PollPolicy
from juliarun_aio.server import LocalServer

_T = TypeVar("_T")

JOB = JobRef("JuliaParBatch", "par1")
NO_WAIT = PollPolicy(initial=0.0, maximum=0.0)
SCALE = f"{URL}/getJobScale/JuliaParBatch/"
STATUS = f"{URL}/getJobStatus/JuliaParBatch/"
RUNNING = {"succeeded": False, "phase": "running", "failed": False, "uid": "a1"}


def answers(*data: object) -> Iterator[httpx.Response]:
    """Answer with each of ``data`` in turn, then keep repeating the last one."""
    for item in data:
        yield envelope(item)
    while True:
        yield envelope(data[-1])


def script(*items: object) -> Callable[[httpx.Request], httpx.Response]:
    """A respx side effect: each item in turn (an exception is raised, a Response returned,
    anything else answered as the envelope's data); the last one repeats."""
    queue = list(items)

    def side_effect(_: httpx.Request) -> httpx.Response:
        item = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(item, Exception):
            raise item
        return item if isinstance(item, httpx.Response) else envelope(item)

    return side_effect


async def collect(values: AsyncGenerator[_T, None], into: list[_T]) -> None:
    """Consume ``values`` into ``into`` (kept when the generator raises)."""
    async with contextlib.aclosing(values):
        async for value in values:
            into.append(value)


#: Longer than the Context's retries (4 attempts): each poll in it fails.
OUTAGE = [httpx.ConnectError("connection refused")] * 12 + [envelope("restarting", status=503)] * 6


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
        router.get(STATUS).mock(return_value=envelope(RUNNING))
        got = [s async for s in ctx.wait_for_workers(JOB, 2, poll=NO_WAIT)]
        assert route.call_count == 5
    assert got == [JobScale(0, 2), JobScale(1, 2), JobScale(2, 2)]


@pytest.mark.anyio
async def test_wait_for_scale_returns_the_final_scale() -> None:
    """wait_for_scale returns the first scale with enough running workers."""
    scales = answers([1, 4], [4, 4])
    async with respx.mock() as router, mock_context() as ctx:
        router.get(SCALE).mock(side_effect=lambda _: next(scales))
        router.get(STATUS).mock(return_value=envelope(RUNNING))
        assert await ctx.wait_for_scale(JOB, 3, poll=NO_WAIT) == JobScale(4, 4)


@pytest.mark.anyio
async def test_wait_for_workers_timeout_says_running_and_requested() -> None:
    """The timeout error names the running and requested workers."""
    async with respx.mock() as router, mock_context() as ctx:
        router.get(SCALE).mock(return_value=envelope([1, 3]))
        router.get(STATUS).mock(return_value=envelope(RUNNING))
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
        assert http_layer(ctx).loop_state().pollers == {}


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
        router.get(STATUS).mock(return_value=envelope(RUNNING))
        policy = PollPolicy(0.001, 0.001)
        async with contextlib.aclosing(ctx.wait_for_workers(JOB, 1, poll=policy)) as first:
            async for _scale in first:
                break
        assert http_layer(ctx).loop_state().pollers == {}
        assert await ctx.wait_for_scale(JOB, 1, poll=policy) == JobScale(1, 1)


# -- outages, waits that cannot succeed, timeout=0, one submission ------------------------


@pytest.mark.anyio
async def test_watch_job_rides_out_an_outage() -> None:
    """Connection errors and 503s for longer than the retries are waited out, not raised."""
    done = {**RUNNING, "succeeded": True, "phase": "succeeded"}
    async with respx.mock() as router, mock_context() as ctx:
        route = router.get(STATUS).mock(side_effect=script(RUNNING, *OUTAGE, done))
        seen = [s.phase async for s in ctx.watch_job(JOB, poll=NO_WAIT)]
    assert seen == ["running", "succeeded"]
    assert route.call_count == 2 + len(OUTAGE)


@pytest.mark.anyio
async def test_wait_for_workers_rides_out_an_outage() -> None:
    """A scale wait goes on through an outage and ends when the workers run."""
    async with respx.mock() as router, mock_context() as ctx:
        router.get(SCALE).mock(side_effect=script([0, 2], *OUTAGE, [2, 2]))
        router.get(STATUS).mock(return_value=envelope(RUNNING))
        got = [s async for s in ctx.wait_for_workers(JOB, 2, timeout=30, poll=NO_WAIT)]
    assert got == [JobScale(0, 2), JobScale(2, 2)]


@pytest.mark.anyio
async def test_an_outage_longer_than_the_budget_raises_the_last_error() -> None:
    """Without a timeout, an outage longer than PollPolicy.outage raises, saying so."""
    policy = PollPolicy(initial=0.005, maximum=0.005, outage=0.2)
    async with respx.mock() as router, mock_context() as ctx:
        router.get(STATUS).mock(side_effect=script(RUNNING, httpx.ConnectError("refused")))
        with anyio.fail_after(10), pytest.raises(TransportError, match=r"PollPolicy\.outage=0\.2"):
            await ctx.wait_for_job(JOB, poll=policy)


@pytest.mark.anyio
async def test_a_timeout_during_an_outage_names_the_last_state_and_the_outage() -> None:
    """A deadline met during an outage says what was last seen and what the server did."""
    async with respx.mock() as router, mock_context() as ctx:
        router.get(STATUS).mock(side_effect=script(RUNNING, envelope("down", status=502)))
        with pytest.raises(WaitTimeoutError) as caught:
            await ctx.wait_for_job(JOB, timeout=0.2, poll=PollPolicy(0.01, 0.01))
    message = str(caught.value)
    assert "last seen: phase running" in message
    assert "the server has been unavailable for" in message
    assert "502" in message


@pytest.mark.anyio
async def test_a_refusal_ends_a_wait_at_once() -> None:
    """A 4xx is not an outage: the wait ends with it."""
    async with respx.mock() as router, mock_context() as ctx:
        route = router.get(STATUS).mock(
            side_effect=script(RUNNING, envelope("not in this namespace", status=403))
        )
        with pytest.raises(PermissionDeniedError):
            await ctx.wait_for_job(JOB, timeout=30, poll=NO_WAIT)
    assert route.call_count == 2


@pytest.mark.anyio
@pytest.mark.parametrize(
    "status",
    [
        {"succeeded": True, "phase": "succeeded", "uid": "a1"},
        {"succeeded": False, "phase": "failed", "failed": True, "message": "exit code 3"},
        {"succeeded": True, "created": True},  # a plain JuliaRun server: success only
    ],
)
async def test_waiting_for_workers_of_an_ended_job_raises_at_once(status: object) -> None:
    """Workers of a job that ended will never start: one poll, then JobStateError."""
    async with respx.mock() as router, mock_context() as ctx:
        scales = router.get(SCALE).mock(return_value=envelope([0, 2]))
        router.get(STATUS).mock(return_value=envelope(status))
        with pytest.raises(JobStateError, match=r"ended before 2 worker\(s\) ran") as caught:
            await ctx.wait_for_scale(JOB, 2, poll=NO_WAIT)
    assert scales.call_count == 1
    assert caught.value.status is not None
    assert caught.value.scale == JobScale(0, 2)


@pytest.mark.anyio
async def test_workers_that_cannot_start_end_the_wait_after_a_few_polls() -> None:
    """A running job whose server says a worker cannot start, and no progress: JobStateError."""
    stuck = {**RUNNING, "message": "worker-2 cannot start: no such file: 'w.py'"}
    async with respx.mock() as router, mock_context() as ctx:
        scales = router.get(SCALE).mock(return_value=envelope([1, 2]))
        router.get(STATUS).mock(return_value=envelope(stuck))
        with pytest.raises(JobStateError) as caught:
            await ctx.wait_for_scale(JOB, 2, poll=NO_WAIT)
    message = str(caught.value)
    assert "cannot reach 2 running worker(s): worker-2 cannot start: no such file" in message
    assert "phase running" in message
    assert "1 running, 2 requested" in message
    assert scales.call_count == 3


@pytest.mark.anyio
async def test_workers_waiting_in_a_queue_do_not_end_the_wait() -> None:
    """A message beside workers the server lists as waiting (a cluster's queue) is no verdict:
    the wait goes on, however many polls show no progress, until the workers run."""
    queued = {
        **RUNNING,
        "message": "worker-2: waiting for free resources (Slurm: PENDING, Resources)",
        "waiting": {"worker-2": "waiting for free resources (Slurm: PENDING, Resources)"},
    }
    async with respx.mock() as router, mock_context() as ctx:
        scales = router.get(SCALE).mock(side_effect=script(*[[1, 2]] * 10, [2, 2]))
        router.get(STATUS).mock(return_value=envelope(queued))
        assert await ctx.wait_for_scale(JOB, 2, poll=NO_WAIT) == JobScale(2, 2)
    assert scales.call_count == 11


@pytest.mark.anyio
async def test_a_message_does_not_end_a_wait_that_makes_progress() -> None:
    """Workers still coming (the scale changes) or enough running: the message is no verdict."""
    stuck = {**RUNNING, "message": "worker-3 cannot start: no such file"}
    async with respx.mock() as router, mock_context() as ctx:
        router.get(SCALE).mock(side_effect=script([0, 3], [1, 3], [2, 3]))
        router.get(STATUS).mock(return_value=envelope(stuck))
        assert await ctx.wait_for_scale(JOB, 2, poll=NO_WAIT) == JobScale(2, 3)


@pytest.mark.anyio
async def test_timeout_messages_say_phase_counts_and_message() -> None:
    """Both kinds of wait say the last phase, worker counts and server message on timeout."""
    status = {
        **RUNNING,
        "parallelism": 3,
        "nworkers_succeeded": 1,
        "npending": 2,
        "message": "waiting for a GPU",
    }
    # Workers come and go, so the message is no verdict (see the test above).
    flapping = [[1, 3], [2, 3]] * 1000
    async with respx.mock() as router, mock_context() as ctx:
        router.get(SCALE).mock(side_effect=script(*flapping))
        router.get(STATUS).mock(return_value=envelope(status))
        policy = PollPolicy(0.01, 0.01)
        with pytest.raises(WaitTimeoutError) as for_job:
            await ctx.wait_for_job(JOB, timeout=0.05, poll=policy)
        with pytest.raises(WaitTimeoutError) as for_workers:
            await ctx.wait_for_scale(JOB, 3, timeout=0.05, poll=policy)
    assert "last seen: phase running, 1 of 3 worker(s) succeeded, 2 pending, message 'waiting" in (
        str(for_job.value)
    )
    assert "running, 3 requested, phase running" in str(for_workers.value)
    assert "message 'waiting for a GPU'" in str(for_workers.value)


@pytest.mark.anyio
async def test_timeout_zero_checks_now() -> None:
    """timeout=0 reads the state once: a finished job or a reached scale is returned."""
    done = {**RUNNING, "succeeded": True, "phase": "succeeded"}
    async with respx.mock() as router, mock_context() as ctx:
        status = router.get(STATUS).mock(return_value=envelope(done))
        router.get(SCALE).mock(return_value=envelope([2, 2]))
        assert (await ctx.wait_for_job(JOB, timeout=0)).succeeded
        assert await ctx.wait_for_scale(JOB, 2, timeout=0) == JobScale(2, 2)
        assert [s async for s in ctx.watch_job(JOB, timeout=0)] == [JobStatus.from_wire(done)]
        status.mock(return_value=envelope(RUNNING))
        with pytest.raises(WaitTimeoutError, match=r"within 0 s \(last seen: phase running"):
            await ctx.wait_for_job(JOB, timeout=0)


@pytest.mark.anyio
async def test_a_server_that_does_not_answer_is_waited_for_one_request_at_most() -> None:
    """A first read that hangs is cut after one request's timeouts, even for timeout=0."""

    asked = anyio.Event()

    async def hang(_: httpx.Request) -> httpx.Response:
        asked.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    # respx enforces no timeout: without the bound this would wait forever.
    async with respx.mock(assert_all_called=False) as router, mock_context(timeout=0.2) as ctx:
        router.get(STATUS).mock(side_effect=hang)
        with anyio.fail_after(10), pytest.raises(WaitTimeoutError, match="nothing was read yet"):
            await ctx.wait_for_job(JOB, timeout=0)
    assert asked.is_set()


@pytest.mark.anyio
async def test_a_new_submission_of_the_name_ends_a_watch() -> None:
    """The watched job's uid changing means it was deleted and resubmitted: JobNotFoundError."""
    again = {**RUNNING, "uid": "b2"}
    async with respx.mock() as router, mock_context() as ctx:
        router.get(STATUS).mock(side_effect=script(RUNNING, RUNNING, again))
        router.get(SCALE).mock(return_value=envelope([0, 2]))
        seen: list[JobStatus] = []
        with pytest.raises(JobNotFoundError, match="submitted later under the same name"):
            await collect(ctx.watch_job(JOB, poll=NO_WAIT), into=seen)
        assert [s.uid for s in seen] == ["a1"]
        router.get(STATUS).mock(side_effect=script(RUNNING, again))
        with pytest.raises(JobNotFoundError, match="submitted later under the same name"):
            await ctx.wait_for_scale(JOB, 2, poll=NO_WAIT)


@pytest.mark.anyio
async def test_without_uids_a_watch_cannot_tell_submissions_apart() -> None:
    """A plain server reports no uid: the watch goes on (documented limitation)."""
    plain = {"succeeded": False, "created": True}
    async with respx.mock() as router, mock_context() as ctx:
        router.get(STATUS).mock(side_effect=script(plain, plain, {**plain, "succeeded": True}))
        final = await ctx.wait_for_job(JOB, poll=NO_WAIT)
    assert final.succeeded


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


@pytest.mark.anyio
async def test_waits_that_cannot_succeed_end_early_on_the_local_server(server: LocalServer) -> None:
    """Workers of a finished job, or without a worker script, end the wait within seconds."""
    write_script(server, "quick.py", "print('done')\n")
    write_script(server, "master.py", MASTER)
    finished = JuliaParBatch(
        name="finished", start_script="quick.py", worker_start_script="quick.py", run_volume="work"
    )
    broken = JuliaParBatch(
        name="broken",
        start_script="master.py",
        worker_start_script="missing.py",
        run_volume="work",
    )
    async with server_context(server) as ctx:
        await ctx.submit_job(finished)
        await ctx.wait_for_job(finished, timeout=20, poll=FAST_POLL)
        with anyio.fail_after(10), pytest.raises(JobStateError, match="phase succeeded"):
            await ctx.wait_for_scale(finished, 2, poll=FAST_POLL)
        await ctx.submit_job(broken)
        await ctx.set_job_scale(broken, 2)
        with anyio.fail_after(10), pytest.raises(JobStateError) as caught:
            await ctx.wait_for_scale(broken, 2, poll=FAST_POLL)
        assert "cannot start" in str(caught.value)
        assert caught.value.status is not None
        assert caught.value.status.phase == "running"
        await ctx.delete_job(broken, force=True)


@pytest.mark.anyio
async def test_a_watch_never_follows_into_a_job_reusing_the_name(server: LocalServer) -> None:
    """Watch X, force-delete X and submit a new X between two polls: JobNotFoundError."""
    write_script(server, "master.py", MASTER)
    spec = JuliaBatch(name="reused", start_script="master.py", run_volume="work")
    async with server_context(server) as ctx:
        await ctx.submit_job(spec)
        first = await ctx.get_job_status(spec)
        assert first.uid is not None
        seen: list[JobStatus] = []
        slow = PollPolicy(initial=1.0, maximum=1.0, jitter=0)

        async def watch_and_replace() -> None:
            async with contextlib.aclosing(ctx.watch_job(spec, poll=slow)) as statuses:
                async for status in statuses:
                    seen.append(status)
                    await ctx.delete_job(spec, force=True)
                    await ctx.submit_job(spec)

        with anyio.fail_after(30), pytest.raises(JobNotFoundError, match="reused"):
            await watch_and_replace()
        assert [status.uid for status in seen] == [first.uid]
        assert (await ctx.get_job_status(spec)).uid not in (None, first.uid)
        await ctx.delete_job(spec, force=True)


@pytest.mark.anyio
async def test_a_worker_wait_never_reports_the_workers_of_a_job_reusing_the_name(
    server: LocalServer,
) -> None:
    """Wait for 3 workers of X; X is replaced by a new X that runs 3: JobNotFoundError."""
    write_script(server, "master.py", MASTER)
    write_script(server, "worker.py", WORKER)

    def par(workers: int) -> JuliaParBatch:
        return JuliaParBatch(
            name="reused",
            start_script="master.py",
            worker_start_script="worker.py",
            run_volume="work",
            nworkers=workers,
        )

    async with server_context(server) as ctx:
        await ctx.submit_job(par(1))
        slow = PollPolicy(initial=1.0, maximum=1.0, jitter=0)

        async def wait_and_replace() -> None:
            async with contextlib.aclosing(ctx.wait_for_workers(par(1), 3, poll=slow)) as scales:
                async for _scale in scales:
                    await ctx.delete_job(par(1), force=True)
                    await ctx.submit_job(par(3))

        with anyio.fail_after(30), pytest.raises(JobNotFoundError, match="reused"):
            await wait_and_replace()
        assert (await ctx.wait_for_scale(par(3), 3, timeout=20, poll=FAST_POLL)).running == 3
        await ctx.delete_job(par(3), force=True)
