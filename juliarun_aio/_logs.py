"""Log streaming: ``tail_logs`` yields a job's log lines, in order, each once.

``tail_log_batches`` yields the same lines a :class:`LogBatch` at a time, one per network
chunk (stream path) or poll (polling path); ``tail_logs`` is built on it, so everything
below holds for both.  A batch costs a fraction of a :class:`LogLine` per line: use it to
ship, store or count many lines, and ``tail_logs`` to act on lines one by one.

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
- A tail reads one submission of the job.  The first answer names it (the
  ``X-JuliaRun-Job-Uid`` header); every reconnect asks for that ``uid`` and checks the
  header, so a job deleted and submitted again under its name while tailed ends the tail
  with :class:`~juliarun_aio.JobNotFoundError` instead of yielding the new job's lines.  A
  server without job uids sends no header, and then this cannot be told.

**Polling** (a plain JuliaRun server: only ``tailJob``, the last ``count`` lines).

- Polls back off while the log is quiet and speed up while lines arrive
  (:class:`~juliarun_aio._watch.PollPolicy`).  The window (``count``) is kept at four
  times what one poll brings, at least :data:`POLL_WINDOW`.
- A window with fewer lines than asked for holds the whole log: its new lines are
  counted by position, exactly, whatever they contain.
- A full window is aligned with the previous one by content (:func:`alignments`, linear
  time), and the alignment is accepted only when it is unambiguous: at least half of the
  window lines up with the lines seen before, and no other shift does.  Lines that
  repeat a cycle -- identical lines, ``tick A`` / ``tick B``, a blank line at the seam
  of two windows -- fit at several shifts, or at one shift with too short an overlap.
  Such a window is asked for again, four times larger, until one alignment remains or
  the window holds the whole log, up to :data:`MAX_POLL_WINDOW` lines.  So a log that
  has repeated a cycle since its last distinct line is read back to that line at each
  poll: exact, at a cost that grows with the length of the cycle's run.
- What that guarantees: every line is yielded once, in order, when the job writes at
  most half a window between two polls -- or a :class:`LogGapWarning` says how many
  lines may be missing (``missing``) or repeated (``repeated``) where it was issued.
  The warning comes only when even a window of :data:`MAX_POLL_WINDOW` lines cannot
  settle the alignment: the last of that many lines repeat a cycle, or the job wrote
  more than half of that between two polls, or the log was longer than that when
  tailing started.  So a log shorter than :data:`MAX_POLL_WINDOW` lines never warns
  (but for the empty line below), however slowly or in what bursts it is written.
- A burst of more than half a window between two polls (a job that prints a lot after
  a quiet spell) is caught as well: its lines do not line up with the lines before, so
  the window grows.  One case is beyond any reader of the last lines of a log: new lines
  that begin by repeating, line for line, at least the half window printed just before
  them, and are followed by enough lines to fill the rest of the window, look exactly
  like a window with no such burst; the lines before the repeat are then not yielded.
- ``tailJob`` joins lines with newlines, so ``""`` is either no line or one empty line.
  The local server says which (the ``X-JuliaRun-Line-Count`` header, see docs/protocol.md,
  "Extensions of the local server").  From a server that does not, ``""`` reads as no
  line; if the log still reads so when the tail ends, a :class:`LogGapWarning` says one
  empty line may be missing.
- ``cursor`` and ``proc`` are ``None`` and ``since=N`` skips the first ``N`` lines.
  A plain server reports success only, so ``follow=True`` ends once the job succeeded;
  after a failure it runs until the job is deleted (:class:`JobNotFoundError`).

Either way, ``follow=False`` yields what exists now and ends; ``follow=True`` ends only
when the job has completed and its last lines were yielded, never because a connection
closed.  A job that does not exist yet is waited for (``start_timeout``); a job deleted
while tailed raises :class:`~juliarun_aio.JobNotFoundError`.

Connections: a stream holds a pooled connection for as long as it runs.  So that streams
can never starve the short calls, at most half of the Context's request slots carry
streams (10 with the default pool of 20); a further tail waits for a free stream slot up
to ``start_timeout``, then raises :class:`~juliarun_aio.WaitTimeoutError` naming the
limit.  Raise ``limits`` on the Context to run more streams at once.  Closing the
generator closes the response and frees its slot at once: ``aclose()``, or leaving an
``async with contextlib.aclosing(...)`` block in any way, and so does cancelling the task
while it waits for lines.  After ``break`` (or an exception in the loop body) a plain
``async for`` leaves the generator suspended, not closed: it frees its slot when the
event loop finalizes it, after garbage collection (trio warns about such generators).
Closing the Context ends a tail with :class:`~juliarun_aio.ClientClosedError`.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import json
import math
import operator
import time
import warnings
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from itertools import chain, repeat
from typing import Any, Literal, cast

import anyio
import attrs
import httpx

from . import _errors as errors
from ._config import DEFAULT_IDLE_TIMEOUT, DEFAULT_START_TIMEOUT
from ._http import UNSET, HttpLayer, TimeoutArg
from ._jobs import Job, JobRef
from ._models import JobStatus, str_from_wire
from ._retry import backoff_delay, is_retryable_status
from ._watch import DEFAULT_POLL_POLICY, PollPolicy

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_START_TIMEOUT",
    "LINE_COUNT_HEADER",
    "MAX_POLL_WINDOW",
    "POLL_WINDOW",
    "LogBatch",
    "LogGapWarning",
    "LogLine",
    "Mode",
    "WindowStep",
    "WindowTracker",
    "alignments",
    "tail_log_batches",
    "tail_logs",
    "tail_window",
]

#: ``count`` of the first ``tailJob`` poll; small logs come back whole in one call.
POLL_WINDOW = 1000
#: The largest ``count`` the polling path asks for.
MAX_POLL_WINDOW = 250_000
#: The local server's ``tailJob`` answer header: how many lines the answer joins, so
#: that one empty line is told from none (``""`` either way in the body).
LINE_COUNT_HEADER = "X-JuliaRun-Line-Count"
# Windows are kept this many times what one poll brings: a job may speed up twofold
# between two polls and still write less than half a window.
_WINDOW_MARGIN = 4
# A window that does not align is asked for again this many times larger.
_WINDOW_GROWTH = 4
# Aligning a window first looks for one of its last few lines that occurs only a few
# times in the window; see _alignments_between.
_ANCHOR_TRIES = 8
_ANCHOR_HITS = 8

#: ``"auto"`` picks the stream when the server offers it; the others force a path.
Mode = Literal["auto", "stream", "poll"]

STREAM_VERB = "streamLogs"
#: The ``serverInfo`` extension of servers that send a chunk of log lines as one event.
COLUMNS_EXTENSION = "streamLogsColumns"
#: The header of every ``streamLogs`` answer that names the job submission it reads.
UID_HEADER = "X-JuliaRun-Job-Uid"
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


@attrs.frozen
class LogBatch:
    """The log lines that one chunk of the stream (stream path) or one ``tailJob`` poll brought.

    What :meth:`Context.tail_log_batches <juliarun_aio.Context.tail_log_batches>` yields:
    the same lines as ``tail_logs``, in the same order, held column by column (entry
    ``i`` of each column describes line ``i``) instead of as one :class:`LogLine` each.
    Never empty.

    Attributes:
        texts: The lines, without their newlines.
        streams: Each line's :attr:`LogLine.stream`.
        cursors: Each line's :attr:`LogLine.cursor` (``None`` on the polling path).
        procs: Each line's :attr:`LogLine.proc` (``None`` on the polling path).
        cursor: The cursor of the last line (stream path; ``None`` on the polling path):
            pass it as ``since=`` to resume after this batch.
    """

    texts: tuple[str, ...]
    streams: tuple[str | None, ...]
    cursors: tuple[int | None, ...]
    procs: tuple[str | None, ...]
    cursor: int | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def __iter__(self) -> Iterator[LogLine]:
        return iter(self.lines())

    def lines(self) -> list[LogLine]:
        """The batch as :class:`LogLine` objects, as ``tail_logs`` yields them."""
        lines = list(map(_new_object, repeat(LogLine, len(self.texts))))
        # Set each field with a C-level loop: no Python code runs per line.
        for setter, column in (
            (_set_text, self.texts),
            (_set_stream, self.streams),
            (_set_cursor, self.cursors),
            (_set_proc, self.procs),
        ):
            deque(map(setter, lines, column), 0)
        return lines


class LogGapWarning(UserWarning):
    """Lines of a polled log may be missing or repeated.

    Issued by the polling path of ``tail_logs`` when even the largest window
    (:data:`MAX_POLL_WINDOW`) cannot be aligned with the lines yielded before: the job
    wrote more than half of it between two polls, or the log was longer than that when
    tailing started, or its last lines repeat a cycle longer than that; also when a
    server that does not send ``X-JuliaRun-Line-Count`` answers a finished job's log
    with an empty text (no line, or one empty line).  The lines after the warning are
    exact again from the next window that aligns.  Turn it into an error with
    ``warnings.simplefilter("error", LogGapWarning)``.

    Attributes:
        job: The job's name.
        window: The ``count`` of the window that did not align.
        missing: At most this many lines may be missing where the warning was issued
            (before the next line yielded); ``None`` when no bound is known.
        repeated: At most this many of the next lines yielded may repeat earlier ones.
    """

    def __init__(
        self, message: str, *, job: str, window: int, missing: int | None, repeated: int = 0
    ) -> None:
        super().__init__(message)
        self.job = job
        self.window = window
        self.missing = missing
        self.repeated = repeated


def tail_log_batches(  # noqa: PLR0917 - Context's options, in its order
    http: HttpLayer,
    job: Job,
    follow: bool,
    stream: str | None,
    since: int | None,
    start_timeout: float | None,
    idle_timeout: float,
    mode: Mode = "auto",
    poll: PollPolicy | None = None,
) -> AsyncGenerator[LogBatch, None]:
    """Yield the job's log lines from the start (or after ``since``), a batch at a time.

    One :class:`LogBatch` per chunk of the stream on the stream path (what one network
    read brought, or one event from a server that sends ``format=columns``: up to 128 KiB
    of its stored log, or one longer line) and per ``tailJob`` poll on the polling path,
    never empty; together they hold exactly the lines :func:`tail_logs` yields, with the
    same guarantees.

    Args:
        http: The HTTP layer of the Context to read through.
        job: The job (a spec or a :class:`JobRef`).
        follow: Keep yielding new lines until the job completes; ``False`` yields the
            lines that exist now and ends.
        stream: ``"stdout"`` or ``"stderr"`` only; both when ``None``.
        since: Yield only lines after this cursor (stream path: a :attr:`LogLine.cursor`
            or :attr:`LogBatch.cursor`; polling path: a line count).
        start_timeout: Seconds to wait for a job that does not exist yet; ``None`` waits
            forever, ``0`` not at all.
        idle_timeout: Stream path: seconds without any byte before reconnecting.
        mode: ``"auto"`` (default), or force ``"stream"`` or ``"poll"``.
        poll: Polling rhythm (default :data:`~juliarun_aio._watch.DEFAULT_POLL_POLICY`).

    Returns:
        An async generator of :class:`LogBatch`; close it (or use
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
    tail = _TailLogs(
        http,
        job.ref,
        follow=follow,
        stream=stream,
        since=since or 0,
        start_timeout=start_timeout,
        idle_timeout=idle_timeout,
        poll=poll or DEFAULT_POLL_POLICY,
    )
    return tail.run(mode)


def tail_logs(  # noqa: PLR0917 - Context's options, in its order
    http: HttpLayer,
    job: Job,
    follow: bool,
    stream: str | None,
    since: int | None,
    start_timeout: float | None,
    idle_timeout: float,
    mode: Mode = "auto",
    poll: PollPolicy | None = None,
) -> AsyncGenerator[LogLine, None]:
    """Yield the job's log lines from the start (or after ``since``), in order, each once.

    The lines of :func:`tail_log_batches` (which takes the same arguments and raises the
    same errors), one :class:`LogLine` at a time.

    Returns:
        An async generator of :class:`LogLine`; close it (or use
        :func:`contextlib.aclosing`) to free its connection early.

    Raises:
        ValueError: a bad argument (raised at once, not on iteration).
    """
    batches = tail_log_batches(
        http, job, follow, stream, since, start_timeout, idle_timeout, mode, poll
    )
    return _each_line(batches)


async def _each_line(batches: AsyncGenerator[LogBatch, None]) -> AsyncGenerator[LogLine, None]:
    # Closing this generator (or finalizing it) closes the batches, and so the stream.
    async with contextlib.aclosing(batches):
        async for batch in batches:
            for line in batch.lines():
                yield line


async def _log_path(http: HttpLayer, ref: JobRef) -> str:
    """Return ``"stream"`` or ``"poll"`` for this server (``serverInfo`` is asked once).

    Raises:
        JuliaRunError: the question failed (a refused credential, an unreachable
            server); the error names ``tailJob`` and the job, which is what the caller
            asked for, not the probe.
    """
    try:
        info = await http.server_info()
    except errors.JuliaRunError as exc:
        exc.verb, exc.job = "tailJob", ref.name
        raise
    return "stream" if _offers(info, STREAM_VERB) else "poll"


def _offers(info: object, extension: str) -> bool:
    """Whether a ``serverInfo`` answer lists ``extension``."""
    extensions = info.get("extensions") if isinstance(info, dict) else None
    return isinstance(extensions, list) and extension in extensions


async def tail_window(
    http: HttpLayer,
    job: JobRef,
    stream: str | None,
    count: int,
    *,
    timeout: TimeoutArg = UNSET,
) -> tuple[str, int | None]:
    """Make a ``tailJob`` call; return its text and how many lines it joins, if known.

    The number comes from the local server's :data:`LINE_COUNT_HEADER`; it is ``None``
    from a server that does not send it, where ``""`` may be no line or one empty line.

    Raises:
        ValueError: ``count`` is negative or ``stream`` is not a known stream.
        ResponseError: the header is not a count that fits the text.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if stream not in (None, "stdout", "stderr"):
        raise ValueError(f"stream must be 'stdout', 'stderr' or None, got {stream!r}")
    params = {"count": str(count)}
    if stream is not None:
        params["stream"] = stream
    data, headers = await http.exchange("tailJob", job, params, timeout=timeout)
    text = http.decode(str_from_wire, data, "tailJob", job)
    header = headers.get(LINE_COUNT_HEADER)
    if header is None:
        return text, None
    lines = int(header) if header.isascii() and header.isdigit() else None
    # n >= 1 lines joined by newlines hold n - 1 of them; "" is no line or one empty one.
    joined = text.count("\n") + 1 if text else None
    if lines is None or (lines > 1 if joined is None else lines != joined):
        raise errors.ResponseError(
            f"unexpected tailJob answer: {LINE_COUNT_HEADER} is "
            f"{http.excerpt(header)} for a text of {joined or 'at most one'} line(s)",
            verb="tailJob",
            job=job.name,
            body=http.excerpt(text),
        )
    return text, lines


class _TailLogs:
    """The state of one ``tail_logs`` call."""

    def __init__(
        self,
        http: HttpLayer,
        ref: JobRef,
        *,
        follow: bool,
        stream: str | None,
        since: int,
        start_timeout: float | None,
        idle_timeout: float,
        poll: PollPolicy,
    ) -> None:
        self.http = http
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

    async def run(self, mode: Mode) -> AsyncGenerator[LogBatch, None]:
        http = self.http
        with http.loop_state().close_guard():
            path = await _log_path(http, self.ref) if mode == "auto" else mode
        batches = self._stream() if path == "stream" else self._poll()
        async with contextlib.aclosing(batches):
            while True:
                # Guarded per batch, never across the yield: closing the Context ends
                # the wait for the next batch, whichever path it is on.
                with http.loop_state().close_guard():
                    batch = await anext(batches, None)
                if batch is None:
                    return
                yield batch

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

    def _check_uid(self, uid: str | None, header: str | None) -> str | None:
        """Return the submission the stream reads, or raise if the job was replaced.

        Servers without job uids send no header; then nothing can be told (and a
        reconnect after a delete and a new submit would read the new job).
        """
        if uid is not None and header is not None and header != uid:
            raise errors.job_replaced_error(self.ref.name, STREAM_VERB)
        return header if uid is None else uid

    async def _stream(self) -> AsyncGenerator[LogBatch, None]:
        slots = self.http.loop_state().stream_slots
        # Borrowed on behalf of a token, not the task: a generator closed by the garbage
        # collector runs its cleanup in another task, which must still release the slot.
        borrower = object()
        await self._take_stream_slot(slots, borrower)
        try:
            batches = self._stream_holding_slot()
            async with contextlib.aclosing(batches):
                async for batch in batches:
                    yield batch
        finally:
            slots.release_on_behalf_of(borrower)

    async def _take_stream_slot(self, slots: anyio.CapacityLimiter, borrower: object) -> None:
        """Wait for a stream slot, at most ``start_timeout`` seconds."""
        wait = math.inf if self.start_timeout is None else self.start_timeout
        with anyio.move_on_after(wait) as scope:
            await slots.acquire_on_behalf_of(borrower)
        if scope.cancelled_caught:
            connections = int(self.http.loop_state().slots.total_tokens)
            raise errors.WaitTimeoutError(
                f"no log stream slot became free within {wait:g} s: all "
                f"{int(slots.total_tokens)} of this Context are held by other tail_logs "
                f"generators (streams may take half of its {connections} connections, "
                "httpx.Limits(max_connections)); close the generators you no longer read "
                "(use contextlib.aclosing, or drop them), or create the Context with "
                "limits=httpx.Limits(max_connections=...) to run more streams at once",
                verb=STREAM_VERB,
                job=self.ref.name,
            )

    async def _stream_holding_slot(self) -> AsyncGenerator[LogBatch, None]:
        http, ref = self.http, self.ref
        cursor = self.since
        policy = http.retry_policy
        retry = 0
        alive_at = time.monotonic()
        client_timeout = http.loop_state().client.timeout
        # Reads are bounded by the idle timeout below, not by httpx.
        timeout = httpx.Timeout(None, connect=client_timeout.connect, pool=client_timeout.pool)
        # The submission this tail reads, from the first answer's header: a reconnect
        # must not follow into a job submitted later under the same name.
        uid: str | None = None
        offered = _offers(http.facts.info, COLUMNS_EXTENSION)
        # A connection that drops before a whole ``columns`` event arrives brings no line
        # in that format; then the next request asks for one event per line.
        columns = offered
        while True:
            read_events = _batches_of_columns if columns else _batches_of_lines
            started_at = cursor
            partial: list[bytes] = []
            params = {
                "cursor": str(cursor),
                "follow": "true" if self.follow else "false",
                "heartbeat": f"{max(_MIN_HEARTBEAT, min(_MAX_HEARTBEAT, self.idle_timeout / 3)):g}",
            }
            if self.stream is not None:
                params["stream"] = self.stream
            if uid is not None:
                params["uid"] = uid
            if columns:
                params["format"] = "columns"
            ended = False
            error: errors.JuliaRunError
            try:
                async with http.open_stream(STREAM_VERB, ref, params, timeout=timeout) as response:
                    if response.status_code != 200 or "ndjson" not in response.headers.get(
                        "content-type", ""
                    ):
                        await response.aread()
                        http.unwrap(STREAM_VERB, ref, response)
                        raise errors.ResponseError(
                            f"expected 200 with an NDJSON body, got {response.status_code}",
                            verb=STREAM_VERB,
                            job=ref.name,
                            status_code=response.status_code,
                        )
                    uid = self._check_uid(uid, response.headers.get(UID_HEADER))
                    self.job_seen = True
                    chunks = _ndjson(response, self.idle_timeout, partial)
                    async with contextlib.aclosing(chunks):
                        async for events in chunks:
                            # Every batch of events is a sign of life (heartbeats too).
                            retry, alive_at = 0, time.monotonic()
                            batches, ended, malformed = read_events(events, cursor)
                            for batch in batches:
                                cursor = cast("int", batch.cursor)
                                yield batch
                            if malformed is not None:
                                raise malformed
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
                error = http.transport_error(exc, STREAM_VERB, ref, retry + 1)
                if isinstance(error, errors.CertificateError):
                    raise error from exc  # the same certificate would be refused again
            except _StreamIdleError:
                error = errors.RequestTimeoutError(
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
            columns = offered and not (columns and cursor == started_at and partial)
            await anyio.sleep(backoff_delay(retry, policy))
            retry += 1

    # -- polling tailJob -------------------------------------------------------------

    async def _poll(self) -> AsyncGenerator[LogBatch, None]:
        http, ref = self.http, self.ref
        tracker = WindowTracker()
        count = POLL_WINDOW
        interval = self.poll.initial
        completed = False
        # The first window that aligns holds the log so far, not one poll's worth.
        caught_up = False
        grown = False
        while True:
            try:
                text, known = await tail_window(http, ref, self.stream, count)
            except errors.JobNotFoundError as exc:
                await self._not_found(exc)
                continue
            self.job_seen = True
            step = tracker.advance(
                _split(text, known),
                count=count,
                last_try=count >= MAX_POLL_WINDOW,
                blank_possible=known is None and not text,
            )
            if step is None:
                count = min(count * _WINDOW_GROWTH, MAX_POLL_WINDOW)
                grown = True
                continue
            if not step.exact:
                _warn_gap(ref.name, count, step.missing, step.repeated)
            new = step.lines
            skip = 0
            if tracker.position is not None:
                skip = max(0, min(len(new), self.since - (tracker.position - len(new))))
            if len(new) > skip:
                texts = tuple(new[skip:])
                blanks = (None,) * len(texts)
                yield LogBatch(texts, (self.stream,) * len(texts), blanks, blanks)
            if not self.follow or completed:
                if tracker.maybe_blank and self.since == 0:
                    _warn_gap(ref.name, count, 1, 0, blank=True)
                return
            # Keep the window several times what one poll brings, and no smaller than
            # what the last alignment needed; shrink slowly, grow at once.
            wanted = _WINDOW_MARGIN * len(new) if caught_up else POLL_WINDOW
            count = min(MAX_POLL_WINDOW, max(POLL_WINDOW, wanted, count if grown else count // 2))
            caught_up, grown = True, False
            if new:
                interval = self.poll.initial
            else:
                interval = self.poll.grow(interval)
                # Quiet: maybe the job is done.  One more tail after "completed" drains
                # the lines written between the last tail and the status.
                status = await http.fetch("getJobStatus", ref, JobStatus.from_wire)
                if status.completed:
                    completed = True
                    continue
            await anyio.sleep(self.poll.spread(interval))


def _warn_gap(
    job: str, window: int, missing: int | None, repeated: int, *, blank: bool = False
) -> None:
    """Issue the :class:`LogGapWarning` for a window that did not align exactly."""
    if blank:
        what = (
            "the log is empty or one empty line, which this server answers alike "
            "(an empty tailJob answer); read as empty, so one empty line may be missing"
        )
    elif missing is None:
        what = (
            f"the {window}-line window does not line up with the lines seen before: the "
            "job wrote more than half a window between two polls, or the log was longer "
            "than that when tailing started; an unknown number of lines may be missing"
            + (f" and up to {repeated} repeated" if repeated else "")
        )
    else:
        what = (
            f"the last {window} lines repeat a cycle (identical or alternating lines), so "
            f"they fit after the lines seen before in several ways; up to {missing} "
            "lines may be missing"
        )
    warnings.warn(
        LogGapWarning(
            f"job {job!r}: {what}", job=job, window=window, missing=missing, repeated=repeated
        ),
        stacklevel=3,
    )


_decode_json = json.JSONDecoder().decode


class _StreamIdleError(Exception):
    """Nothing arrived on a stream for the idle timeout."""


async def _ndjson(
    response: httpx.Response, idle_timeout: float, partial: list[bytes]
) -> AsyncGenerator[list[dict[str, Any]], None]:
    """Yield the JSON objects of an NDJSON body, a list per network chunk.

    Only complete lines are parsed: a partial last line waits for the next chunk (its
    bytes are kept in ``partial``, which the caller can look at when the body is cut),
    and is dropped if the body ends inside it.  Chunks without a complete line yield
    nothing.

    Raises:
        _StreamIdleError: no byte arrived for ``idle_timeout`` seconds.
        ResponseError: a complete line is not a JSON object (the objects on the lines
            before it are yielded first).
    """
    chunks = cast("AsyncGenerator[bytes, None]", response.aiter_bytes())
    try:
        # The chunks since the last newline: a long line (a ``columns`` event is one
        # line) is joined once, not copied again with every chunk.
        while True:
            chunk: bytes | None = None
            with anyio.move_on_after(idle_timeout) as scope:
                chunk = await anext(chunks, None)
            if scope.cancelled_caught:
                raise _StreamIdleError
            if chunk is None:
                return
            if b"\n" not in chunk:
                partial.append(chunk)
                continue
            # Split on the last newline in bytes (a chunk may end inside a character),
            # then decode the complete lines at once.
            partial.append(chunk)
            complete, _, rest = b"".join(partial).rpartition(b"\n")
            partial[:] = [rest] if rest else []
            events, error = _parse_chunk(complete)
            if events:
                yield events
            if error is not None:
                raise error
    finally:
        await _unwind(chunks)


@functools.cache
def _fast_loads() -> Callable[[bytes], Any] | None:
    """``orjson.loads`` where orjson is installed (the ``fast`` extra), else ``None``."""
    try:
        import orjson  # noqa: PLC0415 -- optional, and only the stream path needs it
    except ImportError:
        return None
    return cast("Callable[[bytes], Any]", orjson.loads)


def _parse_chunk(complete: bytes) -> tuple[list[dict[str, Any]], errors.ResponseError | None]:
    """Parse the complete NDJSON lines of a chunk (without the last newline).

    With orjson, the whole chunk is one C call, taken only when it gives one object per
    line, as in :func:`_parse_lines`; anything else (blank lines, malformed lines, and
    what orjson refuses or reads otherwise than the json module: NaN, integers beyond 64
    bits, invalid UTF-8, lone surrogates) goes through :func:`_parse_lines`, so the
    result never depends on whether orjson is installed.
    """
    loads = _fast_loads()
    if loads is not None:
        newlines = complete.count(b"\n")
        try:
            events = loads(b"[" + complete.replace(b"\n", b",") + b"]" if newlines else complete)
        except ValueError:
            pass
        else:
            events = events if newlines else [events]
            if (
                len(events) == newlines + 1
                and set(map(type, events)) == {dict}
                # orjson reads integers beyond 64 bits as floats, the json module as ints.
                and float not in set(map(type, map(dict.get, events, repeat("cursor"))))
                and (b'"cursors"' not in complete or all(map(_int_cursors, events)))
            ):
                return events, None
    return _parse_lines(complete.decode("utf-8", "replace").split("\n"))


def _int_cursors(event: dict[str, Any]) -> bool:
    """Whether a ``columns`` event's cursor list (if any) holds no float (see above)."""
    listed = event.get("cursors")
    return type(listed) is not list or float not in set(map(type, listed))


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


_TEXT, _CURSOR = operator.itemgetter("text"), operator.itemgetter("cursor")
_STREAM, _PROC = operator.itemgetter("stream"), operator.itemgetter("proc")


def _batch_after(events: list[dict[str, Any]], cursor: int) -> tuple[LogBatch | None, bool]:
    """Read a chunk's stream events into a batch of the log lines after ``cursor``.

    Heartbeats, events this SDK does not know and lines at or below ``cursor`` (resent
    after a reconnect) are dropped.

    Returns:
        The batch (``None`` when no line is new), and whether the end marker was met
        (events after it are ignored).
    """
    ended = False
    if events and events[-1].get("end"):
        events, ended = events[:-1], True
    # Fast path, loops in C: every event is a line after the last, with exactly the four
    # fields of a line.  Anything else is read event by event below, with the same result.
    try:
        texts, cursors = tuple(map(_TEXT, events)), tuple(map(_CURSOR, events))
        streams, procs = tuple(map(_STREAM, events)), tuple(map(_PROC, events))
    except KeyError:
        pass
    else:
        # ``type(..) is int`` also rules out booleans (json gives plain ints).
        if (
            texts
            and set(map(len, events)) == {4}
            and set(map(type, texts)) == {str}
            and set(map(type, cursors)) == {int}
            and set(map(type, streams)) == {str}
            and set(map(type, procs)) == {str}
            and cursors[0] > cursor
            and all(map(operator.lt, cursors, cursors[1:]))
        ):
            return LogBatch(texts, streams, cursors, procs, cursors[-1]), ended
    return _batch_after_slowly(events, cursor, ended)


_Batches = tuple[list[LogBatch], bool, errors.ResponseError | None]


def _batches_of_lines(events: list[dict[str, Any]], cursor: int) -> _Batches:
    """:func:`_batch_after` for a ``format=lines`` stream, as :func:`_batches_of_columns`."""
    batch, ended = _batch_after(events, cursor)
    return ([] if batch is None else [batch]), ended, None


def _batches_of_columns(events: list[dict[str, Any]], cursor: int) -> _Batches:
    """Read the events of a ``format=columns`` stream into batches of the lines after ``cursor``.

    Its chunks of lines come as ``columns`` events (:func:`_columns_batch`), a batch
    each; heartbeats, the end marker and any line the server sent as an object of its
    own are read as on a ``lines`` stream (:func:`_batch_after`).

    Returns:
        The batches of the events before the end marker (events after it are ignored) or
        a malformed ``columns`` event; whether the end marker was met; and the
        :class:`ResponseError` naming the malformed event, if one was met.
    """
    batches: list[LogBatch] = []
    start = 0  # the first of the events since the last columns event
    for i, event in enumerate(events):
        ended = bool(event.get("end"))
        if not ended and "texts" not in event:
            continue  # a heartbeat, or a line sent on its own: read with its neighbours
        batch = _batch_after(events[start:i], cursor)[0] if start < i else None
        if batch is not None:
            batches.append(batch)
            cursor = cast("int", batch.cursor)
        if ended:
            return batches, True, None
        start = i + 1
        try:
            batch = _columns_batch(event, cursor)
        except errors.ResponseError as exc:
            return batches, False, exc
        if batch is not None:
            batches.append(batch)
            cursor = cast("int", batch.cursor)
    batch = _batch_after(events[start:], cursor)[0] if start < len(events) else None
    return (batches if batch is None else [*batches, batch]), False, None


def _columns_batch(event: dict[str, Any], cursor: int) -> LogBatch | None:
    """Read one ``columns`` event into a batch of its lines after ``cursor``.

    ``{"cursor": last, "texts": [...], "sources": [[count, stream, proc], ...]}``, with
    ``"cursors": [...]`` when the lines' cursors are not ``last - len(texts) + 1 ..
    last``.  See the ``streamLogs`` extension's documentation.

    Raises:
        ResponseError: the event is malformed (its lines cannot be told exactly).
    """
    texts, sources, last = event.get("texts"), event.get("sources"), event.get("cursor")
    listed = event.get("cursors")
    count = len(texts) if type(texts) is list else 0
    runs = sources if type(sources) is list else []
    valid = (
        count > 0
        and set(map(type, texts)) == {str}  # type: ignore[arg-type]
        and type(last) is int
        and last >= count
        and bool(runs)
        and all(map(_is_run, runs))
        and sum(run[0] for run in runs) == count
    )
    if valid and listed is not None:
        valid = (
            type(listed) is list
            and len(listed) == count
            and set(map(type, listed)) == {int}
            and listed[0] > 0
            and listed[-1] == last
            and all(map(operator.lt, listed, listed[1:]))
        )
    if not valid:
        raise errors.ResponseError(
            f"unreadable log stream event: {errors.excerpt(event)}", verb=STREAM_VERB
        )
    assert isinstance(texts, list)
    assert isinstance(last, int)
    cursors: Sequence[int] = range(last - count + 1, last + 1) if listed is None else listed
    skip = bisect.bisect_right(cursors, cursor)
    if skip == count:
        return None
    if len(runs) == 1:
        streams, procs = (runs[0][1],) * count, (runs[0][2],) * count
    else:
        counts = [run[0] for run in runs]
        streams = tuple(chain.from_iterable(map(repeat, [run[1] for run in runs], counts)))
        procs = tuple(chain.from_iterable(map(repeat, [run[2] for run in runs], counts)))
    if not skip:
        return LogBatch(tuple(texts), streams, tuple(cursors), procs, last)
    return LogBatch(tuple(texts[skip:]), streams[skip:], tuple(cursors[skip:]), procs[skip:], last)


def _is_run(run: object) -> bool:
    """Whether ``run`` is a ``[count, stream, proc]`` entry of a ``columns`` event."""
    return (
        type(run) is list
        and len(run) == 3
        and type(run[0]) is int
        and run[0] > 0
        and type(run[1]) is str
        and type(run[2]) is str
    )


def _batch_after_slowly(
    events: list[dict[str, Any]], cursor: int, ended: bool
) -> tuple[LogBatch | None, bool]:
    """:func:`_batch_after`, one event at a time."""
    texts: list[str] = []
    streams: list[str | None] = []
    cursors: list[int | None] = []
    procs: list[str | None] = []
    for event in events:
        if event.get("end"):
            ended = True
            break
        text, line_cursor = event.get("text"), event.get("cursor")
        if not isinstance(text, str) or type(line_cursor) is not int or line_cursor <= cursor:
            continue
        stream, proc = event.get("stream"), event.get("proc")
        texts.append(text)
        streams.append(stream if isinstance(stream, str) else None)
        cursors.append(line_cursor)
        procs.append(proc if isinstance(proc, str) else None)
        cursor = line_cursor
    if not texts:
        return None, ended
    return LogBatch(tuple(texts), tuple(streams), tuple(cursors), tuple(procs), cursor), ended


# attrs' ``__init__`` of a frozen class sets each field with ``object.__setattr__`` (the
# class's own ``__setattr__`` raises), which costs about as much as parsing the line.
# Setting the slots through their descriptors gives the same object at a fraction of the
# cost; LogBatch.lines builds every LogLine this way.  (LogLine must keep slots.)
_new_object = object.__new__
_set_text = LogLine.__dict__["text"].__set__
_set_stream = LogLine.__dict__["stream"].__set__
_set_cursor = LogLine.__dict__["cursor"].__set__
_set_proc = LogLine.__dict__["proc"].__set__


def _split(text: str, lines: int | None) -> list[str]:
    """Split a ``tailJob`` answer into its lines (entries are joined by newlines).

    ``lines`` is the number of lines the server says it joined, or ``None`` when it does
    not say: then ``""`` reads as no line.
    """
    return text.split("\n") if text or lines else []


# -- aligning polled windows ------------------------------------------------------------


def alignments(previous: Sequence[str], window: Sequence[str]) -> list[int]:
    """Return every way ``window`` can continue ``previous`` in one append-only log.

    Both are tails of the same log, ``window`` taken later.  Each ``j`` returned is a
    number of leading lines of ``window`` that can be lines ``previous`` held: the
    lines where the two would overlap are equal (``window[:j]`` ends as ``previous``
    ends).  Then ``window[j:]`` are the lines written since.  A log whose lines repeat
    with period ``p`` over the overlap fits at shifts ``p`` apart: all are returned.

    Two Knuth-Morris-Pratt scans: ``O(len(previous) + len(window))`` comparisons.

    Returns:
        Every such ``j`` in ``1..len(window)``, ascending.
    """
    k, size = len(previous), len(window)
    if not k or not size:
        return []
    # j < k: window[:j] is a suffix of previous.  Scanning previous for window leaves
    # the longest such prefix; the shorter ones are its borders.
    border = _failure(window)
    state = 0
    for item in previous:
        if state == size:
            state = border[state - 1]
        while state and item != window[state]:
            state = border[state - 1]
        if item == window[state]:
            state += 1
    shorter: list[int] = []
    while state:
        if state < k:
            shorter.append(state)
        state = border[state - 1]
    shorter.reverse()
    # j >= k: all of previous occurs in window, ending at j.
    border = _failure(previous)
    longer: list[int] = []
    state = 0
    for i, item in enumerate(window):
        while state and item != previous[state]:
            state = border[state - 1]
        if item == previous[state]:
            state += 1
            if state == k:
                longer.append(i + 1)
                state = border[state - 1]
    return shorter + longer


def _alignments_between(
    previous: Sequence[str], window: list[str], low: int, high: int
) -> list[int]:
    """Return the :func:`alignments` ``j`` with ``low <= j <= high``, ``1 <= low``.

    Each such ``j`` compares at least ``min(low, len(previous))`` lines, so the window
    line ``j - t`` equals ``previous[-t]`` for every ``t`` up to that.  When one of the
    last few lines of ``previous`` occurs only a few times in that stretch of the window
    (found by ``list.index``, at C speed), those few places are all the candidates, each
    checked by comparing slices; the two linear scans of :func:`alignments` are left for
    windows where every such line is common (blank lines, cycles, runs).
    """
    k = len(previous)
    if not k or low > high:
        return []
    for t in range(1, min(low, k, _ANCHOR_TRIES) + 1):
        anchor, ends = previous[-t], list[int]()
        start, stop = low - t, high - t + 1
        try:
            while len(ends) <= _ANCHOR_HITS:
                start = window.index(anchor, start, stop) + 1
                ends.append(start - 1 + t)
        except ValueError:
            return [j for j in ends if window[max(0, j - k) : j] == previous[max(0, k - j) :]]
    return [j for j in alignments(previous, window) if low <= j <= high]


def _failure(pattern: Sequence[str]) -> list[int]:
    """Return the KMP failure function of ``pattern``.

    Entry ``i`` is the length of the longest proper prefix of ``pattern[:i + 1]`` that
    is also a suffix of it.
    """
    failure = [0] * len(pattern)
    k = 0
    for i in range(1, len(pattern)):
        item = pattern[i]
        while k and item != pattern[k]:
            k = failure[k - 1]
        if item == pattern[k]:
            k += 1
        failure[i] = k
    return failure


@attrs.frozen
class WindowStep:
    """What one ``tailJob`` window adds to the lines yielded before.

    Attributes:
        lines: The lines that follow those yielded before.
        missing: At most this many lines of the log may lie, unread, between the lines
            yielded before and ``lines``; ``None`` when no bound is known.
        repeated: At most this many of ``lines`` may repeat lines yielded before.
    """

    lines: list[str]
    missing: int | None = 0
    repeated: int = 0

    @property
    def exact(self) -> bool:
        """``lines`` are exactly the lines written since the previous window."""
        return self.missing == 0 and self.repeated == 0


class WindowTracker:
    """Turns successive ``tailJob`` windows into the lines not yielded yet.

    A window with fewer lines than asked for holds the whole log: lines are then counted
    by position, which is exact whatever they contain.  A full window is aligned by
    content (:func:`alignments`), and the alignment is accepted only when it is
    unambiguous: at least half of the window lines up with the lines seen before, and
    no other shift lines up with at least half.  Otherwise :meth:`advance` asks for the
    window again, larger; at the largest window it yields the lines with a bound on how
    many may be missing or repeated.

    Attributes:
        position: How many lines of the log were consumed, counted from its first line;
            ``None`` once a window could not be aligned exactly.
        maybe_blank: The last window was an empty answer from a server that does not
            say how many lines it joined: the log may be one empty line, not yielded.
    """

    def __init__(self) -> None:
        self._previous: list[str] = []
        self.position: int | None = 0
        self.maybe_blank = False

    def advance(
        self, window: list[str], *, count: int, last_try: bool, blank_possible: bool = False
    ) -> WindowStep | None:
        """Take the next window and return the lines it adds.

        Args:
            window: The lines ``tailJob`` returned.
            count: The ``count`` asked for: a window with fewer lines holds the whole log.
            last_try: No larger window can be asked for: never return ``None``.
            blank_possible: ``window`` is empty, but the log may be one empty line.

        Returns:
            The step, or ``None`` when the window is ambiguous or does not reach the
            lines seen before: ask again with a larger ``count``.
        """
        previous, position = self._previous, self.position
        size = len(window)
        complete = size < count
        self.maybe_blank = blank_possible
        if (
            complete
            and position is not None
            and size >= position
            and window[position - len(previous) : position] == previous
        ):
            return WindowStep(self._take(window, position, complete))
        # A complete window holds every line ever written, the last one yielded too.  A
        # full one is trusted only where at least half of it lines up: that many lines
        # cannot have been written since the previous window, or they would start by
        # repeating the lines before them word for word.
        low = 1 if complete else (size + 1) // 2
        high = size if position is None else min(size, position)
        trusted = _alignments_between(previous, window, low, high)
        if len(trusted) == 1:
            return WindowStep(self._take(window, trusted[0], complete))
        if not complete and not last_try:
            return None
        fits = alignments(previous, window)
        if trusted:
            # Periodic lines fit at several shifts: take the fewest new lines, so that
            # none repeats; the others may have been missed.
            seen, missing, repeated = trusted[-1], trusted[-1] - trusted[0], 0
        else:
            # No alignment to trust: all of the window may be new, and more before it.
            below = [j for j in fits if j < low]
            seen, missing, repeated = 0, None, below[-1] if below else 0
        lines = self._take(window, seen, complete)
        if not complete:
            self.position = None
        return WindowStep(lines, missing, repeated)

    def _take(self, window: list[str], seen: int, complete: bool) -> list[str]:
        """Make ``window`` the previous one and return its lines after the first ``seen``."""
        new = window[seen:]
        if complete:
            self.position = len(window)
        elif self.position is not None:
            self.position += len(new)
        self._previous = window
        return new
