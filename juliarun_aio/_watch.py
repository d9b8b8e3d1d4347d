"""Watching a job: scale and status changes, polled politely.

``wait_for_workers`` and ``watch_job`` are async generators that yield a value each time
it changes.  Both poll, because the protocol has no push channel:

- **Backoff with jitter.**  The interval starts at :attr:`PollPolicy.initial`, grows by
  :attr:`PollPolicy.factor` per poll that shows no change, up to :attr:`PollPolicy.maximum`,
  and drops back after a change.  Every wait is spread by :attr:`PollPolicy.jitter` so that
  many processes do not poll in lockstep.
- **One poller per job and verb per Context.**  All watchers of the same job on one
  :class:`~juliarun_aio.Context` share a :class:`_SharedPoll`: at most one request is in
  flight for it, a new watcher joins a request in flight instead of sending its own, and
  the periodic poll is made by one watcher at a time for all of them.  So 1000 watchers
  of a job cost the requests of one, and watchers of different jobs are bounded by the
  Context's request slots (one pooled connection each at most).
- **No background task.**  The watcher whose turn it is makes the request in its own task;
  if it goes away (break, cancel), the next waiting watcher takes over.  Nothing outlives
  the generators, so there is nothing to clean up.

A plain JuliaRun server reports only ``succeeded``: it cannot say that a job failed, so
there ``watch_job`` ends on success only, or raises :class:`~juliarun_aio.JobNotFoundError`
once the job is deleted.  The local server also reports ``phase`` and ``failed``, and
``watch_job`` ends on either outcome.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TYPE_CHECKING, Generic, TypeVar

import anyio
import attrs

from ._errors import JuliaRunError, WaitTimeoutError
from ._jobs import JobRef
from ._models import JobScale, JobStatus

if TYPE_CHECKING:
    from ._context import Context, Job

__all__ = [
    "DEFAULT_POLL_POLICY",
    "DEFAULT_WAIT_TIMEOUT",
    "PollPolicy",
    "wait_for_job",
    "wait_for_scale",
    "wait_for_workers",
    "watch_job",
]

#: How long ``wait_for_workers`` / ``wait_for_scale`` wait by default, in seconds.
DEFAULT_WAIT_TIMEOUT = 600.0

_T = TypeVar("_T", JobScale, JobStatus)


@attrs.frozen
class PollPolicy:
    """How often the long-running helpers poll.

    Attributes:
        initial: Seconds between polls right after a change (the fastest rate).
        maximum: Longest interval, reached while nothing changes.
        factor: Growth of the interval per poll that shows no change.
        jitter: Random spread of every wait, as a fraction: ``0.2`` waits between 80 %
            and 120 % of the interval.  ``PollPolicy(0, 0)`` never waits (tests).
    """

    initial: float = attrs.field(default=0.25, validator=attrs.validators.ge(0))
    maximum: float = attrs.field(default=5.0, validator=attrs.validators.ge(0))
    factor: float = attrs.field(default=1.5, validator=attrs.validators.ge(1))
    jitter: float = attrs.field(
        default=0.2, validator=[attrs.validators.ge(0), attrs.validators.le(1)]
    )

    def grow(self, interval: float) -> float:
        """Return the interval after a poll that showed no change."""
        return min(self.maximum, max(interval, self.initial) * self.factor)

    def spread(self, interval: float, rand: Callable[[], float] = random.random) -> float:
        """Return ``interval`` with jitter applied (never negative)."""
        return max(0.0, interval * (1.0 + self.jitter * (2.0 * rand() - 1.0)))


#: The default polling rhythm: 0.25 s after a change, backing off to 5 s.
DEFAULT_POLL_POLICY = PollPolicy()


class _SharedPoll(Generic[_T]):
    """The latest value of one verb for one job, shared by every watcher on a Context.

    ``version`` grows by one each time the value changes (or a poll fails), so a watcher
    that remembers the version it saw knows whether there is news.
    """

    def __init__(self, fetch: Callable[[], Awaitable[_T]], policy: PollPolicy) -> None:
        self._fetch: Callable[[], Awaitable[_T]] = fetch
        self.policy = policy
        self.version = 0
        self.result: _T | JuliaRunError | None = None
        self.fetched_at = -math.inf
        self.subscribers = 0
        self._interval = policy.initial
        self._in_flight: anyio.Event | None = None
        self._scheduled = False
        self._tick = anyio.Event()

    async def fetch_shared(self) -> None:
        """Make one request, or wait for the one already in flight."""
        if self._in_flight is not None:
            await self._in_flight.wait()
            return
        done = self._in_flight = anyio.Event()
        try:
            try:
                value: _T | JuliaRunError = await self._fetch()
            except JuliaRunError as exc:
                value = exc
            self._publish(value)
        finally:
            self._in_flight = None
            done.set()

    def _publish(self, value: _T | JuliaRunError) -> None:
        self.fetched_at = time.monotonic()
        if isinstance(value, JuliaRunError) or value != self.result:
            self.result = value
            self.version += 1
            self._interval = self.policy.initial
        else:
            self._interval = self.policy.grow(self._interval)

    async def next(self, seen: int, since: float) -> tuple[int, _T]:
        """Wait for a value newer than version ``seen``, fetched at or after ``since``.

        Raises:
            JuliaRunError: the poll that produced the news failed (each caller gets its
                own copy of the error).
        """
        while True:
            result = self.result
            if result is not None and self.version > seen and self.fetched_at >= since:
                if isinstance(result, JuliaRunError):
                    raise copy.copy(result)
                return self.version, result
            if seen == 0 or self.fetched_at < since:
                await self.fetch_shared()
            elif self._scheduled:
                await self._tick.wait()
            else:
                await self._poll_in_turn()

    async def _poll_in_turn(self) -> None:
        # One watcher sleeps and polls for all; the others wait for its tick.  The tick
        # fires also when that watcher is cancelled, so another one takes over.
        self._scheduled = True
        try:
            await anyio.sleep(self.policy.spread(self._interval))
            await self.fetch_shared()
        finally:
            self._scheduled = False
            self._tick.set()
            self._tick = anyio.Event()


def _shared_poll(
    pollers: dict[tuple[str, JobRef], _SharedPoll[_T]],
    verb: str,
    ref: JobRef,
    fetch: Callable[[], Awaitable[_T]],
    policy: PollPolicy,
) -> _SharedPoll[_T]:
    poller = pollers.get((verb, ref))
    if poller is None:
        poller = pollers[(verb, ref)] = _SharedPoll(fetch, policy)
    poller.subscribers += 1
    return poller


def _release(
    pollers: dict[tuple[str, JobRef], _SharedPoll[_T]],
    verb: str,
    ref: JobRef,
    poller: _SharedPoll[_T],
) -> None:
    poller.subscribers -= 1
    if poller.subscribers == 0 and pollers.get((verb, ref)) is poller:
        del pollers[(verb, ref)]


async def _until(
    changes: AsyncGenerator[_T, None], done: Callable[[_T], bool]
) -> AsyncGenerator[_T, None]:
    """Yield from ``changes`` up to and including the first value that is ``done``."""
    async with contextlib.aclosing(changes):
        async for value in changes:
            yield value
            if done(value):
                return


async def _changes(
    ctx: Context,
    verb: str,
    ref: JobRef,
    fetch: Callable[[], Awaitable[_T]],
    *,
    timeout: float | None,
    policy: PollPolicy,
    on_timeout: Callable[[_T | None], str],
) -> AsyncGenerator[_T, None]:
    """Yield the value of ``verb`` for ``ref`` now and on every change."""
    deadline = math.inf if timeout is None else time.monotonic() + timeout
    started = time.monotonic()
    state = ctx.loop_state()
    poller = _shared_poll(state.pollers, verb, ref, fetch, policy)
    seen = 0
    last: _T | None = None
    try:
        while True:
            # The deadline scope covers the wait only: a generator must not yield
            # inside a cancel scope.
            with state.close_guard(), anyio.move_on_after(deadline - time.monotonic()) as scope:
                seen, value = await poller.next(seen, started)
            if scope.cancelled_caught:
                raise WaitTimeoutError(on_timeout(last), verb=verb, job=ref.name)
            # The shared value may have changed and changed back since this watcher
            # last looked; that is no change for this watcher.
            if value != last:
                last = value
                yield value
    finally:
        _release(state.pollers, verb, ref, poller)


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and not timeout >= 0:
        raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout!r}")


def wait_for_workers(
    ctx: Context,
    job: Job,
    n: int,
    *,
    timeout: float | None,
    poll: PollPolicy | None = None,
) -> AsyncGenerator[JobScale, None]:
    """Yield the job's :class:`JobScale` now and on every change until ``n`` workers run.

    The last value yielded has ``running >= n``; the generator then ends.

    Args:
        ctx: The Context to poll through.
        job: The job (a spec or a :class:`JobRef`).
        n: How many running workers to wait for.
        timeout: Seconds to wait in total; ``None`` waits forever.
        poll: The polling rhythm (default :data:`DEFAULT_POLL_POLICY`).

    Raises:
        ValueError: ``n`` or ``timeout`` is negative (raised at once, not on iteration).
        WaitTimeoutError: fewer than ``n`` workers ran within ``timeout``; the message
            says how many were running and requested.
        JobNotFoundError: the job does not exist (or was deleted while waiting).
    """
    if isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    _check_timeout(timeout)
    ref = job.ref

    async def fetch() -> JobScale:
        return await ctx.get_job_scale(ref)

    def on_timeout(last: JobScale | None) -> str:
        now = (
            "the scale was never read"
            if last is None
            else f"{last.running} running, {last.requested} requested"
        )
        return (
            f"job {ref.name!r} did not reach {n} running worker(s) within {timeout:g} s "
            f"({now}); check that the job was scaled (set_job_scale) and has resources"
        )

    changes = _changes(
        ctx,
        "getJobScale",
        ref,
        fetch,
        timeout=timeout,
        policy=poll or DEFAULT_POLL_POLICY,
        on_timeout=on_timeout,
    )
    return _until(changes, lambda scale: scale.running >= n)


async def wait_for_scale(
    ctx: Context,
    job: Job,
    n: int,
    *,
    timeout: float | None,
    poll: PollPolicy | None = None,
) -> JobScale:
    """Wait until ``n`` workers run and return that scale.

    Same arguments and errors as :func:`wait_for_workers`.
    """
    scales = wait_for_workers(ctx, job, n, timeout=timeout, poll=poll)
    last: JobScale | None = None
    async with contextlib.aclosing(scales):
        async for scale in scales:
            last = scale
    assert last is not None  # the generator ends only after yielding a final scale
    return last


def watch_job(
    ctx: Context,
    job: Job,
    *,
    timeout: float | None,
    poll: PollPolicy | None = None,
) -> AsyncGenerator[JobStatus, None]:
    """Yield the job's :class:`JobStatus` now and on every change until it completes.

    The last value yielded has ``completed`` true: the job succeeded, or -- on servers
    that report it (the local server does, a plain JuliaRun server does not) -- failed.

    Args:
        ctx: The Context to poll through.
        job: The job (a spec or a :class:`JobRef`).
        timeout: Seconds to watch in total; ``None`` watches until the job completes.
        poll: The polling rhythm (default :data:`DEFAULT_POLL_POLICY`).

    Raises:
        ValueError: ``timeout`` is negative (raised at once, not on iteration).
        WaitTimeoutError: the job did not complete within ``timeout``.
        JobNotFoundError: the job does not exist (or was deleted while watched).
    """
    _check_timeout(timeout)
    ref = job.ref

    async def fetch() -> JobStatus:
        return await ctx.get_job_status(ref)

    def on_timeout(last: JobStatus | None) -> str:
        if last is None:
            now = "its status was never read"
        else:
            now = f"phase {last.phase}" if last.phase else f"succeeded={last.succeeded}"
        return f"job {ref.name!r} did not complete within {timeout:g} s ({now})"

    changes = _changes(
        ctx,
        "getJobStatus",
        ref,
        fetch,
        timeout=timeout,
        policy=poll or DEFAULT_POLL_POLICY,
        on_timeout=on_timeout,
    )
    return _until(changes, lambda status: status.completed)


async def wait_for_job(
    ctx: Context,
    job: Job,
    *,
    timeout: float | None,
    poll: PollPolicy | None = None,
) -> JobStatus:
    """Wait for the job to complete and return its final status.

    Same arguments and errors as :func:`watch_job`.
    """
    statuses = watch_job(ctx, job, timeout=timeout, poll=poll)
    last: JobStatus | None = None
    async with contextlib.aclosing(statuses):
        async for status in statuses:
            last = status
    assert last is not None  # the generator ends only after yielding a final status
    return last
