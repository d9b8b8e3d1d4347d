"""The SDK's Context against the local server, on asyncio and trio."""

from __future__ import annotations

import contextlib
from pathlib import Path

import attrs
import pytest
from server_support import FAST
from support import write_script

from juliarun_aio import (
    AuthenticationError,
    ConflictError,
    Context,
    JobNotFoundError,
    JobRef,
    JuliaBatch,
    JuliaParBatch,
    PermissionDeniedError,
)
from juliarun_aio.server import LocalServer

pytestmark = pytest.mark.anyio

SELF_SCALING = """\
import anyio
from juliarun_aio import Context, initialize_cluster, self_job

async def main():
    async with Context() as ctx:
        scale = await initialize_cluster(ctx, 2, timeout=30)
        print("workers", scale.running, flush=True)
        status = await ctx.get_job_status(self_job())
        print("phase", status.phase, flush=True)

anyio.run(main)
"""


def _volume(server: LocalServer, namespace: str = "default") -> Path:
    path = server.data_dir / "namespaces" / namespace / "volumes" / "work"
    path.mkdir(parents=True, exist_ok=True)
    return path


async def test_every_verb_through_the_context(tmp_path: Path) -> None:
    """Context submits, inspects, scales, tails and deletes jobs on the local server."""
    async with LocalServer(tmp_path / "data", **FAST) as server:
        volume = _volume(server)
        write_script(
            volume, "master.py", "import time\nprint('master up', flush=True)\ntime.sleep(60)\n"
        )
        write_script(volume, "worker.py", "import time\ntime.sleep(60)\n")
        spec = JuliaParBatch(
            name="ctx",
            start_script="master.py",
            worker_start_script="worker.py",
            run_volume="work",
            nworkers=1,
            ports={"http": (8080, 80)},
        )
        async with Context(url=server.url, token=server.token, namespace=server.namespace) as ctx:
            assert await ctx.get_system_status() is True
            info = await ctx.server_info()
            assert info is not None
            assert "streamLogs" in info["extensions"]
            await ctx.submit_job(spec)
            with pytest.raises(ConflictError):
                await ctx.submit_job(spec)
            assert (await ctx.list_jobs())["ctx"].kind == "JuliaParBatch"
            scale = await ctx.wait_for_scale(spec, 1, timeout=30)
            assert (scale.running, scale.requested) == (1, 1)
            assert await ctx.set_job_scale(spec, 2) is True
            assert (await ctx.wait_for_scale(spec, 2, timeout=30)).running == 2
            status = await ctx.get_job_status(spec)
            assert status.phase == "running"
            assert status.parallelism == 2
            assert status.uid is not None
            assert len(status.uid) == 16
            endpoint = await ctx.get_job_endpoint(spec)
            assert endpoint.host == "127.0.0.1"
            url = await ctx.get_encoded_url(spec, "http")
            assert url == f"http://127.0.0.1:{endpoint.ports['http']}/"
            all_info = await ctx.get_all_job_info()
            assert all_info["ctx"].scale is not None
            assert all_info["ctx"].status is not None
            assert all_info["ctx"].status.uid == status.uid
            async with contextlib.aclosing(ctx.tail_logs(spec)) as lines:
                first = await lines.__anext__()
            assert (first.text, first.cursor, first.proc) == ("master up", 1, "master")
            assert await ctx.tail_job(spec) == "master up"
            with pytest.raises(ConflictError):
                await ctx.delete_job(spec)
            assert await ctx.delete_job(spec, force=True) is True
            with pytest.raises(JobNotFoundError):
                await ctx.get_job_status(JobRef("JuliaParBatch", "ctx"))


async def test_tail_logs_follows_a_job_to_its_end(tmp_path: Path) -> None:
    """tail_logs yields every line of a job once, in order, and ends when the job ends."""
    async with LocalServer(tmp_path / "data", **FAST) as server:
        volume = _volume(server)
        write_script(volume, "count.py", "for i in range(2000):\n    print(i)\n")
        spec = JuliaBatch(name="count", start_script="count.py", run_volume="work")
        async with Context(url=server.url, token=server.token, namespace=server.namespace) as ctx:
            await ctx.submit_job(spec)
            texts = [line.text async for line in ctx.tail_logs(spec)]
            assert texts == [str(i) for i in range(2000)]
            assert (await ctx.wait_for_job(spec, timeout=30)).succeeded


async def test_update_of_a_complete_job_raises_conflict(tmp_path: Path) -> None:
    """update_job on a complete job raises ConflictError saying the job is complete."""
    async with LocalServer(tmp_path / "data", **FAST) as server:
        write_script(_volume(server), "hello.py", "print('hello')\n")
        spec = JuliaBatch(name="done", start_script="hello.py", run_volume="work")
        async with Context(url=server.url, token=server.token, namespace=server.namespace) as ctx:
            await ctx.submit_job(spec)
            assert (await ctx.wait_for_job(spec, timeout=30)).succeeded
            with pytest.raises(ConflictError, match="is complete") as info:
                await ctx.update_job(attrs.evolve(spec, cpu=2))
            assert "delete it and submit it again" in str(info.value)
            assert info.value.verb == "updateJob"


async def test_credentials_errors_map_to_typed_errors(tmp_path: Path) -> None:
    """A wrong token raises AuthenticationError, another namespace's PermissionDeniedError."""
    tokens = {"default": "token-a", "other": "token-b"}
    async with LocalServer(tmp_path / "data", tokens=tokens, **FAST) as server:
        async with Context(url=server.url, token="wrong", namespace="default", retries=1) as ctx:
            with pytest.raises(AuthenticationError):
                await ctx.list_jobs()
        async with Context(url=server.url, token="token-b", namespace="default", retries=1) as ctx:
            with pytest.raises(PermissionDeniedError):
                await ctx.list_jobs()


# The backend of the test's own client does not matter here; one run is enough.
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_context_works_inside_a_job(tmp_path: Path) -> None:
    """A job's own Context() scales the job it runs in through the server's JRUN_* variables."""
    async with LocalServer(tmp_path / "data", **FAST) as server:
        volume = _volume(server)
        write_script(volume, "main.py", SELF_SCALING)
        write_script(volume, "worker.py", "import time\ntime.sleep(60)\n")
        spec = JuliaParBatch(
            name="selfie",
            start_script="main.py",
            worker_start_script="worker.py",
            run_volume="work",
        )
        async with Context(url=server.url, token=server.token, namespace=server.namespace) as ctx:
            await ctx.submit_job(spec)
            status = await ctx.wait_for_job(spec, timeout=60)
            log = await ctx.tail_job(spec)
            assert status.succeeded, log
            assert log == "workers 2\nphase running"
