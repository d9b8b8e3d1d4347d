"""The client: :class:`Context`, every verb of the protocol (docs/protocol.md) and the helpers.

How a call travels -- signing, sending, the ``{code, data}`` envelope, typed errors,
retries, the pool of each event loop -- is :class:`~._http.HttpLayer`'s business.
"""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncGenerator, Mapping
from typing import TYPE_CHECKING, Any

import httpx

from . import _base as base
from . import _errors as errors
from ._base import DEFAULT_ATTEMPTS, DEFAULT_LIMITS, DEFAULT_TIMEOUT, UNSET, TimeoutArg, Verify
from ._lazy import logs, models, retry, watch, wire

if TYPE_CHECKING:
    from . import Endpoint, Job, JobInfo, JobScale, JobSpec, JobStatus, JobTable, RetryPolicy

__all__ = ["Context"]


class Context:
    """A connection to a JuliaRun server: every protocol verb, typed.

    Use it as ``async with Context(...) as ctx:``; leaving the block closes the pool.
    Every argument is optional; see the resolution order in :mod:`juliarun_aio._config`.

    Args:
        url: Root URL of the server (``JRUN_URL``; in a cluster, the JuliaRun service).
        token: The raw token (``JRUN_TOKEN``); base64 of it is sent as ``jruntok``.
        namespace: The namespace to work in (``JRUN_NAMESPACE``).
        token_file: A file holding the raw token (``JRUN_TOKEN_FILE``), re-read when it
            changes and once after a 401.
        timeout: Per-request timeouts: seconds or an :class:`httpx.Timeout`
            (default: 5 s to connect, 30 s for the rest).  Overridable per call.
        retries: A :class:`RetryPolicy`, or the number of attempts (4: :data:`DEFAULT_RETRY`).
        limits: Pool limits; also bounds the requests in flight on this Context, and
            half of ``max_connections`` bounds the log streams open at once (so that
            calls always find a connection); at least 2.
        client: An :class:`httpx.AsyncClient` to use instead of creating one (custom
            transports, proxies, TLS, or respx).  The Context does not close an injected
            client, and cannot take it into another event loop (:class:`EventLoopError`).
        env: The environment to resolve from (default ``os.environ``).
        verify: ``True``, ``False``, a CA bundle path or an :class:`ssl.SSLContext` (default:
            ``JRUN_CA_BUNDLE``, ``SSL_CERT_FILE``, ``SSL_CERT_DIR``, else the usual CAs; see
            :mod:`._tls`).

    A Context may be used from one event loop after another (notebook cells run with
    ``asyncio.run``, a loop per test, trio after asyncio): in each new loop it starts a
    fresh connection pool and drops the old one's connections.  It serves one loop at a
    time, and is not thread-safe.

    Raises:
        ConfigurationError: URL, credential or namespace could not be resolved, a CA bundle
            cannot be read, ``verify=`` came with ``client=``, or ``max_connections`` < 2.
        TypeError: ``verify=`` is none of the kinds it takes.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        namespace: str | None = None,
        *,
        token_file: str | os.PathLike[str] | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retries: RetryPolicy | int = DEFAULT_ATTEMPTS,
        limits: httpx.Limits = DEFAULT_LIMITS,
        client: httpx.AsyncClient | None = None,
        env: Mapping[str, str] | None = None,
        verify: Verify | None = None,
    ) -> None:
        from ._config import resolve_config  # noqa: PLC0415 - loaded on first use (_lazy)
        from ._http import HttpLayer  # noqa: PLC0415

        cfg = resolve_config(url, token, namespace, token_file=token_file, env=env, verify=verify)
        self._http = HttpLayer(cfg, timeout=timeout, retries=retries, limits=limits, client=client)

    @property
    def url(self) -> str:
        """The server's root URL."""
        return self._http.url

    @property
    def namespace(self) -> str:
        """The namespace this Context works in."""
        return self._http.namespace

    @property
    def retry_policy(self) -> RetryPolicy:
        """The retry policy of this Context."""
        return self._http.retry_policy

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` has run."""
        return self._http.closed

    def redact(self, text: str) -> str:
        """Remove this Context's credential (in any form) from ``text``."""
        return self._http.redact(text)

    async def aclose(self) -> None:
        """Close the connection pool (an injected client is left open). Idempotent.

        Works in any event loop.  Calls and generators in flight on this Context raise
        :class:`ClientClosedError`.
        """
        await self._http.aclose()

    async def __aenter__(self) -> Context:
        self._http.check_open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return f"<Context url={self.url!r} namespace={self.namespace!r}{state}>"

    # -- system verbs ----------------------------------------------------------------

    async def get_system_status(self, *, timeout: TimeoutArg = UNSET) -> bool:
        """Tell whether JuliaRun is running and connected to a compute cluster.

        Raises:
            JuliaRunError: see the error tree; a ``false`` answer is not an error.
        """
        read = models.bool_from_wire
        return await self._http.fetch("getSystemStatus", None, read, timeout=timeout)

    async def list_jobs(self, *, timeout: TimeoutArg = UNSET) -> dict[str, JobInfo]:
        """List the jobs of this namespace (name and type only).

        Returns:
            ``{name: JobInfo}`` with ``status``, ``scale`` and ``endpoint`` left ``None``.
        """
        read = models.JobInfo.mapping_from_wire
        return await self._http.fetch("listJobs", None, read, timeout=timeout)

    async def get_all_job_info(self, *, timeout: TimeoutArg = UNSET) -> JobTable:
        """List the jobs of this namespace with their status, scale and endpoint.

        Returns:
            A ``dict`` of :class:`JobInfo` by job name, which notebooks show as a table.
        """
        read = models.JobInfo.mapping_from_wire
        return models.JobTable(await self._http.fetch("getAllJobInfo", None, read, timeout=timeout))

    async def server_info(self, *, timeout: TimeoutArg = UNSET) -> dict[str, Any] | None:
        """Ask for the local server's ``serverInfo`` extension.

        Returns:
            The server's self-description (``server``, ``version``, ``extensions``), or
            ``None`` for a plain JuliaRun server that does not offer it.  Remembered.
        """
        return await self._http.server_info(timeout=timeout)

    # -- job verbs -------------------------------------------------------------------

    async def get_job_status(self, job: Job, *, timeout: TimeoutArg = UNSET) -> JobStatus:
        """Fetch the current status of ``job``.

        Raises:
            JobNotFoundError: the job does not exist in this namespace.
        """
        read = models.JobStatus.from_wire
        return await self._http.fetch("getJobStatus", job.ref, read, timeout=timeout)

    async def get_job_scale(self, job: Job, *, timeout: TimeoutArg = UNSET) -> JobScale:
        """Fetch the number of workers running and requested."""
        read = models.JobScale.from_wire
        return await self._http.fetch("getJobScale", job.ref, read, timeout=timeout)

    async def get_job_endpoint(self, job: Job, *, timeout: TimeoutArg = UNSET) -> Endpoint:
        """Fetch the host and named ports the job exposes."""
        read = models.Endpoint.from_wire
        return await self._http.fetch("getJobEndpoint", job.ref, read, timeout=timeout)

    async def get_encoded_url(
        self, job: Job, port: int | str, *, timeout: TimeoutArg = UNSET
    ) -> str:
        """Fetch a URL through which ``port`` of the job can be reached."""
        return await self._http.fetch(
            "getEncodedURL", job.ref, models.str_from_wire, {"port": str(port)}, timeout=timeout
        )

    async def tail_job(
        self, job: Job, stream: str | None = None, count: int = 50, *, timeout: TimeoutArg = UNSET
    ) -> str:
        """Return the last ``count`` log lines of the job, joined by newlines.

        Args:
            stream: ``"stdout"`` or ``"stderr"``; both when ``None``.
            count: How many lines (the server's default is 50).

        Raises:
            ValueError: ``count`` is negative or ``stream`` is not a known stream.
        """
        text, _ = await logs.tail_window(self._http, job.ref, stream, count, timeout=timeout)
        return text

    async def submit_job(self, spec: JobSpec, *, timeout: TimeoutArg = UNSET) -> None:
        """Submit a job.  A retry never submits it twice.

        Raises:
            ConflictError: a job of this name exists already.
            SpecError: the spec is too long to send in a URL (nothing was sent).
        """
        ref = spec.ref
        await self._http.write(
            "submitJob",
            ref,
            wire.encode_spec(spec),
            verify=functools.partial(self._http.in_effect, ref, exists=True),
            applied_if=errors.ConflictError,
            timeout=timeout,
        )

    async def update_job(self, spec: JobSpec, *, timeout: TimeoutArg = UNSET) -> None:
        """Update a job's definition with the fields set in ``spec``.

        An update whose reply is lost is not resent: no read can show whether it applied,
        so the error says the outcome is unknown.
        """
        await self._http.write("updateJob", spec.ref, wire.encode_spec(spec), timeout=timeout)

    async def set_job_scale(
        self, job: Job, parallelism: int, *, timeout: TimeoutArg = UNSET
    ) -> bool:
        """Ask for ``parallelism`` workers.

        Returns:
            The server's answer (``True`` when the request was accepted).

        Raises:
            ValueError: ``parallelism`` is negative.
        """
        if isinstance(parallelism, bool) or not isinstance(parallelism, int) or parallelism < 0:
            raise ValueError(f"parallelism must be a non-negative int, got {parallelism!r}")
        ref = job.ref

        async def verify() -> retry.WriteOutcome:
            return retry.WriteOutcome.seen((await self.get_job_scale(ref)).requested == parallelism)

        data = await self._http.write(
            "setJobScale", ref, {"parallelism": str(parallelism)}, verify=verify, timeout=timeout
        )
        return self._http.flag(data, "setJobScale", ref)

    async def delete_job(
        self, job: Job, force: bool = False, *, timeout: TimeoutArg = UNSET
    ) -> bool:
        """Remove the job.

        Args:
            force: Also remove a job that has not completed (stopping its processes).

        Raises:
            ConflictError: the job is incomplete and ``force`` is false (on servers that
                say so; others answer ``False``).
            JobNotFoundError: the job does not exist.
        """
        ref = job.ref
        data = await self._http.write(
            "deleteJob",
            ref,
            {"force": "true" if force else "false"},
            verify=functools.partial(self._http.in_effect, ref, exists=False),
            applied_if=errors.JobNotFoundError,
            timeout=timeout,
        )
        return self._http.flag(data, "deleteJob", ref)

    # -- long-running helpers (in _logs.py and _watch.py, loaded on first use) -----------

    def tail_logs(
        self,
        job: Job,
        *,
        follow: bool = True,
        stream: str | None = None,
        since: int | None = None,
        start_timeout: float | None = base.DEFAULT_START_TIMEOUT,
        idle_timeout: float = base.DEFAULT_IDLE_TIMEOUT,
        mode: logs.Mode = "auto",
        poll: watch.PollPolicy | None = None,
    ) -> AsyncGenerator[logs.LogLine, None]:
        """Yield the job's log lines, in order, each once.

        Follows the server's resumable stream where it has one, else polls ``tailJob``
        (:mod:`._logs` says what each path guarantees).  Leaving ``async with aclosing(...)``
        closes the stream at once.  :meth:`tail_log_batches` costs less per line.

        Args:
            follow: Go on until the job completed and its last line was yielded.
            stream: ``"stdout"`` or ``"stderr"``; both when ``None``.
            since: Resume after this :attr:`LogLine.cursor` (polling: skip that many lines).
            start_timeout: Seconds to wait for the job to exist and for a free stream slot.
            idle_timeout: Seconds without any byte on a stream before reconnecting.
            mode: ``"auto"``, or force ``"stream"`` or ``"poll"``.
            poll: Polling rhythm, e.g. ``PollPolicy(initial=0.05)``.

        Raises:
            JobNotFoundError: the job was deleted, or replaced, while tailed.
            WaitTimeoutError: no such job, or no free stream slot, within ``start_timeout``.
            ClientClosedError: the Context was closed.
            LogGapWarning: (a warning) polled lines may be missing or repeated.
        """
        return logs.tail_logs(
            self._http, job, follow, stream, since, start_timeout, idle_timeout, mode, poll
        )

    def tail_log_batches(
        self,
        job: Job,
        *,
        follow: bool = True,
        stream: str | None = None,
        since: int | None = None,
        start_timeout: float | None = base.DEFAULT_START_TIMEOUT,
        idle_timeout: float = base.DEFAULT_IDLE_TIMEOUT,
        mode: logs.Mode = "auto",
        poll: watch.PollPolicy | None = None,
    ) -> AsyncGenerator[logs.LogBatch, None]:
        """Yield the lines of :meth:`tail_logs`, one :class:`LogBatch` per stream chunk or poll.

        A fraction of the cost per line, for consumers that ship, store or count many lines.
        Same arguments, guarantees and errors; resume with ``since=batch.cursor``.
        """
        return logs.tail_log_batches(
            self._http, job, follow, stream, since, start_timeout, idle_timeout, mode, poll
        )

    def wait_for_workers(
        self,
        job: Job,
        n: int,
        *,
        timeout: float | None = base.DEFAULT_WAIT_TIMEOUT,
        poll: watch.PollPolicy | None = None,
    ) -> AsyncGenerator[JobScale, None]:
        """Yield the job's scale now and on every change until ``n`` workers run.

        Watchers of one job share one poller per Context, so any number of them cost
        the requests of one.  Each poll reads the scale, then the status.  Server
        outages are waited out within ``timeout``; ``timeout=0`` checks once.

        Raises:
            WaitTimeoutError: fewer than ``n`` workers ran within ``timeout`` seconds;
                the message says what was last seen (workers, phase, message).
            JobStateError: the job ended, or the server says workers cannot start.
            JobNotFoundError: the job does not exist, was deleted, or was replaced.
        """
        return watch.wait_for_workers(self._http, job, n, timeout=timeout, poll=poll)

    async def wait_for_scale(
        self,
        job: Job,
        n: int,
        *,
        timeout: float | None = base.DEFAULT_WAIT_TIMEOUT,
        poll: watch.PollPolicy | None = None,
    ) -> JobScale:
        """Wait until ``n`` workers run and return that scale (see :meth:`wait_for_workers`)."""
        return await watch.wait_for_scale(self._http, job, n, timeout=timeout, poll=poll)

    def watch_job(
        self, job: Job, *, timeout: float | None = None, poll: watch.PollPolicy | None = None
    ) -> AsyncGenerator[JobStatus, None]:
        """Yield the job's status now and on every change; end once it succeeded or failed.

        A plain JuliaRun server cannot report failure: there this ends on success only
        (or raises :class:`JobNotFoundError` once the job is deleted).  Server outages
        are waited out within ``timeout`` (without one, ``PollPolicy.outage`` seconds);
        ``timeout=0`` checks once.

        Raises:
            WaitTimeoutError: the job did not complete within ``timeout`` seconds; the
                message says what was last seen (phase, worker counts, message).
            JobNotFoundError: the job does not exist, was deleted, or was replaced.
        """
        return watch.watch_job(self._http, job, timeout=timeout, poll=poll)

    async def wait_for_job(
        self, job: Job, *, timeout: float | None = None, poll: watch.PollPolicy | None = None
    ) -> JobStatus:
        """Wait for the job to complete and return its final status (see :meth:`watch_job`).

        Raises:
            WaitTimeoutError: the job did not complete within ``timeout`` seconds.
        """
        return await watch.wait_for_job(self._http, job, timeout=timeout, poll=poll)
