"""Lifecycle: a job's processes end with it (and spare launchers with the server), and
starting many of them stalls nobody."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import psutil
import pytest
from reliability_support import record
from support import (
    QUICK_KILL,
    SPAWN_STRAYS,
    cleanup_mechanisms,
    marked_processes,
    wait_until,
    write_script,
)

from juliarun_aio import BadRequestError, Context, JobSpec, JuliaBatch, JuliaParBatch
from juliarun_aio._watch import PollPolicy
from juliarun_aio.server import ServerProcess
from juliarun_aio.server._launcher import Tree

#: Starts a background child, a child in a session of its own and a double-forked daemon,
#: writes its pid to ``<job>-<proc>.pid``, then exits or (LEAKY_MODE=stay) sleeps.
LEAKY = (
    """\
import os, subprocess, sys, time
stray = [sys.executable, "-c", "import time; time.sleep(300)"]
"""
    + SPAWN_STRAYS
    + """\
name = os.environ["JRUN_NAME"] + "-" + os.environ["JRUN_PROC"]
with open(name + ".pid.tmp", "w") as fh:
    fh.write(str(os.getpid()))
os.replace(name + ".pid.tmp", name + ".pid")
while os.environ.get("LEAKY_MODE") == "stay":
    time.sleep(1)
"""
)
MARK = "LEAK_TEST_MARK"
POLL = PollPolicy(initial=0.05, maximum=0.2)


class Leaks:
    """Jobs that leave processes behind unless their slots clean up, and the count of those."""

    def __init__(self, volume: Path) -> None:
        self.volume = volume
        self.run = secrets.token_hex(4)
        self.left: dict[str, int] = {}
        write_script(volume, "leaky.py", LEAKY)
        write_script(volume, "sleep.sh", "exec sleep 300\n")

    def marker(self, way: str) -> str:
        return f"{self.run}-{way}"

    def batch(self, way: str, *, stay: bool = True) -> JuliaBatch:
        env = {MARK: self.marker(way), "LEAKY_MODE": "stay" if stay else "go"}
        return JuliaBatch(name=way, start_script="leaky.py", run_volume="work", envvars=env)

    def program(self, job: str, proc: str = "master") -> int:
        """Wait until the job's program has started its children; return its pid."""
        path = self.volume / f"{job}-{proc}.pid"
        wait_until(path.exists, 30, f"{path.name}")
        return int(path.read_text())

    def processes(self, way: str) -> list[psutil.Process]:
        return marked_processes(MARK, self.marker(way))

    def count(self, way: str) -> None:
        """Record how many processes of ``way`` are left once they had a moment to go."""
        deadline = time.monotonic() + 10
        while self.processes(way) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.left[way] = len(self.processes(way))

    def kill_all(self) -> None:
        for way in self.left:
            for proc in self.processes(way):
                proc.kill()


@pytest.fixture
def leaks(tmp_path: Path) -> Iterator[Leaks]:
    """The leak counter of a data directory's ``work`` volume; kills what a failure left."""
    found = Leaks(tmp_path / "data" / "namespaces" / "default" / "volumes" / "work")
    yield found
    found.kill_all()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tree cleanup needs Linux")
@pytest.mark.parametrize("mechanism", cleanup_mechanisms())
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_no_process_outlives_its_job_however_it_ends(
    tmp_path: Path, leaks: Leaks, mechanism: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lifecycle: exit, delete, kill -9, scale-down, launcher killed, --stop-jobs: none left."""
    monkeypatch.setenv("JULIARUN_AIO_CLEANUP", mechanism)
    server = ServerProcess(tmp_path / "data", args=QUICK_KILL).start()
    try:
        async with Context(server.url, server.token, server.namespace) as ctx:
            assert (await ctx.server_info() or {}).get("process_cleanup") == mechanism

            await ctx.submit_job(leaks.batch("exits", stay=False))
            assert (await ctx.wait_for_job(leaks.batch("exits"), poll=POLL)).succeeded
            leaks.count("exits")

            await ctx.submit_job(leaks.batch("deleted"))
            leaks.program("deleted")
            await ctx.delete_job(leaks.batch("deleted"), force=True)
            leaks.count("deleted")

            await ctx.submit_job(leaks.batch("killed"))
            os.kill(leaks.program("killed"), signal.SIGKILL)
            assert (await ctx.wait_for_job(leaks.batch("killed"), poll=POLL)).failed
            leaks.count("killed")

            env = {MARK: leaks.marker("scaled-down"), "LEAKY_MODE": "stay"}
            par = JuliaParBatch(
                name="scaled-down",
                start_script="sleep.sh",
                worker_start_script="leaky.py",
                run_volume="work",
                nworkers=1,
                worker_envvars=env,
            )
            await ctx.submit_job(par)
            leaks.program("scaled-down", "worker-1")
            await ctx.set_job_scale(par, 0)
            await ctx.wait_for_scale(par, 0, poll=POLL)
            leaks.count("scaled-down")
            await ctx.delete_job(par, force=True)

            orphaned = leaks.batch("launcher-killed")
            await ctx.submit_job(orphaned)
            program = psutil.Process(leaks.program("launcher-killed"))
        server.kill()
        launcher = program.parent()
        assert launcher is not None
        launcher.kill()
        launcher.wait(10)
        assert len(leaks.processes("launcher-killed")) == 4  # the program and its 3 children

        server.args = (*QUICK_KILL, "--stop-jobs")
        server.start()
        async with Context(server.url, server.token, server.namespace) as ctx:
            assert (await ctx.wait_for_job(orphaned, poll=POLL)).phase == "lost"
            leaks.count("launcher-killed")
            await ctx.submit_job(leaks.batch("server-stopped"))
            leaks.program("server-stopped")
    finally:
        server.stop()
    leaks.count("server-stopped")

    assert leaks.left == dict.fromkeys(leaks.left, 0)
    assert len(leaks.left) == 6
    record(f"leftover processes per way a job ends ({mechanism})", **leaks.left)


@pytest.mark.slow
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_scale_up_of_40_workers_stalls_no_other_call(tmp_path: Path) -> None:
    """Lifecycle: status calls stay fast during a 40-worker scale-up; over-cap asks are refused."""
    workers = 40
    volume = tmp_path / "data" / "namespaces" / "default" / "volumes" / "work"
    write_script(volume, "sleep.sh", "exec sleep 300\n")
    probe = JuliaBatch(name="probe", start_script="sleep.sh", run_volume="work")
    par = JuliaParBatch(
        name="par", start_script="sleep.sh", worker_start_script="sleep.sh", run_volume="work"
    )
    args = (*QUICK_KILL, "--stop-jobs", "--max-workers", str(workers))
    latencies: list[float] = []
    with ServerProcess(tmp_path / "data", args=args) as server:
        async with Context(server.url, server.token, server.namespace) as ctx:
            await ctx.submit_job(probe)
            await ctx.submit_job(par)
            answered = 0.0
            running_at_answer = workers

            async def scale_up() -> None:
                nonlocal answered, running_at_answer
                started = time.perf_counter()
                assert await ctx.set_job_scale(par, workers) is True
                answered = time.perf_counter() - started
                running_at_answer = (await ctx.get_job_scale(par)).running

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(scale_up)
                deadline = time.perf_counter() + 60
                while time.perf_counter() < deadline:
                    started = time.perf_counter()
                    await ctx.get_job_status(probe)
                    latencies.append(time.perf_counter() - started)
                    if answered and (await ctx.get_job_scale(par)).running == workers:
                        break
            worst = max(latencies)
            assert worst < 0.5, f"a status call waited {worst:.3f} s during the scale-up"
            assert running_at_answer < workers  # answered before its processes had started
            assert (await ctx.get_job_scale(par)).running == workers

            refused = 0
            for ask in (workers + 1, 10_000):
                with pytest.raises(BadRequestError, match="--max-workers"):
                    await ctx.set_job_scale(par, ask)
                refused += 1
            over: JobSpec = JuliaParBatch(
                name="over",
                start_script="sleep.sh",
                worker_start_script="sleep.sh",
                run_volume="work",
                nworkers=1,
            )
            with pytest.raises(BadRequestError, match="--max-workers"):
                await ctx.submit_job(over)
            refused += 1
            assert (await ctx.get_job_scale(par)).requested == workers
            assert set(await ctx.list_jobs()) == {"probe", "par"}

    record(
        f"getJobStatus during a scale-up of {workers} workers",
        status_calls=len(latencies),
        worst_latency_s=round(worst, 4),
        scale_answered_in_s=round(answered, 4),
        refused_over_cap=refused,
    )


def _waiting_spare(server: ServerProcess) -> tuple[psutil.Process, Path, Tree]:
    """One of the server's waiting spare launchers, its tree file and what that file records."""

    def find() -> tuple[psutil.Process, Path, Tree] | None:
        for child in psutil.Process(server.pid).children():
            with contextlib.suppress(psutil.NoSuchProcess):
                arguments = child.cmdline()
                if "--spare" in arguments and not child.children():
                    path = Path(arguments[arguments.index("--tree-file") + 1])
                    tree = Tree.load(str(path))
                    if tree is not None:
                        return child, path, tree
        return None

    found = wait_until(find, 30, "a spare launcher")
    assert found is not None
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tree cleanup needs Linux")
@pytest.mark.parametrize("mechanism", cleanup_mechanisms())
def test_no_spare_launcher_outlives_a_killed_server(
    tmp_path: Path, mechanism: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill -9 of the server: its spare exits; of both: the next server removes what is left."""
    monkeypatch.setenv("JULIARUN_AIO_CLEANUP", mechanism)
    server = ServerProcess(tmp_path / "data", args=QUICK_KILL).start()
    try:
        spare, tree_file, tree = _waiting_spare(server)
        assert tree.mechanism == mechanism
        server.kill()
        spare.wait(30)  # the end of its socket tells it
        assert not tree_file.exists()
        assert tree.cgroup is None or not Path(tree.cgroup).exists()
        spares = tmp_path / "data" / "spares"
        wait_until(lambda: not list(spares.glob("spare-*")), 30, "every spare to go")

        server.start()
        spare, tree_file, tree = _waiting_spare(server)
        spare.suspend()  # so that it cannot see the server go
        server.kill()
        spare.kill()
        spare.wait(30)
        assert tree_file.exists()  # nobody was left to remove it
        server.start()
        wait_until(lambda: not tree_file.exists(), 30, "the next server to remove it")
        assert tree.cgroup is None or not Path(tree.cgroup).exists()
    finally:
        server.stop()
