"""One Context across event loops: a fresh pool per loop, old connections dropped quietly."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import warnings
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from typing import Any

import anyio
import httpx
import psutil
import pytest
import respx
import trio
from streaming_support import (
    URL,
    ScriptedStream,
    envelope,
    log_events,
    mock_context,
    ndjson,
    server_context,
    stream_response,
    write_script,
)
from support import http_layer

from juliarun_aio import (
    ClientClosedError,
    Context,
    EventLoopError,
    JobRef,
    JuliaBatch,
    JuliaParBatch,
)
from juliarun_aio._watch import PollPolicy
from juliarun_aio.server import LocalServer

FAST_POLL = PollPolicy(initial=0.02, maximum=0.1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """A local server with one finished job, ``done``, that printed three lines."""
    with LocalServer(tmp_path_factory.mktemp("loops") / "data") as running:
        write_script(running, "done.py", "for i in range(3):\n    print('line', i)\n")

        async def submit() -> None:
            async with server_context(running) as ctx:
                await ctx.submit_job(DONE)
                await ctx.wait_for_job(DONE, timeout=30, poll=FAST_POLL)

        anyio.run(submit)
        yield running


DONE = JuliaBatch(name="done", start_script="done.py", run_volume="work")


@contextlib.contextmanager
def nothing_printed() -> Iterator[None]:
    """Fail if a warning is issued or anything lands in ``sys.unraisablehook`` (e.g. an
    unclosed socket's ResourceWarning from a finalizer), collecting garbage at the end."""
    unraisable: list[Any] = []
    previous = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
            gc.collect()
    finally:
        sys.unraisablehook = previous
    assert [str(w.message) for w in caught] == []
    assert [repr(u.exc_value) for u in unraisable] == []


def client_ports(server: LocalServer) -> set[int]:
    """Return the local ports of this process's open TCP connections to the server."""
    port = httpx.URL(server.url).port
    return {
        conn.laddr.port
        for conn in psutil.Process().net_connections("tcp")
        if conn.raddr and conn.raddr.port == port and conn.status == psutil.CONN_ESTABLISHED
    }


async def use(ctx: Context) -> list[str]:
    """Everyday calls: a verb, a watcher, a log tail."""
    assert await ctx.get_system_status()
    assert "done" in await ctx.list_jobs()
    final = await ctx.wait_for_job(DONE, timeout=10, poll=FAST_POLL)
    assert final.succeeded
    async with contextlib.aclosing(ctx.tail_logs(DONE, follow=False)) as lines:
        texts = [line.text async for line in lines]
    # Last, a call that leaves its connection in the pool (a stream may not).
    assert await ctx.get_system_status()
    return texts


def test_one_context_runs_in_loop_after_loop(server: LocalServer) -> None:
    """asyncio.run twice, then trio.run, then aclose in a later loop: all work, quietly."""
    expected = ["line 0", "line 1", "line 2"]
    others = client_ports(server)  # other tests' Contexts on the module's server
    with nothing_printed():
        ctx = server_context(server)
        assert asyncio.run(use(ctx)) == expected
        ours = client_ports(server) - others
        assert ours  # kept alive in the pool of a loop now closed
        assert asyncio.run(use(ctx)) == expected
        ours |= client_ports(server) - others
        assert trio.run(use, ctx) == expected
        ours |= client_ports(server) - others
        assert asyncio.run(use(ctx)) == expected
        ours |= client_ports(server) - others
        asyncio.run(ctx.aclose())
        assert ctx.closed
        assert client_ports(server) & ours == set()
        with pytest.raises(ClientClosedError):
            trio.run(ctx.get_system_status)


@pytest.fixture(scope="module")
def shared(server: LocalServer) -> Iterator[Context]:
    """One Context for the whole module, closed in a loop of its own at the end."""
    ctx = server_context(server)
    yield ctx
    anyio.run(ctx.aclose)


@pytest.mark.anyio
@pytest.mark.parametrize("round_", [1, 2])
async def test_a_module_wide_context_serves_each_test_in_its_own_loop(
    shared: Context, round_: int
) -> None:
    """pytest runs each of these tests in a loop of its own (asyncio, trio, in turn); a
    Context made once for the module serves them all."""
    assert await use(shared) == ["line 0", "line 1", "line 2"]


def test_aclose_in_another_loop_drops_the_pool(server: LocalServer) -> None:
    """A Context used under trio and closed under asyncio leaves no connection open."""
    with nothing_printed():
        others = client_ports(server)
        ctx = server_context(server)
        assert trio.run(use, ctx)
        ours = client_ports(server) - others
        assert ours
        asyncio.run(ctx.aclose())
        assert client_ports(server) & ours == set()
        trio.run(ctx.aclose)  # idempotent, in any loop


def test_a_context_made_inside_one_loop_is_used_in_another(server: LocalServer) -> None:
    """A Context built inside an asyncio loop that never used it works under trio."""

    async def build() -> Context:
        return server_context(server)

    with nothing_printed():
        ctx = asyncio.run(build())
        assert trio.run(use, ctx)
        trio.run(ctx.aclose)


def test_an_injected_client_cannot_follow_into_another_loop() -> None:
    """An injected client serves the loop it was first used in; another loop gets a typed error."""
    client = httpx.AsyncClient()
    ctx = Context(URL, "secret", "ns", client=client)

    async def status() -> bool:
        return await ctx.get_system_status()

    with respx.mock(assert_all_called=False) as router:
        router.get(f"{URL}/getSystemStatus/").mock(return_value=envelope(True))
        assert asyncio.run(status())
        with pytest.raises(EventLoopError, match="client= was first used in another event loop"):
            asyncio.run(status())
        with pytest.raises(EventLoopError):
            trio.run(status)
    trio.run(ctx.aclose)  # works in any loop; the injected client is left to its owner
    assert not client.is_closed
    asyncio.run(client.aclose())


def test_slots_and_pollers_belong_to_the_loop() -> None:
    """Each loop gets its own pool, slots and pollers; within one loop they stay the same."""
    ctx = mock_context()

    async def state() -> Any:
        assert http_layer(ctx).loop_state() is http_layer(ctx).loop_state()
        return http_layer(ctx).loop_state()

    first = asyncio.run(state())
    second = trio.run(state)
    assert second is not first
    assert (second.client, second.slots, second.pollers) != (
        first.client,
        first.slots,
        first.pollers,
    )
    trio.run(ctx.aclose)


def test_too_few_connections_are_refused() -> None:
    """A pool of one connection cannot carry a log stream and a call: refused when built."""
    with pytest.raises(Exception, match=r"max_connections=1 is too small") as caught:
        mock_context(limits=httpx.Limits(max_connections=1))
    assert type(caught.value).__name__ == "ConfigurationError"


# -- closing a Context under every call ---------------------------------------------------

JOB = JobRef("JuliaParBatch", "par1")
SPEC = JuliaParBatch(name="par1", start_script="m.py", run_volume="work")
SLOW = PollPolicy(initial=60, maximum=60)

Call = Callable[[Context], Awaitable[object]]


async def drain(lines: AsyncGenerator[Any, None]) -> list[Any]:
    """Consume a generator to its end."""
    async with contextlib.aclosing(lines):
        return [item async for item in lines]


#: Every public coroutine and generator of a Context, with arguments.
CALLS: dict[str, Call] = {
    "get_system_status": lambda c: c.get_system_status(),
    "list_jobs": lambda c: c.list_jobs(),
    "get_all_job_info": lambda c: c.get_all_job_info(),
    "server_info": lambda c: c.server_info(),
    "get_job_status": lambda c: c.get_job_status(JOB),
    "get_job_scale": lambda c: c.get_job_scale(JOB),
    "get_job_endpoint": lambda c: c.get_job_endpoint(JOB),
    "get_encoded_url": lambda c: c.get_encoded_url(JOB, 80),
    "tail_job": lambda c: c.tail_job(JOB),
    "submit_job": lambda c: c.submit_job(SPEC),
    "update_job": lambda c: c.update_job(SPEC),
    "set_job_scale": lambda c: c.set_job_scale(JOB, 2),
    "delete_job": lambda c: c.delete_job(JOB),
    "tail_logs/stream": lambda c: drain(c.tail_logs(JOB, mode="stream")),
    "tail_logs/poll": lambda c: drain(c.tail_logs(JOB, mode="poll", poll=SLOW)),
    "wait_for_workers": lambda c: drain(c.wait_for_workers(JOB, 2, poll=SLOW)),
    "wait_for_scale": lambda c: c.wait_for_scale(JOB, 2, poll=SLOW),
    "watch_job": lambda c: drain(c.watch_job(JOB, poll=SLOW)),
    "wait_for_job": lambda c: c.wait_for_job(JOB, poll=SLOW),
}


async def close_while(ctx: Context, call: Call, busy: anyio.Event) -> list[Exception]:
    """Run ``call``, close ``ctx`` once ``busy`` is set; return what the call raised."""
    raised: list[Exception] = []

    async def run() -> None:
        try:
            await call(ctx)
        except Exception as exc:
            raised.append(exc)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await busy.wait()
            await ctx.aclose()
    return raised


@pytest.mark.anyio
@pytest.mark.parametrize("name", list(CALLS))
async def test_closing_under_a_request_in_flight_raises_client_closed(name: str) -> None:
    """aclose() while a request of the call is in flight: the call raises ClientClosedError."""
    busy = anyio.Event()

    async def hang(_: httpx.Request) -> httpx.Response:
        busy.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async with respx.mock(assert_all_called=False) as router:
        router.get(url__startswith=URL).mock(side_effect=hang)
        raised = await close_while(mock_context(), CALLS[name], busy)
    assert [type(exc) for exc in raised] == [ClientClosedError], raised
    assert "closed" in str(raised[0])


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["tail_logs/stream", "tail_logs/poll", *list(CALLS)[-4:]])
async def test_closing_between_reads_raises_client_closed_at_once(name: str) -> None:
    """aclose() while a generator waits between polls or reads ends it at once."""
    busy = anyio.Event()
    status = {"succeeded": False, "phase": "running", "failed": False}

    def answer(request: httpx.Request) -> httpx.Response:
        verb = request.url.path.split("/")[1]
        if verb == "streamLogs":
            busy.set()
            return stream_response(ScriptedStream([ndjson(log_events(1, 1))], stall=True))
        if verb == "tailJob" or (verb.startswith("getJob") and "tail_logs" not in name):
            busy.set()
        return envelope({"getJobScale": [0, 2], "tailJob": "a"}.get(verb, status))

    async with respx.mock(assert_all_called=False) as router:
        router.get(url__startswith=URL).mock(side_effect=answer)
        raised = await close_while(mock_context(), CALLS[name], busy)
    assert [type(exc) for exc in raised] == [ClientClosedError], raised


@pytest.mark.anyio
@pytest.mark.parametrize("name", list(CALLS))
async def test_every_call_on_a_closed_context_raises_client_closed(name: str) -> None:
    """After aclose(), every coroutine and generator raises ClientClosedError, sending nothing."""
    async with respx.mock(assert_all_called=False) as router:
        route = router.get(url__startswith=URL).mock(return_value=envelope(None))
        ctx = mock_context()
        await ctx.aclose()
        with pytest.raises(ClientClosedError):
            await CALLS[name](ctx)
    assert route.call_count == 0
