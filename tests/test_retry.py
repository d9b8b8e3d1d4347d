"""Retry decisions: pure functions checked as tables, without sleeping."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs
import httpx
import pytest

from juliarun_aio import DEFAULT_RETRY, NO_RETRIES, ResponseError, RetryPolicy
from juliarun_aio._retry import (
    RETRYABLE_STATUSES,
    Decision,
    WriteOutcome,
    backoff_delay,
    decide,
    is_retryable_exception,
    is_retryable_status,
    never_reached_server,
    next_delay,
    parse_retry_after,
)

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
POLICY = RetryPolicy(attempts=5, initial=0.5, maximum=4.0, total_timeout=60.0, max_retry_after=30.0)


def top() -> float:
    """Return the largest value a ``[0, 1)`` source can give, for the jitter ceiling."""
    return 1.0


@pytest.mark.parametrize(
    ("retry", "rand", "expected"),
    [
        (0, top, 0.5),
        (1, top, 1.0),
        (2, top, 2.0),
        (3, top, 4.0),
        (4, top, 4.0),  # capped at maximum
        (500, top, 4.0),  # huge exponents do not overflow
        (2, lambda: 0.0, 0.0),  # full jitter reaches zero
        (2, lambda: 0.25, 0.5),
    ],
)
def test_backoff_delay_is_full_jitter_under_a_capped_exponential(
    retry: int, rand: Callable[[], float], expected: float
) -> None:
    """backoff_delay is rand() * min(maximum, initial * 2**retry)."""
    assert backoff_delay(retry, POLICY, rand) == pytest.approx(expected)


def test_zero_policy_never_waits() -> None:
    """A policy with initial=0 and maximum=0 backs off for zero seconds (testing mode)."""
    zero = RetryPolicy(initial=0, maximum=0)
    assert all(backoff_delay(n, zero, top) == 0.0 for n in range(10))


def test_default_backoff_stays_in_range() -> None:
    """With the real random source the delay lies in [0, ceiling)."""
    for retry in range(6):
        delay = backoff_delay(retry, POLICY)
        assert 0.0 <= delay < min(POLICY.maximum, POLICY.initial * 2**retry)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("5", 5.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("2.5", 2.5),
        ("-3", 0.0),  # negative waits are clamped to zero
        ("nan", None),
        ("NaN", None),
        ("soon", None),
        ("Wed, 32 Foo 2024 99:99:99 GMT", None),
        ("Wed, 01 May 2024 12:00:10 GMT", 10.0),
        ("Wed, 01 May 2024 11:59:00 GMT", 0.0),  # a date in the past means now
        ("Wed, 01 May 2024 12:01:00 -0000", 60.0),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    """Retry-After is read as delta-seconds or an HTTP date; garbage and NaN give None."""
    assert parse_retry_after(value, now=NOW) == expected


def test_parse_retry_after_infinite_is_refused_by_next_delay() -> None:
    """An infinite Retry-After parses as inf, which next_delay refuses to wait for."""
    seconds = parse_retry_after("inf", now=NOW)
    assert seconds is not None
    assert math.isinf(seconds)
    assert next_delay(0, policy=POLICY, elapsed=0.0, retry_after=seconds) is None


def test_parse_retry_after_accepts_a_naive_now() -> None:
    """A naive injected ``now`` is taken as UTC instead of failing the subtraction."""
    naive = NOW.replace(tzinfo=None)
    assert parse_retry_after("Wed, 01 May 2024 12:00:03 GMT", now=naive) == 3.0


def test_parse_retry_after_uses_the_clock_by_default() -> None:
    """Without ``now`` an HTTP date is measured from the current time."""
    future = datetime.now(timezone.utc) + timedelta(hours=1)
    seconds = parse_retry_after(future.strftime("%a, %d %b %Y %H:%M:%S GMT"))
    assert seconds is not None
    assert 3500 < seconds <= 3600


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, False),
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (408, True),
        (409, False),
        (429, True),
        (500, True),
        (501, False),
        (502, True),
        (503, True),
        (504, True),
        (505, False),
        (507, True),
        (522, True),
        (599, True),
    ],
)
def test_is_retryable_status(status: int, expected: bool) -> None:
    """408, 429 and every 5xx except 501/505 are worth retrying for reads."""
    assert is_retryable_status(status) is expected
    assert (status in RETRYABLE_STATUSES) is expected


@pytest.mark.parametrize(
    ("exc", "retryable", "unsent"),
    [
        (httpx.ConnectError("refused"), True, True),
        (httpx.ConnectTimeout("slow connect"), True, True),
        (httpx.PoolTimeout("pool"), True, True),
        (httpx.ReadTimeout("slow answer"), True, False),
        (httpx.WriteTimeout("slow send"), True, False),
        (httpx.ReadError("reset"), True, False),
        (httpx.WriteError("broken pipe"), True, False),
        (httpx.RemoteProtocolError("server hung up"), True, False),
        (httpx.LocalProtocolError("bad request line"), False, False),
        (httpx.UnsupportedProtocol("ftp"), False, False),
        (httpx.ProxyError("proxy said no"), False, False),
        (httpx.DecodingError("bad gzip"), False, False),
        (httpx.TooManyRedirects("loop"), False, False),
        (ValueError("not from httpx"), False, False),
    ],
)
def test_exception_classification(exc: BaseException, retryable: bool, unsent: bool) -> None:
    """Reads retry transport failures; writes only those that never left the client."""
    assert is_retryable_exception(exc) is retryable
    assert never_reached_server(exc) is unsent


RETRY, AMBIGUOUS, FAIL = Decision.RETRY, Decision.AMBIGUOUS, Decision.FAIL


@pytest.mark.parametrize(
    ("failure", "read", "write"),
    [
        # Failures of the transport: a read retries them; a write only when nothing was sent.
        (httpx.ConnectError("refused"), RETRY, RETRY),
        (httpx.ConnectTimeout("slow connect"), RETRY, RETRY),
        (httpx.PoolTimeout("pool"), RETRY, RETRY),
        (httpx.ReadTimeout("slow answer"), RETRY, AMBIGUOUS),
        (httpx.WriteTimeout("slow send"), RETRY, AMBIGUOUS),
        (httpx.ReadError("reset"), RETRY, AMBIGUOUS),
        (httpx.WriteError("broken pipe"), RETRY, AMBIGUOUS),
        (httpx.RemoteProtocolError("server hung up"), RETRY, AMBIGUOUS),
        (httpx.LocalProtocolError("bad request line"), FAIL, FAIL),
        (httpx.UnsupportedProtocol("ftp"), FAIL, FAIL),
        (httpx.ProxyError("proxy said no"), FAIL, FAIL),
        (httpx.DecodingError("bad gzip"), FAIL, FAIL),
        (httpx.TooManyRedirects("loop"), FAIL, FAIL),
        (ValueError("not from httpx"), FAIL, FAIL),
        # A 2xx answer that cannot be read: a write probably applied.
        (ResponseError("no envelope"), FAIL, AMBIGUOUS),
        # Refusals by status.
        (200, FAIL, FAIL),  # a nonzero code in the envelope of a 200
        (400, FAIL, FAIL),
        (401, FAIL, FAIL),
        (404, FAIL, FAIL),
        (409, FAIL, FAIL),
        (408, RETRY, AMBIGUOUS),
        (429, RETRY, RETRY),  # an explicit "not now": nothing was done
        (500, RETRY, AMBIGUOUS),
        (501, FAIL, FAIL),  # not implemented: the server did nothing
        (502, RETRY, AMBIGUOUS),
        (503, RETRY, AMBIGUOUS),
        (505, FAIL, FAIL),
        (599, RETRY, AMBIGUOUS),
    ],
)
def test_decide(failure: BaseException | int, read: Decision, write: Decision) -> None:
    """Reads retry what may pass next time; writes retry only what was provably not applied."""
    assert decide(failure, idempotent=True) is read
    assert decide(failure, idempotent=False) is write


def test_write_outcome_seen_maps_a_read_to_an_outcome() -> None:
    """A follow-up read that shows the change says APPLIED, else NOT_APPLIED."""
    assert WriteOutcome.seen(True) is WriteOutcome.APPLIED
    assert WriteOutcome.seen(False) is WriteOutcome.NOT_APPLIED


def test_default_policy_makes_four_tries_within_a_minute() -> None:
    """DEFAULT_RETRY: the first try and 3 retries, all within 60 s."""
    assert (DEFAULT_RETRY.attempts, DEFAULT_RETRY.total_timeout) == (4, 60.0)
    assert next_delay(2, policy=DEFAULT_RETRY, elapsed=0.0, rand=top) is not None
    assert next_delay(3, policy=DEFAULT_RETRY, elapsed=0.0, rand=top) is None


@pytest.mark.parametrize(
    ("retry", "elapsed", "retry_after", "expected"),
    [
        (0, 0.0, None, 0.5),
        (1, 0.0, None, 1.0),
        (3, 0.0, None, 4.0),
        (4, 0.0, None, None),  # the fifth attempt was the last
        (0, 0.0, 12.0, 12.0),  # Retry-After wins over backoff
        (0, 0.0, 0.0, 0.0),
        (0, 0.0, 30.0, 30.0),  # exactly the cap is still honoured
        (0, 0.0, 31.0, None),  # longer than max_retry_after: give up
        (0, 59.0, None, 0.5),
        (0, 59.6, None, None),  # the wait would overrun total_timeout
        (0, 50.0, 10.0, None),
        (0, 60.0, 0.0, None),  # the budget is spent
    ],
)
def test_next_delay(
    retry: int, elapsed: float, retry_after: float | None, expected: float | None
) -> None:
    """next_delay bounds attempts, Retry-After and the total time."""
    assert (
        next_delay(retry, policy=POLICY, elapsed=elapsed, retry_after=retry_after, rand=top)
        == expected
    )


def test_no_retries_policy_makes_one_attempt() -> None:
    """NO_RETRIES allows no second attempt."""
    assert NO_RETRIES.attempts == 1
    assert next_delay(0, policy=NO_RETRIES, elapsed=0.0, rand=top) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attempts": 0},
        {"initial": -1.0},
        {"maximum": -0.1},
        {"total_timeout": 0.0},
        {"max_retry_after": -5.0},
    ],
)
def test_retry_policy_rejects_nonsense(kwargs: dict[str, Any]) -> None:
    """RetryPolicy validates its limits at construction."""
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


def test_retry_policy_is_a_frozen_value() -> None:
    """RetryPolicy is immutable and compares by value."""
    policy = RetryPolicy(attempts=2)
    assert policy == RetryPolicy(attempts=2)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        policy.attempts = 3  # type: ignore[misc]
