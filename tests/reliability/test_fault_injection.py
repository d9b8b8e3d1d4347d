"""Faults between the SDK and the server: resets, refusals, stalls, error answers, bad bodies.

Every test puts a :class:`~faultproxy.FaultProxy` between a Context and a real local
server, and checks the outcome on the server through a clean Context.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from faultproxy import FaultProxy
from reliability_support import QUICK_RETRY, free_port, record, scaled
from support import QUICK_KILL, write_script

import juliarun_aio as jr
from juliarun_aio import Context, JuliaBatch, RetryPolicy
from juliarun_aio._watch import PollPolicy
from juliarun_aio.server import LocalServer, ServerProcess

#: Per-attempt timeout of the Contexts under faults; stalls last until it passes.
ATTEMPT_TIMEOUT = 1.0
#: The errors a call may end with once its retries are spent (or not allowed).
DOCUMENTED = (jr.TransportError, jr.ServerError, jr.RateLimitError, jr.ResponseError)

Read = Callable[[Context], Awaitable[Any]]


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].rstrip("/"))


async def _finished(ctx: Context, job: jr.Job) -> jr.JobStatus:
    with anyio.fail_after(30):
        return await ctx.wait_for_job(job, poll=PollPolicy(initial=0.02, maximum=0.1))


def _reads(jobs: list[jr.Job], port_name: str) -> dict[str, Read]:
    """One read of every kind, by label."""
    reads: dict[str, Read] = {
        "getSystemStatus": lambda c: c.get_system_status(),
        "listJobs": lambda c: c.list_jobs(),
        "getAllJobInfo": lambda c: c.get_all_job_info(),
    }
    for job in jobs:

        def bind(job: jr.Job) -> dict[str, Read]:
            name = job.ref.name
            return {
                f"getJobStatus {name}": lambda c: c.get_job_status(job),
                f"getJobScale {name}": lambda c: c.get_job_scale(job),
                f"getJobEndpoint {name}": lambda c: c.get_job_endpoint(job),
                f"tailJob {name}": lambda c: c.tail_job(job, count=100),
            }

        reads.update(bind(job))
    generic = jobs[-1]
    reads["getEncodedURL"] = lambda c: c.get_encoded_url(generic, port_name)
    return reads


@pytest.mark.slow
@pytest.mark.anyio
async def test_reads_under_faults_succeed_or_fail_typed(
    server: LocalServer, clean: Context, volume: Path
) -> None:
    """Faults: 1,000 reads under 20% faults are right or raise a typed error; none hangs."""
    write_script(volume, "talk.py", "for i in range(300):\n    print('line', i)\n")
    jobs: list[jr.Job] = [
        JuliaBatch(name="talker", start_script="talk.py", run_volume="work"),
        JuliaBatch(name="broken", start_script="missing.py", run_volume="work"),
        jr.Generic(
            name="service",
            image="none",
            run_volume="work",
            command="no-such-program-here",
            ports={"web": (8080, 80)},
        ),
    ]
    for job in jobs:
        assert isinstance(job, jr.JobSpec)
        await clean.submit_job(job)
        await _finished(clean, job)
    reads = _reads(jobs, "web")
    expected = {label: await read(clean) for label, read in reads.items()}
    labels = sorted(reads)
    calls = scaled(1000, 50)
    rng = random.Random(7)
    plan = [rng.choice(labels) for _ in range(calls)]
    outcomes: Counter[str] = Counter()
    wrong: list[str] = []
    hangs: list[str] = []
    unexpected: list[BaseException] = []
    budget_not_spent: list[str] = []
    # Attempts x per-attempt timeout, plus the short waits, plus a margin for a busy machine.
    deadline = QUICK_RETRY.attempts * (3 * ATTEMPT_TIMEOUT) + 5.0
    slowest = 0.0
    limiter = anyio.CapacityLimiter(20)

    async with (
        FaultProxy(_port(server.url), rate=0.2, seed=11) as proxy,
        Context(
            proxy.url,
            server.token,
            server.namespace,
            timeout=ATTEMPT_TIMEOUT,
            retries=QUICK_RETRY,
        ) as ctx,
    ):

        async def one(label: str) -> None:
            nonlocal slowest
            async with limiter:
                started = time.monotonic()
                with anyio.move_on_after(deadline) as scope:
                    try:
                        value = await reads[label](ctx)
                    except DOCUMENTED as exc:
                        outcomes[type(exc).__name__] += 1
                        if (
                            isinstance(exc, jr.TransportError)
                            and exc.attempts != QUICK_RETRY.attempts
                        ):
                            budget_not_spent.append(f"{label}: {exc!r} after {exc.attempts}")
                    except Exception as exc:  # every other error is a finding
                        unexpected.append(exc)
                    else:
                        outcomes["ok"] += 1
                        if value != expected[label]:
                            wrong.append(f"{label}: {value!r} != {expected[label]!r}")
                slowest = max(slowest, time.monotonic() - started)
                if scope.cancelled_caught:
                    hangs.append(label)

        async def refusals() -> None:
            # Every so often the listener itself goes away: connects are refused outright.
            while True:
                await anyio.sleep(0.5)
                async with proxy.refuse_connections():
                    await anyio.sleep(0.05)

        async with anyio.create_task_group() as tg:
            tg.start_soon(refusals)
            async with anyio.create_task_group() as calls_tg:
                for label in plan:
                    calls_tg.start_soon(one, label)
            tg.cancel_scope.cancel()

        record(
            "reads under faults",
            calls=calls,
            requests=proxy.requests,
            faults=proxy.total_injected,
            **{f"fault {k}": v for k, v in sorted(proxy.injected.items())},
            **{f"outcome {k}": v for k, v in sorted(outcomes.items())},
            slowest_s=round(slowest, 2),
        )
    assert not unexpected, unexpected[:5]
    assert not wrong, wrong[:5]
    assert not hangs, hangs[:5]
    assert not budget_not_spent, budget_not_spent[:5]
    assert sum(outcomes.values()) == calls
    assert proxy.total_injected >= calls // 10  # the faults really happened
    assert outcomes["ok"] >= calls * 0.8


def _stored_jobs(data_dir: Path, namespace: str) -> tuple[list[str], list[str]]:
    """Job names in the server's SQLite database (with repeats) and its job directories."""
    with sqlite3.connect(f"file:{data_dir / 'state.sqlite3'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT name FROM jobs WHERE namespace = ?", (namespace,)).fetchall()
    jobs_dir = data_dir / "namespaces" / namespace / "jobs"
    dirs = sorted(path.name for path in jobs_dir.iterdir()) if jobs_dir.exists() else []
    return [row[0] for row in rows], dirs


@pytest.mark.slow
@pytest.mark.anyio
async def test_submits_under_faults_create_each_job_once(
    server: LocalServer, clean: Context, volume: Path
) -> None:
    """Faults: 200 submits under 20% faults: none lost, none twice, exactly 200 in the end."""
    count = scaled(200, 20)
    specs = [
        JuliaBatch(name=f"sub-{i:04d}", start_script="missing.py", run_volume="work")
        for i in range(count)
    ]
    accepted: set[str] = set()
    failed: dict[str, BaseException] = {}
    unexpected: list[BaseException] = []
    limiter = anyio.CapacityLimiter(10)
    async with (
        FaultProxy(_port(server.url), rate=0.2, seed=23) as proxy,
        Context(
            proxy.url,
            server.token,
            server.namespace,
            timeout=ATTEMPT_TIMEOUT,
            retries=QUICK_RETRY,
        ) as ctx,
    ):

        async def submit(spec: JuliaBatch) -> None:
            async with limiter:
                try:
                    await ctx.submit_job(spec)
                except DOCUMENTED as exc:
                    failed[spec.name] = exc
                except Exception as exc:  # a ConflictError here is a duplicate
                    unexpected.append(exc)
                else:
                    accepted.add(spec.name)

        async with anyio.create_task_group() as tg:
            for spec in specs:
                tg.start_soon(submit, spec)
        first_pass_faults = proxy.total_injected

        # What the server holds now: every acknowledged job, nothing twice, nothing unasked.
        listed = set(await clean.list_jobs())
        rows, dirs = _stored_jobs(server.data_dir, server.namespace)
        lost = accepted - listed
        landed_anyway = set(failed) & listed
        assert not unexpected, unexpected[:5]
        assert not lost, sorted(lost)
        assert len(rows) == len(set(rows)), "a job is stored twice"
        assert set(rows) == listed == set(dirs)
        assert listed <= {spec.name for spec in specs}

        # A caller that retries its failed submits ends with every job exactly once.
        resubmits = 0
        for spec in specs:
            if spec.name not in failed:
                continue
            for _ in range(20):
                resubmits += 1
                try:
                    await ctx.submit_job(spec)
                except jr.ConflictError:
                    break  # an earlier try landed after all
                except DOCUMENTED:
                    continue
                else:
                    break
        record(
            "submits under faults",
            submits=count,
            acknowledged=len(accepted),
            raised=len(failed),
            raised_but_created=len(landed_anyway),
            lost=len(lost),
            duplicates=len(rows) - len(set(rows)),
            resubmits=resubmits,
            requests=proxy.requests,
            faults=proxy.total_injected,
            faults_first_pass=first_pass_faults,
            **{f"fault {k}": v for k, v in sorted(proxy.injected.items())},
            **{
                f"raised {k}": v
                for k, v in Counter(type(e).__name__ for e in failed.values()).items()
            },
        )
    final = set(await clean.list_jobs())
    rows, dirs = _stored_jobs(server.data_dir, server.namespace)
    assert final == {spec.name for spec in specs}
    assert sorted(rows) == sorted(final) == dirs


LOG_SCRIPT = """\
import sys, time
total = int(sys.argv[1]) if len(sys.argv) > 1 else {total}
for i in range(1, total + 1):
    sys.stdout.write(f"line {{i:06d}} " + "x" * 40 + "\\n")
    if i % {burst} == 0:
        sys.stdout.flush()
        time.sleep({pause})
sys.stdout.flush()
"""


@pytest.mark.slow
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_tail_logs_through_cuts_and_restarts_is_exact(tmp_path: Path) -> None:
    """Faults: tail_logs across stream cuts and two server restarts delivers 100k lines exactly."""
    total = scaled(100_000, 5_000)
    data_dir = tmp_path / "data"
    volume = data_dir / "namespaces" / "default" / "volumes" / "work"
    burst = max(1, total // 40)
    write_script(volume, "gen.py", LOG_SCRIPT.format(total=total, burst=burst, pause=0.1))
    token = "tail-restart-token"
    port = free_port()
    server = ServerProcess(data_dir, tokens={"default": token}, port=port, args=QUICK_KILL).start()
    policy = RetryPolicy(attempts=5, initial=0.01, maximum=0.1, total_timeout=30.0)
    texts: list[str] = []
    cursors: list[int] = []
    restarts = {"kill": 0, "term": 0}
    try:
        async with (
            FaultProxy(
                port, rate=0.02, seed=5, cut_every=3000, faults=("reset", "status")
            ) as proxy,
            Context(proxy.url, token, "default", timeout=5.0, retries=policy) as ctx,
        ):
            job = JuliaBatch(name="long-log", start_script="gen.py", run_volume="work")
            await ctx.submit_job(job)
            at_third, at_two_thirds = anyio.Event(), anyio.Event()

            async def restarter() -> None:
                await at_third.wait()
                await anyio.to_thread.run_sync(server.kill)
                restarts["kill"] += 1
                await anyio.sleep(0.3)
                await anyio.to_thread.run_sync(server.start)
                await at_two_thirds.wait()
                await anyio.to_thread.run_sync(server.stop)
                restarts["term"] += 1
                await anyio.sleep(0.3)
                await anyio.to_thread.run_sync(server.start)

            async with anyio.create_task_group() as tg:
                tg.start_soon(restarter)
                with anyio.fail_after(120):
                    lines = ctx.tail_logs(job, idle_timeout=3.0)
                    async for line in lines:
                        texts.append(line.text)
                        assert line.cursor is not None
                        cursors.append(line.cursor)
                        if len(texts) == total // 3:
                            at_third.set()
                        elif len(texts) == 2 * total // 3:
                            at_two_thirds.set()
                    await lines.aclose()
            status = await ctx.get_job_status(job)
            record(
                "tail_logs through cuts and restarts",
                lines_expected=total,
                lines_delivered=len(texts),
                stream_cuts=proxy.cuts,
                faults=proxy.total_injected,
                **{f"fault {k}": v for k, v in sorted(proxy.injected.items())},
                server_kills=restarts["kill"],
                server_terms=restarts["term"],
            )
    finally:
        server.stop()
    assert restarts == {"kill": 1, "term": 1}
    assert status.succeeded, status
    assert proxy.cuts >= 2
    assert cursors == list(range(1, total + 1))
    expected = [f"line {i:06d} " + "x" * 40 for i in range(1, total + 1)]
    assert texts == expected
