"""The client: :class:`Context` speaks every verb of the JuliaRun protocol.

One ``Context`` owns one pooled :class:`httpx.AsyncClient`.  Each call is a GET built as
JuliaRunClient.jl builds it (PROTOCOL.md section 1), its ``{code, data}`` envelope is
unwrapped, failures become the typed errors of :mod:`juliarun_aio._errors`, and what is
safe to retry is retried (:mod:`juliarun_aio._retry`).  The credential is added to the
query string at the last moment and removed from every message, log record and repr.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Final, TypeVar

import anyio
import anyio.lowlevel
import httpx

from . import _errors as errors
from . import _logs, _watch
from ._config import (
    DEFAULT_LIMITS,
    DEFAULT_TIMEOUT,
    ResolvedConfig,
    build_query,
    encode_token,
    install_log_redaction,
    redact,
    resolve_config,
    secret_forms,
)
from ._jobs import _MAX_NAME, JOB_KINDS, JobRef, JobSpec
from ._logs import DEFAULT_IDLE_TIMEOUT, DEFAULT_START_TIMEOUT, LogLine
from ._loops import LoopState, closed_error, forget_connections, running_loop
from ._models import Endpoint, JobInfo, JobScale, JobStatus, JobTable
from ._retry import (
    RetryPolicy,
    is_retryable_exception,
    is_retryable_status,
    never_reached_server,
    next_delay,
    parse_retry_after,
)
from ._version import __version__
from ._watch import DEFAULT_WAIT_TIMEOUT
from ._wire import encode_spec

__all__ = ["DEFAULT_RETRY", "Context", "Job"]

logger = logging.getLogger("juliarun_aio")

#: A job argument: a spec (``JuliaBatch(...)``) or a bare reference (``JobRef(kind, name)``).
Job = JobRef | JobSpec

#: Reads are retried 4 times within 60 s; see :class:`RetryPolicy`.
DEFAULT_RETRY: Final = RetryPolicy()

_T = TypeVar("_T")

#: httpx refuses longer URLs (and many servers refuse far shorter ones): every value
#: travels in the query string, so this bounds the size of a spec.
MAX_URL_LENGTH = 65_536

# The longest call that carries no spec: the log stream of a job of the longest type and
# name, from the largest cursor.  Settings that leave no room for it in a URL are refused
# when the Context is built.
_LONGEST_PLAIN_CALL: Final = (
    "streamLogs",
    JobRef(max(JOB_KINDS, key=len), "x" * _MAX_NAME),
    {
        "cursor": str(2**63 - 1),
        "follow": "false",
        "heartbeat": "3600",
        "stream": "stdout",
    },
)

#: Signed URLs remembered per Context (cleared when full).
_URL_CACHE_SIZE = 256

#: How much of a plain-text error body goes into an exception message.
_MAX_MESSAGE = 500


class _Unset:
    """Tells "not given" from ``None``."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()

TimeoutArg = float | httpx.Timeout | _Unset

# Outcome of a follow-up read after an ambiguous write failure.
_APPLIED, _NOT_APPLIED, _UNKNOWN = "applied", "not-applied", "unknown"


class _AmbiguousWriteError(Exception):
    """Internal: a write failed after the request may have reached the server."""

    def __init__(self, error: errors.JuliaRunError) -> None:
        super().__init__(str(error))
        self.error = error


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
        retries: A :class:`RetryPolicy`, or an int for the number of attempts.
        limits: Pool limits; also bounds the requests in flight on this Context, and
            half of ``max_connections`` bounds the log streams open at once (so that
            calls always find a connection); at least 2.
        client: An :class:`httpx.AsyncClient` to use instead of creating one (custom
            transports, proxies, TLS, or respx).  The Context does not close an injected
            client, and cannot take it into another event loop (:class:`EventLoopError`).
        env: The environment to resolve from (default ``os.environ``).

    A Context may be used from one event loop after another (notebook cells run with
    ``asyncio.run``, a loop per test, trio after asyncio): in each new loop it starts a
    fresh connection pool and drops the old one's connections.  It serves one loop at a
    time, and is not thread-safe.

    Raises:
        ConfigurationError: URL, credential or namespace could not be resolved, or
            ``limits.max_connections`` is below 2.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        namespace: str | None = None,
        *,
        token_file: str | os.PathLike[str] | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retries: RetryPolicy | int = DEFAULT_RETRY,
        limits: httpx.Limits = DEFAULT_LIMITS,
        client: httpx.AsyncClient | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._config: ResolvedConfig = resolve_config(
            url, token, namespace, token_file=token_file, env=env
        )
        self._timeout = _as_timeout(timeout)
        self._retry = retries if isinstance(retries, RetryPolicy) else RetryPolicy(attempts=retries)
        self._limits = limits
        self._slot_count = _slot_count(limits)
        self._injected = client
        self._closed = False
        self._secrets: tuple[str, ...] = ()
        self._token_seen: str | None = None
        # Known from the start, so that even an error before the first request is clean.
        self._check_settings_fit(self._token_param())
        self._features: dict[str, Any] = {}
        # Pollers ask for the same few URLs over and over; parsing one costs more than
        # the rest of a call's client-side work.  Keyed by the token, so rotation misses.
        self._urls: dict[tuple[Any, ...], httpx.URL] = {}
        # The pool, slots and pollers of the event loop in use (see _loops.py), made now
        # (once the settings are known to be usable) so that the first call does not pay
        # for building a client.
        self._state: LoopState | None = self._new_state(running_loop())
        install_log_redaction()

    # -- lifecycle -------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The server's root URL."""
        return self._config.url

    @property
    def namespace(self) -> str:
        """The namespace this Context works in."""
        return self._config.namespace

    @property
    def retry_policy(self) -> RetryPolicy:
        """The retry policy of this Context."""
        return self._retry

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` has run."""
        return self._closed

    @property
    def http_client(self) -> httpx.AsyncClient:
        """The pooled client of the running event loop, for extensions that need raw access."""
        return self.loop_state().client

    def loop_state(self) -> LoopState:
        """Return this Context's pool, slots and pollers for the running event loop.

        In an event loop other than the one used last, the old pool's connections are
        dropped and a fresh state is started.

        Raises:
            ClientClosedError: the Context is closed.
            EventLoopError: the Context has an injected ``client=`` that was used in
                another event loop.
        """
        self._check_open()
        loop = running_loop()
        state = self._state
        if state is not None and (state.loop is loop or loop is None):
            return state
        if state is not None and state.loop is None:
            state.loop = loop  # made outside any event loop: the first one adopts it
            return state
        if state is not None:
            if self._injected is not None:
                raise errors.EventLoopError(
                    "this Context's client= was first used in another event loop and "
                    "cannot follow into this one; create the httpx.AsyncClient and the "
                    "Context inside the event loop that uses them, or leave out client= "
                    "so that the Context starts a pool in each loop"
                )
            forget_connections(state.client, state.loop)
            logger.debug("%r: new event loop, new connection pool", self)
        self._state = state = self._new_state(loop)
        return state

    def _new_state(self, loop: object | None) -> LoopState:
        client = self._injected or httpx.AsyncClient(
            timeout=self._timeout,
            limits=self._limits,
            headers={"User-Agent": f"juliarun_aio/{__version__}"},
        )
        return LoopState(loop, client, slots=self._slot_count, stream_slots=self._slot_count // 2)

    async def aclose(self) -> None:
        """Close the connection pool (an injected client is left open). Idempotent.

        Works in any event loop.  Calls and generators in flight on this Context raise
        :class:`ClientClosedError`.
        """
        if self._closed:
            return
        self._closed = True
        state, self._state = self._state, None
        if state is None:
            return
        state.close()
        if self._injected is not None:
            return
        if state.loop is None or state.loop is running_loop():
            # Shielded: a pool half closed because the closing task was cancelled
            # would leave connections behind.
            with anyio.CancelScope(shield=True):
                await state.client.aclose()
        else:
            forget_connections(state.client, state.loop)

    async def __aenter__(self) -> Context:
        self._check_open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<Context url={self.url!r} namespace={self.namespace!r}{state}>"

    def _check_open(self) -> None:
        if self._closed:
            raise closed_error()

    # -- request plumbing ------------------------------------------------------------

    def _token_param(self) -> str:
        raw = self._config.token.current()
        if raw != self._token_seen:
            self._token_seen = raw
            self._secrets = (*self._secrets, *secret_forms(raw))[-16:]
        return encode_token(raw)

    def redact(self, text: str) -> str:
        """Remove this Context's credential (in any form) from ``text``."""
        return redact(text, self._secrets)

    def build_url(self, verb: str, job: JobRef | None, params: Mapping[str, str]) -> httpx.URL:
        """Return the signed URL of one call, exactly as JuliaRunClient.jl builds it.

        Args:
            verb: The protocol verb (``"getJobStatus"``).
            job: The job for job verbs; ``None`` for system verbs.
            params: The verb's own query parameters (``name`` is added from ``job``).

        Raises:
            SpecError: the URL would exceed :data:`MAX_URL_LENGTH`; names the longest
                parameter.  Nothing has been sent.
        """
        token = self._token_param()
        key = (verb, job, tuple(params.items()), token)
        cached = self._urls.get(key)
        if cached is not None:
            return cached
        url = self._url_text(verb, job, params, token)
        if len(url) > MAX_URL_LENGTH:
            # A token file may have been rewritten with a token too long for any call.
            self._check_settings_fit(token)
            field = max(params, key=lambda key: len(params[key]), default="name")
            raise errors.SpecError(
                field,
                f"too long to send: the request URL would be {len(url):,} characters, over "
                f"the {MAX_URL_LENGTH:,} allowed; keep large values in a file on the run volume",
            )
        if len(self._urls) >= _URL_CACHE_SIZE:
            self._urls.clear()
        self._urls[key] = signed = httpx.URL(url)
        return signed

    def _url_text(
        self, verb: str, job: JobRef | None, params: Mapping[str, str], token: str
    ) -> str:
        """Return the URL of one call, signed with ``token`` (its wire form)."""
        path = f"{self.url}/{verb}/" if job is None else f"{self.url}/{verb}/{job.kind}/"
        query: list[tuple[str, str]] = [
            ("jruntok", token),
            ("jrunns", self.namespace),
        ]
        if job is not None:
            query.append(("name", job.name))
        query.extend((k, v) for k, v in params.items() if k != "name")
        return f"{path}?{build_query(query)}"

    def _check_settings_fit(self, token: str) -> None:
        """Refuse a token, namespace or URL too long to leave room for any call.

        Every request carries all three in its URL.  ``token`` is the wire form (base64,
        then percent-encoded in the query); the message never shows it.

        Raises:
            ConfigurationError: the longest call without a spec would not fit in
                :data:`MAX_URL_LENGTH`; names the setting that takes the most room.
        """
        length = len(self._url_text(*_LONGEST_PLAIN_CALL, token))
        if length <= MAX_URL_LENGTH:
            return
        sizes = {  # as they travel: build_query gives "=<value>"
            "token": len(build_query([("", token)])) - 1,
            "namespace": len(build_query([("", self.namespace)])) - 1,
            "URL": len(self.url),
        }
        setting = max(sizes, key=lambda name: sizes[name])
        where = {
            "token": "token=, token_file=, JRUN_TOKEN or JRUN_TOKEN_FILE",
            "namespace": "namespace= or JRUN_NAMESPACE",
            "URL": "url= or JRUN_URL",
        }[setting]
        raise errors.ConfigurationError(
            f"the {setting} is too long: every request carries it in its URL "
            f"({sizes[setting]:,} characters{' once encoded' if setting != 'URL' else ''}), "
            f"which would then reach {length:,} characters, over the {MAX_URL_LENGTH:,} "
            f"allowed; check {where}"
        )

    def _timeout_for(self, timeout: TimeoutArg) -> httpx.Timeout:
        return self._timeout if isinstance(timeout, _Unset) else _as_timeout(timeout)

    async def _send_once(
        self,
        state: LoopState,
        verb: str,
        job: JobRef | None,
        params: Mapping[str, str],
        timeout: httpx.Timeout,
    ) -> httpx.Response:
        """Send one GET and read its body; httpx errors are passed through untouched."""
        url = self.build_url(verb, job, params)
        # Every call checkpoints (as trio expects of async functions; concurrent watchers
        # join a shared poll here even when a transport answers without waiting).  Then a
        # free slot, the common case, is taken directly: acquire() would add a shielded
        # checkpoint, a second trip through the event loop.
        await anyio.lowlevel.checkpoint()
        slots = state.slots
        try:
            slots.acquire_nowait()
        except anyio.WouldBlock:
            await slots.acquire()
        try:
            return await state.client.get(url, timeout=timeout)
        finally:
            slots.release()

    @contextlib.asynccontextmanager
    async def open_stream(
        self,
        verb: str,
        job: JobRef | None,
        params: Mapping[str, str],
        *,
        timeout: httpx.Timeout,
    ) -> AsyncIterator[httpx.Response]:
        """Send a streaming GET of ``verb`` and yield the response, its body not read yet.

        One of the Context's request slots is held while the response is open.  httpx
        errors are passed through untouched; the caller reads the status and the body.
        """
        state = self.loop_state()
        # Borrowed on behalf of a token, not the task: a generator closed by the garbage
        # collector runs its cleanup in another task, which must still release the slot.
        borrower = object()
        await state.slots.acquire_on_behalf_of(borrower)
        try:
            url = self.build_url(verb, job, params)
            async with state.client.stream("GET", url, timeout=timeout) as response:
                yield response
        finally:
            state.slots.release_on_behalf_of(borrower)

    def _transport_error(
        self, exc: httpx.HTTPError, verb: str, job: JobRef | None, attempts: int
    ) -> errors.TransportError:
        """Translate an httpx error, in this one place, with the credential removed."""
        # httpx puts the URL into some messages; scrub the original too, since it is
        # kept as __cause__ and printed in tracebacks, and so is whatever it chains to.
        self._scrub_chain(exc)
        detail = str(exc) or type(exc).__name__
        cls = (
            errors.RequestTimeoutError
            if isinstance(exc, httpx.TimeoutException)
            else errors.TransportError
        )
        what = "timed out" if cls is errors.RequestTimeoutError else "failed"
        message = (
            f"request to {self.url} {what} after {attempts} attempt(s): "
            f"{type(exc).__name__}: {detail}"
        )
        return cls(message, verb=verb, job=job.name if job else None, attempts=attempts)

    def _scrub_chain(self, exc: BaseException) -> None:
        """Redact ``exc`` and the exceptions it was raised from (or during), in place.

        Their messages lose the credential, and an httpx error's ``request`` (whose URL
        carries ``jruntok``) is replaced by a copy with the credential removed.
        """
        seen: set[int] = set()
        link: BaseException | None = exc
        while link is not None and id(link) not in seen:
            seen.add(id(link))
            text = str(link)
            clean = self.redact(text)
            if clean != text:
                link.args = (clean,)
            if isinstance(link, httpx.HTTPError):
                try:
                    request = link.request
                except RuntimeError:  # httpx raises this when no request is attached
                    pass
                else:
                    link.request = httpx.Request(request.method, self.redact(str(request.url)))
            link = link.__cause__ or link.__context__

    def _excerpt(self, value: object) -> str:
        """Quote ``value`` for a message: credentials removed first, then cut short."""
        return errors.shorten(self.redact(repr(value)), 200)

    def _api_error(
        self, verb: str, job: JobRef | None, status: int, code: int | None, message: str
    ) -> errors.ApiError:
        # A proxy's error page can be long; its start says what happened.
        message = errors.shorten(self.redact(message), _MAX_MESSAGE)
        cls = errors.api_error_class(status, message)
        hint = errors.hint_for(cls, verb=verb, system_verb_at=self.url if job is None else None)
        text = f"server answered {status}" + (f" (code {code})" if code is not None else "")
        text += f": {message or '(no message)'}"
        if hint:
            text += f" -- {hint}"
        return cls(
            text,
            verb=verb,
            job=job.name if job else None,
            status_code=status,
            code=code,
            server_message=message,
        )

    def _unwrap(self, verb: str, job: JobRef | None, response: httpx.Response) -> Any:
        """Return the envelope's ``data``, or raise the error the response means."""
        status = response.status_code
        try:
            body: Any = response.json()
        except ValueError:
            body = None
            text = response.text.strip()
        else:
            text = ""
        envelope = isinstance(body, dict) and "code" in body
        if 200 <= status <= 206:
            if not envelope:
                shown = self._excerpt(body if body is not None else response.text)
                raise errors.ResponseError(
                    f"expected a {{code, data}} envelope, got {shown}",
                    verb=verb,
                    job=job.name if job else None,
                    status_code=status,
                    body=shown,
                )
            code = _code(body.get("code"))
            if code == 0:
                return body.get("data")
            raise self._api_error(verb, job, status, code, _message(body.get("data")))
        if envelope:
            raise self._api_error(
                verb, job, status, _code(body.get("code")), _message(body.get("data"))
            )
        raise self._api_error(verb, job, status, None, text or _message(body))

    async def _call(
        self,
        verb: str,
        job: JobRef | None = None,
        params: Mapping[str, str] | None = None,
        *,
        timeout: TimeoutArg = UNSET,
        idempotent: bool = True,
    ) -> Any:
        """Make one protocol call with retries (see :meth:`_exchange`); return its ``data``."""
        data, _ = await self._exchange(verb, job, params, timeout=timeout, idempotent=idempotent)
        return data

    async def _exchange(
        self,
        verb: str,
        job: JobRef | None = None,
        params: Mapping[str, str] | None = None,
        *,
        timeout: TimeoutArg = UNSET,
        idempotent: bool = True,
    ) -> tuple[Any, httpx.Headers]:
        """Make one protocol call with retries; return the envelope's ``data`` and the headers.

        Reads retry transport errors, timeouts and retryable statuses.  Writes
        (``idempotent=False``) retry only what never reached the server or an explicit
        429; any other failure raises :class:`_AmbiguousWriteError` for :meth:`_write` to settle.
        """
        state = self.loop_state()
        with state.close_guard():
            params = params or {}
            http_timeout = self._timeout_for(timeout)
            policy = self._retry
            start = time.monotonic()
            refreshed = False
            retry = 0
            while True:
                attempt_started = time.monotonic()
                try:
                    response = await self._send_once(state, verb, job, params, http_timeout)
                except httpx.HTTPError as exc:
                    error: errors.JuliaRunError = self._transport_error(exc, verb, job, retry + 1)
                    retryable = (
                        is_retryable_exception(exc) if idempotent else never_reached_server(exc)
                    )
                    if not retryable and not idempotent and is_retryable_exception(exc):
                        raise _AmbiguousWriteError(error) from exc
                    retry_after = None
                    cause: BaseException | None = exc
                else:
                    logger.debug(
                        "%s %s -> %d in %.1f ms (attempt %d)",
                        verb,
                        job.name if job else "-",
                        response.status_code,
                        (time.monotonic() - attempt_started) * 1000,
                        retry + 1,
                    )
                    try:
                        return self._unwrap(verb, job, response), response.headers
                    except errors.AuthenticationError:
                        # Service-account tokens rotate: re-read the file once, then retry.
                        if refreshed or not self._config.token.is_file:
                            raise
                        refreshed = True
                        self._config.token.refresh()
                        logger.info("%s: 401, token file re-read, retrying once", verb)
                        continue
                    except errors.ApiError as exc:
                        status = response.status_code
                        error, cause = exc, None
                        if idempotent:
                            retryable = is_retryable_status(status)
                        else:
                            retryable = status == 429
                            if not retryable and (status >= 500 or status == 408):
                                raise _AmbiguousWriteError(exc) from None
                        retry_after = parse_retry_after(response.headers.get("Retry-After"))
                    except errors.ResponseError as exc:
                        # A 2xx answer we cannot read: a write probably applied, so settle it
                        # by a read; a read would only get the same answer again.
                        if not idempotent:
                            raise _AmbiguousWriteError(exc) from None
                        raise
                delay = (
                    next_delay(
                        retry,
                        policy=policy,
                        elapsed=time.monotonic() - start,
                        retry_after=retry_after,
                    )
                    if retryable
                    else None
                )
                if delay is None:
                    if isinstance(error, errors.TransportError):
                        error.attempts = retry + 1
                    raise error from cause
                logger.info(
                    "%s %s failed (%s); retry %d in %.2f s",
                    verb,
                    job.name if job else "-",
                    type(error).__name__,
                    retry + 1,
                    delay,
                )
                await anyio.sleep(delay)
                retry += 1

    async def _write(
        self,
        verb: str,
        job: JobRef,
        params: Mapping[str, str],
        *,
        verify: Callable[[], Awaitable[str]],
        applied_if: type[errors.ApiError] | None = None,
        timeout: TimeoutArg = UNSET,
    ) -> Any:
        """Make a state-changing call that is never applied twice.

        When a try fails after the request may have reached the server, ``verify`` reads
        the server's state: if the change is in effect the call succeeded; if it provably
        is not, the request is sent again (within the retry budget); if it cannot tell,
        the original error is raised with a note that the outcome is unknown.

        ``applied_if`` is the error a resent request gets when the first one landed after
        all (a 409 for a submit, a 404 for a delete): it then counts as success.
        """
        with self.loop_state().close_guard():
            start = time.monotonic()
            retry = 0
            while True:
                try:
                    return await self._call(verb, job, params, timeout=timeout, idempotent=False)
                except _AmbiguousWriteError as ambiguous:
                    error = ambiguous.error
                except errors.ApiError as exc:
                    if retry > 0 and applied_if is not None and isinstance(exc, applied_if):
                        logger.info("%s %s: an earlier try landed after all", verb, job.name)
                        return None
                    raise
                try:
                    outcome = await verify()
                except errors.JuliaRunError as exc:
                    logger.info("%s %s: follow-up read failed: %s", verb, job.name, exc)
                    outcome = _UNKNOWN
                if outcome == _APPLIED:
                    logger.info("%s %s: failed reply, but the change is in effect", verb, job.name)
                    return None
                delay = (
                    next_delay(retry, policy=self._retry, elapsed=time.monotonic() - start)
                    if outcome == _NOT_APPLIED
                    else None
                )
                if delay is None:
                    note = (
                        "the change was not applied"
                        if outcome == _NOT_APPLIED
                        else "the outcome is unknown; check the job's state before trying again"
                    )
                    error.message = f"{error.message} ({note})"
                    raise error
                await anyio.sleep(delay)
                retry += 1

    # -- system verbs ----------------------------------------------------------------

    async def get_system_status(self, *, timeout: TimeoutArg = UNSET) -> bool:
        """Tell whether JuliaRun is running and connected to a compute cluster.

        Raises:
            JuliaRunError: see the error tree; a ``false`` answer is not an error.
        """
        data = await self._call("getSystemStatus", timeout=timeout)
        return self._read(bool_from_wire, data, "getSystemStatus", None)

    async def list_jobs(self, *, timeout: TimeoutArg = UNSET) -> dict[str, JobInfo]:
        """List the jobs of this namespace (name and type only).

        Returns:
            ``{name: JobInfo}`` with ``status``, ``scale`` and ``endpoint`` left ``None``.
        """
        data = await self._call("listJobs", timeout=timeout)
        return self._read(JobInfo.mapping_from_wire, data, "listJobs", None)

    async def get_all_job_info(self, *, timeout: TimeoutArg = UNSET) -> JobTable:
        """List the jobs of this namespace with their status, scale and endpoint.

        Returns:
            A ``dict`` of :class:`JobInfo` by job name, which notebooks show as a table.
        """
        data = await self._call("getAllJobInfo", timeout=timeout)
        return JobTable(self._read(JobInfo.mapping_from_wire, data, "getAllJobInfo", None))

    async def server_info(self, *, timeout: TimeoutArg = UNSET) -> dict[str, Any] | None:
        """Ask for the local server's ``serverInfo`` extension.

        Returns:
            The server's self-description (``server``, ``version``, ``extensions``), or
            ``None`` for a plain JuliaRun server that does not offer it.  Remembered.
        """
        if "server_info" not in self._features:
            try:
                data = await self._call("serverInfo", timeout=timeout)
            except (errors.JobNotFoundError, errors.BadRequestError, errors.ResponseError):
                data = None
            self._features["server_info"] = data if isinstance(data, dict) else None
        info: dict[str, Any] | None = self._features["server_info"]
        return info

    # -- job verbs -------------------------------------------------------------------

    async def get_job_status(self, job: Job, *, timeout: TimeoutArg = UNSET) -> JobStatus:
        """Fetch the current status of ``job``.

        Raises:
            JobNotFoundError: the job does not exist in this namespace.
        """
        ref = job.ref
        data = await self._call("getJobStatus", ref, timeout=timeout)
        return self._read(JobStatus.from_wire, data, "getJobStatus", ref)

    async def get_job_scale(self, job: Job, *, timeout: TimeoutArg = UNSET) -> JobScale:
        """Fetch the number of workers running and requested."""
        ref = job.ref
        data = await self._call("getJobScale", ref, timeout=timeout)
        return self._read(JobScale.from_wire, data, "getJobScale", ref)

    async def get_job_endpoint(self, job: Job, *, timeout: TimeoutArg = UNSET) -> Endpoint:
        """Fetch the host and named ports the job exposes."""
        ref = job.ref
        data = await self._call("getJobEndpoint", ref, timeout=timeout)
        return self._read(Endpoint.from_wire, data, "getJobEndpoint", ref)

    async def get_encoded_url(
        self, job: Job, port: int | str, *, timeout: TimeoutArg = UNSET
    ) -> str:
        """Fetch a URL through which ``port`` of the job can be reached."""
        ref = job.ref
        data = await self._call("getEncodedURL", ref, {"port": str(port)}, timeout=timeout)
        return self._read(str_from_wire, data, "getEncodedURL", ref)

    async def tail_job(
        self,
        job: Job,
        stream: str | None = None,
        count: int = 50,
        *,
        timeout: TimeoutArg = UNSET,
    ) -> str:
        """Return the last ``count`` log lines of the job, joined by newlines.

        Args:
            job: The job.
            stream: ``"stdout"`` or ``"stderr"``; both when ``None``.
            count: How many lines (the server's default is 50).

        Raises:
            ValueError: ``count`` is negative or ``stream`` is not a known stream.
        """
        text, _ = await self._tail_window(job, stream, count, timeout=timeout)
        return text

    async def _tail_window(
        self, job: Job, stream: str | None, count: int, *, timeout: TimeoutArg = UNSET
    ) -> tuple[str, int | None]:
        """Make a ``tailJob`` call; return its text and how many lines it joins, if known.

        The number comes from the local server's ``X-JuliaRun-Line-Count`` header; it is
        ``None`` from a server that does not send it, where ``""`` may be no line or one
        empty line.

        Raises:
            ValueError: ``count`` is negative or ``stream`` is not a known stream.
            ResponseError: the header is not a count that fits the text.
        """
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        if stream not in (None, "stdout", "stderr"):
            raise ValueError(f"stream must be 'stdout', 'stderr' or None, got {stream!r}")
        ref = job.ref
        params = {"count": str(count)}
        if stream is not None:
            params["stream"] = stream
        data, headers = await self._exchange("tailJob", ref, params, timeout=timeout)
        text = self._read(str_from_wire, data, "tailJob", ref)
        header = headers.get(_logs.LINE_COUNT_HEADER)
        if header is None:
            return text, None
        lines = int(header) if header.isascii() and header.isdigit() else None
        # n >= 1 lines joined by newlines hold n - 1 of them; "" is no line or one empty one.
        joined = text.count("\n") + 1 if text else None
        if lines is None or (lines > 1 if joined is None else lines != joined):
            raise errors.ResponseError(
                f"unexpected tailJob answer: {_logs.LINE_COUNT_HEADER} is "
                f"{self._excerpt(header)} for a text of {joined or 'at most one'} line(s)",
                verb="tailJob",
                job=ref.name,
                body=self._excerpt(text),
            )
        return text, lines

    async def submit_job(self, spec: JobSpec, *, timeout: TimeoutArg = UNSET) -> None:
        """Submit a job.  A retry never submits it twice.

        Raises:
            ConflictError: a job of this name exists already.
            SpecError: never here: specs are checked when constructed.
        """
        ref = spec.ref

        async def verify() -> str:
            # Names are unique per namespace: if the job exists, our submission landed.
            return _APPLIED if await self._exists(ref) else _NOT_APPLIED

        await self._write(
            "submitJob",
            ref,
            encode_spec(spec),
            verify=verify,
            applied_if=errors.ConflictError,
            timeout=timeout,
        )

    async def update_job(self, spec: JobSpec, *, timeout: TimeoutArg = UNSET) -> None:
        """Update a job's definition with the fields set in ``spec``.

        An update whose reply is lost is not resent: no read can show whether it applied,
        so the error says the outcome is unknown.
        """
        ref = spec.ref

        async def verify() -> str:
            return _UNKNOWN

        await self._write("updateJob", ref, encode_spec(spec), verify=verify, timeout=timeout)

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

        async def verify() -> str:
            scale = await self.get_job_scale(ref)
            return _APPLIED if scale.requested == parallelism else _NOT_APPLIED

        data = await self._write(
            "setJobScale", ref, {"parallelism": str(parallelism)}, verify=verify, timeout=timeout
        )
        return True if data is None else self._read(bool_from_wire, data, "setJobScale", ref)

    async def delete_job(
        self, job: Job, force: bool = False, *, timeout: TimeoutArg = UNSET
    ) -> bool:
        """Remove the job.

        Args:
            job: The job.
            force: Also remove a job that has not completed (stopping its processes).

        Raises:
            ConflictError: the job is incomplete and ``force`` is false (on servers that
                say so; others answer ``False``).
            JobNotFoundError: the job does not exist.
        """
        ref = job.ref

        async def verify() -> str:
            return _NOT_APPLIED if await self._exists(ref) else _APPLIED

        data = await self._write(
            "deleteJob",
            ref,
            {"force": "true" if force else "false"},
            verify=verify,
            applied_if=errors.JobNotFoundError,
            timeout=timeout,
        )
        return True if data is None else self._read(bool_from_wire, data, "deleteJob", ref)

    async def _exists(self, ref: JobRef) -> bool:
        try:
            await self.get_job_status(ref)
        except errors.JobNotFoundError:
            return False
        return True

    def _read(self, reader: Callable[[Any], _T], data: Any, verb: str, job: JobRef | None) -> _T:
        try:
            return reader(data)
        except ValueError as exc:
            problem = self.redact(str(exc))
        # Raised outside the handler so that the unredacted ValueError is not kept as
        # __context__ (``from None`` only hides it from tracebacks).
        raise errors.ResponseError(
            f"unexpected {verb} answer: {problem}",
            verb=verb,
            job=job.name if job else None,
            body=self._excerpt(data),
        )

    # -- long-running helpers (implemented in _logs.py and _watch.py) -----------------

    def tail_logs(
        self,
        job: Job,
        *,
        follow: bool = True,
        stream: str | None = None,
        since: int | None = None,
        start_timeout: float | None = DEFAULT_START_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        mode: _logs.Mode = "auto",
        poll: _watch.PollPolicy | None = None,
    ) -> AsyncGenerator[LogLine, None]:
        """Yield the job's log lines, in order, each once.

        Uses the server's resumable stream when it has one (reconnecting from the last
        cursor after any disconnect), else polls ``tailJob``.  Polling is exact while
        the job writes at most half a window between two polls (windows are kept at
        four times what a poll brings, up to :data:`~._logs.MAX_POLL_WINDOW` lines);
        where it cannot tell which lines are new, it yields them and issues a
        :class:`LogGapWarning` saying how many may be missing or repeated.  See
        :mod:`._logs` for exactly what each path guarantees.  Use as
        ``async with contextlib.aclosing(ctx.tail_logs(job)) as lines:`` so that leaving
        the block closes the stream at once.  Breaking out of a plain ``async for``
        leaves the closing to garbage collection (trio warns about that).

        Args:
            job: The job.
            follow: Keep going until the job completed and its last line was yielded;
                ``False`` yields the lines that exist now and ends.
            stream: ``"stdout"`` or ``"stderr"``; both when ``None``.
            since: Resume after this :attr:`LogLine.cursor` (polling path: skip this
                many lines).
            start_timeout: Seconds to wait for a job that does not exist yet, and for a
                free stream slot (``None``: forever).
            idle_timeout: Seconds without any byte on a stream before reconnecting.
            mode: ``"auto"``, or force ``"stream"`` or ``"poll"``.
            poll: Polling rhythm, e.g. ``PollPolicy(initial=0.05)``.

        Raises:
            JobNotFoundError: the job was deleted while tailed (on the stream path, also
                when it was replaced by another submission of the same name).
            WaitTimeoutError: the job did not appear, or no stream slot became free,
                within ``start_timeout``.
            ClientClosedError: the Context was closed.
            LogGapWarning: (a warning) polled lines may be missing or repeated; its
                ``missing`` and ``repeated`` say how many at most.
        """
        return _logs.tail_logs(
            self,
            job,
            follow=follow,
            stream=stream,
            since=since,
            start_timeout=start_timeout,
            idle_timeout=idle_timeout,
            mode=mode,
            poll=poll,
        )

    def wait_for_workers(
        self,
        job: Job,
        n: int,
        *,
        timeout: float | None = DEFAULT_WAIT_TIMEOUT,
        poll: _watch.PollPolicy | None = None,
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
        return _watch.wait_for_workers(self, job, n, timeout=timeout, poll=poll)

    async def wait_for_scale(
        self,
        job: Job,
        n: int,
        *,
        timeout: float | None = DEFAULT_WAIT_TIMEOUT,
        poll: _watch.PollPolicy | None = None,
    ) -> JobScale:
        """Wait until ``n`` workers run and return that scale (see :meth:`wait_for_workers`)."""
        return await _watch.wait_for_scale(self, job, n, timeout=timeout, poll=poll)

    def watch_job(
        self, job: Job, *, timeout: float | None = None, poll: _watch.PollPolicy | None = None
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
        return _watch.watch_job(self, job, timeout=timeout, poll=poll)

    async def wait_for_job(
        self, job: Job, *, timeout: float | None = None, poll: _watch.PollPolicy | None = None
    ) -> JobStatus:
        """Wait for the job to complete and return its final status (see :meth:`watch_job`).

        Raises:
            WaitTimeoutError: the job did not complete within ``timeout`` seconds.
        """
        return await _watch.wait_for_job(self, job, timeout=timeout, poll=poll)

    def feature(self, key: str) -> Any:
        """Return a remembered per-Context fact (e.g. which log path works), or None."""
        return self._features.get(key)

    def remember(self, key: str, value: Any) -> None:
        """Remember a per-Context fact for later calls."""
        self._features[key] = value


def bool_from_wire(data: object) -> bool:
    """Read a boolean answer (``true``/``false``; ``null`` reads as ``False``)."""
    if data is None:
        return False
    if isinstance(data, bool):
        return data
    if isinstance(data, str) and data.lower() in ("true", "false"):
        return data.lower() == "true"
    raise ValueError(f"expected true/false, got {errors.excerpt(data)}")


def str_from_wire(data: object) -> str:
    """Read a string answer (``null`` reads as ``""``)."""
    if data is None:
        return ""
    if isinstance(data, str):
        return data
    raise ValueError(f"expected a string, got {errors.excerpt(data)}")


def _code(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return int(str(value))
    except ValueError:
        return None


def _message(value: object) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else repr(value)


def _as_timeout(value: float | httpx.Timeout) -> httpx.Timeout:
    if isinstance(value, httpx.Timeout):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {value!r}")
    return httpx.Timeout(float(value), connect=min(float(value), DEFAULT_TIMEOUT.connect or 5.0))


def _slot_count(limits: httpx.Limits) -> int:
    """Return how many requests may be in flight at once; half of them may be streams.

    Raises:
        ConfigurationError: fewer than 2 connections: a log stream holds one for as long
            as it runs, and calls made meanwhile need another.
    """
    # Without a connection limit, requests in flight are still bounded, so that helpers
    # queue on the Context instead of opening connections without end.
    total = limits.max_connections or 100
    if total < 2:
        raise errors.ConfigurationError(
            f"limits.max_connections={total} is too small: a log stream (tail_logs) holds "
            "a connection while it runs and the calls made meanwhile need another; "
            "use httpx.Limits(max_connections=2) or more"
        )
    return total
