"""``juliarun demo``: the whole platform on this machine, in well under a minute.

It starts a local server in-process (free loopback port, temporary data directory),
prints the link to its dashboard, submits a batch job and streams its log, starts a
parallel job (a master and workers) and scales it to 3 workers with the progress shown,
prints the status table, then deletes the jobs and stops the server.  The job scripts
ship in ``demo_scripts/``: the ``.jl`` versions run when ``julia`` is on PATH, the Python
versions otherwise, so no Julia is needed.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import anyio

from .._context import Context
from .._specs import JuliaBatch, JuliaParBatch
from ._commands import check_outcome, follow_logs, print_info_table, wait_workers
from ._errors import CliError, ExitCode
from ._output import Output, phase_of

__all__ = ["DEMO_WORKERS", "demo_scripts", "run_demo"]

#: The number of workers the parallel job is scaled to.
DEMO_WORKERS = 3
#: Seconds any one step may take before the demo gives up.
_STEP_TIMEOUT = 30.0
_SCRIPTS = Path(__file__).with_name("demo_scripts")


def demo_scripts(*, julia: bool | None = None) -> dict[str, str]:
    """Return the absolute paths of the demo's job scripts.

    Args:
        julia: Use the ``.jl`` scripts; by default, when ``julia`` is on PATH.

    Returns:
        ``{"batch": ..., "master": ..., "worker": ...}``.
    """
    if julia is None:
        julia = shutil.which("julia") is not None
    suffix = ".jl" if julia else ".py"
    return {role: str(_SCRIPTS / f"{role}{suffix}") for role in ("batch", "master", "worker")}


async def _joined_lines(ctx: Context, job: JuliaParBatch, wanted: int) -> list[str]:
    """Wait (briefly) until the master has logged ``wanted`` workers joining."""
    joined: list[str] = []
    with anyio.move_on_after(_STEP_TIMEOUT):
        while len(joined) < wanted:
            text = await ctx.tail_job(job, stream="stdout", count=100)
            joined = [line for line in text.splitlines() if "worker joined" in line]
            if len(joined) < wanted:
                await anyio.sleep(0.2)
    return joined


async def _batch(ctx: Context, out: Output, script: str) -> JuliaBatch:
    job = JuliaBatch(name="demo-batch", start_script=script, run_volume="demo")
    out.heading(f"1. A batch job: {Path(script).name}, its log streamed live")
    out.info(
        f"$ juliarun submit JuliaBatch {job.name} --start-script {Path(script).name} "
        "--run-volume demo -f",
        style="cyan",
    )
    await ctx.submit_job(job)
    with anyio.fail_after(_STEP_TIMEOUT):
        await follow_logs(ctx, job.ref, out)
        final = await ctx.wait_for_job(job)
    check_outcome(job.ref, final)
    out.info(f"{job.name}: {phase_of(final)}", style="green")
    return job


async def _parallel(ctx: Context, out: Output, scripts: dict[str, str]) -> JuliaParBatch:
    job = JuliaParBatch(
        name="demo-parallel",
        start_script=scripts["master"],
        worker_start_script=scripts["worker"],
        run_volume="demo",
    )
    out.heading(f"2. A parallel job: a master, then {DEMO_WORKERS} workers")
    out.info(
        f"$ juliarun submit JuliaParBatch {job.name} --start-script {Path(job.start_script).name} "
        f"--worker-start-script {Path(scripts['worker']).name} --run-volume demo",
        style="cyan",
    )
    await ctx.submit_job(job)
    out.info(f"$ juliarun scale {job.name} {DEMO_WORKERS} --wait", style="cyan")
    if not await ctx.set_job_scale(job, DEMO_WORKERS):
        raise CliError(f"the local server refused to scale {job.name}", "report this as a bug")
    await wait_workers(ctx, job.ref, out, DEMO_WORKERS, _STEP_TIMEOUT)
    for line in await _joined_lines(ctx, job, DEMO_WORKERS):
        out.info(f"  {line}", style="dim")
    return job


async def run_demo(out: Output) -> int:
    """Run the demo; return the exit code.

    Raises:
        CliError: the server extra is missing, or a step failed.
    """
    try:
        from ..server import LocalServer  # noqa: PLC0415 - an optional extra
    except ImportError as exc:
        raise CliError(
            f"the demo needs the local server, which is not installed ({exc.name} is missing)",
            "pip install 'juliarun_aio[server,cli]'",
        ) from None
    started = time.monotonic()
    scripts = demo_scripts()
    language = "Julia" if scripts["batch"].endswith(".jl") else "Python (julia is not on PATH)"
    out.heading("Starting a local JuliaRun server")
    async with LocalServer() as server:
        out.info(f"listening on {server.url}, namespace {server.namespace!r}")
        out.info(f"dashboard: {server.dashboard_url} (open it to watch the jobs)")
        out.info(f"data in a temporary directory; job scripts in {language}: {_SCRIPTS}")
        async with Context(url=server.url, token=server.token, namespace=server.namespace) as ctx:
            base = out.redact
            out.redact = lambda text: ctx.redact(base(text))
            batch = await _batch(ctx, out, scripts["batch"])
            parallel = await _parallel(ctx, out, scripts)
            out.heading("3. The status table")
            out.info("$ juliarun info", style="cyan")
            print_info_table(out, await ctx.get_all_job_info())
            out.heading("4. Cleaning up")
            await ctx.delete_job(batch)
            out.info(f"deleted {batch.name}")
            await ctx.delete_job(parallel, force=True)
            out.info(f"deleted {parallel.name} (--force: it was still running)")
        out.info("stopping the server")
    out.info(f"demo finished in {time.monotonic() - started:.1f} s", style="bold green")
    return ExitCode.OK
