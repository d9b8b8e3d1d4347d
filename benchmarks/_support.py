"""What every benchmark shares: the server process, job scripts, statistics, result rows.

The server always runs in its own process (``python -m juliarun_aio.server``), never in
the benchmark's process: a server on a thread would share the client's GIL and event
loop time, so every client-side number would include server work.  With a separate
process, client and server each get a core of their own (on a 2-core machine), just as
a daemon and a remote JuliaRun would.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import attrs
import httpcore
import httpx
import psutil

from juliarun_aio import Context, JobRef, JuliaBatch, JuliaRunError
from juliarun_aio.server import ServerProcess as BaseServerProcess

NAMESPACE = "default"
VOLUME = "bench"


def signed_url(ctx: Context, verb: str, job: JobRef | None, params: Mapping[str, str]) -> httpx.URL:
    """The URL ``ctx`` sends for a call, so that a baseline sends the very same request."""
    return ctx._http.build_url(verb, job, params)


def pooled_client(ctx: Context) -> httpx.AsyncClient:
    """The pooled client ``ctx`` uses in the running event loop."""
    return ctx._http.loop_state().client


#: A job that writes ``LINES`` numbered lines of about 60 bytes as fast as it can.
BULK_SCRIPT = """\
import os, sys
n = int(os.environ["LINES"])
out = sys.stdout
step = 10000
for start in range(0, n, step):
    out.write("".join(
        f"{i:09d} epoch=3 step={i} loss=0.{i % 997:06d} lr=0.0003 status=ok\\n"
        for i in range(start, min(n, start + step))
    ))
out.flush()
"""

#: A job that writes a line carrying its wall-clock write time, ``RATE`` times a second.
TICK_SCRIPT = """\
import os, sys, time
rate, seconds = float(os.environ["RATE"]), float(os.environ["SECONDS"])
out = sys.stdout
start = time.monotonic()
for i in range(int(rate * seconds)):
    delay = start + i / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    out.write(f"tick {i} {time.time():.6f}\\n")
    out.flush()
"""

#: A job that stays running (``exec`` so the job's process is ``sleep`` itself).
SLEEP_SCRIPT = "exec sleep 3600\n"

#: A job that ends at once.
SHORT_SCRIPT = "exit 0\n"
#: Prints the wall-clock time (seconds since the epoch) when the job's program starts.
STARTED_SCRIPT = "date +%s.%N\nexec sleep 3600\n"


@attrs.frozen
class Sizes:
    """How big each benchmark is; :data:`FULL` or :data:`QUICK`."""

    warmup: int
    calls: int
    naive_calls: int
    repeats: int
    concurrent_calls: int
    concurrent_repeats: int
    concurrency: int
    log_lines: int
    small_log_lines: int
    log_repeats: int
    tick_rate: float
    tick_seconds: float
    watchers: int
    watch_seconds: float
    watched_jobs: int
    import_repeats: int
    live_jobs: int
    short_jobs: int
    status_calls: int
    started_jobs: int


FULL = Sizes(
    warmup=50,
    calls=400,
    naive_calls=40,
    repeats=5,
    concurrent_calls=5000,
    concurrent_repeats=3,
    concurrency=64,
    log_lines=1_000_000,
    small_log_lines=100_000,
    log_repeats=3,
    tick_rate=100.0,
    tick_seconds=8.0,
    watchers=1000,
    watch_seconds=60.0,
    watched_jobs=10,
    import_repeats=9,
    live_jobs=200,
    short_jobs=200,
    status_calls=500,
    started_jobs=30,
)

QUICK = Sizes(
    warmup=5,
    calls=10,
    naive_calls=3,
    repeats=1,
    concurrent_calls=128,
    concurrent_repeats=1,
    concurrency=64,
    log_lines=5_000,
    small_log_lines=1_000,
    log_repeats=1,
    tick_rate=20.0,
    tick_seconds=1.0,
    watchers=50,
    watch_seconds=2.0,
    watched_jobs=2,
    import_repeats=1,
    live_jobs=2,
    short_jobs=2,
    status_calls=20,
    started_jobs=3,
)


@attrs.frozen
class Row:
    """One line of the results table.

    ``ratio`` is ``ours / baseline`` unless the goal says otherwise; ``passed`` is
    ``None`` for measures that only report.
    """

    measure: str
    baseline: str
    ours: str
    ratio: float | None
    goal: str
    passed: bool | None
    numbers: dict[str, float] = attrs.field(factory=dict)
    note: str = ""


# -- statistics -------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    """The median (``nan`` for no values)."""
    return statistics.median(values) if values else math.nan


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), nearest rank (``nan`` for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def fmt_us(seconds: float) -> str:
    return f"{seconds * 1e6:.0f} us"


def fmt_rate(per_second: float, unit: str) -> str:
    if per_second >= 1e6:
        return f"{per_second / 1e6:.2f} M {unit}/s"
    if per_second >= 1e4:
        return f"{per_second / 1e3:.0f} k {unit}/s"
    return f"{per_second:.0f} {unit}/s"


# -- the server process -----------------------------------------------------------------


class ServerProcess(BaseServerProcess):
    """The server on a free loopback port (or ``host``), in a temporary directory.

    Jobs are stopped with the server (``--stop-jobs``) and the directory is removed.
    ``args`` are more command-line arguments (``--backend slurm``...).
    """

    def __init__(self, host: str = "127.0.0.1", args: Sequence[str] = ()) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="juliarun-bench-"))
        super().__init__(
            self.root / "data",
            namespace=NAMESPACE,
            host=host,
            args=("--stop-jobs", "--kill-grace", "1", *args),
        )
        self.scripts = self.root / "scripts"
        self.scripts.mkdir()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the server and its jobs (``--stop-jobs``); remove the directory."""
        super().stop(timeout)
        shutil.rmtree(self.root, ignore_errors=True)

    def context(self, **kwargs: Any) -> Context:
        """A Context for this server."""
        return Context(self.url, self.token, self.namespace, **kwargs)

    def script(self, name: str, text: str) -> str:
        path = self.scripts / name
        if not path.exists():
            path.write_text(text)
        return str(path)

    def bulk_job(self, name: str, lines: int) -> JuliaBatch:
        return JuliaBatch(
            name=name,
            start_script=self.script("bulk.py", BULK_SCRIPT),
            run_volume=VOLUME,
            envvars={"LINES": str(lines)},
        )

    def tick_job(self, name: str, rate: float, seconds: float) -> JuliaBatch:
        return JuliaBatch(
            name=name,
            start_script=self.script("tick.py", TICK_SCRIPT),
            run_volume=VOLUME,
            envvars={"RATE": str(rate), "SECONDS": str(seconds), "PYTHONUNBUFFERED": "1"},
        )

    def sleep_job(self, name: str) -> JuliaBatch:
        return JuliaBatch(
            name=name, start_script=self.script("sleep.sh", SLEEP_SCRIPT), run_volume=VOLUME
        )

    def started_job(self, name: str) -> JuliaBatch:
        return JuliaBatch(
            name=name, start_script=self.script("started.sh", STARTED_SCRIPT), run_volume=VOLUME
        )

    def short_job(self, name: str) -> JuliaBatch:
        return JuliaBatch(
            name=name, start_script=self.script("short.sh", SHORT_SCRIPT), run_volume=VOLUME
        )


@contextlib.contextmanager
def bytecode_cache() -> Iterator[None]:
    """Let the processes started meanwhile share a temporary bytecode cache.

    A source checkout has no ``__pycache__`` and ``PYTHONDONTWRITEBYTECODE`` may be set:
    then every server, job and child process would compile the package anew.
    """
    saved = {key: os.environ.get(key) for key in ("PYTHONPYCACHEPREFIX", "PYTHONDONTWRITEBYTECODE")}
    cache = tempfile.mkdtemp(prefix="juliarun-bench-pycache-")
    os.environ["PYTHONPYCACHEPREFIX"] = cache
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(cache, ignore_errors=True)


@contextlib.contextmanager
def server_process() -> Iterator[ServerProcess]:
    server = ServerProcess()
    try:
        yield server.start()
    finally:
        server.stop()


async def wait_finished(ctx: Context, job: JobRef | JuliaBatch, timeout: float = 300.0) -> None:
    """Wait until the job completed and the server holds all of its log."""
    deadline = time.monotonic() + timeout
    while True:
        status = await ctx.get_job_status(job)
        if status.completed:
            if status.failed:
                raise RuntimeError(f"benchmark job {job.ref.name} failed: {status.message}")
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"benchmark job {job.ref.name} did not finish in {timeout} s")
        await anyio.sleep(0.05)


async def wait_running(ctx: Context, jobs: Sequence[JuliaBatch], timeout: float = 300.0) -> None:
    """Wait until every job's process was started."""
    deadline = time.monotonic() + timeout
    pending = list(jobs)
    while pending:
        status = await ctx.get_job_status(pending[-1])
        if status.created:
            pending.pop()
            continue
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(pending)} benchmark jobs did not start in {timeout} s")
        await anyio.sleep(0.05)


async def log_complete(ctx: Context, job: JuliaBatch, lines: int, timeout: float = 300.0) -> None:
    """Wait until the job finished and the server's combined log holds ``lines`` lines."""
    await wait_finished(ctx, job, timeout)
    deadline = time.monotonic() + timeout
    while True:
        try:
            tail = await ctx.tail_job(job, count=1)
        except JuliaRunError:
            tail = ""
        if tail.startswith(f"{lines - 1:09d} "):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the log of {job.name} did not reach {lines} lines")
        await anyio.sleep(0.05)


# -- counting connections -----------------------------------------------------------------


class CountingBackend(httpcore.AsyncNetworkBackend):
    """Wraps a pool's network backend: counts the TCP connections it opens.

    :meth:`held` counts those of them that are established right now, as the kernel
    sees them (``psutil``): a pool closes a connection the server let expire only after
    opening its replacement, so counting ``aclose`` calls would over-count.
    """

    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner
        self.opened = 0
        self._ports: set[int] = set()
        self._process = psutil.Process()

    async def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(*args, **kwargs)
        self.opened += 1
        self._ports.add(stream.get_extra_info("socket").getsockname()[1])
        return stream

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        return await self._inner.connect_unix_socket(*args, **kwargs)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)

    def held(self) -> int:
        """How many connections opened here are established now."""
        return sum(
            1
            for conn in self._process.net_connections("tcp")
            if conn.status == psutil.CONN_ESTABLISHED and conn.laddr.port in self._ports
        )


@contextlib.asynccontextmanager
async def sampling_held(
    *backends: CountingBackend, every: float = 0.05
) -> AsyncIterator[list[int]]:
    """Sample the connections ``backends`` hold while the block runs; yield the maxima."""
    maxima = [0] * len(backends)

    async def sample() -> None:
        while True:
            for i, backend in enumerate(backends):
                maxima[i] = max(maxima[i], backend.held())
            await anyio.sleep(every)

    async with anyio.create_task_group() as group:
        group.start_soon(sample)
        try:
            yield maxima
        finally:
            group.cancel_scope.cancel()


def count_connections(client: httpx.AsyncClient) -> CountingBackend:
    """Install a :class:`CountingBackend` in ``client``'s connection pool.

    This reaches into httpx's default transport (``_transport._pool``): benchmarks only.
    """
    pool = client._transport._pool  # type: ignore[attr-defined]
    backend = CountingBackend(pool._network_backend)
    pool._network_backend = backend
    return backend


class RequestCounter:
    """Counts the requests a client sends, with an httpx event hook."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.count = 0
        client.event_hooks["request"].append(self._hook)

    async def _hook(self, _request: httpx.Request) -> None:
        self.count += 1


@contextlib.asynccontextmanager
async def bare_client(**kwargs: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30, **kwargs) as client:
        yield client


async def ensure_job(ctx: Context, spec: JuliaBatch) -> JuliaBatch:
    """Submit ``spec`` unless a job of its name exists already."""
    try:
        await ctx.get_job_status(spec)
    except JuliaRunError:
        await ctx.submit_job(spec)
    return spec


async def run_concurrently(call: Callable[[], Awaitable[Any]], total: int, workers: int) -> None:
    """Make ``total`` calls with at most ``workers`` in flight."""
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    async with anyio.create_task_group() as group:
        for _ in range(min(workers, total)):
            group.start_soon(worker)


async def bulk_log(server: ServerProcess, ctx: Context, lines: int) -> JuliaBatch:
    """A finished job whose log has ``lines`` lines (made once per server)."""
    job = await ensure_job(ctx, server.bulk_job(f"bulk-{lines}", lines))
    await log_complete(ctx, job, lines)
    return job
