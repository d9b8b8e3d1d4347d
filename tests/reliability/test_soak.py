"""Soak: a server that runs job after job keeps its memory, descriptors and disk use bounded."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import psutil
import pytest
from reliability_support import record, scaled
from support import QUICK_KILL, write_script

from juliarun_aio import Context, JuliaBatch
from juliarun_aio._watch import PollPolicy
from juliarun_aio.server import ServerProcess
from juliarun_aio.server._spare import SPARES

#: Jobs submitted, tailed, waited for and deleted per iteration.
JOBS = 5
#: Server RSS growth per iteration, in both halves of the run, that counts as unbounded:
#: keeping each deleted job's objects costs about 3 KiB per job and shows in both halves;
#: warming caches and a one-off allocator step do not.
LEAK_PER_ITERATION = 8 * 1024
POLL = PollPolicy(initial=0.02, maximum=0.1)


def _measure(proc: psutil.Process, data_dir: Path) -> dict[str, int]:
    with sqlite3.connect(f"file:{data_dir / 'state.sqlite3'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT (SELECT count(*) FROM jobs) + (SELECT count(*) FROM processes)")
        (stored,) = rows.fetchone()
    db.close()
    return {
        "rss": proc.memory_info().rss,
        "fds": proc.num_fds(),
        "threads": proc.num_threads(),
        # The server's spare launchers come and go with the starts: counted on its own.
        "files": sum(1 for path in data_dir.rglob("*") if "spares" not in path.parts),
        "spares": sum(1 for _ in (data_dir / "spares").glob("spare-*.tree")),
        "sqlite": sum(path.stat().st_size for path in data_dir.glob("state.sqlite3*")),
        "rows": stored,
    }


@pytest.mark.slow
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_server_stays_bounded_over_a_soak(tmp_path: Path) -> None:
    """Soak: submitting, tailing, waiting for and deleting jobs leaks nothing in the server."""
    warmup, half = scaled(5, 2), scaled(20, 5)
    data_dir = tmp_path / "data"
    volume = data_dir / "namespaces" / "default" / "volumes" / "work"
    write_script(volume, "job.sh", "for i in $(seq 0 19); do echo line $i; done\n")
    server = ServerProcess(data_dir, args=QUICK_KILL).start()
    proc = psutil.Process(server.pid)
    specs = [
        JuliaBatch(name=f"soak-{k}", start_script="job.sh", run_volume="work") for k in range(JOBS)
    ]
    figures: list[dict[str, int]] = []
    try:
        async with Context(server.url, server.token, server.namespace, timeout=30.0) as ctx:

            async def iterate(count: int) -> None:
                for _ in range(count):
                    for spec in specs:
                        await ctx.submit_job(spec)
                    for spec in specs:
                        lines = [line.text async for line in ctx.tail_logs(spec)]
                        assert lines == [f"line {i}" for i in range(20)]
                        assert (await ctx.wait_for_job(spec, poll=POLL)).succeeded
                    for spec in specs:
                        assert await ctx.delete_job(spec)

            await iterate(warmup)
            figures.append(_measure(proc, data_dir))
            await iterate(half)
            figures.append(_measure(proc, data_dir))
            await iterate(half)
            figures.append(_measure(proc, data_dir))
    finally:
        server.stop()
    before, middle, after = figures
    growth = [(b["rss"] - a["rss"]) // half for a, b in ((before, middle), (middle, after))]
    shown: dict[str, Any] = {"iterations": warmup + 2 * half, "jobs": (warmup + 2 * half) * JOBS}
    for key in ("rss", "sqlite"):
        shown[f"{key}_kib"] = f"{before[key] // 1024}->{after[key] // 1024}"
    for key in ("fds", "threads", "files", "rows"):
        shown[key] = f"{before[key]}->{after[key]}"
    shown["rss_growth_b_per_iteration"] = f"{growth[0]},{growth[1]}"
    record("server soak", **shown)
    assert not all(rate > LEAK_PER_ITERATION for rate in growth), figures
    assert after["fds"] <= before["fds"] + 2, figures
    assert after["files"] == before["files"], figures
    assert max(figures[0]["spares"], figures[1]["spares"], after["spares"]) <= SPARES, figures
    assert after["rows"] == before["rows"] == 0, figures
    # The write-ahead log is reused once it reached its checkpoint size (about 4 MB).
    assert after["sqlite"] <= before["sqlite"] + 8 * 1024 * 1024, figures
