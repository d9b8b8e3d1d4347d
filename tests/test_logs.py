"""tail_logs: window alignment, the polling path and the resumable stream path (respx)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path

import anyio
import httpx
import pytest
import respx
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

from juliarun_aio import (
    Context,
    JobNotFoundError,
    JobRef,
    JuliaBatch,
    LogLine,
    ResponseError,
    WaitTimeoutError,
)
from juliarun_aio import _logs as logs
from juliarun_aio._logs import LogGapWarning, WindowTracker, overlap_end
from juliarun_aio._watch import PollPolicy
from juliarun_aio.server import LocalServer

JOB = JobRef("JuliaBatch", "job1")
NO_WAIT = PollPolicy(initial=0.0, maximum=0.0)


# -- overlap_end and WindowTracker (pure) ------------------------------------------------


@pytest.mark.parametrize(
    ("previous", "window", "expected"),
    [
        ([], ["a"], 0),
        (["a"], [], 0),
        (["a", "b", "c"], ["b", "c", "d"], 2),  # suffix of previous starts window
        (["a", "b", "c"], ["c", "d", "e"], 1),
        (["a", "b", "c"], ["d", "e", "f"], 0),  # no overlap
        (["b", "c"], ["a", "b", "c", "d"], 3),  # previous whole inside a larger window
        (["a", "b"], ["a", "b"], 2),  # nothing new
        (["x", "a", "a"], ["a", "a", "a"], 2),  # repeats: the latest alignment wins
        (["a", "b", "a", "b"], ["a", "b", "a", "b", "c"], 4),
        (["a", "b", "a"], ["b", "a", "b", "a", "c"], 4),  # latest whole occurrence
        (["a", "b", "c"], ["c", "x", "a", "b", "c", "y"], 5),
    ],
)
def test_overlap_end(previous: list[str], window: list[str], expected: int) -> None:
    """overlap_end finds where the previous window ends inside the new one."""
    assert overlap_end(previous, window) == expected


def test_overlap_end_is_linear() -> None:
    """A pathological repeated pattern is aligned with a linear number of steps."""
    previous = ["a"] * 20_000 + ["b"]
    window = ["a"] * 40_000 + ["c"]
    assert overlap_end(previous, window) == 0


def test_tracker_counts_positions_while_the_log_fits() -> None:
    """While windows hold the whole log, repeated identical lines are all yielded."""
    tracker = WindowTracker()
    assert tracker.advance(["x", "x"], complete=True) == ["x", "x"]
    assert tracker.advance(["x", "x", "x", "x"], complete=True) == ["x", "x"]
    assert tracker.position == 4


def test_tracker_asks_for_more_when_a_full_window_does_not_connect() -> None:
    """A full window without overlap returns None; resync accepts it as a gap."""
    tracker = WindowTracker()
    assert tracker.advance(["a", "b"], complete=False) is None  # the start is not in view
    assert tracker.advance(["a", "b", "c"], complete=True) == ["a", "b", "c"]
    assert tracker.advance(["f", "g"], complete=False) is None
    assert tracker.resync(["f", "g"]) == ["f", "g"]
    assert tracker.position is None
    assert tracker.advance(["g", "h"], complete=False) == ["h"]


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
async def test_poll_repeated_lines_never_repeat(monkeypatch: pytest.MonkeyPatch) -> None:
    """Identical lines beyond the window are not yielded twice (documented: may be lost)."""
    monkeypatch.setattr(logs, "POLL_WINDOW", 3)
    log = FakeLog(["start"] + ["same"] * 5)
    log.pending = [[], ["same"], ["end"]]
    log.done = True
    async with respx.mock(assert_all_called=False) as router, mock_context() as ctx:
        _plain_server(router, log)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = [line.text for line in await _collect(ctx.tail_logs(JOB, poll=NO_WAIT))]
    assert got[0] == "start"
    assert got[-1] == "end"
    assert got.count("same") in (5, 6)


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
    """The stream path's LogLine constructor builds the same frozen objects."""
    fast = logs._new_line("text", "stderr", 7, "worker-1")
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
    async with respx.mock(assert_all_called=False) as router, mock_context() as ctx:
        _stream_server(router, server)
        ctx._retry = ctx.retry_policy.__class__(initial=0.0, maximum=0.0, total_timeout=0.05)
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
        assert ctx._slots.borrowed_tokens == 0
        slots = ctx.feature("tail_logs.stream_slots")
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
        assert ctx._slots.borrowed_tokens == 0


@pytest.mark.anyio
async def test_streams_leave_half_the_slots_to_short_calls() -> None:
    """More streams than stream slots wait; short calls still go through."""
    bodies = [ScriptedStream([ndjson(log_events(1, 1))], stall=True) for _ in range(3)]
    async with (
        respx.mock(assert_all_called=False) as router,
        mock_context(limits=httpx.Limits(max_connections=4)) as ctx,
    ):
        _stream_server(router, StreamServer(*bodies))
        router.get(f"{URL}/getJobStatus/JuliaBatch/").mock(
            return_value=envelope({"succeeded": False})
        )
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
        assert ctx._slots.borrowed_tokens == 0


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
        assert ctx.feature("tail_logs.path") == "stream"
    assert_exact(got, server, "big", 100_000)
    assert [(line.cursor, line.stream, line.proc) for line in got] == [
        (r["cursor"], r["stream"], r["proc"]) for r in combined_log(server, "big")
    ]


@pytest.mark.slow
@pytest.mark.anyio
async def test_stream_cut_every_few_thousand_lines_is_still_exact(server: LocalServer) -> None:
    """A proxy that drops each connection after ~150 kB does not lose or repeat a line."""
    host, port = httpx.URL(server.url).host, httpx.URL(server.url).port
    assert port is not None
    async with (
        dropping_proxy(host, port, cut_after=150_000) as proxy,
        server_context(server, proxy.url, retries=FAST_RETRY) as ctx,
    ):
        spec = await submit_printer(ctx, server, "cut", 50_000, burst=5_000, pause=0.01)
        got = await _collect(ctx.tail_logs(spec, poll=FAST_POLL))
    assert_exact(got, server, "cut", 50_000)
    assert [line.cursor for line in got] == list(range(1, 50_001))
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
        assert ctx._slots.borrowed_tokens == 0
        follow_up = await _collect(ctx.tail_logs(spec, follow=False, since=10))
        assert follow_up[0].cursor == 11
        await ctx.delete_job(spec, force=True)
