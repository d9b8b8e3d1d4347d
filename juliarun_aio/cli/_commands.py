"""The subcommands that talk to a server: one coroutine per command.

Each takes the open :class:`~juliarun_aio.Context`, the parsed command line and the
:class:`~juliarun_aio.cli._output.Output`, and returns the exit code.  Failures are raised
(SDK errors or :class:`~juliarun_aio.cli._errors.CliError`) and turned into one line and
an exit code by :func:`juliarun_aio.cli.main`.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping

import anyio

from .. import _errors as errors
from .._context import Context
from .._jobs import JOB_KINDS, JobRef, validate_name
from .._logs import LogLine
from .._models import TABLE_COLUMNS, JobInfo, JobScale, JobStatus, info_row
from ._errors import CliError, ExitCode, JobFailedError, UsageError
from ._output import Output, phase_of, status_to_json
from ._spec_flags import spec_from_args

__all__ = [
    "COMMANDS",
    "Command",
    "check_outcome",
    "follow_logs",
    "info_to_json",
    "print_info_table",
    "resolve_job",
    "wait_workers",
]

#: How many lines ``logs`` prints without ``-f`` and ``--tail``.
_DEFAULT_TAIL = 50

#: The shortest wait, in seconds, so that a spent ``--timeout`` still reads the status.
_MIN_WAIT = 0.01

#: A subcommand: ``await command(ctx, args, out)`` returns the exit code.
Command = Callable[[Context, argparse.Namespace, Output], Awaitable[int]]


async def resolve_job(ctx: Context, text: str) -> JobRef:
    """Turn ``TYPE/NAME`` or ``NAME`` into a job reference.

    A bare name costs one ``listJobs`` call to learn the job's type.

    Raises:
        UsageError: ``TYPE`` is not a job type or ``NAME`` is not a valid name.
        CliError: no job of that name exists (exit 3).
    """
    kind, slash, name = text.rpartition("/")
    try:
        if slash:
            return JobRef(kind, name)
        validate_name(name)
    except errors.SpecError as exc:
        raise UsageError(
            f"{text!r} is not a job: {exc.message}",
            f"give NAME or TYPE/NAME, TYPE one of {', '.join(JOB_KINDS)}",
        ) from None
    info = (await ctx.list_jobs()).get(name)
    if info is None:
        raise CliError(
            f"no job named {name!r} in namespace {ctx.namespace!r}",
            "list jobs with 'juliarun list'",
            ExitCode.NOT_FOUND,
        )
    return info.ref


def _label(ref: JobRef) -> str:
    return f"{ref.kind}/{ref.name}"


def check_outcome(ref: JobRef, status: JobStatus) -> int:
    """Return 0 for a job that succeeded; raise for one that failed.

    Raises:
        JobFailedError: the job ended unsuccessfully (exit 5).
    """
    if status.succeeded:
        return ExitCode.OK
    reason = f": {status.message}" if status.message else ""
    raise JobFailedError(
        f"job {_label(ref)} {phase_of(status)}{reason}",
        f"see its output with 'juliarun logs {ref.name}'",
    )


async def follow_logs(
    ctx: Context,
    ref: JobRef,
    out: Output,
    *,
    stream: str | None = None,
    tail: int | None = None,
) -> None:
    """Print the job's log lines as they come, until the job ends (or Ctrl-C).

    Args:
        ctx: The Context.
        ref: The job.
        out: Where to print.
        stream: ``"stdout"`` or ``"stderr"``; both when ``None``.
        tail: Start with the last ``tail`` lines instead of the whole log.
    """
    since: int | None = None
    if tail is not None:
        recent: collections.deque[LogLine] = collections.deque(maxlen=tail)
        seen = 0
        async for line in ctx.tail_logs(ref, follow=False, stream=stream):
            recent.append(line)
            seen += 1
        for line in recent:
            _print_line(out, line)
        # Resume after the last line read: its cursor on a streaming server, else the
        # number of lines read (which is what ``since`` counts when polling).
        last = recent[-1] if recent else None
        since = last.cursor if last is not None and last.cursor is not None else seen
    async for line in ctx.tail_logs(ref, follow=True, stream=stream, since=since):
        _print_line(out, line)


def _print_line(out: Output, line: LogLine) -> None:
    if out.json_mode:
        out.json(
            {"text": line.text, "stream": line.stream, "cursor": line.cursor, "proc": line.proc},
            compact=True,
        )
    else:
        out.write(line.text)


async def _wait(ctx: Context, ref: JobRef, out: Output, timeout: float | None) -> JobStatus:
    final: JobStatus | None = None
    with out.status_progress(ref.name) as report:
        async for status in ctx.watch_job(ref, timeout=timeout):
            report(status)
            final = status
    return final if final is not None else await ctx.get_job_status(ref)


async def wait_workers(
    ctx: Context, ref: JobRef, out: Output, wanted: int, timeout: float | None
) -> JobScale:
    """Wait for ``wanted`` workers, showing the scale and the job's message as they change.

    The message (a worker that cannot start, say) can change while the scale does not,
    so the status is watched alongside the scale.

    Args:
        ctx: The Context.
        ref: The job.
        out: Where to show the progress.
        wanted: How many running workers to wait for.
        timeout: Seconds to wait; ``None`` waits forever.

    Returns:
        The scale that reached ``wanted``.

    Raises:
        JuliaRunError: the wait failed (a timeout, say); its message ends with the
            job's last message, unless it says it already.
    """
    scale: JobScale | None = None
    message: str | None = None
    failure: errors.JuliaRunError | None = None
    with out.worker_progress(ref.name, wanted) as report:

        async def show_messages() -> None:
            nonlocal message
            # Only shown: a failure of the job itself reaches the scale wait too.
            with contextlib.suppress(errors.JuliaRunError):
                async for status in ctx.watch_job(ref):
                    if status.message != message:
                        message = status.message
                        report(scale, message)

        async with anyio.create_task_group() as tg:
            tg.start_soon(show_messages)
            try:
                async for scale in ctx.wait_for_workers(ref, wanted, timeout=timeout):
                    report(scale, message)
            except errors.JuliaRunError as exc:
                failure = exc
            tg.cancel_scope.cancel()
    if failure is not None:
        if message and message not in failure.message:
            failure.message = f"{failure.message}; the job says: {message}"
        raise failure
    return scale if scale is not None else await ctx.get_job_scale(ref)


# -- system -------------------------------------------------------------------------


async def status(ctx: Context, _args: argparse.Namespace, out: Output) -> int:
    """``juliarun status``: is the server up and connected to a cluster."""
    running = await ctx.get_system_status()
    if out.json_mode:
        out.json({"running": running, "url": ctx.url, "namespace": ctx.namespace})
    else:
        state = "running" if running else "NOT running (not connected to a compute cluster)"
        out.info(f"JuliaRun at {ctx.url}, namespace {ctx.namespace}: {state}")
    return ExitCode.OK if running else ExitCode.ERROR


async def list_jobs(ctx: Context, _args: argparse.Namespace, out: Output) -> int:
    """``juliarun list``: the jobs of the namespace and their types."""
    jobs = sorted((await ctx.list_jobs()).values(), key=lambda info: info.name)
    if out.json_mode:
        out.json([{"name": info.name, "type": info.kind} for info in jobs])
    elif not jobs:
        out.info(f"no jobs in namespace {ctx.namespace}")
    else:
        out.table(("NAME", "TYPE"), [(info.name, info.kind) for info in jobs])
    return ExitCode.OK


def info_to_json(info: JobInfo) -> dict[str, object]:
    """Return one job of ``getAllJobInfo`` as a JSON object."""
    return {
        "name": info.name,
        "type": info.kind,
        "status": status_to_json(info.status) if info.status else None,
        "scale": (
            {"running": info.scale.running, "requested": info.scale.requested}
            if info.scale
            else None
        ),
        "endpoint": (
            {"host": info.endpoint.host, "ports": dict(info.endpoint.ports)}
            if info.endpoint
            else None
        ),
    }


def print_info_table(out: Output, jobs: Mapping[str, JobInfo]) -> None:
    """Print the status table of ``getAllJobInfo``."""
    rows = [info_row(info) for info in sorted(jobs.values(), key=lambda info: info.name)]
    out.table(TABLE_COLUMNS, rows)


async def info(ctx: Context, _args: argparse.Namespace, out: Output) -> int:
    """``juliarun info``: every job with its phase, workers and endpoint."""
    jobs = await ctx.get_all_job_info()
    if out.json_mode:
        out.json([info_to_json(job) for _, job in sorted(jobs.items())])
    elif not jobs:
        out.info(f"no jobs in namespace {ctx.namespace}")
    else:
        print_info_table(out, jobs)
    return ExitCode.OK


# -- job definition -----------------------------------------------------------------


async def submit(ctx: Context, args: argparse.Namespace, out: Output) -> int:
    """``juliarun submit TYPE NAME --param value...``: submit, optionally wait or follow."""
    spec = spec_from_args(args.kind, args.name, args)
    await ctx.submit_job(spec)
    ref = spec.ref
    waiting = args.follow or args.wait
    if out.json_mode:
        # One JSON document per line when log lines and a final status follow.
        out.json({"submitted": {"type": ref.kind, "name": ref.name}}, compact=waiting)
    else:
        out.info(f"submitted {_label(ref)}", style="green")
    if not waiting:
        return ExitCode.OK
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    if args.follow:
        with anyio.move_on_after(args.timeout):
            await follow_logs(ctx, ref, out)
    # What is left of --timeout after following; a spent one still checks the job once.
    left = None if deadline is None else max(deadline - time.monotonic(), _MIN_WAIT)
    final = await _wait(ctx, ref, out, left)
    if out.json_mode:
        out.json({"name": ref.name, "type": ref.kind, **status_to_json(final)}, compact=True)
    return check_outcome(ref, final)


async def update(ctx: Context, args: argparse.Namespace, out: Output) -> int:
    """``juliarun update TYPE NAME --param value...``: change a job's definition."""
    spec = spec_from_args(args.kind, args.name, args)
    await ctx.update_job(spec)
    if out.json_mode:
        out.json({"updated": {"type": spec.kind, "name": spec.name}})
    else:
        out.info(f"updated {_label(spec.ref)}", style="green")
    return ExitCode.OK


# -- job state ----------------------------------------------------------------------


async def job_status(ctx: Context, args: argparse.Namespace, out: Output) -> int:
    """``juliarun job-status NAME``: the job's status."""
    ref = await resolve_job(ctx, args.job)
    job = await ctx.get_job_status(ref)
    if out.json_mode:
        out.json({"name": ref.name, "type": ref.kind, **status_to_json(job)})
        return ExitCode.OK
    rows = [
        ("job", _label(ref)),
        ("phase", phase_of(job)),
        ("succeeded", str(job.succeeded).lower()),
        ("created", str(job.created).lower()),
        ("parallelism", str(job.parallelism)),
        ("workers succeeded", str(job.nworkers_succeeded)),
        ("workers pending", str(job.npending)),
        ("workers up to date", str(job.nuptodate)),
    ]
    if job.message:
        rows.append(("message", job.message))
    out.table(("FIELD", "VALUE"), rows)
    return ExitCode.OK


async def scale(ctx: Context, args: argparse.Namespace, out: Output) -> int:
    """``juliarun scale NAME N [--wait]``: ask for N workers, optionally wait for them."""
    if args.workers < 0:
        raise UsageError(f"cannot scale to {args.workers} workers", "give 0 or more")
    ref = await resolve_job(ctx, args.job)
    if not await ctx.set_job_scale(ref, args.workers):
        raise CliError(
            f"the server refused to scale {_label(ref)} to {args.workers}",
            "check that the job type can be scaled and is still running",
        )
    if not out.json_mode:
        out.info(f"scaling {_label(ref)} to {args.workers} workers")
    result: dict[str, object] = {"name": ref.name, "type": ref.kind, "requested": args.workers}
    if args.wait:
        reached = await wait_workers(ctx, ref, out, args.workers, args.timeout)
        result["running"] = reached.running
        if not out.json_mode:
            out.info(f"{reached.running} workers running", style="green")
    if out.json_mode:
        out.json(result)
    return ExitCode.OK


async def endpoint(ctx: Context, args: argparse.Namespace, out: Output) -> int:
    """``juliarun endpoint NAME``: the host and named ports of the job."""
    ref = await resolve_job(ctx, args.job)
    found = await ctx.get_job_endpoint(ref)
    if out.json_mode:
        out.json({"host": found.host, "ports": dict(found.ports)})
    elif found.host is None:
        out.info(f"{_label(ref)} has no endpoint yet")
    else:
        out.table(
            ("HOST", "PORT NAME", "PORT"),
            [(found.host, name, str(port)) for name, port in found.ports.items()]
            or [(found.host, "-", "-")],
        )
    return ExitCode.OK


async def url(ctx: Context, args: argparse.Namespace, out: Output) -> int:
    """``juliarun url NAME PORT``: a URL that reaches a port of the job."""
    ref = await resolve_job(ctx, args.job)
    found = await ctx.get_encoded_url(ref, args.port)
    if out.json_mode:
        out.json({"url": found})
    else:
        out.write(found)
    return ExitCode.OK


async def logs(ctx: Context, args: argparse.Namespace, out: Output) -> int:
    """``juliarun logs NAME [-f] [--stream S] [--tail N]``: print (and follow) the job's log."""
    ref = await resolve_job(ctx, args.job)
    if args.follow:
        await follow_logs(ctx, ref, out, stream=args.stream, tail=args.tail)
        return ExitCode.OK
    count = _DEFAULT_TAIL if args.tail is None else args.tail
    text = await ctx.tail_job(ref, stream=args.stream, count=count)
    for line in text.splitlines():
        _print_line(out, LogLine(line, stream=args.stream))
    return ExitCode.OK


async def wait(ctx: Context, args: argparse.Namespace, out: Output) -> int:
    """``juliarun wait NAME [--timeout S]``: wait for the job to end; exit 5 if it failed."""
    ref = await resolve_job(ctx, args.job)
    final = await _wait(ctx, ref, out, args.timeout)
    if out.json_mode:
        out.json({"name": ref.name, "type": ref.kind, **status_to_json(final)})
    else:
        out.info(f"{_label(ref)}: {phase_of(final)}")
    return check_outcome(ref, final)


async def delete(ctx: Context, args: argparse.Namespace, out: Output) -> int:
    """``juliarun delete NAME [--force]``: remove the job."""
    ref = await resolve_job(ctx, args.job)
    if not await ctx.delete_job(ref, force=args.force):
        raise CliError(
            f"the server did not delete {_label(ref)}",
            "it may still be running; add --force to stop and delete it",
            ExitCode.CONFLICT,
        )
    if out.json_mode:
        out.json({"deleted": {"type": ref.kind, "name": ref.name}})
    else:
        out.info(f"deleted {_label(ref)}")
    return ExitCode.OK


#: The commands that need a Context, by subcommand name.
COMMANDS: Mapping[str, Command] = {
    "status": status,
    "list": list_jobs,
    "info": info,
    "submit": submit,
    "update": update,
    "job-status": job_status,
    "scale": scale,
    "endpoint": endpoint,
    "url": url,
    "logs": logs,
    "wait": wait,
    "delete": delete,
}
