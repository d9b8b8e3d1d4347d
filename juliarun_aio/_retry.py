"""Retry decisions as pure functions: what to retry, how long to wait, when to stop.

Nothing here sleeps or does I/O, so every rule is tested as a table.

- Reads (idempotent verbs) retry transport errors, timeouts and the statuses in
  :data:`RETRYABLE_STATUSES` (408, 429 and 5xx except 501/505, which will not change).
  No call retries a refused TLS certificate: the server presents the same one again.
- State-changing verbs retry only what provably never reached the server (a failed
  connect, a pool timeout) or an explicit 429 refusal; a failure after which the change
  may have been applied is :attr:`Decision.AMBIGUOUS`, settled by a follow-up read
  (:class:`WriteOutcome`, see ``_http.py``).  :func:`decide` is the whole rule.
- The wait is exponential backoff with full jitter, ``uniform(0, min(max, initial * 2**n))``,
  unless the server sent ``Retry-After`` (seconds or an HTTP date), which is honoured up to
  :attr:`RetryPolicy.max_retry_after`.
- Attempts are bounded by :attr:`RetryPolicy.attempts` and the whole call, waits included,
  by :attr:`RetryPolicy.total_timeout`.
"""

from __future__ import annotations

import email.utils
import enum
import math
import random
from collections.abc import Callable
from datetime import datetime, timezone

import attrs
import httpx

from ._base import DEFAULT_ATTEMPTS
from ._errors import ResponseError
from ._tls import certificate_failure

__all__ = [
    "DEFAULT_RETRY",
    "NO_RETRIES",
    "RETRYABLE_STATUSES",
    "Decision",
    "RetryPolicy",
    "WriteOutcome",
    "backoff_delay",
    "decide",
    "is_retryable_exception",
    "is_retryable_status",
    "never_reached_server",
    "next_delay",
    "parse_retry_after",
]

#: Statuses worth retrying for reads: the server may answer differently next time.  That
#: is every 5xx (proxies and load balancers use 507..599 too) except 501 Not Implemented
#: and 505 HTTP Version Not Supported, which will not change.
RETRYABLE_STATUSES = frozenset({408, 429} | set(range(500, 600)) - {501, 505})


@attrs.frozen
class RetryPolicy:
    """How persistent a :class:`~juliarun_aio.Context` is.

    Attributes:
        attempts: Total tries per call, the first included (1 disables retries).
        initial: Backoff ceiling for the first retry, in seconds.
        maximum: Largest backoff ceiling, in seconds.
        total_timeout: Give up once this many seconds have passed since the first try.
        max_retry_after: Cap on a server's ``Retry-After``, in seconds; a longer request
            is not waited for and the error is raised instead.
    """

    attempts: int = attrs.field(default=DEFAULT_ATTEMPTS, validator=attrs.validators.ge(1))
    initial: float = attrs.field(default=0.2, validator=attrs.validators.ge(0))
    maximum: float = attrs.field(default=5.0, validator=attrs.validators.ge(0))
    total_timeout: float = attrs.field(default=60.0, validator=attrs.validators.gt(0))
    max_retry_after: float = attrs.field(default=30.0, validator=attrs.validators.ge(0))


#: A policy that makes exactly one attempt.
NO_RETRIES = RetryPolicy(attempts=1)

#: A Context's default: up to 4 tries of a call (the first and 3 retries) within 60 s.
DEFAULT_RETRY = RetryPolicy()


class Decision(enum.Enum):
    """What a failed try of a call means for the next one (see :func:`decide`)."""

    #: Try again, after a backoff, while the policy allows.
    RETRY = "retry"
    #: A state-changing call may have been applied: a follow-up read must settle it.
    AMBIGUOUS = "ambiguous"
    #: Raise the error.
    FAIL = "fail"


class WriteOutcome(enum.Enum):
    """What a follow-up read says about a state-changing call whose answer was lost."""

    #: The change is in effect: the call succeeded.
    APPLIED = "applied"
    #: The change is provably not in effect: the call may be sent again.
    NOT_APPLIED = "not applied"
    #: The read cannot tell (or failed): the error is raised, saying so.
    UNKNOWN = "unknown"

    @classmethod
    def seen(cls, applied: bool) -> WriteOutcome:
        """Return :attr:`APPLIED` or :attr:`NOT_APPLIED`, as a read showed."""
        return cls.APPLIED if applied else cls.NOT_APPLIED


def backoff_delay(
    retry: int, policy: RetryPolicy, rand: Callable[[], float] = random.random
) -> float:
    """Return the full-jitter wait before retry number ``retry`` (0 for the first retry).

    Args:
        retry: How many retries were made before this one.
        policy: Supplies the initial and maximum ceilings.
        rand: A source of floats in ``[0, 1)``; injected by tests.
    """
    ceiling = min(policy.maximum, policy.initial * (2.0 ** min(retry, 62)))
    return ceiling * rand()


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Read a ``Retry-After`` header: delta-seconds or an HTTP date.

    Args:
        value: The header's value, or ``None`` when absent.
        now: The current time (UTC), injected by tests.

    Returns:
        Seconds to wait (never negative), or ``None`` when absent or unreadable.
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return None if math.isnan(seconds) else max(0.0, seconds)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    # HTTP dates are GMT; treat a naive date (or a naive injected ``now``) as UTC.
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    return max(0.0, (when - now).total_seconds())


def is_retryable_status(status_code: int) -> bool:
    """Tell whether a read that got ``status_code`` may succeed if tried again."""
    return status_code in RETRYABLE_STATUSES


def is_retryable_exception(exc: BaseException) -> bool:
    """Tell whether a read that raised ``exc`` (from httpx) may succeed if tried again.

    A refused certificate is not: asking again gets the same certificate.
    """
    return (
        isinstance(exc, httpx.TransportError)
        and not isinstance(
            exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError | httpx.ProxyError
        )
        and certificate_failure(exc) is None
    )


def decide(failure: BaseException | int, *, idempotent: bool) -> Decision:
    """Decide what to do after a try of a call failed.

    Args:
        failure: What went wrong: an exception from httpx (the request did not complete),
            the HTTP status of a refusal, or a :class:`~juliarun_aio.ResponseError` (a 2xx
            answer that cannot be read).
        idempotent: The call is a read, which may be repeated freely.

    Returns:
        :attr:`Decision.RETRY` for what may succeed if tried again and cannot apply a
        change twice; :attr:`Decision.AMBIGUOUS` for a state-changing call that may have
        reached the server and been applied; :attr:`Decision.FAIL` otherwise.
    """
    if isinstance(failure, int):
        if idempotent:
            return Decision.RETRY if is_retryable_status(failure) else Decision.FAIL
        if failure == 429:  # an explicit "not now": nothing was done
            return Decision.RETRY
        # 501 and 505 say the server did nothing with it, like a 4xx.
        return Decision.AMBIGUOUS if is_retryable_status(failure) else Decision.FAIL
    if isinstance(failure, ResponseError):
        # A write probably applied; a read would only get the same answer again.
        return Decision.FAIL if idempotent else Decision.AMBIGUOUS
    if idempotent or never_reached_server(failure):
        return Decision.RETRY if is_retryable_exception(failure) else Decision.FAIL
    return Decision.AMBIGUOUS if is_retryable_exception(failure) else Decision.FAIL


def never_reached_server(exc: BaseException) -> bool:
    """Tell whether a failed request provably never reached the server.

    True for a refused or failed connect and for waiting on the pool: no byte of the
    request was sent, so even a state-changing verb can be sent again.
    """
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def next_delay(
    retry: int,
    *,
    policy: RetryPolicy,
    elapsed: float,
    retry_after: float | None = None,
    rand: Callable[[], float] = random.random,
) -> float | None:
    """Decide whether to try again and how long to wait first.

    Args:
        retry: Retries made so far (0 before the first retry).
        policy: The limits.
        elapsed: Seconds since the first attempt started.
        retry_after: The server's ``Retry-After`` in seconds, if it sent one.
        rand: A source of floats in ``[0, 1)``.

    Returns:
        The seconds to wait, or ``None`` to give up: attempts are spent, the server asks
        for longer than ``max_retry_after``, or the wait would overrun ``total_timeout``.
    """
    if retry + 1 >= policy.attempts:
        return None
    if retry_after is not None:
        if retry_after > policy.max_retry_after:
            return None
        delay = retry_after
    else:
        delay = backoff_delay(retry, policy, rand)
    if elapsed + delay >= policy.total_timeout:
        return None
    return delay
