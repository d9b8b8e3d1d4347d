"""Log streaming: ``tail_logs`` yields a job's log lines, in order, each once.

Two paths, chosen per :class:`~juliarun_aio.Context` on first use and remembered:

**The resumable stream** (servers whose ``serverInfo`` lists ``streamLogs``, such as the
local server).  ``GET streamLogs/<JobType>/?name=..&cursor=N`` answers NDJSON: log lines
carrying a cursor (their 1-based number in the job's combined log), heartbeats while the
job is quiet, and an end marker once the job completed and every line was sent.

- After any disconnect -- reset, truncated body, a 5xx, or no byte at all (heartbeats
  included) for ``idle_timeout`` seconds -- the request is made again from the last
  cursor, after a full-jitter backoff from the Context's :class:`RetryPolicy`.  Lines at
  or below the cursor are dropped, so none is lost and none repeated.  It gives up when
  no byte arrived for the policy's ``total_timeout``.
- Each :class:`LogLine` carries its ``cursor``: pass it as ``since=`` to resume later.

**Polling** (a plain JuliaRun server: only ``tailJob``, the last ``count`` lines).

- Polls back off while the log is quiet and speed up while lines arrive
  (:class:`~juliarun_aio._watch.PollPolicy`).
- Consecutive windows are aligned by content in linear time (:func:`overlap_end`, a
  Knuth-Morris-Pratt scan).  A window that does not connect to the previous one means
  lines may have scrolled past between two polls: the window is asked for again with a
  larger ``count`` (up to :data:`MAX_POLL_WINDOW`).  If even that does not connect, the
  lines are yielded and a :class:`LogGapWarning` is issued -- a gap is never silent.
- Guarantees are weaker here.  While the whole log fits in a window, lines are counted
  by position and are exact.  Beyond that, the log is aligned by content: if the job
  prints a run of identical lines longer than what arrived between two polls, the
  repeats cannot be told apart from the lines seen before and some are not yielded.
  ``cursor`` and ``proc`` are ``None`` and ``since=N`` skips the first ``N`` lines.
  A plain server reports success only, so ``follow=True`` ends once the job succeeded;
  after a failure it runs until the job is deleted (:class:`JobNotFoundError`).

Either way, ``follow=False`` yields what exists now and ends; ``follow=True`` ends only
when the job has completed and its last lines were yielded, never because a connection
closed.  A job that does not exist yet is waited for (``start_timeout``); a job deleted
while tailed raises :class:`~juliarun_aio.JobNotFoundError`.

Connections: a stream holds a pooled connection for as long as it runs.  So that streams
can never starve the short calls, at most half of the Context's request slots carry
streams (10 with the default pool of 20); further streams wait for a free stream slot.
Raise ``limits`` on the Context to run more streams at once.  Closing the generator --
``break``, cancellation, an exception in the consumer -- closes the response and frees
its slot; with :func:`contextlib.aclosing` that happens before the ``async with`` ends.
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, cast

import anyio
import attrs
import httpx

from . import _errors as errors
from ._retry import backoff_delay, is_retryable_status
from ._watch import DEFAULT_POLL_POLICY, PollPolicy

if TYPE_CHECKING:
    from ._context import Context, Job
    from ._jobs import JobRef

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_START_TIMEOUT",
    "MAX_POLL_WINDOW",
    "POLL_WINDOW",
    "LogGapWarning",
    "LogLine",
    "Mode",
    "overlap_end",
    "tail_logs",
]

#: Seconds to wait for a job that does not exist yet.
DEFAULT_START_TIMEOUT = 60.0
#: Seconds without a byte (heartbeats included) after which a stream is presumed dead.
DEFAULT_IDLE_TIMEOUT = 30.0
#: ``count`` of the first ``tailJob`` poll; small logs come back whole in one call.
POLL_WINDOW = 1000
#: The largest ``count`` the polling path asks for.
MAX_POLL_WINDOW = 250_000

#: ``"auto"`` picks the stream when the server offers it; the others force a path.
Mode = Literal["auto", "stream", "poll"]

STREAM_VERB = "streamLogs"
_PATH_FEATURE = "tail_logs.path"
_STREAM_SLOTS_FEATURE = "tail_logs.stream_slots"
# The heartbeat period asked for is a third of the idle timeout, so that a healthy but
# quiet stream sends a few per timeout; within the server's default 5 s and its 10 ms floor.
_MAX_HEARTBEAT = 5.0
_MIN_HEARTBEAT = 0.01


@attrs.frozen
class LogLine:
    """One line of a job's log.

    Attributes:
        text: The line, without its newline.
        stream: ``"stdout"`` or ``"stderr"``; on the polling path, the ``stream`` asked
            for (``None`` when both were).
        cursor: The line's number in the job's combined log (stream path only): pass it
            as ``since=`` to resume after this line.
        proc: The process that wrote it, ``"master"`` or ``"worker-<i>"`` (stream path
            only).
    """

    text: str
    stream: str | None = None
    cursor: int | None = None
    proc: str | None = None


class LogGapWarning(UserWarning):
    """Lines of a polled log may have been missed.

    Issued by the polling path of ``tail_logs`` when even the largest window did not
    connect to the lines seen before: the job wrote more than :data:`MAX_POLL_WINDOW`
    lines between two polls, or its log was longer than that when tailing started.
    Turn it into an error with ``warnings.simplefilter("error", LogGapWarning)``.

    Attributes:
        job: The job's name.
        window: The ``count`` of the window that did not connect.
    """

    def __init__(self, message: str, *, job: str, window: int) -> None:
        super().__init__(message)
        self.job = job
        self.window = window


def tail_logs(
    ctx: Context,
    job: Job,
    *,
    follow: bool,
    stream: str | None,
    since: int | None,
    start_timeout: float | None,
    idle_timeout: float,
    mode: Mode = "auto",
    poll: PollPolicy | None = None,
) -> AsyncGenerator[LogLine, None]:
    """Yield the job's log lines from the start (or after ``since``), in order, each once.

    Args:
        ctx: The Context to read through.
        job: The job (a spec or a :class:`JobRef`).
        follow: Keep yielding new lines until the job completes; ``False`` yields the
            lines that exist now and ends.
        stream: ``"stdout"`` or ``"stderr"`` only; both when ``None``.
        since: Yield only lines after this cursor (stream path: a :attr:`LogLine.cursor`;
            polling path: a line count).
        start_timeout: Seconds to wait for a job that does not exist yet; ``None`` waits
            forever, ``0`` not at all.
        idle_timeout: Stream path: seconds without any byte before reconnecting.
        mode: ``"auto"`` (default), or force ``"stream"`` or ``"poll"``.
        poll: Polling rhythm (default :data:`~juliarun_aio._watch.DEFAULT_POLL_POLICY`).

    Returns:
        An async generator of :class:`LogLine`; close it (or use
        :func:`contextlib.aclosing`) to free its connection early.

    Raises:
        ValueError: a bad argument (raised at once, not on iteration).
        JobNotFoundError: the job was deleted while tailed.
        WaitTimeoutError: the job did not appear within ``start_timeout``.
        TransportError: the stream stayed down for the retry policy's ``total_timeout``.
    """
    if stream not in (None, "stdout", "stderr"):
        raise ValueError(f"stream must be 'stdout', 'stderr' or None, got {stream!r}")
    if since is not None and (isinstance(since, bool) or since < 0):
        raise ValueError(f"since must be a non-negative int or None, got {since!r}")
    if start_timeout is not None and not start_timeout >= 0:
        raise ValueError(f"start_timeout must be >= 0 or None, got {start_timeout!r}")
    if not idle_timeout > 0:
        raise ValueError(f"idle_timeout must be > 0 seconds, got {idle_timeout!r}")
    if mode not in ("auto", "stream", "poll"):
        raise ValueError(f"mode must be 'auto', 'stream' or 'poll', got {mode!r}")
    tail = _Tail(
        ctx,
        job.ref,
        follow=follow,
        stream=stream,
        since=since or 0,
        start_timeout=start_timeout,
        idle_timeout=idle_timeout,
        poll=poll or DEFAULT_POLL_POLICY,
    )
    return tail.run(mode)


async def _log_path(ctx: Context) -> str:
    """Return ``"stream"`` or ``"poll"`` for this Context, asking the server once."""
    path: str | None = ctx.feature(_PATH_FEATURE)
    if path is None:
        info = await ctx.server_info()
        extensions = info.get("extensions") if info else None
        path = "stream" if isinstance(extensions, list) and STREAM_VERB in extensions else "poll"
        ctx.remember(_PATH_FEATURE, path)
    return path


class _Tail:
    """The state of one ``tail_logs`` call."""

    def __init__(
        self,
        ctx: Context,
        ref: JobRef,
        *,
        follow: bool,
        stream: str | None,
        since: int,
        start_timeout: float | None,
        idle_timeout: float,
        poll: PollPolicy,
    ) -> None:
        self.ctx = ctx
        self.ref = ref
        self.follow = follow
        self.stream = stream
        self.since = since
        self.idle_timeout = idle_timeout
        self.poll = poll
        self.started = time.monotonic()
        self.start_deadline = None if start_timeout is None else self.started + start_timeout
        self.start_timeout = start_timeout
        # Set once the server knew the job: a 404 after that means it was deleted.
        self.job_seen = False
        self._start_wait = poll.initial

    async def run(self, mode: Mode) -> AsyncGenerator[LogLine, None]:
        path = await _log_path(self.ctx) if mode == "auto" else mode
        # Both paths yield lists of lines (one per network chunk or poll), so that the
        # generator hops cost per batch; only this, the public generator, hops per line.
        batches = self._stream() if path == "stream" else self._poll()
        async with contextlib.aclosing(batches):
            async for batch in batches:
                for line in batch:
                    yield line

    async def _not_found(self, exc: errors.JobNotFoundError) -> None:
        """Wait before asking again for a job that does not exist yet, or raise."""
        if self.job_seen:
            raise exc
        now = time.monotonic()
        if self.start_deadline is not None and now >= self.start_deadline:
            raise errors.WaitTimeoutError(
                f"job {self.ref.name!r} did not appear within {self.start_timeout:g} s; "
                "check its name and type, or pass a longer start_timeout",
                verb=exc.verb,
                job=self.ref.name,
            ) from exc
        delay = self.poll.spread(self._start_wait)
        if self.start_deadline is not None:
            delay = min(delay, self.start_deadline - now)
        await anyio.sleep(delay)
        self._start_wait = self.poll.grow(self._start_wait)

    # -- the resumable stream --------------------------------------------------------

    async def _stream(self) -> AsyncGenerator[list[LogLine], None]:
        ctx, ref = self.ctx, self.ref
        cursor = self.since
        policy = ctx.retry_policy
        retry = 0
        alive_at = time.monotonic()
        client = ctx.http_client
        # Reads are bounded by the idle timeout below, not by httpx.
        timeout = httpx.Timeout(None, connect=client.timeout.connect, pool=client.timeout.pool)
        while True:
            params = {
                "cursor": str(cursor),
                "follow": "true" if self.follow else "false",
                "heartbeat": f"{max(_MIN_HEARTBEAT, min(_MAX_HEARTBEAT, self.idle_timeout / 3)):g}",
            }
            if self.stream is not None:
                params["stream"] = self.stream
            ended = False
            error: errors.JuliaRunError
            try:
                async with (
                    _stream_slot(ctx),
                    client.stream(
                        "GET", ctx.build_url(STREAM_VERB, ref, params), timeout=timeout
                    ) as response,
                ):
                    if response.status_code != 200 or "ndjson" not in response.headers.get(
                        "content-type", ""
                    ):
                        await response.aread()
                        ctx._unwrap(STREAM_VERB, ref, response)
                        raise errors.ResponseError(
                            f"expected 200 with an NDJSON body, got {response.status_code}",
                            verb=STREAM_VERB,
                            job=ref.name,
                            status_code=response.status_code,
                        )
                    self.job_seen = True
                    chunks = _ndjson(response, self.idle_timeout)
                    async with contextlib.aclosing(chunks):
                        async for events in chunks:
                            # Every batch of events is a sign of life (heartbeats too).
                            retry, alive_at = 0, time.monotonic()
                            lines, cursor, ended = _lines_after(events, cursor)
                            if lines:
                                yield lines
                            if ended:
                                break
            except errors.JobNotFoundError as exc:
                await self._not_found(exc)
                continue
            except errors.ApiError as exc:
                if not is_retryable_status(exc.status_code):
                    raise
                error = exc
            except httpx.TransportError as exc:
                error = ctx._transport_error(exc, STREAM_VERB, ref, retry + 1)
            except _StreamIdleError:
                error = errors.TimeoutError(
                    f"no data on the log stream for {self.idle_timeout:g} s",
                    verb=STREAM_VERB,
                    job=ref.name,
                    attempts=retry + 1,
                )
            else:
                if ended:
                    return
                error = errors.TransportError(
                    "the log stream closed before its end marker",
                    verb=STREAM_VERB,
                    job=ref.name,
                    attempts=retry + 1,
                )
            if time.monotonic() - alive_at >= policy.total_timeout:
                error.message += (
                    f" (the stream stayed down for {policy.total_timeout:g} s; "
                    f"resume with since={cursor})"
                )
                raise error
            await anyio.sleep(backoff_delay(retry, policy))
            retry += 1

    # -- polling tailJob -------------------------------------------------------------

    async def _poll(self) -> AsyncGenerator[list[LogLine], None]:
        ctx, ref = self.ctx, self.ref
        tracker = WindowTracker()
        count = POLL_WINDOW
        interval = self.poll.initial
        completed = False
        while True:
            try:
                window = _split(await ctx.tail_job(ref, self.stream, count))
            except errors.JobNotFoundError as exc:
                await self._not_found(exc)
                continue
            self.job_seen = True
            new = tracker.advance(window, complete=len(window) < count)
            if new is None:
                if count < MAX_POLL_WINDOW:
                    count = min(count * 4, MAX_POLL_WINDOW)
                    continue
                new = tracker.resync(window)
                warnings.warn(
                    LogGapWarning(
                        f"job {ref.name!r}: log lines may be missing: the {count}-line "
                        "window did not reach the lines seen before (the job wrote more "
                        "between two polls, or the log was longer when tailing started)",
                        job=ref.name,
                        window=count,
                    ),
                    stacklevel=2,
                )
            skip = 0
            if tracker.position is not None:
                skip = max(0, min(len(new), self.since - (tracker.position - len(new))))
            if len(new) > skip:
                yield [LogLine(text, stream=self.stream) for text in new[skip:]]
            if not self.follow or completed:
                return
            # Keep the window about twice what one poll brings, so that the next window
            # still overlaps this one; shrink slowly, grow at once.
            wanted = max(POLL_WINDOW, 2 * len(new))
            count = min(MAX_POLL_WINDOW, wanted if wanted > count else max(wanted, count // 2))
            if new:
                interval = self.poll.initial
            else:
                interval = self.poll.grow(interval)
                # Quiet: maybe the job is done.  One more tail after "completed" drains
                # the lines written between the last tail and the status.
                status = await ctx.get_job_status(ref)
                if status.completed:
                    completed = True
                    continue
            await anyio.sleep(self.poll.spread(interval))


@contextlib.asynccontextmanager
async def _stream_slot(ctx: Context) -> AsyncIterator[None]:
    """Hold a stream slot and a request slot of ``ctx`` while a stream is open."""
    slots: anyio.CapacityLimiter | None = ctx.feature(_STREAM_SLOTS_FEATURE)
    if slots is None:
        slots = anyio.CapacityLimiter(max(1, int(ctx._slots.total_tokens) // 2))
        ctx.remember(_STREAM_SLOTS_FEATURE, slots)
    # Borrow on behalf of a token, not the task: a generator that is garbage-collected
    # is closed from another task, which must still be able to release.
    borrower = object()
    await slots.acquire_on_behalf_of(borrower)
    try:
        await ctx._slots.acquire_on_behalf_of(borrower)
        try:
            yield
        finally:
            ctx._slots.release_on_behalf_of(borrower)
    finally:
        slots.release_on_behalf_of(borrower)


_decode_json = json.JSONDecoder().decode


class _StreamIdleError(Exception):
    """Nothing arrived on a stream for the idle timeout."""


async def _ndjson(
    response: httpx.Response, idle_timeout: float
) -> AsyncGenerator[list[dict[str, Any]], None]:
    """Yield the JSON objects of an NDJSON body, a list per network chunk.

    Only complete lines are parsed: a partial last line waits for the next chunk, and
    is dropped if the body ends inside it.  Chunks without a complete line yield nothing.

    Raises:
        _StreamIdleError: no byte arrived for ``idle_timeout`` seconds.
        ResponseError: a complete line is not a JSON object (the objects on the lines
            before it are yielded first).
    """
    chunks = cast("AsyncGenerator[bytes, None]", response.aiter_bytes())
    try:
        buffer = b""
        while True:
            chunk: bytes | None = None
            with anyio.move_on_after(idle_timeout) as scope:
                chunk = await anext(chunks, None)
            if scope.cancelled_caught:
                raise _StreamIdleError
            if chunk is None:
                return
            # Split on the last newline in bytes (a chunk may end inside a character),
            # then decode the complete lines at once.
            complete, newline, buffer = (buffer + chunk).rpartition(b"\n")
            if not newline:
                continue
            events, error = _parse_lines(complete.decode("utf-8", "replace").split("\n"))
            if events:
                yield events
            if error is not None:
                raise error
    finally:
        await _unwind(chunks)


def _parse_lines(lines: list[str]) -> tuple[list[dict[str, Any]], errors.ResponseError | None]:
    """Parse NDJSON lines; blank lines are skipped.

    Returns:
        The objects, and ``None``; or, when a line is not a JSON object, the objects on
        the lines before it and a :class:`ResponseError` naming that line.
    """
    # Fast path: one decoder call for the whole chunk instead of one per line, which
    # saves the per-call overhead of the json module on every line.  It is taken only
    # when it yields exactly one object per line: a blank line or a malformed one makes
    # the array invalid, or changes its length (``{..},{..}`` on one line), or puts a
    # non-object in it -- then the lines are parsed one by one below.  (Malformed lines
    # would pass only if, joined to their neighbours, they formed exactly as many
    # objects: not what a cut line or a stray byte produces.)
    try:
        events = _decode_json("[" + ",".join(lines) + "]")
    except ValueError:
        pass
    else:
        if len(events) == len(lines) and set(map(type, events)) == {dict}:
            return events, None
    # Slow path: skip blank lines and name the first malformed one.
    events = []
    for raw in lines:
        if not raw or raw.isspace():
            continue
        try:
            event = _decode_json(raw)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            return events, errors.ResponseError(
                f"unreadable log stream line: {raw[:200]!r}", verb=STREAM_VERB
            )
        events.append(event)
    return events, None


async def _unwind(chunks: AsyncGenerator[bytes, None]) -> None:
    """Finish httpx's chain of body generators, which ``aclose`` would leave suspended.

    Closing the outermost generator does not close the ones it iterates (httpx and
    httpcore), and trio warns when those are garbage-collected unfinished.  Asking for
    the next chunk inside a cancelled scope runs the chain down to its socket read,
    where the cancellation ends every generator in it.  Buffered chunks met on the way
    are dropped: the stream is being abandoned.
    """
    with anyio.CancelScope() as scope:
        scope.cancel()
        while True:
            try:
                await anext(chunks)
            except (StopAsyncIteration, httpx.HTTPError):
                return


def _lines_after(events: list[dict[str, Any]], cursor: int) -> tuple[list[LogLine], int, bool]:
    """Read a batch of stream events into the log lines after ``cursor``.

    Heartbeats, events this SDK does not know and lines at or below ``cursor`` (resent
    after a reconnect) are dropped.

    Returns:
        The new lines, the cursor of the last of them (``cursor`` if none), and whether
        the end marker was met (events after it are ignored).
    """
    lines: list[LogLine] = []
    append = lines.append
    for event in events:
        if event.get("end"):
            return lines, cursor, True
        text, line_cursor = event.get("text"), event.get("cursor")
        # ``type(..) is int`` also rules out booleans (json gives plain ints).
        if not isinstance(text, str) or type(line_cursor) is not int or line_cursor <= cursor:
            continue
        stream, proc = event.get("stream"), event.get("proc")
        append(
            _new_line(
                text,
                stream if isinstance(stream, str) else None,
                line_cursor,
                proc if isinstance(proc, str) else None,
            )
        )
        cursor = line_cursor
    return lines, cursor, False


# attrs' ``__init__`` of a frozen class sets each field with ``object.__setattr__`` (the
# class's own ``__setattr__`` raises), which costs about as much as parsing the line.
# Setting the slots through their descriptors gives the same object at about half the
# cost; the stream path builds every LogLine this way.  (LogLine must keep slots.)
_new_object = object.__new__
_set_text = LogLine.__dict__["text"].__set__
_set_stream = LogLine.__dict__["stream"].__set__
_set_cursor = LogLine.__dict__["cursor"].__set__
_set_proc = LogLine.__dict__["proc"].__set__


def _new_line(text: str, stream: str | None, cursor: int | None, proc: str | None) -> LogLine:
    """Return ``LogLine(text, stream=stream, cursor=cursor, proc=proc)``, faster."""
    line: LogLine = _new_object(LogLine)
    _set_text(line, text)
    _set_stream(line, stream)
    _set_cursor(line, cursor)
    _set_proc(line, proc)
    return line


def _split(text: str) -> list[str]:
    """Split a ``tailJob`` answer into its lines (entries are joined by newlines)."""
    return text.split("\n") if text else []


# -- aligning polled windows ------------------------------------------------------------


def overlap_end(previous: Sequence[str], window: Sequence[str]) -> int:
    """Return how many leading lines of ``window`` the ``previous`` window already held.

    Both are tails of the same append-only log, ``window`` taken later.  The answer is
    the largest ``j`` such that ``window[:j]`` ends exactly where ``previous`` ends:
    either ``previous`` occurs whole in ``window`` ending at ``j``, or a suffix of
    ``previous`` equals ``window[:j]``.  Taking the largest ``j`` never repeats a line;
    with identical repeated lines it may skip some (see the module docstring).

    A Knuth-Morris-Pratt scan of the reversed window for the reversed previous window:
    ``O(len(previous) + len(window))`` comparisons.

    Returns:
        ``j`` in ``0..len(window)``; ``0`` when nothing lines up.
    """
    pattern = previous[::-1]
    text = window[::-1]
    p = len(pattern)
    if not p or not text:
        return 0
    # failure[i]: length of the longest proper prefix of pattern[:i + 1] that is also
    # a suffix of it.
    failure = [0] * p
    k = 0
    for i in range(1, p):
        while k and pattern[i] != pattern[k]:
            k = failure[k - 1]
        if pattern[i] == pattern[k]:
            k += 1
        failure[i] = k
    state = 0
    for i, item in enumerate(text):
        while state and item != pattern[state]:
            state = failure[state - 1]
        if item == pattern[state]:
            state += 1
        if state == p:
            # The earliest whole match in the reversed window is the latest in the window.
            return len(text) - (i - p + 1)
    # No whole match: state is the longest prefix of the reversed previous window that
    # ends the reversed window, i.e. the longest suffix of previous that starts window.
    return state


class WindowTracker:
    """Turns successive ``tailJob`` windows into the lines not yielded yet.

    While every window holds the whole log (fewer lines than asked for), lines are
    counted by position, which is exact even for repeated lines; otherwise windows are
    aligned by content with :func:`overlap_end`.

    Attributes:
        position: How many lines of the log were consumed, counted from its first line;
            ``None`` once a window did not reach back to the start.
    """

    def __init__(self) -> None:
        self._previous: list[str] = []
        self.position: int | None = 0

    def advance(self, window: list[str], *, complete: bool) -> list[str] | None:
        """Take the next window and return its new lines.

        Args:
            window: The lines ``tailJob`` returned.
            complete: ``window`` holds the whole log (it had fewer lines than asked for).

        Returns:
            The lines after those seen before, or ``None`` when ``window`` does not
            connect to them (lines may have been missed): ask again with a larger window,
            or accept the gap with :meth:`resync`.
        """
        previous, position = self._previous, self.position
        if (
            complete
            and position is not None
            and len(window) >= position
            and window[position - len(previous) : position] == previous
        ):
            new = window[position:]
        else:
            seen = overlap_end(previous, window)
            if seen == 0 and not complete:
                # A full window that does not reach back to what was seen (or, at the
                # start, to the first line): lines may lie in between.
                return None
            new = window[seen:]
        self._previous = window
        self.position = len(window) if complete else None
        return new

    def resync(self, window: list[str]) -> list[str]:
        """Accept ``window`` after a gap: all of it is new, positions are unknown."""
        self._previous = window
        self.position = None
        return window
