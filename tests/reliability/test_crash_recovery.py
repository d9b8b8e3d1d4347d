"""Lifecycle: the server killed with SIGKILL while jobs run loses nothing and lies about nothing."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import anyio
import pytest
from reliability_support import free_port, record, scaled
from support import QUICK_KILL, wait_until, write_script

from juliarun_aio import Context, JobSpec, JuliaBatch, JuliaParBatchWorkers, LogLine
from juliarun_aio._watch import PollPolicy
from juliarun_aio.server import ServerProcess

#: Each writer prints LINES long lines, one ``os.write`` per line, pausing now and then so
#: that the server is killed while they write.
WRITER = """\
import os, subprocess, sys, time
LINES = {lines}

def size(i):
    return 1000 + (i * 7919) % {spread}

def write(who, fd):
    for i in range(LINES):
        fill = "abcdefghij"[i % 10] * size(i)
        os.write(fd, f"{{who}}:{{i}}:{{fill}}:{{i}}:end\\n".encode())
        if i % 10 == 9:
            time.sleep({pause})

if len(sys.argv) > 1:
    write(sys.argv[1], 1)
    sys.exit(0)
me = os.environ["JRUN_NAME"] + "-" + os.environ["JRUN_PROC"]
children = [
    subprocess.Popen([sys.executable, __file__, f"{{me}}-child{{k}}"]) for k in range({children})
]
write(me + "-err", 2) if os.environ["JRUN_PROC"] != "master" else None
write(me, 1)
sys.exit(max(child.wait() for child in children) if children else 0)
"""
LINE = re.compile(r"(?P<who>[a-z0-9-]+):(?P<i>[0-9]+):(?P<fill>[a-j]*):(?P=i):end")
POLL = PollPolicy(initial=0.05, maximum=0.2)


def _size(i: int, spread: int) -> int:
    return 1000 + (i * 7919) % spread


@pytest.mark.slow
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_sigkill_while_jobs_run_loses_no_line_and_keeps_true_states(
    tmp_path: Path,
) -> None:
    """Lifecycle: after SIGKILLs mid-write, records, states and logs are complete and whole."""
    lines = scaled(150, 20)
    spread = 60_000
    data_dir = tmp_path / "data"
    volume = data_dir / "namespaces" / "default" / "volumes" / "work"
    write_script(
        volume, "writer.py", WRITER.format(lines=lines, spread=spread, pause=0.15, children=2)
    )
    write_script(
        volume, "unit.py", WRITER.format(lines=lines, spread=spread, pause=0.15, children=0)
    )
    write_script(volume, "sleeper.py", "import time\ntime.sleep(4)\nprint('slept well')\n")
    write_script(volume, "failer.py", "import sys, time\ntime.sleep(3)\nsys.exit(3)\n")
    write_script(volume, "early.py", "print('early bird')\n")
    jobs: dict[str, JobSpec] = {
        "early": JuliaBatch(name="early", start_script="early.py", run_volume="work"),
        "writer": JuliaBatch(name="writer", start_script="writer.py", run_volume="work"),
        "units": JuliaParBatchWorkers(
            name="units", start_script="unit.py", run_volume="work", nworkers=2
        ),
        "sleeper": JuliaBatch(name="sleeper", start_script="sleeper.py", run_volume="work"),
        "failer": JuliaBatch(name="failer", start_script="failer.py", run_volume="work"),
    }
    token = "crash-test-token"
    port = free_port()
    server = ServerProcess(data_dir, tokens={"default": token}, port=port, args=QUICK_KILL).start()
    kills = 0
    try:
        async with Context(server.url, token, "default", timeout=10.0) as ctx:
            await ctx.submit_job(jobs["early"])
            with anyio.fail_after(30):
                await ctx.wait_for_job(jobs["early"], poll=POLL)
            for name in ("writer", "units", "sleeper", "failer"):
                await ctx.submit_job(jobs[name])
            # Kill while the writers are busy, then again while the new server catches up.
            combined = data_dir / "namespaces" / "default" / "jobs" / "writer" / "logs"
            await anyio.to_thread.run_sync(
                lambda: wait_until(
                    lambda: _size_of(combined / "combined.ndjson") > 2_000_000, 30, "2 MB of log"
                )
            )
            server.kill()
            kills += 1
            await anyio.sleep(0.5)
            server.start()
            server.kill()
            kills += 1
            server.start()
            finals = {}
            with anyio.fail_after(60):
                for name, spec in jobs.items():
                    finals[name] = await ctx.wait_for_job(spec, poll=POLL)
            info = await ctx.get_all_job_info()
            logs: dict[str, list[LogLine]] = {}
            for name, spec in jobs.items():
                logs[name] = [line async for line in ctx.tail_logs(spec, follow=False)]
    finally:
        server.stop()

    # States are true.
    assert set(info) == set(jobs)
    assert finals["early"].succeeded
    assert finals["writer"].succeeded, finals["writer"]
    assert finals["units"].succeeded, finals["units"]
    assert finals["sleeper"].succeeded, finals["sleeper"]
    assert finals["failer"].failed, finals["failer"]
    assert not finals["failer"].succeeded
    assert finals["failer"].extra["exit_codes"]["master"] == 3
    assert [line.text for line in logs["early"]] == ["early bird"]
    assert [line.text for line in logs["sleeper"]] == ["slept well"]

    # Logs are complete: every writer's lines once, in order, none cut or interleaved.
    delivered = 0
    for name in ("writer", "units"):
        seen: dict[str, list[int]] = defaultdict(list)
        cursors = [line.cursor for line in logs[name]]
        assert cursors == list(range(1, len(cursors) + 1))
        for line in logs[name]:
            match = LINE.fullmatch(line.text)
            assert match is not None, (
                f"{name}: damaged line {line.text[:80]!r}...{line.text[-40:]!r}"
            )
            i = int(match["i"])
            assert match["fill"] == "abcdefghij"[i % 10] * _size(i, spread), f"{name}: line {i}"
            seen[match["who"]].append(i)
        expected_writers = (
            {"writer-master", "writer-master-child0", "writer-master-child1"}
            if name == "writer"
            else {f"units-worker-{k}{suffix}" for k in (1, 2) for suffix in ("", "-err")}
        )
        assert set(seen) == expected_writers
        for who, numbers in seen.items():
            assert numbers == list(range(lines)), f"{who}: {len(numbers)} lines, out of order?"
        delivered += len(logs[name])
    record(
        "sigkill while jobs run",
        server_kills=kills,
        jobs=len(jobs),
        long_lines_checked=delivered,
        log_bytes=sum(len(line.text) + 1 for name in logs for line in logs[name]),
    )


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


#: Writes ``total`` numbered lines in 50 bursts, pausing between them.
NUMBERED = """\
import sys, time
total = {total}
burst = max(1, total // 50)
for start in range(1, total + 1, burst):
    stop = min(start + burst, total + 1)
    sys.stdout.write("".join(f"line {{i:07d}}\\n" for i in range(start, stop)))
    sys.stdout.flush()
    time.sleep(0.05)
"""


async def _wait_for_line(ctx: Context, job: JobSpec, number: float) -> None:
    """Wait until the job's log has line ``number`` of :data:`NUMBERED`."""
    with anyio.fail_after(120):
        while True:
            last = await ctx.tail_job(job, count=1)
            if last.startswith("line ") and int(last.split()[1]) >= number:
                return
            await anyio.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_logs_read_from_the_start_after_restarts_are_exact(tmp_path: Path) -> None:
    """Lifecycle: after SIGKILL and SIGTERM restarts, a long log reads exactly from any cursor."""
    total = scaled(1_000_000, 20_000)
    data_dir = tmp_path / "data"
    volume = data_dir / "namespaces" / "default" / "volumes" / "work"
    write_script(volume, "numbered.py", NUMBERED.format(total=total))
    expected = [f"line {i:07d}" for i in range(1, total + 1)]
    token = "read-after-restart-token"
    server = ServerProcess(data_dir, tokens={"default": token}, args=QUICK_KILL).start()
    job = JuliaBatch(name="numbered", start_script="numbered.py", run_volume="work")
    restarts = {"kill": 0, "term": 0}
    reads = checked = 0
    try:
        async with Context(server.url, token, "default", timeout=30.0) as ctx:

            async def check(since: int | None, at_least: int) -> int:
                """Read from ``since`` to the end as it is now; return the last cursor."""
                nonlocal reads, checked
                lines = [line async for line in ctx.tail_logs(job, follow=False, since=since)]
                first = (since or 0) + 1
                end = first + len(lines)
                assert [line.cursor for line in lines] == list(range(first, end)), since
                assert [line.text for line in lines] == expected[first - 1 : end - 1], since
                assert end - 1 >= at_least, (since, end - 1, at_least)
                reads, checked = reads + 1, checked + len(lines)
                return end - 1

            async def restart(kill: bool) -> None:
                await anyio.to_thread.run_sync(server.kill if kill else server.stop)
                restarts["kill" if kill else "term"] += 1
                await anyio.to_thread.run_sync(server.start)

            await ctx.submit_job(job)
            # While the job writes: killed at 30% then read from cursors 1 and 100;
            # stopped at 70% then read from the middle.  Each time also from the last
            # line and past it.
            await _wait_for_line(ctx, job, total * 0.3)
            await restart(kill=True)
            last = await check(None, int(total * 0.3))
            await check(99, last)
            await check(last - 1, last)
            await check(last, last)
            await _wait_for_line(ctx, job, total * 0.7)
            await restart(kill=False)
            last = await check(int(total * 0.35), int(total * 0.7))
            await check(last - 1, last)
            await check(last, last)
            # Once complete: killed, then the whole log from the start.
            with anyio.fail_after(120):
                assert (await ctx.wait_for_job(job, poll=POLL)).succeeded
            await restart(kill=True)
            assert await check(None, total) == total
            assert await check(total - 1, total) == total
            assert await check(total, total) == total
    finally:
        server.stop()
    record(
        "log read from the start after restarts",
        lines=total,
        server_kills=restarts["kill"],
        server_terms=restarts["term"],
        reads=reads,
        lines_checked=checked,
    )


#: Prints numbered lines every few milliseconds until the file ``finish`` exists.
STEADY = """\
import os, time
i = 0
while not os.path.exists("finish"):
    i += 1
    print(f"line {i:07d}", flush=True)
    time.sleep(0.005)
"""


@pytest.mark.slow
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_second_servers_on_a_busy_data_directory_change_nothing(tmp_path: Path) -> None:
    """Lifecycle: servers started on a data directory in use exit at once and touch nothing."""
    attempts = scaled(3, 2)
    data_dir = tmp_path / "data"
    volume = data_dir / "namespaces" / "default" / "volumes" / "work"
    write_script(volume, "steady.py", STEADY)
    token = "busy-directory-token"
    first = ServerProcess(data_dir, tokens={"default": token}, args=QUICK_KILL).start()
    holder = first.pid
    job = JuliaBatch(name="steady", start_script="steady.py", run_volume="work")
    codes: list[int | None] = []
    messages: set[str] = set()
    try:
        async with Context(first.url, token, "default", timeout=10.0) as ctx:
            await ctx.submit_job(job)
            await _wait_for_line(ctx, job, 50)
            for _ in range(attempts):
                second = ServerProcess(data_dir, tokens={"default": token}, args=QUICK_KILL)
                with pytest.raises(RuntimeError, match="did not start"):
                    await anyio.to_thread.run_sync(second.start)
                assert second.proc is not None
                codes.append(second.proc.returncode)
                messages.add(second.output().strip())
                assert (await ctx.get_job_status(job)).phase == "running"
            (volume / "finish").touch()
            with anyio.fail_after(60):
                assert (await ctx.wait_for_job(job, poll=POLL)).succeeded
            texts = [line.text async for line in ctx.tail_logs(job, follow=False)]
        # Killed, the first server leaves the directory free at once (its job's processes
        # do not hold the lock), and the next server has the same log.
        await anyio.to_thread.run_sync(first.kill)
        await anyio.to_thread.run_sync(first.start)
        async with Context(first.url, token, "default", timeout=10.0) as ctx:
            again = [line.text async for line in ctx.tail_logs(job, follow=False)]
    finally:
        first.stop()
    record(
        "second server on a busy data directory",
        attempts=attempts,
        refused_with_status_1=codes.count(1),
        log_lines_intact=len(texts),
    )
    assert codes == [1] * attempts
    assert messages == {
        f"juliarun-server: data directory {data_dir.absolute()} is in use by another server "
        f"(pid {holder}); stop that server or choose another data directory"
    }
    assert texts == [f"line {i:07d}" for i in range(1, len(texts) + 1)]
    assert again == texts
