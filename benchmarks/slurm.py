"""9. The Slurm backend, on the cluster Slurm's commands talk to (``scripts/slurm-up.sh``).

A fresh server process of its own (``--backend slurm --tls-self-signed``) listening on
:data:`SLURM_HOST`, an address of this machine that the nodes reach (the test cluster's
``10.231.0.1``; ``JRUN_BENCH_SLURM_HOST`` sets another).  Its data directory is a
temporary directory, which every node must see at the same path (as the test cluster's
do; elsewhere point ``TMPDIR`` at a shared file system).  Skipped, with the reason in the
table, where Slurm is not installed, not configured or has no usable node, or where the
address is not this machine's.

- 9: submit -> RUNNING.  Baseline: a bare ``sbatch`` of a sleeping batch job, then
  ``squeue -j`` every :data:`SQUEUE_POLL` s until it says RUNNING.  Ours: ``submitJob``
  of a sleeping ``JuliaBatch``, then ``getJobStatus`` until its phase is ``running``
  (which the server takes from its own ``squeue`` sweeps).  Alternated, each side first
  in turn, medians.  Each start begins once the previous job has left the cluster and
  :data:`SETTLE` s have passed: Slurm runs a scheduling pass when a job ends, which would
  start a job submitted just after a cancel at once, and favour whichever side comes
  second.
- 9b: ``getJobStatus`` latency (bare pooled client, as row 8) with no other job, then with
  ``live_jobs`` more Slurm jobs (200 at full size: some running, the rest pending), once
  they are placed and the server's quick sweeps after submissions are over
  (:data:`~juliarun_aio.server._backend_slurm.BUSY_WINDOW`).  Row 9b' reports the latency
  right after the submissions, while the nodes -- on this one machine, sharing its CPUs
  with the server -- start the jobs.
- 9c: live log latency of a job on another node (``node2`` when the cluster has it):
  ``tail_logs`` on the stream path, with bare httpx on ``streamLogs`` as the floor.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator

import anyio

from juliarun_aio import Context, JuliaBatch
from juliarun_aio.server._backend_slurm import BUSY_WINDOW
from juliarun_aio.server._slurm_cli import SlurmCli, unavailable

from . import log_latency, server_load
from ._support import (
    QUICK,
    Row,
    ServerProcess,
    Sizes,
    fmt_ms,
    median,
    percentile,
    signed_url,
    wait_running,
)

#: Where the benchmark's server listens: an address of this machine that the nodes reach.
SLURM_HOST = os.environ.get("JRUN_BENCH_SLURM_HOST", "10.231.0.1")
#: Seconds between two ``squeue`` calls of the baseline (the server's sweep while a job
#: starts is as often).
SQUEUE_POLL = 0.1
#: Seconds between two ``getJobStatus`` calls while waiting for RUNNING.
STATUS_POLL = 0.02
#: How long one job may take to start before the run is given up.
START_TIMEOUT = 120.0
#: Seconds between a job's end and the next start measured (see the module docstring).
SETTLE = 1.5


def slurm_problem() -> str | None:
    """Why the Slurm benchmark cannot run here, or None when it can."""
    problem = unavailable(SlurmCli(timeout=30))
    if problem is not None:
        return problem
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((SLURM_HOST, 0))
    except OSError:
        return f"{SLURM_HOST} is not an address of this machine (JRUN_BENCH_SLURM_HOST)"
    return None


@contextlib.contextmanager
def _slurm_server(*sbatch_args: str) -> Iterator[ServerProcess]:
    """A Slurm-backed server with a CA of its own (its ``ca_bundle``)."""
    args = ["--backend", "slurm", "--tls-self-signed"]
    args += [f"--sbatch-arg={arg}" for arg in sbatch_args]
    server = ServerProcess(host=SLURM_HOST, args=args)
    try:
        yield server.start()
    finally:
        server.stop()


def _sbatch_sleeper(directory: str) -> int:
    out = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--job-name=jr-bench-baseline",
            f"--output={directory}/baseline-%j.out",
            "--nodes=1",
            "--ntasks=1",
            "--wrap=exec sleep 3600",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return int(out.strip().split(";")[0])


def _squeue_state(job_id: int) -> str:
    return subprocess.run(
        ["squeue", "-h", "-j", str(job_id), "-o", "%T"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    ).stdout.strip()


def _bare_submit_to_running(directory: str) -> float:
    """sbatch, then squeue until RUNNING: seconds from before sbatch."""
    started = time.perf_counter()
    job_id = _sbatch_sleeper(directory)
    try:
        while _squeue_state(job_id) != "RUNNING":
            if time.perf_counter() - started > START_TIMEOUT:
                raise RuntimeError(f"Slurm job {job_id} did not start in {START_TIMEOUT} s")
            time.sleep(SQUEUE_POLL)
        return time.perf_counter() - started
    finally:
        subprocess.run(["scancel", str(job_id)], check=False, timeout=60)
        while _squeue_state(job_id) in ("PENDING", "RUNNING", "COMPLETING"):
            time.sleep(SQUEUE_POLL)
        time.sleep(SETTLE)


async def _ours_submit_to_running(ctx: Context, job: JuliaBatch) -> float:
    """submitJob, then getJobStatus until the phase is running; the job is deleted."""
    started = time.perf_counter()
    await ctx.submit_job(job)
    try:
        while (await ctx.get_job_status(job)).phase != "running":
            if time.perf_counter() - started > START_TIMEOUT:
                raise RuntimeError(f"job {job.name} did not start in {START_TIMEOUT} s")
            await anyio.sleep(STATUS_POLL)
        return time.perf_counter() - started
    finally:
        await ctx.delete_job(job, force=True)  # answers once the Slurm job has ended
        await anyio.sleep(SETTLE)


async def _submit_latency(server: ServerProcess, ctx: Context, sizes: Sizes) -> Row:
    bare: list[float] = []
    ours: list[float] = []
    # Four times the usual repetitions: each start waits for Slurm's scheduling cycle (up
    # to a second), so single starts scatter widely.  The first pair warms up the server,
    # the nodes and the page cache; the quick size (a check of the harness) has one pair.
    quick = sizes is QUICK
    for i in range(1 if quick else 4 * sizes.repeats + 1):
        for side in ("bare", "ours") if i % 2 else ("ours", "bare"):
            if side == "bare":
                took = await anyio.to_thread.run_sync(_bare_submit_to_running, str(server.root))
            else:
                took = await _ours_submit_to_running(ctx, server.sleep_job(f"start-{i}"))
            if i or quick:
                (bare if side == "bare" else ours).append(took)
    b, o = median(bare), median(ours)
    return Row(
        f"9. Slurm: submit -> RUNNING ({len(ours)} jobs)",
        f"sbatch + squeue every {SQUEUE_POLL:g} s {fmt_ms(b)}",
        f"submitJob + getJobStatus {fmt_ms(o)}",
        o / b,
        "<= 1.2",
        o / b <= 1.2,
        {"bare_s": b, "ours_s": o},
    )


async def _status_latency(server: ServerProcess, ctx: Context, sizes: Sizes) -> list[Row]:
    """Run on a server with no job left: row 9 deletes each of its jobs."""
    probe = server.sleep_job("probe")
    await ctx.submit_job(probe)
    await wait_running(ctx, [probe])
    url = str(signed_url(ctx, "getJobStatus", probe.ref, {}))
    trust = ssl.create_default_context(cafile=server.ca_bundle)
    idle = await server_load.status_latency(url, sizes, verify=trust)
    live = [server.sleep_job(f"live-{i}") for i in range(sizes.live_jobs)]
    for job in live:
        await ctx.submit_job(job)
    submitted = time.monotonic()
    await wait_running(ctx, live)
    starting = await server_load.status_latency(url, sizes, verify=trust)
    if sizes is not QUICK:  # the quick size checks the harness, not the figure
        await anyio.sleep(max(0.0, submitted + BUSY_WINDOW + 1 - time.monotonic()))
    busy = await server_load.status_latency(url, sizes, verify=trust)
    ratio = busy / idle
    return [
        Row(
            f"9b. Slurm: getJobStatus latency, {sizes.live_jobs} Slurm jobs",
            f"no other job {fmt_ms(idle)}",
            f"{sizes.live_jobs} Slurm jobs {fmt_ms(busy)}",
            ratio,
            "<= 2",
            ratio <= 2,
            {"idle_s": idle, "busy_s": busy},
        ),
        Row(
            f"9b'. Slurm: the same while the {sizes.live_jobs} jobs start",
            f"no other job {fmt_ms(idle)}",
            f"just submitted {fmt_ms(starting)}",
            starting / idle,
            "report",
            None,
            {"starting_s": starting},
        ),
    ]


async def _log_latency(sizes: Sizes) -> Row:
    nodes = SlurmCli(timeout=30).nodes()
    pin = ("--nodelist=node2",) if "node2" in nodes else ()
    with _slurm_server(*pin) as server:
        async with server.context(verify=server.ca_bundle) as ctx:
            await ctx.server_info()  # the path choice, made before timing
            trust = ssl.create_default_context(cafile=server.ca_bundle)
            floor = await log_latency.latencies(server, ctx, sizes, "bare", verify=trust)
            ours = await log_latency.latencies(server, ctx, sizes, "stream")
    b50, s50, s99 = percentile(floor, 50), percentile(ours, 50), percentile(ours, 99)
    where = "node2" if pin else "a node"
    return Row(
        f"9c. Slurm: log latency, job on {where} ({sizes.tick_rate:g} lines/s)",
        f"bare httpx p50 {fmt_ms(b50)}",
        f"tail_logs p50 {fmt_ms(s50)}, p99 {fmt_ms(s99)}",
        s50 / b50,
        "p50 <= 100 ms",
        s50 <= 0.100,
        {"bare_p50_s": b50, "stream_p50_s": s50, "stream_p99_s": s99},
    )


async def run(sizes: Sizes) -> list[Row]:
    problem = await anyio.to_thread.run_sync(slurm_problem)
    if problem is not None:
        return [Row("9. Slurm backend", "-", f"skipped: {problem}", None, "-", None)]
    with _slurm_server() as server:
        async with server.context(verify=server.ca_bundle) as ctx:
            rows = [await _submit_latency(server, ctx, sizes)]
            rows += await _status_latency(server, ctx, sizes)
    return [*rows, await _log_latency(sizes)]
