"""The exception tree of juliarun_aio.

Every error the SDK raises derives from :class:`JuliaRunError`::

    JuliaRunError
    ├── ConfigurationError        no URL / token / namespace could be resolved
    ├── ClientClosedError         the Context was closed before or during the call
    ├── EventLoopError            an injected client cannot follow into another event loop
    ├── SpecError (ValueError)    an invalid job spec, raised before any request
    ├── ResponseError             the server answered something we cannot read
    ├── TransportError            connect / read / timeout, after retries
    │   ├── RequestTimeoutError   a connect, read or overall deadline passed
    │   └── CertificateError      the server's TLS certificate failed verification
    ├── WaitTimeoutError          a waiting helper gave up (also a TimeoutError builtin)
    ├── JobStateError             the job is in a state a wait cannot succeed from
    └── ApiError                  the server said no (HTTP status or nonzero ``code``)
        ├── BadRequestError       400
        ├── AuthenticationError   401
        ├── PermissionDeniedError 403
        ├── JobNotFoundError      404
        ├── ConflictError         409
        ├── RateLimitError        429
        └── ServerError           5xx

Both ways a JuliaRun server reports a failure -- an HTTP status outside 200..206 and
an envelope ``{"code": <nonzero>, "data": "<message>"}`` -- map to the same classes
(see :func:`api_error_class`).  Messages never contain the credential.

:class:`InsecureTransportWarning` is the one warning about the connection itself: the
credential travels in every URL, so a plain ``http://`` URL to another machine sends it
in clear.
"""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from ._models import JobScale, JobStatus

__all__ = [
    "SDK_TERMS",
    "ApiError",
    "AuthenticationError",
    "BadRequestError",
    "CertificateError",
    "ClientClosedError",
    "ConfigurationError",
    "ConflictError",
    "EventLoopError",
    "HintTerms",
    "InsecureTransportWarning",
    "JobNotFoundError",
    "JobStateError",
    "JuliaRunError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestTimeoutError",
    "ResponseError",
    "ServerError",
    "SpecError",
    "TransportError",
    "WaitTimeoutError",
    "api_error_class",
    "excerpt",
    "hint_for",
    "job_replaced_error",
    "shorten",
]


class JuliaRunError(Exception):
    """Root of every error raised by juliarun_aio.

    Attributes:
        verb: The protocol verb being called (``"getJobStatus"``), if any.
        job: The job name the call was about, if any.
    """

    def __init__(self, message: str, *, verb: str | None = None, job: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.verb = verb
        self.job = job

    def __str__(self) -> str:
        where = []
        if self.verb:
            where.append(self.verb)
        if self.job:
            where.append(f"job {self.job!r}")
        return f"{self.message} [{', '.join(where)}]" if where else self.message


class ConfigurationError(JuliaRunError):
    """The client could not resolve its URL, credential or namespace, or cannot use a setting."""


class ClientClosedError(JuliaRunError):
    """A :class:`~juliarun_aio.Context` was closed before or while the call ran.

    Every method and generator of a Context raises it once :meth:`aclose` has run, and
    those in flight when it runs are interrupted with it.
    """


class EventLoopError(JuliaRunError):
    """A Context cannot serve the running event loop.

    A Context follows its caller from one event loop to the next (notebook cells run
    with ``asyncio.run``, a loop per test, trio after asyncio) by starting a fresh
    connection pool in each.  A client passed as ``client=`` cannot be replaced that way:
    it belongs to the loop the Context first used it in.  Create the client and the
    Context inside the event loop that uses them, or let the Context make its own client.
    """


class SpecError(JuliaRunError, ValueError):
    """A job spec is invalid; raised at construction, before any request.

    Attributes:
        field: The name of the offending parameter (``"name"``, ``"ports"``, ...).
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class ResponseError(JuliaRunError):
    """The server's answer could not be understood (bad JSON, unexpected shape).

    Attributes:
        status_code: The HTTP status of the response.
        body: A short excerpt of what the server sent.
    """

    def __init__(
        self,
        message: str,
        *,
        verb: str | None = None,
        job: str | None = None,
        status_code: int | None = None,
        body: str = "",
    ) -> None:
        super().__init__(message, verb=verb, job=job)
        self.status_code = status_code
        self.body = body


class TransportError(JuliaRunError):
    """The request did not complete: connection refused or reset, or a timeout.

    Raised after the retry budget is spent.  ``attempts`` says how many tries were made.
    """

    def __init__(
        self, message: str, *, verb: str | None = None, job: str | None = None, attempts: int = 1
    ) -> None:
        super().__init__(message, verb=verb, job=job)
        self.attempts = attempts


class RequestTimeoutError(TransportError, builtins.TimeoutError):
    """A connect, read, pool or overall deadline passed.

    Also a builtin :class:`TimeoutError`, so ``except TimeoutError`` catches it.  Named so
    that ``from juliarun_aio import *`` does not shadow the builtin (it was called
    ``TimeoutError`` before; ``juliarun_aio.TimeoutError`` remains as an alias).
    """


class CertificateError(TransportError):
    """The server's TLS certificate failed verification; no request was sent.

    Never retried: asking again gets the same certificate.  The message says what failed
    and how to fix it (trust the server's CA with ``JRUN_CA_BUNDLE`` or ``verify=``, call
    the server by a name its certificate holds, renew it).

    Attributes:
        reason: ``"unknown CA"`` (including a self-signed certificate), ``"name
            mismatch"``, ``"expired"``, ``"not yet valid"`` or ``"failed verification"``.
        host: The host the client dialled.
        trusted: The CA bundle the certificate was verified with (``JRUN_CA_BUNDLE=/path``),
            or ``None`` for the usual CAs.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str = "failed verification",
        host: str = "",
        trusted: str | None = None,
        verb: str | None = None,
        job: str | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message, verb=verb, job=job, attempts=attempts)
        self.reason = reason
        self.host = host
        self.trusted = trusted


class InsecureTransportWarning(UserWarning):
    """A Context was made to send its credential in clear: ``http://`` to another host.

    The protocol puts the token in every request's URL.  Given once, when the Context is
    made.  Where that is meant (a trusted network), silence it as any warning:
    ``warnings.filterwarnings("ignore", category=InsecureTransportWarning)``, or set
    ``JRUN_ALLOW_INSECURE_HTTP=1`` in the environment (the command line, jobs).
    """


class WaitTimeoutError(JuliaRunError, builtins.TimeoutError):
    """A waiting helper (``wait_for_workers``, ``wait_for_job``...) ran out of time."""


class JobStateError(JuliaRunError):
    """The job is in a state from which the wait cannot succeed.

    ``wait_for_workers`` / ``wait_for_scale`` raise it as soon as the job has ended, or
    the server says its workers cannot start, instead of waiting out their timeout.

    Attributes:
        status: The job's last status (its ``phase`` and ``message`` say why).
        scale: The job's last scale, when one was read.
    """

    def __init__(
        self,
        message: str,
        *,
        verb: str | None = None,
        job: str | None = None,
        status: JobStatus | None = None,
        scale: JobScale | None = None,
    ) -> None:
        super().__init__(message, verb=verb, job=job)
        self.status = status
        self.scale = scale


class ApiError(JuliaRunError):
    """The server refused the request.

    Attributes:
        status_code: The HTTP status (``200`` when only the envelope's ``code`` said no).
        code: The envelope's ``code`` when the body had one, else ``None``.
        server_message: What the server said, verbatim (credentials redacted).
    """

    def __init__(
        self,
        message: str,
        *,
        verb: str | None = None,
        job: str | None = None,
        status_code: int = 200,
        code: int | None = None,
        server_message: str = "",
    ) -> None:
        super().__init__(message, verb=verb, job=job)
        self.status_code = status_code
        self.code = code
        self.server_message = server_message


class BadRequestError(ApiError):
    """400: the server rejected a parameter."""


class AuthenticationError(ApiError):
    """401: the credential is missing, wrong or expired."""


class PermissionDeniedError(ApiError):
    """403: the credential is not allowed in this namespace."""


class JobNotFoundError(ApiError):
    """404: the job (or the verb) does not exist in this namespace."""


class ConflictError(ApiError):
    """409: the job exists already, or is incomplete and needs ``force``."""


class RateLimitError(ApiError):
    """429: the server asks us to slow down (retried for reads)."""


class ServerError(ApiError):
    """5xx: the server failed."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: JobNotFoundError,
    409: ConflictError,
    429: RateLimitError,
}

# What the envelope's message says when a server answers 200 with a nonzero code.  Real
# JuliaRun servers do this; the message is then the only hint at the kind of failure.
_BY_MESSAGE: tuple[tuple[tuple[str, ...], type[ApiError]], ...] = (
    (("not found", "no such job", "does not exist", "unknown job"), JobNotFoundError),
    (("already exists", "exists already", "incomplete", "conflict"), ConflictError),
    (("unauthorized", "unauthenticated", "invalid token", "bad token"), AuthenticationError),
    (("forbidden", "not allowed", "permission"), PermissionDeniedError),
)


class HintTerms(NamedTuple):
    """How the "what to do next" hints name things: in Python, or on a command line.

    Attributes:
        flags: Name settings as command-line flags (``--token-file``) instead of
            keyword arguments (``token_file=``).
        list_jobs: How to list the jobs.
        delete: How to delete a job.
    """

    flags: bool
    list_jobs: str
    delete: str

    def option(self, name: str, value: str = "") -> str:
        """Spell the setting ``name`` (set to ``value``, for an argument) in these terms."""
        return "--" + name.replace("_", "-") if self.flags else f"{name}={value}"

    def words(self) -> dict[str, str]:
        """Return what the hint templates refer to, by name."""
        options = {name: self.option(name) for name in ("token", "token_file", "namespace", "url")}
        return {**options, "force": self.option("force", "True"), **self._asdict()}


#: The hints of the SDK's errors name its arguments and methods.
SDK_TERMS = HintTerms(flags=False, list_jobs="list_jobs()", delete="delete_job()")

_HINTS: dict[type[ApiError], str] = {
    AuthenticationError: (
        "check {token}/{token_file} (or JRUN_TOKEN/JRUN_TOKEN_FILE); it may have expired"
    ),
    PermissionDeniedError: "check {namespace} (or JRUN_NAMESPACE) matches the token",
    JobNotFoundError: "check the job name and type; list jobs with {list_jobs}",
    ConflictError: (
        "pick another name, or delete the job first ({delete}, with {force} if it is running)"
    ),
    RateLimitError: "slow down; the server is rate limiting",
    ServerError: "the server failed; retry later or check the server's logs",
    BadRequestError: "fix the parameter the server names",
}


def api_error_class(status_code: int, message: str = "") -> type[ApiError]:
    """Pick the error class for a failed call.

    Args:
        status_code: The HTTP status of the response (200 when the envelope alone failed).
        message: The server's message, used when the status says nothing specific.

    Returns:
        The most specific :class:`ApiError` subclass.
    """
    if status_code in _BY_STATUS:
        return _BY_STATUS[status_code]
    if status_code >= 500:
        return ServerError
    lowered = message.lower()
    for needles, cls in _BY_MESSAGE:
        if any(needle in lowered for needle in needles):
            return cls
    return ApiError


def job_replaced_error(job: str, verb: str) -> JobNotFoundError:
    """Return the error for a job that was deleted and submitted again under its name.

    The job being waited on or tailed is gone; the one of the same name now is another
    submission (its ``uid`` differs), so following it would mix two jobs.
    """
    return JobNotFoundError(
        f"job {job!r} was deleted (a job submitted later under the same name is another job)",
        verb=verb,
        job=job,
        status_code=404,
    )


def hint_for(
    cls: type[ApiError],
    *,
    verb: str | None = None,
    system_verb_at: str | None = None,
    terms: HintTerms = SDK_TERMS,
) -> str:
    """Return the "what to do next" sentence for an error class (empty if none).

    Args:
        cls: The error class.
        verb: The verb that failed: a conflict on ``deleteJob`` means the job has not
            completed, not that its name is taken.
        system_verb_at: For a system verb (no job), the URL it was sent to: a 404 there
            means no JuliaRun server answers at that URL, not that a job is missing.
        terms: How to name the settings (the command line names its flags).
    """
    if system_verb_at is not None and cls is JobNotFoundError:
        return (
            f"no JuliaRun server was found at {system_verb_at}; check the URL "
            f"({terms.option('url')} or JRUN_URL), including any path after the host"
        )
    if verb == "deleteJob" and cls is ConflictError:
        template = "the job has not completed; add {force} to stop and delete it"
    else:
        template = _HINTS.get(cls, "")
    return template.format_map(terms.words())


def shorten(text: str, limit: int) -> str:
    """Return ``text``, cut to ``limit`` characters (``...`` ending a cut one)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def excerpt(value: object, limit: int = 200) -> str:
    """Return ``repr(value)`` cut to ``limit`` characters, for error messages."""
    return shorten(repr(value), limit)
