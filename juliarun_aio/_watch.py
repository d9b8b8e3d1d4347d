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
- **Outages are waited out.**  A poll that fails with a transport error, a timeout or an
  answer that may change (5xx, 408, 429) is an outage, not an end: polling goes on with
  backoff until the server answers again.  Only the watcher's ``timeout`` (or, without
  one, :attr:`PollPolicy.outage` seconds of outage), a definite refusal (another 4xx) or
  closing the Context end a wait.  A graceful restart of a server takes seconds.
- **The state is read at least once.**  Every wait reads the state before its deadline
  counts, so ``timeout=0`` means "check now".
- **One submission.**  On servers that report a job's ``uid`` (the local server does), a
  watcher raises :class:`~juliarun_aio.JobNotFoundError` when the uid changes: the job it
  watched was deleted and another one was submitted under its name.  A plain JuliaRun
  server reports no uid, so there a delete followed at once by a new submission of the
  same name between two polls goes unnoticed, and the watcher goes on with the new job.
- **Waits that cannot succeed end early.**  ``wait_for_workers`` also reads the job's
  status with each poll and raises :class:`~juliarun_aio.JobStateError` once the job has
  ended, or when the server reports a worker that cannot start (a status ``message`` on a
  running job, the local server's way) and the scale stays short of ``n`` for
  :data:`STUCK_POLLS` polls in a row -- unless the status lists workers still on their way
  (``waiting``: queued by a cluster's scheduler, which may take long).

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
from typing import Generic, TypeVar

import anyio
import attrs
import httpx

from ._config import DEFAULT_WAIT_TIMEOUT
from ._errors import (
    ApiError,
    CertificateError,
    JobStateError,
    JuliaRunError,
    TransportError,
    WaitTimeoutError,
    job_replaced_error,
)
from ._http import HttpLayer
from ._jobs import Job, JobRef
from ._models import JobScale, JobStatus
from ._retry import is_retryable_status

__all__ = [
    "DEFAULT_OUTAGE",
    "DEFAULT_POLL_POLICY",
    "DEFAULT_WAIT_TIMEOUT",
    "STUCK_POLLS",
    "PollPolicy",
    "wait_for_job",
    "wait_for_scale",
    "wait_for_workers",
    "watch_job",
]

#: How long a wait without a timeout rides out a server that does not answer, in seconds.
DEFAULT_OUTAGE = 300.0
#: Polls in a row that must show a worker that cannot start, and no progress, before
#: ``wait_for_workers`` gives up on reaching ``n``.
STUCK_POLLS = 3

_T = TypeVar("_T")


@attrs.frozen
class PollPolicy:
    """How often the long-running helpers poll.

    Attributes:
        initial: Seconds between polls right after a change (the fastest rate).
        maximum: Longest interval, reached while nothing changes.
        factor: Growth of the interval per poll that shows no change.
        jitter: Random spread of every wait, as a fraction: ``0.2`` waits between 80 %
            and 120 % of the interval.  ``PollPolicy(0, 0)`` never waits (tests).
        outage: Seconds a wait without a ``timeout`` rides out a server that does not
            answer (transport errors, timeouts, 5xx), counted from the first failed poll;
            then the last error is raised.  A wait with a ``timeout`` rides out any
            outage within it.
    """

    initial: float = attrs.field(default=0.25, validator=attrs.validators.ge(0))
    maximum: float = attrs.field(default=5.0, validator=attrs.validators.ge(0))
    factor: float = attrs.field(default=1.5, validator=attrs.validators.ge(1))
    jitter: float = attrs.field(
        default=0.2, validator=[attrs.validators.ge(0), attrs.validators.le(1)]
    )
    outage: float = attrs.field(default=DEFAULT_OUTAGE, validator=attrs.validators.ge(0))

    def grow(self, interval: float) -> float:
        """Return the interval after a poll that showed no change."""
        return min(self.maximum, max(interval, self.initial) * self.factor)

    def spread(self, interval: float, rand: Callable[[], float] = random.random) -> float:
        """Return ``interval`` with jitter applied (never negative)."""
        return max(0.0, interval * (1.0 + self.jitter * (2.0 * rand() - 1.0)))


#: The default polling rhythm: 0.25 s after a change, backing off to 5 s.
DEFAULT_POLL_POLICY = PollPolicy()


def is_outage(error: JuliaRunError) -> bool:
    """Tell whether a failed poll means "the server is not answering now" (wait it out).

    Transport errors and timeouts, and the statuses a read is retried on (5xx but 501 and
    505, 408, 429), are outages; any other refusal, and a refused certificate, is definite.
    """
    if isinstance(error, TransportError):
        return not isinstance(error, CertificateError)
    return isinstance(error, ApiError) and is_retryable_status(error.status_code)


class _SharedPoll(Generic[_T]):
    """The latest value of one poll for one job, shared by every watcher on a Context.

    ``version`` grows by one each time the value changes (or a poll is refused), so a
    watcher that remembers the version it saw knows whether there is news.  A poll that
    meets an outage publishes nothing: it records the error and when the outage began.
    """

    def __init__(self, fetch: Callable[[], Awaitable[_T]], policy: PollPolicy) -> None:
        self._fetch: Callable[[], Awaitable[_T]] = fetch
        self.policy = policy
        self.version = 0
        self.result: _T | JuliaRunError | None = None
        # When the last answer arrived, and when the last poll ended, answered or not.
        self.fetched_at = -math.inf
        self.attempted_at = -math.inf
        # While the server does not answer: since when, and what the last poll raised.
        self.down_since: float | None = None
        self.outage: JuliaRunError | None = None
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
                if is_outage(exc):
                    self._fail(exc)
                    return
                value = exc
            self._publish(value)
        finally:
            self._in_flight = None
            done.set()

    def _fail(self, error: JuliaRunError) -> None:
        self.attempted_at = now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
        self.outage = error
        self._interval = self.policy.grow(self._interval)

    def _publish(self, value: _T | JuliaRunError) -> None:
        self.fetched_at = self.attempted_at = time.monotonic()
        self.down_since = self.outage = None
        if isinstance(value, JuliaRunError) or value != self.result:
            self.result = value
            self.version += 1
            self._interval = self.policy.initial
        else:
            self._interval = self.policy.grow(self._interval)

    def down_for(self) -> float:
        """Seconds since the ongoing outage began (0 while the server answers)."""
        return 0.0 if self.down_since is None else time.monotonic() - self.down_since

    def news(self, seen: int, since: float) -> tuple[int, _T] | None:
        """Return the value newer than version ``seen`` fetched at or after ``since``.

        Raises:
            JuliaRunError: the poll that produced the news was refused (each caller gets
                its own copy of the error).
        """
        result = self.result
        if result is None or self.version <= seen or self.fetched_at < since:
            return None
        if isinstance(result, JuliaRunError):
            raise copy.copy(result)
        return self.version, result

    async def attempt_since(self, since: float) -> None:
        """Make sure a poll ended at or after ``since``: make one, or join one in flight."""
        while self.attempted_at < since:
            await self.fetch_shared()

    async def wait(self) -> None:
        """Wait until the next poll ended: join one in flight, or make it in turn."""
        if self._in_flight is not None:
            await self._in_flight.wait()
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


_PollerKey = tuple[str, JobRef]


def _shared_poll(
    pollers: dict[_PollerKey, _SharedPoll[_T]],
    key: _PollerKey,
    fetch: Callable[[], Awaitable[_T]],
    policy: PollPolicy,
) -> _SharedPoll[_T]:
    poller = pollers.get(key)
    if poller is None:
        poller = pollers[key] = _SharedPoll(fetch, policy)
    poller.subscribers += 1
    return poller


def _release(
    pollers: dict[_PollerKey, _SharedPoll[_T]], key: _PollerKey, poller: _SharedPoll[_T]
) -> None:
    poller.subscribers -= 1
    if poller.subscribers == 0 and pollers.get(key) is poller:
        del pollers[key]


async def _changes(
    http: HttpLayer,
    key: _PollerKey,
    fetch: Callable[[], Awaitable[_T]],
    *,
    timeout: float | None,
    policy: PollPolicy,
    describe: Callable[[_T | None], str],
) -> AsyncGenerator[_T, None]:
    """Yield the polled value now and on every change, waiting out outages.

    Raises:
        WaitTimeoutError: ``timeout`` passed; the message is ``describe(last value)``,
            plus the ongoing outage if there is one.
        JuliaRunError: a poll was refused; or, without a timeout, the server did not
            answer for ``policy.outage`` seconds (the last error, saying so).
        ClientClosedError: the Context was closed.
    """
    started = time.monotonic()
    deadline = math.inf if timeout is None else started + timeout
    budget = policy.outage if timeout is None else math.inf
    state = http.loop_state()
    poller = _shared_poll(state.pollers, key, fetch, policy)
    seen = 0
    last: _T | None = None
    try:
        # The first read may outlast the deadline (timeout=0 checks now), but not by
        # more than one request: retries past the deadline are cut short.
        first_read = max(deadline, started + _one_request(state.client.timeout))
        with state.close_guard(), anyio.move_on_after(first_read - time.monotonic()):
            await poller.attempt_since(started)
        while True:
            news = poller.news(seen, started)
            if news is not None:
                seen, value = news
                # The shared value may have changed and changed back since this watcher
                # last looked; that is no change for this watcher.
                if value != last:
                    last = value
                    yield value
                continue
            down = poller.down_for()
            if poller.outage is not None and down >= budget:
                error = copy.copy(poller.outage)
                error.message += (
                    f" (the server has been unavailable for {down:.0f} s, longer than a wait "
                    f"without a timeout rides out: PollPolicy.outage={budget:g})"
                )
                raise error
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                message = describe(last)
                if poller.outage is not None:
                    message += (
                        f"; the server has been unavailable for {down:.1f} s: {poller.outage}"
                    )
                raise WaitTimeoutError(message, verb=key[0], job=key[1].name)
            # The deadline covers the wait only: a generator must not yield inside a
            # cancel scope.
            with state.close_guard(), anyio.move_on_after(remaining):
                await poller.wait()
    finally:
        _release(state.pollers, key, poller)


def _one_request(limits: httpx.Timeout) -> float:
    """Return the longest one request may take under ``limits``: connect, then answer."""
    if limits.connect is None or limits.read is None:
        return math.inf
    return limits.connect + limits.read


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and not timeout >= 0:
        raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout!r}")


def _same_submission(uid: str | None, status: JobStatus, ref: JobRef, verb: str) -> str | None:
    """Return the uid of the submission watched, or raise if ``status`` is of another."""
    if uid is not None and status.uid is not None and status.uid != uid:
        raise job_replaced_error(ref.name, verb)
    return uid if uid is not None else status.uid


def _summary(status: JobStatus | None, scale: JobScale | None = None) -> str:
    """Describe what was last seen of a job, for messages: phase, counts, message."""
    if status is None and scale is None:
        return "nothing was read yet"
    parts = []
    if scale is not None:
        parts.append(f"{scale.running} running, {scale.requested} requested")
    if status is not None:
        if status.phase:
            parts.append(f"phase {status.phase}")
        else:
            parts.append("succeeded" if status.succeeded else "not succeeded")
        if status.parallelism or status.nworkers_succeeded or status.npending:
            parts.append(
                f"{status.nworkers_succeeded} of {status.parallelism} worker(s) succeeded, "
                f"{status.npending} pending"
            )
        if status.message:
            parts.append(f"message {status.message!r}")
    return "last seen: " + ", ".join(parts)


@attrs.frozen
class _Workers:
    """One poll of ``wait_for_workers``: the scale, then the status read after it.

    ``stuck`` says the status has reported a worker that cannot start, with the scale
    short of what was requested, for :data:`STUCK_POLLS` polls in a row.
    """

    scale: JobScale
    status: JobStatus
    stuck: bool = False


def _workers_fetch(http: HttpLayer, ref: JobRef) -> Callable[[], Awaitable[_Workers]]:
    same = 0
    previous: tuple[object, ...] | None = None

    async def fetch() -> _Workers:
        nonlocal same, previous
        scale = await http.fetch("getJobScale", ref, JobScale.from_wire)
        # Read after the scale, so that its uid vouches for the scale too.
        status = await http.fetch("getJobStatus", ref, JobStatus.from_wire)
        # A server that says workers are on their way (waiting in a cluster's queue, say)
        # has not given up on them, whatever its message says.
        short = (
            status.message is not None
            and not status.completed
            and scale.running < scale.requested
            and not status.extra.get("waiting")
        )
        key = (scale, status.phase, status.message)
        same = same + 1 if short and key == previous else int(short)
        previous = key
        return _Workers(scale, status, stuck=same >= STUCK_POLLS)

    return fetch


def wait_for_workers(
    http: HttpLayer,
    job: Job,
    n: int,
    *,
    timeout: float | None,
    poll: PollPolicy | None = None,
) -> AsyncGenerator[JobScale, None]:
    """Yield the job's :class:`JobScale` now and on every change until ``n`` workers run.

    The last value yielded has ``running >= n``; the generator then ends.  Each poll
    reads the scale and then the status, so that a wait that cannot succeed ends early.

    Args:
        http: The HTTP layer of the Context to poll through.
        job: The job (a spec or a :class:`JobRef`).
        n: How many running workers to wait for.
        timeout: Seconds to wait in total (``0``: check once); ``None`` waits forever.
        poll: The polling rhythm (default :data:`DEFAULT_POLL_POLICY`).

    Raises:
        ValueError: ``n`` or ``timeout`` is negative (raised at once, not on iteration).
        WaitTimeoutError: fewer than ``n`` workers ran within ``timeout``; the message
            says what was last seen (workers running and requested, phase, message).
        JobStateError: the job ended, or the server says workers cannot start and fewer
            than ``n`` run.
        JobNotFoundError: the job does not exist, was deleted, or was replaced by
            another submission of the same name.
    """
    if isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    _check_timeout(timeout)
    ref = job.ref

    def describe(last: _Workers | None) -> str:
        seen = _summary(last.status, last.scale) if last else "nothing was read yet"
        return (
            f"job {ref.name!r} did not reach {n} running worker(s) within {timeout:g} s "
            f"({seen}); check that the job was scaled (set_job_scale) and has resources"
        )

    views = _changes(
        http,
        ("getJobScale", ref),
        _workers_fetch(http, ref),
        timeout=timeout,
        policy=poll or DEFAULT_POLL_POLICY,
        describe=describe,
    )
    return _scales_until(views, ref, n)


async def _scales_until(
    views: AsyncGenerator[_Workers, None], ref: JobRef, n: int
) -> AsyncGenerator[JobScale, None]:
    uid: str | None = None
    last: JobScale | None = None
    async with contextlib.aclosing(views):
        async for view in views:
            uid = _same_submission(uid, view.status, ref, "getJobStatus")
            scale, status = view.scale, view.status
            if scale.running >= n:
                yield scale
                return
            if status.completed:
                raise JobStateError(
                    f"job {ref.name!r} ended before {n} worker(s) ran "
                    f"({_summary(status, scale)}); no more workers will start",
                    verb="getJobStatus",
                    job=ref.name,
                    status=status,
                    scale=scale,
                )
            if view.stuck:
                raise JobStateError(
                    f"job {ref.name!r} cannot reach {n} running worker(s): {status.message} "
                    f"({_summary(status, scale)}); fix the job and update it (update_job), "
                    "or wait for fewer workers",
                    verb="getJobStatus",
                    job=ref.name,
                    status=status,
                    scale=scale,
                )
            if scale != last:
                last = scale
                yield scale


async def wait_for_scale(
    http: HttpLayer,
    job: Job,
    n: int,
    *,
    timeout: float | None,
    poll: PollPolicy | None = None,
) -> JobScale:
    """Wait until ``n`` workers run and return that scale.

    Same arguments and errors as :func:`wait_for_workers`.
    """
    return await _last(wait_for_workers(http, job, n, timeout=timeout, poll=poll))


def watch_job(
    http: HttpLayer,
    job: Job,
    *,
    timeout: float | None,
    poll: PollPolicy | None = None,
) -> AsyncGenerator[JobStatus, None]:
    """Yield the job's :class:`JobStatus` now and on every change until it completes.

    The last value yielded has ``completed`` true: the job succeeded, or -- on servers
    that report it (the local server does, a plain JuliaRun server does not) -- failed.

    Args:
        http: The HTTP layer of the Context to poll through.
        job: The job (a spec or a :class:`JobRef`).
        timeout: Seconds to watch in total (``0``: check once); ``None`` watches until
            the job completes (riding out at most :attr:`PollPolicy.outage` seconds of
            server outage).
        poll: The polling rhythm (default :data:`DEFAULT_POLL_POLICY`).

    Raises:
        ValueError: ``timeout`` is negative (raised at once, not on iteration).
        WaitTimeoutError: the job did not complete within ``timeout``; the message says
            what was last seen (phase, worker counts, message).
        JobNotFoundError: the job does not exist, was deleted, or was replaced by
            another submission of the same name.
    """
    _check_timeout(timeout)
    ref = job.ref

    async def fetch() -> JobStatus:
        return await http.fetch("getJobStatus", ref, JobStatus.from_wire)

    def describe(last: JobStatus | None) -> str:
        return f"job {ref.name!r} did not complete within {timeout:g} s ({_summary(last)})"

    statuses = _changes(
        http,
        ("getJobStatus", ref),
        fetch,
        timeout=timeout,
        policy=poll or DEFAULT_POLL_POLICY,
        describe=describe,
    )
    return _statuses_until(statuses, ref)


async def _statuses_until(
    statuses: AsyncGenerator[JobStatus, None], ref: JobRef
) -> AsyncGenerator[JobStatus, None]:
    uid: str | None = None
    async with contextlib.aclosing(statuses):
        async for status in statuses:
            uid = _same_submission(uid, status, ref, "getJobStatus")
            yield status
            if status.completed:
                return


async def wait_for_job(
    http: HttpLayer,
    job: Job,
    *,
    timeout: float | None,
    poll: PollPolicy | None = None,
) -> JobStatus:
    """Wait for the job to complete and return its final status.

    Same arguments and errors as :func:`watch_job`.
    """
    return await _last(watch_job(http, job, timeout=timeout, poll=poll))


async def _last(values: AsyncGenerator[_T, None]) -> _T:
    """Consume ``values`` and return the last one (the generator yields at least one)."""
    last: _T | None = None
    async with contextlib.aclosing(values):
        async for value in values:
            last = value
    assert last is not None
    return last
