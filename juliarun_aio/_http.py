"""The HTTP layer of a Context: sign, send, unwrap, map failures, retry.

A :class:`~juliarun_aio.Context` is the verbs and helpers users call; :class:`HttpLayer` is
everything between a verb and the wire, and the interface the long-running helpers
(``_logs``, ``_watch``) use:

- **Signing.**  A call is a GET of ``ROOT/<verb>/`` or ``ROOT/<verb>/<JobType>/`` built as
  JuliaRunClient.jl builds it (docs/protocol.md, "Requests").  The credential joins the
  query string at the last moment (:meth:`HttpLayer.build_url`) and is removed from every
  message, log record and traceback (:meth:`HttpLayer.redact`).
- **Sending.**  One pooled :class:`httpx.AsyncClient` per event loop, with the request
  and stream slots and the shared pollers of that loop (:class:`~._loops.LoopState`); the
  client is built in one place (:meth:`HttpLayer._new_client`), verifying the server's
  certificate as :mod:`._tls` resolved (one :class:`ssl.SSLContext` for every loop).
- **Unwrapping and mapping.**  The ``{code, data}`` envelope is unwrapped
  (:meth:`HttpLayer.unwrap`); a refusal -- an HTTP status outside 200..206 or a nonzero
  ``code`` -- becomes an :class:`~juliarun_aio.ApiError`, and every httpx exception a
  :class:`~juliarun_aio.TransportError` (:meth:`HttpLayer.transport_error`, the one place
  that maps them; a refused certificate is a :class:`~juliarun_aio.CertificateError`).
- **Retrying.**  :meth:`HttpLayer.exchange` retries what :func:`~._retry.decide` allows;
  :meth:`HttpLayer.write` settles a state-changing call whose outcome is unknown with a
  follow-up read (:class:`~._retry.WriteOutcome`), so that no change is applied twice.
- **Server facts.**  What the server offers (``serverInfo``) is asked once and
  remembered (:class:`ServerFacts`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Final, TypeVar

import anyio
import anyio.lowlevel
import attrs
import httpx

from . import _errors as errors
from ._base import DEFAULT_TIMEOUT, UNSET, TimeoutArg, Unset
from ._config import (
    ResolvedConfig,
    build_query,
    encode_token,
    install_log_redaction,
    redact,
    secret_forms,
)
from ._jobs import JOB_KINDS, MAX_NAME_LENGTH, JobRef
from ._loops import LoopState, closed_error, forget_connections, running_loop
from ._models import JobStatus, bool_from_wire
from ._retry import (
    Decision,
    RetryPolicy,
    WriteOutcome,
    decide,
    next_delay,
    parse_retry_after,
)
from ._tls import certificate_error, certificate_failure, warn_if_cleartext
from ._version import __version__

__all__ = ["MAX_URL_LENGTH", "UNSET", "HttpLayer", "ServerFacts", "TimeoutArg"]

logger = logging.getLogger("juliarun_aio")

_T = TypeVar("_T")

#: httpx refuses longer URLs (and many servers refuse far shorter ones): every value
#: travels in the query string, so this bounds the size of a spec.
MAX_URL_LENGTH = 65_536

# The longest call that carries no spec: the log stream of a job of the longest type and
# name, from the largest cursor.  Settings that leave no room for it in a URL are refused
# when the Context is built.
_LONGEST_PLAIN_CALL: Final = (
    "streamLogs",
    JobRef(max(JOB_KINDS, key=len), "x" * MAX_NAME_LENGTH),
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


class _AmbiguousWriteError(Exception):
    """A state-changing call failed after its request may have reached the server.

    Raised by :meth:`HttpLayer.exchange` for :meth:`HttpLayer.write` to settle; it never
    leaves this module.

    Attributes:
        error: The error to raise if the outcome cannot be settled.
    """

    def __init__(self, error: errors.JuliaRunError) -> None:
        super().__init__(str(error))
        self.error = error


@attrs.define
class ServerFacts:
    """What a Context learned about its server: asked once, then remembered.

    Attributes:
        info: The ``serverInfo`` answer; ``None`` from a server without that extension
            (a plain JuliaRun server); :data:`UNSET` until asked.
    """

    info: dict[str, Any] | Unset | None = UNSET


class HttpLayer:
    """A Context's connection to one server: sign, send, unwrap, map failures, retry.

    Args:
        config: The resolved URL, credential and namespace.
        timeout: The default per-request timeouts.
        retries: A :class:`RetryPolicy`, or the number of tries.
        limits: Pool limits; also bound the requests and streams in flight.
        client: A client to use instead of making one per event loop.

    Raises:
        ValueError: ``timeout`` or ``retries`` is not usable.
        ConfigurationError: ``limits`` allow fewer than 2 connections, the settings
            leave no room for a call in a URL, or ``verify=`` came with ``client=``.

    Warns:
        InsecureTransportWarning: the URL is plain HTTP to another host, and
            ``JRUN_ALLOW_INSECURE_HTTP`` does not say it is meant (see :mod:`._tls`).

    Attributes:
        timeout: The default per-request timeouts.
        retry_policy: How persistent calls are.
        facts: What the server offers, once asked.
        closed: :meth:`aclose` has run.
    """

    def __init__(
        self,
        config: ResolvedConfig,
        *,
        timeout: float | httpx.Timeout,
        retries: RetryPolicy | int,
        limits: httpx.Limits,
        client: httpx.AsyncClient | None,
    ) -> None:
        if client is not None and config.trust.given:
            raise errors.ConfigurationError(
                "verify= applies to the client a Context makes: give it to the "
                "httpx.AsyncClient passed as client=, or leave client= out"
            )
        self._config = config
        self.timeout = _as_timeout(timeout)
        self.retry_policy = (
            retries if isinstance(retries, RetryPolicy) else RetryPolicy(attempts=retries)
        )
        self._limits = limits
        self._slots = _slot_count(limits)
        self._injected = client
        self.closed = False
        self._secrets: tuple[str, ...] = ()
        self._token_seen: str | None = None
        # Known from the start, so that even an error before the first request is clean.
        self._check_settings_fit(self._token_param())
        self.facts = ServerFacts()
        # Pollers ask for the same few URLs over and over; parsing one costs more than
        # the rest of a call's client-side work.  Keyed by the token, so rotation misses.
        self._urls: dict[tuple[Any, ...], httpx.URL] = {}
        # The pool, slots and pollers of the event loop in use (see _loops.py), made now
        # (once the settings are known to be usable) so that the first call does not pay
        # for building a client.
        self._state: LoopState | None = self._new_state(running_loop())
        install_log_redaction()
        if not config.allow_insecure_http:
            # Made by Context.__init__ only: the warning points at the line that made it.
            warn_if_cleartext(config.url, stacklevel=3)

    @property
    def url(self) -> str:
        """The server's root URL."""
        return self._config.url

    @property
    def namespace(self) -> str:
        """The namespace calls are made in."""
        return self._config.namespace

    # -- event loops and closing -------------------------------------------------------

    def loop_state(self) -> LoopState:
        """Return the pool, slots and pollers for the running event loop.

        In an event loop other than the one used last, the old pool's connections are
        dropped and a fresh state is started.

        Raises:
            ClientClosedError: the Context is closed.
            EventLoopError: the Context has an injected ``client=`` that was used in
                another event loop.
        """
        self.check_open()
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
            logger.debug("%s: new event loop, new connection pool", self.url)
        self._state = state = self._new_state(loop)
        return state

    def _new_state(self, loop: object | None) -> LoopState:
        return LoopState(
            loop,
            self._injected or self._new_client(),
            slots=self._slots,
            stream_slots=self._slots // 2,
        )

    def _new_client(self) -> httpx.AsyncClient:
        """Make the pooled client of one event loop: the one place a client is built."""
        return httpx.AsyncClient(
            timeout=self.timeout,
            limits=self._limits,
            headers={"User-Agent": f"juliarun_aio/{__version__}"},
            verify=self._config.trust.verify,
        )

    def check_open(self) -> None:
        """Raise :class:`ClientClosedError` once :meth:`aclose` has run."""
        if self.closed:
            raise closed_error()

    async def aclose(self) -> None:
        """Close the pool (an injected client is left open) and end calls in flight."""
        if self.closed:
            return
        self.closed = True
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

    # -- the credential and URLs ---------------------------------------------------------

    def _token_param(self) -> str:
        raw = self._config.token.current()
        if raw != self._token_seen:
            self._token_seen = raw
            self._secrets = (*self._secrets, *secret_forms(raw))[-16:]
        return encode_token(raw)

    def redact(self, text: str) -> str:
        """Remove the credential (in any form it was used in) from ``text``."""
        return redact(text, self._secrets)

    def excerpt(self, value: object) -> str:
        """Quote ``value`` for a message: credentials removed first, then cut short."""
        return errors.shorten(self.redact(repr(value)), 200)

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

    # -- sending ---------------------------------------------------------------------------

    def timeout_for(self, timeout: TimeoutArg) -> httpx.Timeout:
        """Return the timeouts of one call: ``timeout``, or the default when UNSET."""
        return self.timeout if isinstance(timeout, Unset) else _as_timeout(timeout)

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

        One of the request slots is held while the response is open.  httpx errors are
        passed through untouched; the caller reads the status and the body.
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

    # -- answers and failures --------------------------------------------------------------

    def transport_error(
        self, exc: httpx.HTTPError, verb: str, job: JobRef | None, attempts: int
    ) -> errors.TransportError:
        """Translate an httpx error, in this one place, with the credential removed."""
        # httpx puts the URL into some messages; scrub the original too, since it is
        # kept as __cause__ and printed in tracebacks, and so is whatever it chains to.
        self._scrub_chain(exc)
        failure = certificate_failure(exc)
        if failure is not None:
            return certificate_error(
                failure,
                self.url,
                self._config.trust,
                verb=verb,
                job=job.name if job else None,
                attempts=attempts,
            )
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

    def unwrap(self, verb: str, job: JobRef | None, response: httpx.Response) -> Any:
        """Return the envelope's ``data``, or raise the error the response means.

        Raises:
            ApiError: the server refused the call (a status outside 200..206, or a
                nonzero ``code``).
            ResponseError: a 2xx answer without a ``{code, data}`` envelope.
        """
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
                shown = self.excerpt(body if body is not None else response.text)
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

    def decode(self, reader: Callable[[Any], _T], data: Any, verb: str, job: JobRef | None) -> _T:
        """Read a call's ``data`` with ``reader`` (from :mod:`._models`).

        Raises:
            ResponseError: ``reader`` refused the data; the message quotes it, redacted.
        """
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
            body=self.excerpt(data),
        )

    def flag(self, data: Any, verb: str, job: JobRef) -> bool:
        """Read the boolean answer of :meth:`write`: ``True`` when a follow-up read settled it.

        Raises:
            ResponseError: the answer is not a boolean.
        """
        return True if data is None else self.decode(bool_from_wire, data, verb, job)

    # -- calls with retries -----------------------------------------------------------------

    async def fetch(
        self,
        verb: str,
        job: JobRef | None,
        reader: Callable[[Any], _T],
        params: Mapping[str, str] | None = None,
        *,
        timeout: TimeoutArg = UNSET,
    ) -> _T:
        """Make a read call (see :meth:`exchange`); return its ``data`` read by ``reader``."""
        data, _ = await self.exchange(verb, job, params, timeout=timeout)
        return self.decode(reader, data, verb, job)

    async def exchange(
        self,
        verb: str,
        job: JobRef | None = None,
        params: Mapping[str, str] | None = None,
        *,
        timeout: TimeoutArg = UNSET,
        idempotent: bool = True,
    ) -> tuple[Any, httpx.Headers]:
        """Make one protocol call with retries; return the envelope's ``data`` and the headers.

        Each failed try is retried as :func:`~._retry.decide` says, within the retry
        policy, honouring ``Retry-After``.  A 401 with a token file re-reads the file
        once and tries again.

        Raises:
            _AmbiguousWriteError: (``idempotent=False``) the call may have been applied;
                for :meth:`write` to settle.
            JuliaRunError: the call failed; see the error tree.
        """
        state = self.loop_state()
        with state.close_guard():
            params = params or {}
            http_timeout = self.timeout_for(timeout)
            policy = self.retry_policy
            start = time.monotonic()
            refreshed = False
            retry = 0
            while True:
                attempt_started = time.monotonic()
                retry_after: float | None = None
                cause: BaseException | None = None
                try:
                    response = await self._send_once(state, verb, job, params, http_timeout)
                except httpx.HTTPError as exc:
                    error: errors.JuliaRunError = self.transport_error(exc, verb, job, retry + 1)
                    decision = decide(exc, idempotent=idempotent)
                    cause = exc
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
                        return self.unwrap(verb, job, response), response.headers
                    except errors.AuthenticationError:
                        # Service-account tokens rotate: re-read the file once, then retry.
                        if refreshed or not self._config.token.is_file:
                            raise
                        refreshed = True
                        self._config.token.refresh()
                        logger.info("%s: 401, token file re-read, retrying once", verb)
                        continue
                    except errors.ApiError as exc:
                        error = exc
                        decision = decide(response.status_code, idempotent=idempotent)
                        retry_after = parse_retry_after(response.headers.get("Retry-After"))
                    except errors.ResponseError as exc:
                        error = exc
                        decision = decide(exc, idempotent=idempotent)
                if decision is Decision.AMBIGUOUS:
                    raise _AmbiguousWriteError(error) from cause
                delay = (
                    next_delay(
                        retry,
                        policy=policy,
                        elapsed=time.monotonic() - start,
                        retry_after=retry_after,
                    )
                    if decision is Decision.RETRY
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

    async def write(
        self,
        verb: str,
        job: JobRef,
        params: Mapping[str, str],
        *,
        verify: Callable[[], Awaitable[WriteOutcome]] | None = None,
        applied_if: type[errors.ApiError] | None = None,
        timeout: TimeoutArg = UNSET,
    ) -> Any:
        """Make a state-changing call that is never applied twice; return its ``data``.

        When a try fails after the request may have reached the server, ``verify`` reads
        the server's state: if the change is in effect the call succeeded (``None`` is
        returned); if it provably is not, the request is sent again (within the retry
        budget); if it cannot tell, the original error is raised with a note that the
        outcome is unknown.

        Args:
            verb: The protocol verb.
            job: The job.
            params: The verb's own query parameters.
            verify: Reads whether the change is in effect; ``None`` when no read can
                tell, so that a failed try is never resent.
            applied_if: The error a resent request gets when the first one landed after
                all (a 409 for a submit, a 404 for a delete): it then counts as success.
            timeout: The timeouts of each try.
        """
        with self.loop_state().close_guard():
            start = time.monotonic()
            retry = 0
            while True:
                try:
                    data, _ = await self.exchange(
                        verb, job, params, timeout=timeout, idempotent=False
                    )
                except _AmbiguousWriteError as ambiguous:
                    error = ambiguous.error
                except errors.ApiError as exc:
                    if retry > 0 and applied_if is not None and isinstance(exc, applied_if):
                        logger.info("%s %s: an earlier try landed after all", verb, job.name)
                        return None
                    raise
                else:
                    return data
                try:
                    outcome = WriteOutcome.UNKNOWN if verify is None else await verify()
                except errors.JuliaRunError as exc:
                    logger.info("%s %s: follow-up read failed: %s", verb, job.name, exc)
                    outcome = WriteOutcome.UNKNOWN
                if outcome is WriteOutcome.APPLIED:
                    logger.info("%s %s: failed reply, but the change is in effect", verb, job.name)
                    return None
                delay = (
                    next_delay(retry, policy=self.retry_policy, elapsed=time.monotonic() - start)
                    if outcome is WriteOutcome.NOT_APPLIED
                    else None
                )
                if delay is None:
                    note = (
                        "the change was not applied"
                        if outcome is WriteOutcome.NOT_APPLIED
                        else "the outcome is unknown; check the job's state before trying again"
                    )
                    error.message = f"{error.message} ({note})"
                    raise error
                await anyio.sleep(delay)
                retry += 1

    async def in_effect(self, ref: JobRef, *, exists: bool) -> WriteOutcome:
        """Tell whether a submit (``exists``) or a delete of ``ref`` is in effect.

        For :meth:`write`'s ``verify``: job names are unique, so the job's status answers.
        """
        try:
            await self.fetch("getJobStatus", ref, JobStatus.from_wire)
        except errors.JobNotFoundError:
            return WriteOutcome.seen(not exists)
        return WriteOutcome.seen(exists)

    async def server_info(self, *, timeout: TimeoutArg = UNSET) -> dict[str, Any] | None:
        """Return the server's ``serverInfo`` answer, asking only the first time.

        Returns:
            The answer, or ``None`` from a server that does not offer it.
        """
        info = self.facts.info
        if isinstance(info, Unset):
            try:
                data, _ = await self.exchange("serverInfo", timeout=timeout)
            except (errors.JobNotFoundError, errors.BadRequestError, errors.ResponseError):
                data = None
            self.facts.info = info = data if isinstance(data, dict) else None
        return info


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
    """Return ``value`` as timeouts: seconds apply to all but connecting (5 s at most).

    Raises:
        ValueError: ``value`` is not a positive number of seconds.
    """
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
