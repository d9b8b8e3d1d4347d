"""tail_logs: window alignment, the polling path and the resumable stream path (respx)."""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import warnings
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import anyio
import httpx
import pytest
import respx
from hypothesis import event, given, settings
from hypothesis import strategies as st
from strategies import stored_logs
from streaming_support import (
    FAST_RETRY,
    URL,
    FakeLog,
    ScriptedStream,
    combined_log,
    dropping_proxy,
    envelope,
    log_events,
    mock_context,
    ndjson,
    not_found,
    open_pool_connections,
    server_context,
    server_info,
    stream_response,
    write_script,
)
from support import http_layer

from juliarun_aio import (
    ApiError,
    AuthenticationError,
    ClientClosedError,
    Context,
    JobNotFoundError,
    JobRef,
    JuliaBatch,
    LogLine,
    PermissionDeniedError,
    ResponseError,
    RetryPolicy,
    WaitTimeoutError,
)
from juliarun_aio import _logs as logs
from juliarun_aio._logs import LogGapWarning, WindowStep, WindowTracker, alignments
from juliarun_aio._watch import PollPolicy
from juliarun_aio.server import LocalServer
from juliarun_aio.server import _logs as server_logs

JOB = JobRef("JuliaBatch", "job1")
NO_WAIT = PollPolicy(initial=0.0, maximum=0.0)


# -- alignments and WindowTracker (pure) -------------------------------------------------


@pytest.mark.parametrize(
    ("previous", "window", "expected"),
    [
        ([], ["a"], []),
        (["a"], [], []),
        (["a", "b", "c"], ["b", "c", "d"], [2]),  # suffix of previous starts window
        (["a", "b", "c"], ["c", "d", "e"], [1]),
        (["a", "b", "c"], ["d", "e", "f"], []),  # no overlap
        (["b", "c"], ["a", "b", "c", "d"], [3]),  # previous whole inside a larger window
        (["a", "b"], ["a", "b"], [2]),  # nothing new
        (["x", "a", "a"], ["a", "a", "a"], [1, 2]),  # a run: every shift that fits
        (["a", "b", "a", "b"], ["a", "b", "a", "b", "c"], [2, 4]),
        (["a", "b", "a"], ["b", "a", "b", "a", "c"], [2, 4]),
        (["a", "b", "c"], ["c", "x", "a", "b", "c", "y"], [1, 5]),
        (["", "row 1", ""], ["", "row 2", ""], [1]),  # a blank seam
    ],
)
def test_alignments(previous: list[str], window: list[str], expected: list[int]) -> None:
    """alignments lists every shift at which the new window continues the previous one."""
    assert alignments(previous, window) == expected


def test_alignments_match_a_brute_force_search() -> None:
    """On a periodic log every alignment is found, as a quadratic search finds them."""
    log = ["tick A", "tick B", ""] * 40 + ["x"] + ["tick A", "tick B", ""] * 40
    for first, last, end in [(0, 60, 200), (10, 150, 241), (100, 241, 241), (0, 241, 241)]:
        previous, window = log[first:last], log[end - 90 : end]
        brute = [
            j
            for j in range(1, len(window) + 1)
            if window[max(0, j - len(previous)) : j] == previous[max(0, len(previous) - j) :]
        ]
        assert alignments(previous, window) == brute


@given(
    log=st.lists(st.one_of(st.sampled_from(["", "a"]), st.integers(0, 40).map(str)), max_size=80),
    cuts=st.tuples(st.integers(0, 80), st.integers(0, 80), st.integers(0, 80), st.integers(0, 80)),
    bounds=st.tuples(st.integers(1, 80), st.integers(0, 80)),
)
def test_alignments_in_a_range_agree_with_the_full_scan(
    log: list[str], cuts: tuple[int, int, int, int], bounds: tuple[int, int]
) -> None:
    """The anchored search finds exactly the alignments of the full scan in its range."""
    a, b, c, d = sorted(cuts)
    previous, window = log[a:c], log[b:d]
    low, high = bounds
    expected = [j for j in alignments(previous, window) if low <= j <= high]
    assert logs._alignments_between(previous, window, low, high) == expected


def test_alignments_is_linear() -> None:
    """A pathological repeated pattern is aligned with a linear number of steps."""
    previous = ["b"] + ["a"] * 20_000
    window = ["a"] * 40_000 + ["c"]
    assert alignments(previous, window) == list(range(1, 20_001))
    assert alignments(["a"] * 20_000 + ["b"], window) == []


def test_tracker_counts_positions_while_the_log_fits() -> None:
    """While windows hold the whole log, repeated identical lines are all yielded."""
    tracker = WindowTracker()
    assert tracker.advance(["x", "x"], count=10, last_try=False) == WindowStep(["x", "x"])
    step = tracker.advance(["x", "x", "x", "x"], count=10, last_try=False)
    assert step == WindowStep(["x", "x"])
    assert tracker.position == 4


def test_tracker_asks_for_more_when_a_full_window_does_not_connect() -> None:
    """A full window without a trusted overlap returns None, then a bounded step."""
    tracker = WindowTracker()
    assert tracker.advance(["a", "b"], count=2, last_try=False) is None  # the start unseen
    assert tracker.advance(["a", "b", "c"], count=8, last_try=False) == WindowStep(["a", "b", "c"])
    assert tracker.advance(["f", "g"], count=2, last_try=False) is None
    step = tracker.advance(["f", "g"], count=2, last_try=True)
    assert step == WindowStep(["f", "g"], missing=None)
    assert tracker.position is None
    assert tracker.advance(["g", "h"], count=2, last_try=False) == WindowStep(["h"])


def test_tracker_distrusts_a_single_common_line_at_the_seam() -> None:
    """One blank line shared by two full windows is not an alignment."""
    tracker = WindowTracker()
    assert tracker.advance(["header", ""], count=4, last_try=False) is not None
    assert tracker.advance(["", "row 7", "", "row 8"], count=4, last_try=False) is None
    step = tracker.advance(["", "row 7", "", "row 8"], count=4, last_try=True)
    assert step == WindowStep(["", "row 7", "", "row 8"], missing=None, repeated=1)


def test_tracker_bounds_what_a_cycle_may_hide() -> None:
    """A periodic window fits at several shifts: the step says how many may be missing."""
    tracker = WindowTracker()
    assert tracker.advance(["A", "B"] * 3, count=8, last_try=False) is not None
    window = ["A", "B"] * 4
    assert tracker.advance(window, count=8, last_try=False) is None
    step = tracker.advance(window, count=8, last_try=True)
    # 6 lines were seen, so at least 2 are new; 4 more if the cycle hides them.
    assert step == WindowStep(["A", "B"], missing=2)
    assert tracker.position is None


def test_tracker_trusts_a_unique_long_overlap() -> None:
    """A unique alignment over half the window is exact, cycles elsewhere or not."""
    tracker = WindowTracker()
    first = ["a", "b", "c", "d", "", "", "", ""]
    assert tracker.advance(first, count=8, last_try=False) is None
    assert tracker.advance(first, count=9, last_try=False) == WindowStep(first)
    step = tracker.advance(["c", "d", "", "", "", "", "e", ""], count=8, last_try=False)
    assert step == WindowStep(["e", ""])
    assert tracker.position == 10


# -- the polling path ---------------------------------------------------------------------


def _plain_server(router: respx.MockRouter, log: FakeLog) -> None:
    router.get(f"{URL}/serverInfo/").mock(return_value=not_found())
    router.get(f"{URL}/tailJob/JuliaBatch/").mock(side_effect=log.tail)
    router.get(f"{URL}/getJobStatus/JuliaBatch/").mock(side_effect=log.status)


async def _collect(
    lines: AsyncGenerator[LogLine, None], into: list[LogLine] | None = None
) -> list[LogLine]:
    """Consume ``lines`` into ``into`` (kept when the generator raises)."""
    out = [] if into is None else into
    async with contextlib.aclosing(lines):
        async for line in lines:
            out.append(line)
    return out


@pytest.mark.anyio
async def test_poll_follows_a_growing_log_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bursts larger than the window are recovered by growing count; nothing repeats."""
    monkeypatch.setattr(logs, "POLL_WINDOW", 4)
    log = FakeLog(f"l{i}" for i in range(10))
    log.pending = [[f"b{k}-{i}" for i in range(n)] for k, n in enumerate([0, 3, 30, 1, 0, 7])]
    log.done = True
    async with respx.mock(assert_all_called=False) as router, mock_context() as ctx:
        _plain_server(router, log)
        got = await _collect(ctx.tail_logs(JOB, poll=NO_WAIT))
    assert [line.text for line in got] == log.lines
    assert all(line.cursor is None and line.stream is None for line in got)
    assert max(log.calls) > 4  # the window grew


@pytest.mark.anyio
async def test_poll_reports_a_gap_it_cannot_close(monkeypatch: pytest.MonkeyPatch) -> None:
    """When even the largest window does not connect, a LogGapWarning is issued."""
    monkeypatch.setattr(logs, "POLL_WINDOW", 2)
    monkeypatch.setattr(logs, "MAX_POLL_WINDOW", 4)
    log = FakeLog(["a"])
    log.pending = [[], [f"x{i}" for i in range(10)]]
    log.done = True
    async with respx.mock(assert_all_called=False) as router, mock_context() as ctx:
        _plain_server(router, log)
        with pytest.warns(LogGapWarning, match="may be missing") as caught:
            got = await _collect(ctx.tail_logs(JOB, poll=NO_WAIT))
    assert [line.text for line in got] == ["a", "x6", "x7", "x8", "x9"]
    assert log.calls[:3] == [2, 2, 4]
    gap = caught[0].message
    assert isinstance(gap, LogGapWarning)
    assert gap.job == "job1"
    assert gap.window == 4


@pytest.mark.anyio
async def test_poll_repeated_lines_are_all_yielded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Identical lines beyond the window are counted exactly: the window grows to the log."""
    monkeypatch.setattr(logs, "POLL_WINDOW", 3)
    log = FakeLog(["start"] + ["same"] * 20)
    # Quiet polls first, so that the window shrinks below the log's length.
    log.pending = [[], [], [], [], ["same"], ["same", "same"], ["end"]]
    log.done = True
    async with respx.mock(assert_all_called=False) as router, mock_context() as ctx:
        _plain_server(router, log)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = [line.text for line in await _collect(ctx.tail_logs(JOB, poll=NO_WAIT))]
    assert got == ["start"] + ["same"] * 23 + ["end"]
    assert min(log.calls[1:]) < 21  # some windows held only identical lines


@pytest.mark.anyio
async def test_poll_a_slow_printer_of_look_alike_lines_is_exact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A few blank or cyclic lines per poll, past the window: exact, and no warning."""
    monkeypatch.setattr(logs, "POLL_WINDOW", 4)
    log = FakeLog(f"row {i}" for i in range(10))
    log.pending = [[""], [], ["tick A", "tick B"], [""], ["", ""], ["tick A"], ["tick B"]] * 6
    log.done = True
    async with respx.mock(assert_all_called=False) as router, mock_context() as ctx:
        _plain_server(router, log)
        with warnings.catch_warnings():
            warnings.simplefilter("error", LogGapWarning)
            got = await _collect(ctx.tail_logs(JOB, poll=NO_WAIT))
    assert [line.text for line in got] == log.lines
    assert sum(count < 10 for count in log.calls) > len(log.calls) // 2  # windows < the log


@pytest.mark.anyio
async def test_poll_one_empty_line_from_a_plain_server_is_warned() -> None:
    """A plain server answers one empty line as no line: the tail warns that it may be missing."""
    log = FakeLog([""])
    log.done = True
    async with respx.mock(assert_all_called=False) as router, mock_context() as ctx:
        _plain_server(router, log)
        with pytest.warns(LogGapWarning, match="one empty line may be missing") as caught:
            got = await _collect(ctx.tail_logs(JOB, poll=NO_WAIT))
    assert got == []
    gap = caught[0].message
    assert isinstance(gap, LogGapWarning)
    assert (gap.missing, gap.repeated) == (1, 0)


@pytest.mark.anyio
async def test_poll_reads_the_line_count_header() -> None:
    """With X-JuliaRun-Line-Count, one empty line and no line are told apart exactly."""
    for lines in ([""], []):
        log = FakeLog(lines, line_count=True)
        log.done = True
        async with respx.mock(assert_all_called=False) as router, mock_context() as ctx:
            _plain_server(router, log)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                got = await _collect(ctx.tail_logs(JOB, poll=NO_WAIT))
        assert [line.text for line in got] == lines


@pytest.mark.parametrize(("data", "header"), [("a\nb", "3"), ("", "2"), ("a", "one"), ("", "-1")])
@pytest.mark.anyio
async def test_a_line_count_that_does_not_fit_is_a_response_error(data: str, header: str) -> None:
    """A line count header that does not match the text raises ResponseError naming it."""
    answer = envelope(data)
    answer.headers["X-JuliaRun-Line-Count"] = header
    async with respx.mock(assert_all_called=False) as router, mock_context() as ctx:
        router.get(f"{URL}/tailJob/JuliaBatch/").mock(return_value=answer)
        with pytest.raises(ResponseError, match="X-JuliaRun-Line-Count") as caught:
            await _collect(ctx.tail_logs(JOB, mode="poll", follow=False))
    assert caught.value.verb == "tailJob"
    assert caught.value.job == "job1"


@pytest.mark.anyio
async def test_poll_follow_false_and_since() -> None:
    """follow=False yields what exists (after ``since`` lines) and ends at once."""
    log = FakeLog(f"l{i}" for i in range(5))
    async with respx.mock(assert_all_called=False) as router, mock_context() as ctx:
        _plain_server(router, log)
        got = await _collect(ctx.tail_logs(JOB, follow=False, since=2, stream="stderr"))
        assert router.routes[1].calls.last.request.url.params["stream"] == "stderr"
    assert [(line.text, line.stream) for line in got] == [
        ("l2", "stderr"),
        ("l3", "stderr"),
        ("l4", "stderr"),
    ]
    assert len(log.calls) == 1


@pytest.mark.anyio
async def test_poll_waits_for_the_job_then_raises_when_deleted() -> None:
    """404 before the job existed is waited out; 404 after it was seen raises."""
    answers = iter([not_found(), not_found(), envelope("a\nb"), not_found()])
    async with respx.mock(assert_all_called=False) as router, mock_context() as ctx:
        router.get(f"{URL}/serverInfo/").mock(return_value=not_found())
        router.get(f"{URL}/tailJob/JuliaBatch/").mock(side_effect=lambda _: next(answers))
        router.get(f"{URL}/getJobStatus/JuliaBatch/").mock(
            return_value=envelope({"succeeded": False})
        )
        got: list[LogLine] = []
        with pytest.raises(JobNotFoundError):
            await _collect(ctx.tail_logs(JOB, poll=NO_WAIT), into=got)
    assert [line.text for line in got] == ["a", "b"]


@pytest.mark.anyio
async def test_start_timeout() -> None:
    """A job that never appears raises WaitTimeoutError after start_timeout."""
    async with respx.mock(assert_all_called=False) as router, mock_context() as ctx:
        router.get(f"{URL}/serverInfo/").mock(return_value=not_found())
        router.get(f"{URL}/tailJob/JuliaBatch/").mock(return_value=not_found())
        with pytest.raises(WaitTimeoutError, match="did not appear within 0 s"):
            await _collect(ctx.tail_logs(JOB, start_timeout=0, poll=NO_WAIT))


@pytest.mark.parametrize(
    ("status", "error"), [(401, AuthenticationError), (403, PermissionDeniedError)]
)
@pytest.mark.anyio
async def test_a_refused_credential_names_the_job_tailed(
    status: int, error: type[ApiError]
) -> None:
    """A 401/403 while choosing the log path is reported for tailJob and the job asked for."""
    async with respx.mock(assert_all_called=False) as router, mock_context() as ctx:
        router.get(f"{URL}/serverInfo/").mock(return_value=envelope("refused", status=status))
        with pytest.raises(error) as caught:
            await _collect(ctx.tail_logs(JOB))
    assert (caught.value.verb, caught.value.job) == ("tailJob", "job1")
    assert str(caught.value).endswith("[tailJob, job 'job1']")


def test_bad_arguments_raise_at_once() -> None:
    """Argument errors are raised by the call, before any iteration."""
    ctx = mock_context()
    with pytest.raises(ValueError, match="stream"):
        ctx.tail_logs(JOB, stream="both")
    with pytest.raises(ValueError, match="since"):
        ctx.tail_logs(JOB, since=-1)
    with pytest.raises(ValueError, match="idle_timeout"):
        ctx.tail_logs(JOB, idle_timeout=0)
    with pytest.raises(ValueError, match="mode"):
        ctx.tail_logs(JOB, mode="telepathy")  # type: ignore[arg-type]


# -- the polling path: properties ----------------------------------------------------------

# Each property runs on both backends: half of the profile's examples on each.
HALF_THE_EXAMPLES = max(1, settings().max_examples // 2)
# Lines that make windows look alike: blank lines, separators, cycles and identical runs.
COMMON = ["", "----", "tick A", "tick B", "same"]


@st.composite
def look_alike_logs(draw: st.DrawFn, longest_run: int = 30) -> list[str]:
    """A log of blank lines, separators, short cycles and identical runs, among unique rows.

    No more than ``longest_run`` lines in a row are common ones (not a unique row).
    """
    run = st.lists(st.sampled_from(COMMON), max_size=6)
    repeat = st.tuples(st.sampled_from(COMMON), st.integers(1, 30)).map(lambda t: [t[0]] * t[1])
    cycle = st.tuples(st.lists(st.sampled_from(COMMON), min_size=1, max_size=3), st.integers(1, 15))
    pieces = draw(st.lists(st.one_of(run, repeat, cycle.map(lambda t: t[0] * t[1])), max_size=12))
    lines: list[str] = []
    common = 0
    for piece in pieces:
        for text in piece:
            if common == longest_run:
                lines.append(f"row {len(lines)}")
                common = 0
            lines.append(text)
            common += 1
        if draw(st.booleans()):
            lines.append(f"row {len(lines)}")
            common = 0
    return lines


@st.composite
def bursts(draw: st.DrawFn, lines: list[str]) -> list[list[str]]:
    """Cut ``lines`` into what exists when tailing starts, then one burst per tailJob call."""
    cuts = sorted(draw(st.lists(st.integers(0, len(lines)), max_size=15)))
    edges = [0, *cuts, len(lines)]
    return [lines[a:b] for a, b in itertools.pairwise(edges)]


def _tail_through(
    log: FakeLog, backend: str, since: int = 0
) -> list[tuple[str, str | LogGapWarning]]:
    """Tail ``log`` with ``mode="poll"``; return the lines and warnings, in their order."""
    events: list[tuple[str, str | LogGapWarning]] = []

    async def main() -> None:
        async with respx.mock(assert_all_called=False) as router, mock_context() as ctx:
            _plain_server(router, log)
            lines = ctx.tail_logs(JOB, poll=NO_WAIT, mode="poll", since=since or None)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", LogGapWarning)
                async with contextlib.aclosing(lines):
                    async for line in lines:
                        events.extend(("warning", w.message) for w in caught)  # type: ignore[misc]
                        caught.clear()
                        events.append(("line", line.text))
                events.extend(("warning", w.message) for w in caught)  # type: ignore[misc]

    anyio.run(main, backend=backend)
    return events


def assert_within_warned_bounds(
    log: list[str], events: list[tuple[str, str | LogGapWarning]], since: int = 0
) -> None:
    """The lines are the log, except where a warning allows lines missing or repeated.

    Tracks every position in the log the output can have reached: a line must be the
    log's next one; a warning lets the position move ahead by up to ``missing`` lines
    (any number when ``None``) or back by up to ``repeated``.  The output must end at
    the end of the log.
    """
    reached = {since}
    for kind, value in events:
        if isinstance(value, LogGapWarning):
            ahead = len(log) if value.missing is None else value.missing
            reached = {
                p
                for r in reached
                for p in range(max(0, r - value.repeated), min(len(log), r + ahead) + 1)
            }
        else:
            reached = {r + 1 for r in reached if r < len(log) and log[r] == value}
        assert reached, f"a {kind} no warning accounts for: {value!r}"
    assert len(log) in reached


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=HALF_THE_EXAMPLES)
@given(data=st.data(), line_count=st.booleans())
def test_poll_output_is_the_log_or_a_warning_bounds_the_difference(
    backend: str, data: st.DataObject, line_count: bool
) -> None:
    """Bursts of at most half a window between polls: exact, or a warning bounds the gap."""
    lines = data.draw(look_alike_logs())
    first, *later = data.draw(bursts(lines))
    log = FakeLog(first, line_count=line_count, max_burst=lambda count: count // 2)
    log.pending, log.done = later, True
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(logs, "POLL_WINDOW", 4)
        patch.setattr(logs, "MAX_POLL_WINDOW", 64)
        events = _tail_through(log, backend)
    assert log.lines == lines
    assert_within_warned_bounds(lines, events)
    event("warned" if any(kind == "warning" for kind, _ in events) else "exact")
    # Warnings only where no window of the largest size could settle the alignment: a
    # window is known to hold the whole log only when it has fewer lines than asked for,
    # so a log of exactly the largest window is aligned by content too.
    assert len(lines) >= 64 or all(kind == "line" for kind, _ in events) or lines in ([], [""])


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=HALF_THE_EXAMPLES)
@given(data=st.data(), line_count=st.booleans())
def test_poll_bursts_larger_than_the_window_are_exact(
    backend: str, data: st.DataObject, line_count: bool
) -> None:
    """Bursts of any size, whose lines never repeat half a window: exactly the log."""
    lines = data.draw(look_alike_logs(longest_run=7))
    first, *later = data.draw(bursts(lines))
    log = FakeLog(first, line_count=line_count)
    log.pending, log.done = later, True
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(logs, "POLL_WINDOW", 16)
        events = _tail_through(log, backend)
    if lines in ([], [""]) and not line_count:
        assert [kind for kind, _ in events] == ["warning"]
    else:
        assert events == [("line", text) for text in lines]


# -- the stream path ----------------------------------------------------------------------


class StreamServer:
    """Answers ``streamLogs`` with scripted bodies and records the cursors asked for."""

    def __init__(self, *bodies: ScriptedStream | httpx.Response) -> None:
        self.bodies = list(bodies)
        self.cursors: list[int] = []
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.cursors.append(int(request.url.params["cursor"]))
        body = self.bodies.pop(0)
        return body if isinstance(body, httpx.Response) else stream_response(body)


def _stream_server(router: respx.MockRouter, server: StreamServer) -> None:
    router.get(f"{URL}/serverInfo/").mock(return_value=server_info("streamLogs"))
    router.get(f"{URL}/streamLogs/JuliaBatch/").mock(side_effect=server)


@pytest.mark.anyio
async def test_stream_resumes_from_the_last_cursor() -> None:
    """A stream cut mid-line resumes after the last cursor; resent lines are dropped."""
    first = ndjson(log_events(1, 3)) + b'{"cursor": 4, "str'
    bodies: list[ScriptedStream | httpx.Response] = [
        ScriptedStream([first]),  # EOF without an end marker
        ScriptedStream(
            [ndjson([{"heartbeat": True, "cursor": 3}, *log_events(2, 5)])],
            fail=httpx.ReadError("connection reset"),
        ),
        envelope("server restarting", status=503),
        ScriptedStream([ndjson([*log_events(6, 7), {"end": True, "cursor": 7, "phase": "x"}])]),
    ]
    server = StreamServer(*bodies)
    async with respx.mock(assert_all_called=False) as router, mock_context() as ctx:
        _stream_server(router, server)
        got = await _collect(ctx.tail_logs(JOB))
    assert [line.cursor for line in got] == [1, 2, 3, 4, 5, 6, 7]
    assert got[0] == LogLine("line 1", stream="stdout", cursor=1, proc="master")
    assert server.cursors == [0, 3, 5, 5]
    params = server.requests[0].url.params
    assert (params["follow"], params["heartbeat"], params["name"]) == ("true", "5", "job1")
    assert all(isinstance(b, httpx.Response) or b.closed for b in bodies)


@pytest.mark.anyio
async def test_stream_reassembles_lines_split_anywhere() -> None:
    """Lines cut across chunks, even inside a UTF-8 character, arrive whole."""
    events = [{"cursor": 1, "text": "caf\u00e9 \u2603", "stream": "stderr", "proc": "worker-2"}]
    body = ndjson([*events, {"heartbeat": True, "cursor": 1}, {"end": True, "cursor": 1}])
    chunks = [body[i : i + 1] for i in range(len(body))]
    async with respx.mock(assert_all_called=False) as router, mock_context() as ctx:
        _stream_server(router, StreamServer(ScriptedStream(chunks)))
        got = await _collect(ctx.tail_logs(JOB, follow=False))
    assert got == [LogLine("caf\u00e9 \u2603", stream="stderr", cursor=1, proc="worker-2")]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "bad",
    [b"not json", b'{"cursor": 3, "text": "a"},{"cursor": 4, "text": "b"}', b"[1]", b"42"],
)
async def test_stream_names_a_malformed_line_in_a_chunk_of_good_ones(bad: bytes) -> None:
    """Lines before a malformed one in the same chunk arrive; the error names that line."""
    body = ndjson(log_events(1, 2)) + b"\n  \n" + bad + b"\n" + ndjson(log_events(3, 4))
    async with respx.mock(assert_all_called=False) as router, mock_context() as ctx:
        _stream_server(router, StreamServer(ScriptedStream([body])))
        got: list[LogLine] = []
        with pytest.raises(ResponseError, match="unreadable log stream line") as caught:
            await _collect(ctx.tail_logs(JOB, follow=False), into=got)
    assert [line.cursor for line in got] == [1, 2]
    assert repr(bad.decode()) in str(caught.value)


@pytest.mark.anyio
async def test_stream_skips_blank_lines_heartbeats_and_repeats_within_a_chunk() -> None:
    """One chunk mixing blank lines, heartbeats, unknown events and resent lines."""
    events = [
        *log_events(1, 2),
        {"heartbeat": True, "cursor": 2},
        {"cursor": 2, "text": "line 2 again"},
        {"cursor": True, "text": "a boolean is not a cursor"},
        {"something": "new"},
        {"cursor": 3, "text": "line 3", "stream": 1, "proc": None},
        {"end": True, "cursor": 3},
        *log_events(4, 4),
    ]
    body = b"\n" + ndjson(events).replace(b"\n", b"\n \r\n", 1)
    async with respx.mock(assert_all_called=False) as router, mock_context() as ctx:
        _stream_server(router, StreamServer(ScriptedStream([body])))
        got = await _collect(ctx.tail_logs(JOB, follow=False))
    assert got == [
        *(LogLine(f"line {c}", "stdout", c, "master") for c in (1, 2)),
        LogLine("line 3", None, 3, None),
    ]


def test_fast_log_lines_equal_constructed_ones() -> None:
    """A batch's LogLine objects equal constructed ones, frozen all the same."""
    (fast,) = logs.LogBatch(("text",), ("stderr",), (7,), ("worker-1",), 7).lines()
    slow = LogLine("text", stream="stderr", cursor=7, proc="worker-1")
    assert fast == slow
    assert hash(fast) == hash(slow)
    assert repr(fast) == repr(slow)
    with pytest.raises(AttributeError):
        fast.text = "changed"  # type: ignore[misc]


@pytest.mark.anyio
async def test_stream_idle_timeout_reconnects() -> None:
    """A stream silent for idle_timeout (no heartbeat either) is dropped and resumed."""
    stalled = ScriptedStream([ndjson(log_events(1, 2))], stall=True)
    rest = ScriptedStream([ndjson([*log_events(3, 3), {"end": True, "cursor": 3}])])
    server = StreamServer(stalled, rest)
    async with respx.mock(assert_all_called=False) as router, mock_context() as ctx:
        _stream_server(router, server)
        got = await _collect(ctx.tail_logs(JOB, idle_timeout=0.05, since=0))
    assert [line.cursor for line in got] == [1, 2, 3]
    assert server.cursors == [0, 2]
    assert server.requests[0].url.params["heartbeat"] == "0.0166667"
    assert stalled.closed


@pytest.mark.anyio
async def test_stream_gives_up_after_the_retry_budget() -> None:
    """A stream that never comes back raises TransportError, saying where to resume."""
    server = StreamServer(*(envelope("down", status=503) for _ in range(1000)))
    retries = RetryPolicy(initial=0.0, maximum=0.0, total_timeout=0.05)
    async with respx.mock(assert_all_called=False) as router, mock_context(retries=retries) as ctx:
        _stream_server(router, server)
        with pytest.raises(Exception, match="resume with since=0") as caught:
            await _collect(ctx.tail_logs(JOB))
    assert type(caught.value).__name__ == "ServerError"


@pytest.mark.anyio
async def test_stream_follow_false_waits_for_the_job_and_raises_when_deleted() -> None:
    """404 first is waited out; a 404 after the job was seen raises JobNotFoundError."""
    server = StreamServer(
        not_found(),
        ScriptedStream([ndjson(log_events(1, 1))]),
        not_found(),
    )
    async with respx.mock(assert_all_called=False) as router, mock_context() as ctx:
        _stream_server(router, server)
        got: list[LogLine] = []
        with pytest.raises(JobNotFoundError):
            await _collect(ctx.tail_logs(JOB, follow=False, poll=NO_WAIT), into=got)
    assert [line.cursor for line in got] == [1]
    assert server.requests[1].url.params["follow"] == "false"


@pytest.mark.anyio
async def test_breaking_out_closes_the_stream() -> None:
    """Leaving aclosing early closes the response and frees the stream slot."""
    body = ScriptedStream([ndjson(log_events(1, 100))], stall=True)
    async with respx.mock(assert_all_called=False) as router, mock_context() as ctx:
        _stream_server(router, StreamServer(body))
        async with contextlib.aclosing(ctx.tail_logs(JOB)) as lines:
            async for line in lines:
                if line.cursor == 3:
                    break
        assert body.closed
        assert http_layer(ctx).loop_state().slots.borrowed_tokens == 0
        slots = http_layer(ctx).loop_state().stream_slots
        assert slots.borrowed_tokens == 0


@pytest.mark.anyio
async def test_cancelling_the_consumer_closes_the_stream() -> None:
    """Cancelling the task that consumes the stream closes the response at once."""
    body = ScriptedStream([ndjson(log_events(1, 1))], stall=True)
    async with respx.mock(assert_all_called=False) as router, mock_context() as ctx:
        _stream_server(router, StreamServer(body))
        with anyio.move_on_after(0.05):
            async with contextlib.aclosing(ctx.tail_logs(JOB, idle_timeout=60)) as lines:
                async for _line in lines:
                    pass
        assert body.closed
        assert http_layer(ctx).loop_state().slots.borrowed_tokens == 0


@contextlib.asynccontextmanager
async def stalling_streams(
    count: int, max_connections: int = 20
) -> AsyncIterator[tuple[Context, list[ScriptedStream]]]:
    """A Context on a server whose ``count`` streams send line 1, then nothing."""
    bodies = [ScriptedStream([ndjson(log_events(1, 1))], stall=True) for _ in range(count)]
    async with (
        respx.mock(assert_all_called=False) as router,
        mock_context(limits=httpx.Limits(max_connections=max_connections)) as ctx,
    ):
        _stream_server(router, StreamServer(*bodies))
        router.get(f"{URL}/getJobStatus/JuliaBatch/").mock(
            return_value=envelope({"succeeded": False})
        )
        yield ctx, bodies


@pytest.mark.anyio
async def test_streams_leave_half_the_slots_to_short_calls() -> None:
    """More streams than stream slots wait; short calls still go through."""
    async with stalling_streams(3, max_connections=4) as (ctx, _bodies):
        first_lines: list[int] = []
        two_streaming = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def tail(i: int) -> None:
                async with contextlib.aclosing(ctx.tail_logs(JOB, idle_timeout=60)) as lines:
                    async for _line in lines:
                        first_lines.append(i)
                        if len(first_lines) == 2:
                            two_streaming.set()

            for i in range(3):
                tg.start_soon(tail, i)
            with anyio.fail_after(5):
                await two_streaming.wait()
            await anyio.sleep(0.05)
            assert len(first_lines) == 2  # 2 of 4 slots carry streams, the third waits
            with anyio.fail_after(1):
                for _ in range(10):
                    await ctx.get_job_status(JOB)
            tg.cancel_scope.cancel()
        assert http_layer(ctx).loop_state().slots.borrowed_tokens == 0


def with_uid(body: ScriptedStream, uid: str) -> httpx.Response:
    """A streamLogs answer for the job submission ``uid``."""
    response = stream_response(body)
    response.headers[logs.UID_HEADER] = uid
    return response


@pytest.mark.anyio
async def test_a_reconnect_asks_for_the_same_submission() -> None:
    """Reconnects send the uid of the first answer; the server's 404 ends the tail."""
    deleted = envelope(
        "job 'job1' was deleted (a job submitted later under the same name is another job)",
        status=404,
    )
    server = StreamServer(with_uid(ScriptedStream([ndjson(log_events(1, 2))]), "a1"), deleted)
    async with respx.mock(assert_all_called=False) as router, mock_context() as ctx:
        _stream_server(router, server)
        got: list[LogLine] = []
        with pytest.raises(JobNotFoundError, match="submitted later under the same name"):
            await _collect(ctx.tail_logs(JOB, poll=NO_WAIT), into=got)
    assert [line.cursor for line in got] == [1, 2]
    assert "uid" not in server.requests[0].url.params
    assert server.requests[1].url.params["uid"] == "a1"


@pytest.mark.anyio
async def test_an_answer_for_another_submission_ends_the_tail() -> None:
    """A reconnect answered for another submission (its header) is not followed."""
    server = StreamServer(
        with_uid(ScriptedStream([ndjson(log_events(1, 2))]), "a1"),
        with_uid(ScriptedStream([ndjson([*log_events(1, 5), {"end": True, "cursor": 5}])]), "b2"),
    )
    async with respx.mock(assert_all_called=False) as router, mock_context() as ctx:
        _stream_server(router, server)
        got: list[LogLine] = []
        with pytest.raises(JobNotFoundError, match="was deleted"):
            await _collect(ctx.tail_logs(JOB, poll=NO_WAIT), into=got)
    assert [line.text for line in got] == ["line 1", "line 2"]


@pytest.mark.anyio
async def test_servers_without_uids_are_tailed_as_before() -> None:
    """No uid header: reconnects carry no uid (nothing can be told apart there)."""
    server = StreamServer(
        ScriptedStream([ndjson(log_events(1, 2))]),
        ScriptedStream([ndjson([*log_events(3, 3), {"end": True, "cursor": 3}])]),
    )
    async with respx.mock(assert_all_called=False) as router, mock_context() as ctx:
        _stream_server(router, server)
        got = await _collect(ctx.tail_logs(JOB))
    assert [line.cursor for line in got] == [1, 2, 3]
    assert all("uid" not in request.url.params for request in server.requests)


@pytest.mark.anyio
async def test_waiting_for_a_stream_slot_is_bounded_by_start_timeout() -> None:
    """Ten tails kept open after their first line hold every slot; the next one is refused
    after start_timeout with an error naming the limit, and gets a slot once one is freed."""
    async with stalling_streams(11) as (ctx, _bodies):
        kept = [ctx.tail_logs(JOB, idle_timeout=60) for _ in range(10)]
        for lines in kept:
            assert (await anext(lines)).cursor == 1
        with anyio.fail_after(10), pytest.raises(WaitTimeoutError) as caught:
            await _collect(ctx.tail_logs(JOB, start_timeout=0.2))
        message = str(caught.value)
        assert "no log stream slot became free within 0.2 s" in message
        assert "all 10 of this Context" in message
        assert "max_connections" in message
        await kept.pop().aclose()
        with anyio.fail_after(10):
            extra = ctx.tail_logs(JOB, start_timeout=0.2)
            assert (await anext(extra)).cursor == 1
        for lines in [*kept, extra]:
            await lines.aclose()
        assert http_layer(ctx).loop_state().stream_slots.borrowed_tokens == 0


@pytest.mark.anyio
async def test_a_dropped_tail_gives_its_slot_back() -> None:
    """A generator no longer referenced (never closed) frees its stream slot."""
    async with stalling_streams(2, max_connections=2) as (ctx, bodies):
        dropped = ctx.tail_logs(JOB, idle_timeout=60)
        assert (await anext(dropped)).cursor == 1
        slots = http_layer(ctx).loop_state().stream_slots
        assert slots.borrowed_tokens == slots.total_tokens == 1
        # trio warns about a generator collected unfinished, as it does for any.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            del dropped
            gc.collect()
        async with contextlib.aclosing(ctx.tail_logs(JOB, start_timeout=5)) as lines:
            assert (await anext(lines)).cursor == 1
        assert bodies[0].closed


@pytest.mark.anyio
async def test_calls_inside_a_tail_on_the_smallest_pool() -> None:
    """With two connections, a call made while a stream runs does not wait for it."""
    body = ScriptedStream([ndjson(log_events(1, 3))], stall=True)
    async with (
        respx.mock(assert_all_called=False) as router,
        mock_context(limits=httpx.Limits(max_connections=2)) as ctx,
    ):
        _stream_server(router, StreamServer(body))
        router.get(f"{URL}/getJobStatus/JuliaBatch/").mock(
            return_value=envelope({"succeeded": False})
        )
        with anyio.fail_after(5):
            async with contextlib.aclosing(ctx.tail_logs(JOB, idle_timeout=60)) as lines:
                async for line in lines:
                    assert not (await ctx.get_job_status(JOB)).succeeded
                    if line.cursor == 3:
                        break


# -- against the local server -------------------------------------------------------------

# Writes n numbered lines in bursts, every 100th to stderr, pausing between bursts.
PRINTER = """\
import sys, time
n, burst, pause = {n}, {burst}, {pause}
for start in range(1, n + 1, burst):
    for i in range(start, min(n, start + burst - 1) + 1):
        out = sys.stderr if i % 100 == 0 else sys.stdout
        out.write(f"line {{i}} " + "x" * (i % 37) + "\\n")
    sys.stdout.flush(); sys.stderr.flush()
    time.sleep(pause)
"""
FAST_POLL = PollPolicy(initial=0.02, maximum=0.2)


def expected_lines(n: int) -> list[str]:
    """The lines PRINTER writes, in the order it writes them."""
    return [f"line {i} " + "x" * (i % 37) for i in range(1, n + 1)]


def assert_exact(got: list[LogLine], server: LocalServer, job: str, n: int) -> None:
    """``got`` is the job's log as the server recorded it, and that is what PRINTER wrote.

    The server interleaves stdout and stderr as it collects them, so only the order
    within each stream is the job's own.
    """
    record = combined_log(server, job)
    assert [line.text for line in got] == [r["text"] for r in record]
    written = expected_lines(n)
    for stream, wanted in (("stdout", lambda i: i % 100), ("stderr", lambda i: not i % 100)):
        texts = [r["text"] for r in record if r["stream"] == stream]
        assert texts == [text for i, text in enumerate(written, 1) if wanted(i)]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalServer]:
    """A local server on a free loopback port."""
    with LocalServer(tmp_path / "data", kill_grace=0.5) as running:
        yield running


async def submit_printer(
    ctx: Context, server: LocalServer, name: str, n: int, burst: int = 5000, pause: float = 0.0
) -> JuliaBatch:
    """Submit a job that prints ``n`` lines and return its spec."""
    write_script(server, f"{name}.py", PRINTER.format(n=n, burst=burst, pause=pause))
    spec = JuliaBatch(name=name, start_script=f"{name}.py", run_volume="work")
    await ctx.submit_job(spec)
    return spec


@pytest.mark.slow
@pytest.mark.anyio
async def test_stream_path_receives_100k_lines_exactly(server: LocalServer) -> None:
    """Every line of a 100k-line job arrives once, in order, with the server's cursors."""
    async with server_context(server) as ctx:
        spec = await submit_printer(ctx, server, "big", 100_000, burst=10_000, pause=0.01)
        got = await _collect(ctx.tail_logs(spec, poll=FAST_POLL))
        assert all(line.cursor is not None for line in got), "the log was polled, not streamed"
    assert_exact(got, server, "big", 100_000)
    assert [(line.cursor, line.stream, line.proc) for line in got] == [
        (r["cursor"], r["stream"], r["proc"]) for r in combined_log(server, "big")
    ]


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.parametrize(
    ("cut_after", "lines"),
    [
        (150_000, 50_000),  # a few whole columns events per connection
        (20_000, 10_000),  # less than one event: read one object per line after a cut
    ],
)
async def test_stream_cut_every_few_thousand_lines_is_still_exact(
    server: LocalServer, cut_after: int, lines: int
) -> None:
    """A proxy that drops each connection after ``cut_after`` bytes loses and repeats no line."""
    host, port = httpx.URL(server.url).host, httpx.URL(server.url).port
    assert port is not None
    async with (
        dropping_proxy(host, port, cut_after=cut_after) as proxy,
        server_context(server, proxy.url, retries=FAST_RETRY) as ctx,
    ):
        spec = await submit_printer(ctx, server, "cut", lines, burst=5_000, pause=0.01)
        got = await _collect(ctx.tail_logs(spec, poll=FAST_POLL))
    assert_exact(got, server, "cut", lines)
    assert [line.cursor for line in got] == list(range(1, lines + 1))
    assert proxy.cuts >= 10


@pytest.mark.slow
@pytest.mark.anyio
async def test_poll_path_receives_100k_lines_exactly(server: LocalServer) -> None:
    """Polling tailJob keeps up with a job writing 100k lines in bursts: exact output."""
    async with server_context(server) as ctx:
        spec = await submit_printer(ctx, server, "polled", 100_000, burst=4_000, pause=0.02)
        with warnings.catch_warnings():
            warnings.simplefilter("error", LogGapWarning)
            got = await _collect(ctx.tail_logs(spec, mode="poll", poll=FAST_POLL))
    assert_exact(got, server, "polled", 100_000)


@pytest.mark.anyio
async def test_breaking_out_leaves_no_open_stream(server: LocalServer) -> None:
    """After breaking out of tail_logs the pool holds no busy connection."""
    async with server_context(server) as ctx:
        spec = await submit_printer(ctx, server, "early", 20_000, burst=1_000, pause=0.05)
        async with contextlib.aclosing(ctx.tail_logs(spec)) as lines:
            async for line in lines:
                if line.cursor == 10:
                    break
        assert open_pool_connections(ctx) == 0
        assert http_layer(ctx).loop_state().slots.borrowed_tokens == 0
        follow_up = await _collect(ctx.tail_logs(spec, follow=False, since=10))
        assert follow_up[0].cursor == 11
        await ctx.delete_job(spec, force=True)


# A header and a blank line, then after a pause one burst of 10,000 lines: blank lines
# alternating with numbered rows.  Windows that meet at a blank line look joined.
SEAM_JOB = """\
import sys, time
print("header"); print(""); sys.stdout.flush()
time.sleep(1.5)
for i in range(5000):
    print(""); print(f"row {i}")
"""
SEAM_LINES = ["header", ""] + [text for i in range(5000) for text in ("", f"row {i}")]

# Two alternating lines, 200 every 0.3 s, then "end": consecutive windows look alike.
CYCLE_JOB = """\
import sys, time
for _ in range(12):
    for _ in range(100):
        print("tick A"); print("tick B")
    sys.stdout.flush(); time.sleep(0.3)
print("end")
"""
CYCLE_LINES = ["tick A", "tick B"] * 1200 + ["end"]


@pytest.mark.anyio
async def test_a_wrong_token_names_the_job_tailed(server: LocalServer) -> None:
    """tail_logs with a wrong token raises AuthenticationError about the job, not the probe."""
    async with Context(server.url, "not-the-token", server.namespace) as ctx:
        with pytest.raises(AuthenticationError, match=r"\[tailJob, job 'mine'\]"):
            await _collect(ctx.tail_logs(JobRef("JuliaBatch", "mine")))


@pytest.mark.anyio
async def test_poll_path_yields_a_lone_empty_line(server: LocalServer) -> None:
    """A job whose only output is one empty line yields that line (the server counts it)."""
    write_script(server, "blank.py", "print()\n")
    spec = JuliaBatch(name="blank", start_script="blank.py", run_volume="work")
    async with server_context(server) as ctx:
        await ctx.submit_job(spec)
        with warnings.catch_warnings():
            warnings.simplefilter("error", LogGapWarning)
            got = await _collect(ctx.tail_logs(spec, mode="poll", poll=FAST_POLL))
    assert [line.text for line in got] == [""]


@pytest.mark.parametrize(
    ("script", "expected"),
    [(SEAM_JOB, SEAM_LINES), (CYCLE_JOB, CYCLE_LINES)],
    ids=["seam", "cycle"],
)
@pytest.mark.anyio
async def test_poll_path_never_drops_lines_of_look_alike_windows(
    server: LocalServer, script: str, expected: list[str]
) -> None:
    """Blank seams and short cycles in a polled log: every line arrives, no warning needed."""
    write_script(server, "job.py", script)
    spec = JuliaBatch(name="alike", start_script="job.py", run_volume="work")
    async with server_context(server) as ctx:
        await ctx.submit_job(spec)
        with warnings.catch_warnings():
            warnings.simplefilter("error", LogGapWarning)
            got = await _collect(ctx.tail_logs(spec, mode="poll"))
    assert [r["text"] for r in combined_log(server, "alike")] == expected
    assert [line.text for line in got] == expected


# Prints "<TAG> <i>" every few hundredths of a second for a while.
TICKER = """\
import os, time
for i in range(2000):
    print(os.environ["TAG"], i, flush=True)
    time.sleep(0.02)
"""


def ticker(tag: str) -> JuliaBatch:
    """The job ``reused``, printing ``tag``."""
    return JuliaBatch(
        name="reused", start_script="ticker.py", run_volume="work", envvars={"TAG": tag}
    )


@pytest.mark.anyio
async def test_a_tail_never_follows_into_a_job_reusing_the_name(server: LocalServer) -> None:
    """Tail X, force-delete X, submit a new X at once: the tail ends with JobNotFoundError
    and yields none of the new job's lines."""
    write_script(server, "ticker.py", TICKER)
    async with server_context(server) as ctx:
        await ctx.submit_job(ticker("old"))
        got: list[LogLine] = []

        async def tail_and_replace() -> None:
            async with contextlib.aclosing(ctx.tail_logs(ticker("old"))) as lines:
                async for line in lines:
                    got.append(line)
                    if len(got) == 5:
                        await ctx.delete_job(ticker("old"), force=True)
                        await ctx.submit_job(ticker("new"))

        with anyio.fail_after(30), pytest.raises(JobNotFoundError, match="reused"):
            await tail_and_replace()
        await ctx.delete_job(ticker("new"), force=True)
    assert len(got) >= 5
    assert all(line.text.startswith("old ") for line in got), got


# -- batches (tail_log_batches) -----------------------------------------------------------

DECODERS = ["json module", *(["orjson"] if logs._fast_loads() is not None else [])]


@pytest.fixture(params=DECODERS)
def decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Parse streams with the json module alone, and with orjson where it is installed."""
    if request.param == "json module":
        monkeypatch.setattr(logs, "_fast_loads", lambda: None)
    name: str = request.param
    return name


async def _collect_batches(
    batches: AsyncGenerator[logs.LogBatch, None], into: list[logs.LogBatch] | None = None
) -> list[logs.LogBatch]:
    """Consume ``batches`` into ``into`` (kept when the generator raises)."""
    out = [] if into is None else into
    async with contextlib.aclosing(batches):
        async for batch in batches:
            out.append(batch)
    return out


def _flat(batches: list[logs.LogBatch]) -> list[LogLine]:
    return [line for batch in batches for line in batch]


@pytest.mark.anyio
async def test_batches_are_the_lines_of_tail_logs_one_per_chunk(decoder: str) -> None:
    """Each chunk with lines is one batch; flattened, the batches are what tail_logs yields."""
    chunks = [
        ndjson(log_events(1, 3)),
        ndjson([{"heartbeat": True, "cursor": 3}]),
        ndjson(log_events(4, 4, stream="stderr", proc="worker-1"))[:-9],
        ndjson(log_events(4, 4, stream="stderr", proc="worker-1"))[-9:] + ndjson(log_events(5, 6)),
        ndjson([{"end": True, "cursor": 6, "phase": "succeeded"}]),
    ]
    async with respx.mock(assert_all_called=False) as router, mock_context() as ctx:
        _stream_server(router, StreamServer(ScriptedStream(chunks), ScriptedStream(chunks)))
        batches = await _collect_batches(ctx.tail_log_batches(JOB, follow=False))
        lines = await _collect(ctx.tail_logs(JOB, follow=False))
    assert [len(batch) for batch in batches] == [3, 3]
    assert batches[0] == logs.LogBatch(
        ("line 1", "line 2", "line 3"), ("stdout",) * 3, (1, 2, 3), ("master",) * 3, 3
    )
    assert batches[1].streams == ("stderr", "stdout", "stdout")
    assert batches[1].procs == ("worker-1", "master", "master")
    assert [batch.cursor for batch in batches] == [3, 6]
    assert _flat(batches) == lines
    assert lines[3] == LogLine("line 4", stream="stderr", cursor=4, proc="worker-1")


@pytest.mark.anyio
async def test_batches_resume_from_the_last_cursor(decoder: str) -> None:
    """A cut, a reset and a 503 are ridden through; resent lines are dropped, none lost."""
    first = ndjson(log_events(1, 3)) + b'{"cursor": 4, "str'
    bodies: list[ScriptedStream | httpx.Response] = [
        ScriptedStream([first]),
        ScriptedStream(
            [ndjson([{"heartbeat": True, "cursor": 3}, *log_events(2, 5)])],
            fail=httpx.ReadError("connection reset"),
        ),
        envelope("server restarting", status=503),
        ScriptedStream([ndjson([*log_events(6, 7), {"end": True, "cursor": 7, "phase": "x"}])]),
    ]
    server = StreamServer(*bodies)
    async with respx.mock(assert_all_called=False) as router, mock_context() as ctx:
        _stream_server(router, server)
        batches = await _collect_batches(ctx.tail_log_batches(JOB))
    assert [batch.cursors for batch in batches] == [(1, 2, 3), (4, 5), (6, 7)]
    assert server.cursors == [0, 3, 5, 5]
    assert all(isinstance(b, httpx.Response) or b.closed for b in bodies)


@pytest.mark.anyio
async def test_since_a_batch_cursor_resumes_after_that_batch(decoder: str) -> None:
    """since=batch.cursor asks for the lines after the batch, and only those arrive."""
    body = ndjson([*log_events(1, 5), {"end": True, "cursor": 5}])
    server = StreamServer(ScriptedStream([body]), ScriptedStream([body]))
    async with respx.mock(assert_all_called=False) as router, mock_context() as ctx:
        _stream_server(router, server)
        first = ctx.tail_log_batches(JOB, follow=False)
        async with contextlib.aclosing(first):
            batch = await anext(first)
        rest = await _collect_batches(ctx.tail_log_batches(JOB, since=2, follow=False))
    assert batch.cursor == 5
    assert server.cursors == [0, 2]
    # A server resending lines at or below the cursor is not believed.
    assert [b.cursors for b in rest] == [(3, 4, 5)]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "bad",
    [b"not json", b'{"cursor": 3, "text": "a"},{"cursor": 4, "text": "b"}', b"[1]", b"NaN"],
)
async def test_batches_name_a_malformed_line_after_the_good_ones(bad: bytes, decoder: str) -> None:
    """Lines before a malformed one in its chunk arrive as a batch; the error names it."""
    body = ndjson(log_events(1, 2)) + b"\n  \n" + bad + b"\n" + ndjson(log_events(3, 4))
    async with respx.mock(assert_all_called=False) as router, mock_context() as ctx:
        _stream_server(router, StreamServer(ScriptedStream([body])))
        got: list[logs.LogBatch] = []
        with pytest.raises(ResponseError, match="unreadable log stream line") as caught:
            await _collect_batches(ctx.tail_log_batches(JOB, follow=False), into=got)
    assert [batch.cursors for batch in got] == [(1, 2)]
    assert repr(bad.decode()) in str(caught.value)


@pytest.mark.anyio
async def test_batches_skip_what_tail_logs_skips(decoder: str) -> None:
    """Blank lines, heartbeats, unknown events, resent lines and what follows the end."""
    events = [
        *log_events(1, 2),
        {"heartbeat": True, "cursor": 2},
        {"cursor": 2, "text": "line 2 again", "stream": "stdout", "proc": "master"},
        {"cursor": True, "text": "a boolean is not a cursor"},
        {"something": "new"},
        {"cursor": 3, "text": "line 3", "stream": 1, "proc": None},
        {"cursor": 4, "text": "an end inside a line ends", "stream": "a", "proc": "b", "end": 1},
        *log_events(5, 5),
    ]
    body = b"\n" + ndjson(events).replace(b"\n", b"\n \r\n", 1)
    async with respx.mock(assert_all_called=False) as router, mock_context() as ctx:
        _stream_server(router, StreamServer(ScriptedStream([body])))
        batches = await _collect_batches(ctx.tail_log_batches(JOB, follow=False))
    assert batches == [
        logs.LogBatch(
            ("line 1", "line 2", "line 3"), ("stdout", "stdout", None), (1, 2, 3),
            ("master", "master", None), 3,
        )
    ]  # fmt: skip


EVENT_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 12), st.sampled_from(["stdout", "master", "x"])
)
EVENTS = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {
                "cursor": st.integers(0, 12),
                "text": st.text(max_size=3),
                "stream": st.sampled_from(["stdout", "stderr"]),
                "proc": st.sampled_from(["master", "worker-1"]),
            }
        ),
        st.dictionaries(
            st.sampled_from(["cursor", "text", "stream", "proc", "end", "heartbeat", "x"]),
            EVENT_VALUES,
        ),
    ),
    max_size=8,
)


@given(events=EVENTS, cursor=st.integers(0, 6))
def test_the_fast_reading_of_a_chunk_equals_the_event_by_event_one(
    events: list[dict[str, object]], cursor: int
) -> None:
    """Whatever a chunk holds, the C-level path gives what the event loop gives."""
    assert logs._batch_after(events, cursor) == logs._batch_after_slowly(events, cursor, False)


LINE_BYTES = st.one_of(
    st.builds(lambda e: json.dumps(e).encode(), EVENTS.map(lambda e: e[0] if e else {})),
    st.sampled_from(
        [b"", b" ", b"NaN", b'{"a": NaN}', b'{"t": "\\ud800"}', b'{"t": "\xff"}', b"[]"]
    ),
    st.sampled_from([b'{"cursor": 99999999999999999999999}', b"{}{}", b'{"a": 1},{"b": 2}']),
)


@pytest.mark.skipif(len(DECODERS) < 2, reason="orjson is not installed")
@given(lines=st.lists(LINE_BYTES, min_size=1, max_size=6))
def test_orjson_reads_every_chunk_as_the_json_module_does(lines: list[bytes]) -> None:
    """Chunks parse alike with and without orjson: objects, errors and where they are."""
    chunk = b"\n".join(lines)
    fast = logs._parse_chunk(chunk)
    plain = logs._parse_lines(chunk.decode("utf-8", "replace").split("\n"))
    assert fast[0] == plain[0]
    assert str(fast[1]) == str(plain[1])


@pytest.mark.anyio
async def test_batches_reconnect_after_idle_timeout_with_the_same_submission() -> None:
    """A silent stream is resumed from its cursor, asking for the submission first seen."""
    stalled = ScriptedStream([ndjson(log_events(1, 2))], stall=True)
    replaced = ScriptedStream([ndjson(log_events(1, 9))])
    server = StreamServer(with_uid(stalled, "a1"), with_uid(replaced, "b2"))
    async with respx.mock(assert_all_called=False) as router, mock_context() as ctx:
        _stream_server(router, server)
        got: list[logs.LogBatch] = []
        with pytest.raises(JobNotFoundError, match="was deleted"):
            await _collect_batches(ctx.tail_log_batches(JOB, idle_timeout=0.05), into=got)
    assert [batch.cursors for batch in got] == [(1, 2)]
    assert server.cursors == [0, 2]
    assert server.requests[1].url.params["uid"] == "a1"
    assert stalled.closed


@pytest.mark.anyio
async def test_leaving_batches_early_or_cancelled_frees_the_stream() -> None:
    """Leaving aclosing after a batch, or cancelling the reader, closes the response."""
    broken_off = ScriptedStream([ndjson(log_events(1, 3)), ndjson(log_events(4, 6))], stall=True)
    cancelled = ScriptedStream([ndjson(log_events(1, 1))], stall=True)
    async with respx.mock(assert_all_called=False) as router, mock_context() as ctx:
        _stream_server(router, StreamServer(broken_off, cancelled))
        async with contextlib.aclosing(ctx.tail_log_batches(JOB)) as batches:
            async for batch in batches:
                assert batch.cursor == 3
                break
        assert broken_off.closed
        with anyio.move_on_after(0.05):
            await _collect_batches(ctx.tail_log_batches(JOB, idle_timeout=60))
        assert cancelled.closed
        state = http_layer(ctx).loop_state()
        assert state.slots.borrowed_tokens == 0
        assert state.stream_slots.borrowed_tokens == 0


@pytest.mark.anyio
async def test_closing_the_context_ends_batches_with_client_closed_error() -> None:
    """A reader waiting for the next batch raises ClientClosedError when the Context closes."""
    body = ScriptedStream([ndjson(log_events(1, 1))], stall=True)
    got: list[logs.LogBatch] = []
    async with respx.mock(assert_all_called=False) as router:
        ctx = mock_context()
        _stream_server(router, StreamServer(body))

        async def read() -> None:
            with pytest.raises(ClientClosedError):
                await _collect_batches(ctx.tail_log_batches(JOB, idle_timeout=60), into=got)

        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            with anyio.fail_after(10):
                while not got:  # noqa: ASYNC110 - the batch list is the reader's own state
                    await anyio.sleep(0.01)
            await ctx.aclose()
    assert [batch.cursors for batch in got] == [(1,)]
    assert body.closed


@pytest.mark.anyio
async def test_polled_batches_are_one_per_poll_without_cursors() -> None:
    """On the polling path a batch is a poll's new lines: asked stream, no cursor, since skips."""
    log = FakeLog(["a", "b", "c"], line_count=True)
    log.pending = [[], ["d", "e"]]
    log.done = True
    async with respx.mock(assert_all_called=False) as router, mock_context() as ctx:
        _plain_server(router, log)
        batches = await _collect_batches(
            ctx.tail_log_batches(JOB, stream="stderr", since=1, poll=NO_WAIT)
        )
    assert [batch.texts for batch in batches] == [("b", "c"), ("d", "e")]
    assert {batch.cursor for batch in batches} == {None}
    assert {s for batch in batches for s in batch.streams} == {"stderr"}
    assert {c for batch in batches for c in (*batch.cursors, *batch.procs)} == {None}


@pytest.mark.anyio
async def test_polled_batches_warn_of_a_gap_like_tail_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A window that cannot be aligned is yielded with a LogGapWarning, as per line."""
    monkeypatch.setattr(logs, "POLL_WINDOW", 2)
    monkeypatch.setattr(logs, "MAX_POLL_WINDOW", 4)
    log = FakeLog(["a"])
    log.pending = [[], [f"x{i}" for i in range(10)]]
    log.done = True
    async with respx.mock(assert_all_called=False) as router, mock_context() as ctx:
        _plain_server(router, log)
        with pytest.warns(LogGapWarning, match="may be missing"):
            batches = await _collect_batches(ctx.tail_log_batches(JOB, poll=NO_WAIT))
    assert [batch.texts for batch in batches] == [("a",), ("x6", "x7", "x8", "x9")]


@pytest.mark.slow
@pytest.mark.anyio
async def test_batches_through_a_cutting_proxy_are_exact(server: LocalServer) -> None:
    """Against the real server, cut every ~150 kB: every line once, in order, by batch."""
    host, port = httpx.URL(server.url).host, httpx.URL(server.url).port
    assert port is not None
    async with (
        dropping_proxy(host, port, cut_after=150_000) as proxy,
        server_context(server, proxy.url, retries=FAST_RETRY) as ctx,
    ):
        spec = await submit_printer(ctx, server, "cut-batches", 50_000, burst=5_000, pause=0.01)
        batches = await _collect_batches(ctx.tail_log_batches(spec, poll=FAST_POLL))
    got = _flat(batches)
    assert_exact(got, server, "cut-batches", 50_000)
    assert [line.cursor for line in got] == list(range(1, 50_001))
    assert [batch.cursor for batch in batches] == [batch.cursors[-1] for batch in batches]
    assert proxy.cuts >= 10


# -- the columns format (streamLogsColumns) -----------------------------------------------


def columns_event(first: int, last: int, **extra: object) -> dict[str, object]:
    """A ``columns`` event for cursors ``first..last``, the texts of :func:`log_events`."""
    count = last - first + 1
    event: dict[str, object] = {
        "cursor": last,
        "texts": [f"line {c}" for c in range(first, last + 1)],
        "sources": [[count, "stdout", "master"]],
    }
    event.update(extra)
    return event


def _columns_server(router: respx.MockRouter, server: StreamServer) -> None:
    router.get(f"{URL}/serverInfo/").mock(
        return_value=server_info("streamLogs", logs.COLUMNS_EXTENSION)
    )
    router.get(f"{URL}/streamLogs/JuliaBatch/").mock(side_effect=server)


@pytest.mark.anyio
@pytest.mark.parametrize("offered", [True, False])
async def test_columns_are_asked_for_where_the_server_offers_them(offered: bool) -> None:
    """format=columns is sent only to a server listing the extension; both read alike."""
    body = ndjson([columns_event(1, 3)] if offered else log_events(1, 3))
    server = StreamServer(ScriptedStream([body + ndjson([{"end": True, "cursor": 3}])]))
    async with respx.mock(assert_all_called=False) as router, mock_context() as ctx:
        (_columns_server if offered else _stream_server)(router, server)
        got = await _collect(ctx.tail_logs(JOB, follow=False))
    assert got == [LogLine(f"line {c}", "stdout", c, "master") for c in (1, 2, 3)]
    assert server.requests[0].url.params.get("format") == ("columns" if offered else None)


@pytest.mark.anyio
async def test_a_cut_inside_an_event_falls_back_to_one_object_per_line(decoder: str) -> None:
    """A connection that never delivers a whole event is retried with format=lines."""
    event = ndjson([columns_event(4, 5)])
    bodies: list[ScriptedStream | httpx.Response] = [
        ScriptedStream([ndjson([columns_event(1, 3)]) + event[:20]], fail=httpx.ReadError("cut")),
        ScriptedStream([event[:-5]], fail=httpx.ReadError("cut")),  # no progress
        ScriptedStream([ndjson(log_events(4, 6))]),  # EOF without the end marker
        ScriptedStream([ndjson([columns_event(5, 8), {"end": True, "cursor": 8}])]),
    ]
    server = StreamServer(*bodies)
    async with respx.mock(assert_all_called=False) as router, mock_context() as ctx:
        _columns_server(router, server)
        got = await _collect(ctx.tail_logs(JOB))
    assert [line.cursor for line in got] == list(range(1, 9))
    assert got[-1] == LogLine("line 8", "stdout", 8, "master")
    assert server.cursors == [0, 3, 3, 6]
    formats = [request.url.params.get("format") for request in server.requests]
    assert formats == ["columns", "columns", None, "columns"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "event",
    [
        columns_event(3, 4, texts="line 3"),
        columns_event(3, 4, texts=["line 3", 4]),
        columns_event(3, 4, texts=[]),
        columns_event(3, 4, cursor=True),
        columns_event(3, 4, cursor=1),
        columns_event(3, 4, sources=[[1, "stdout", "master"]]),
        columns_event(3, 4, sources=[[2, "stdout"]]),
        columns_event(3, 4, sources=[[0, "stdout", "master"], [2, "stdout", "master"]]),
        columns_event(3, 4, sources=[[True, "stdout", "master"], [1, "stdout", "master"]]),
        columns_event(3, 4, cursors=[4, 3]),
        columns_event(3, 4, cursors=[3]),
        columns_event(3, 4, cursors=[3, 5]),
        columns_event(3, 4, cursors=[0, 4]),
        columns_event(3, 4, cursors="3,4"),
    ],
)
async def test_a_malformed_columns_event_is_a_response_error(
    event: dict[str, object], decoder: str
) -> None:
    """Lines before a malformed event arrive; the event is named, never half read."""
    body = ndjson([columns_event(1, 2), event, columns_event(5, 5)])
    async with respx.mock(assert_all_called=False) as router, mock_context() as ctx:
        _columns_server(router, StreamServer(ScriptedStream([body])))
        got: list[LogLine] = []
        with pytest.raises(ResponseError, match="unreadable log stream event"):
            await _collect(ctx.tail_logs(JOB, follow=False), into=got)
    assert [line.cursor for line in got] == [1, 2]


@given(log=stored_logs(first=1), event_bytes=st.integers(1, 300), since=st.integers(0, 50))
def test_columns_read_as_the_lines_they_encode(
    log: tuple[list[dict[str, Any]], bytes], event_bytes: int, since: int
) -> None:
    """The server's columns of any stored lines read as those lines, after any cursor."""
    objects, stored = log
    with mock.patch.object(server_logs, "COLUMNS_EVENT", event_bytes):
        sent, _ = server_logs.columns_events(stored)
    events, error = logs._parse_chunk(sent.rstrip(b"\n"))
    assert error is None
    batches, ended, malformed = logs._batches_of_columns(events, since)
    expected, _ = logs._batch_after(objects, since)
    assert (ended, malformed) == (False, None)
    assert _flat(batches) == (list(expected) if expected else [])
    assert all(batch.cursor == batch.cursors[-1] for batch in batches)


@pytest.mark.anyio
async def test_columns_and_lines_read_the_same_log(server: LocalServer) -> None:
    """Against the real server, both formats give the same lines, per stream and cursor."""
    async with server_context(server) as ctx:
        spec = await submit_printer(ctx, server, "formats", 3_000, burst=500, pause=0.01)
        await _collect(ctx.tail_logs(spec))
        info = await http_layer(ctx).server_info()
        assert info is not None
        assert logs.COLUMNS_EXTENSION in info["extensions"]
        reads = [(None, 0), ("stderr", 0), ("stdout", 1234), (None, 2999)]
        columns = [
            await _collect(ctx.tail_logs(spec, follow=False, stream=s, since=c)) for s, c in reads
        ]
        http_layer(ctx).facts.info = {**info, "extensions": ["streamLogs", "jobUid"]}
        lines = [
            await _collect(ctx.tail_logs(spec, follow=False, stream=s, since=c)) for s, c in reads
        ]
    assert columns == lines
    record = combined_log(server, "formats")
    for (stream, since), got in zip(reads, columns, strict=True):
        assert [(line.cursor, line.stream, line.proc, line.text) for line in got] == [
            (r["cursor"], r["stream"], r["proc"], r["text"])
            for r in record
            if r["cursor"] > since and stream in (None, r["stream"])
        ]
    assert [len(got) for got in columns] == [3_000, 30, len(columns[2]), 1]


@pytest.mark.anyio
async def test_lines_sent_one_by_one_on_a_columns_stream_are_read_together(decoder: str) -> None:
    """Objects of single lines between columns events make one batch, as on a lines stream."""
    events = [
        *log_events(1, 3),
        {"heartbeat": True, "cursor": 3},
        columns_event(4, 5),
        *log_events(6, 6),
        {"end": True, "cursor": 6},
    ]
    async with respx.mock(assert_all_called=False) as router, mock_context() as ctx:
        _columns_server(router, StreamServer(ScriptedStream([ndjson(events)])))
        batches = await _collect_batches(ctx.tail_log_batches(JOB, follow=False))
    assert [batch.cursors for batch in batches] == [(1, 2, 3), (4, 5), (6,)]
