"""Test helpers for the long-running helpers: Contexts over respx, fake servers, a fault proxy.

- :func:`mock_context` builds a Context on a respx-mocked client with zero retry backoff.
- :class:`FakeLog` plays a plain server's ``tailJob`` over an append-only list of lines.
- :class:`ScriptedStream` is a response body that yields NDJSON events, then ends, fails
  or stalls, and records whether it was closed.
- :func:`dropping_proxy` is a loopback TCP proxy (anyio) that cuts every connection after
  a number of bytes from the server, to test reconnects against the real server.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import anyio
import anyio.abc
import httpx
from anyio.abc import SocketAttribute
from support import http_layer

from juliarun_aio import Context, RetryPolicy
from juliarun_aio.server import LocalServer

URL = "https://juliarun.test"
#: Retries without waiting, so that reconnect tests never sleep.
FAST_RETRY = RetryPolicy(attempts=4, initial=0.0, maximum=0.0, total_timeout=5.0)


def mock_context(**kwargs: Any) -> Context:
    """Return a Context on :data:`URL`, by default with zero retry backoff (mock it with respx)."""
    kwargs.setdefault("retries", FAST_RETRY)
    return Context(URL, "secret", "ns", **kwargs)


def envelope(data: object, status: int = 200) -> httpx.Response:
    """Return a ``{code, data}`` response (nonzero code for a status >= 400)."""
    return httpx.Response(status, json={"code": 0 if status < 400 else 1, "data": data})


def not_found() -> httpx.Response:
    """Return the local server's answer for an unknown job or verb."""
    return envelope("no such job", status=404)


def server_info(*extensions: str) -> httpx.Response:
    """Return a ``serverInfo`` answer listing ``extensions``."""
    return envelope({"server": "juliarun_aio", "version": "0", "extensions": list(extensions)})


class FakeLog:
    """A job's log as a plain JuliaRun server shows it: ``tailJob`` = the last ``count`` lines.

    Before each ``tailJob`` answer the job writes the next burst of ``pending`` (at most
    ``max_burst(count)`` lines of it when given; the rest waits for the next call); it
    completes once ``done`` is true and every burst was written.  With ``line_count``
    the answers carry the local server's ``X-JuliaRun-Line-Count`` header.
    """

    def __init__(
        self,
        lines: Iterable[str] = (),
        *,
        line_count: bool = False,
        max_burst: Callable[[int], int] | None = None,
    ) -> None:
        self.lines = list(lines)
        self.calls: list[int] = []
        self.pending: list[list[str]] = []
        self.done = False
        self.line_count = line_count
        self.max_burst = max_burst

    def tail(self, request: httpx.Request) -> httpx.Response:
        """The ``tailJob`` handler."""
        count = int(request.url.params["count"])
        if self.pending:
            burst = self.pending.pop(0)
            limit = len(burst) if self.max_burst is None else self.max_burst(count)
            self.lines.extend(burst[:limit])
            if burst[limit:]:
                self.pending.insert(0, burst[limit:])
        self.calls.append(count)
        window = self.lines[-count:] if count else []
        response = envelope("\n".join(window))
        if self.line_count:
            response.headers["X-JuliaRun-Line-Count"] = str(len(window))
        return response

    def status(self, request: httpx.Request) -> httpx.Response:
        """The ``getJobStatus`` handler: done once every pending burst was written."""
        return envelope({"succeeded": self.done and not self.pending, "created": True})


def ndjson(events: Iterable[Mapping[str, Any]]) -> bytes:
    """Encode events as NDJSON."""
    return b"".join(json.dumps(event).encode() + b"\n" for event in events)


def log_events(first: int, last: int, **extra: Any) -> list[dict[str, Any]]:
    """Return log-line events for cursors ``first..last`` with text ``line <cursor>``."""
    return [
        {"cursor": c, "stream": "stdout", "proc": "master", "text": f"line {c}", **extra}
        for c in range(first, last + 1)
    ]


class ScriptedStream(httpx.AsyncByteStream):
    """A streaming body: ``chunks``, then EOF, an error, or a stall; records ``closed``."""

    def __init__(
        self,
        chunks: Iterable[bytes],
        *,
        fail: Exception | None = None,
        stall: bool = False,
    ) -> None:
        self.chunks = list(chunks)
        self.fail = fail
        self.stall = stall
        self.closed = False
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            self.sent += 1
            yield chunk
        if self.fail is not None:
            raise self.fail
        if self.stall:
            await anyio.sleep(math.inf)

    async def aclose(self) -> None:
        self.closed = True


def stream_response(body: ScriptedStream) -> httpx.Response:
    """Return a 200 NDJSON response with ``body``."""
    return httpx.Response(200, headers={"content-type": "application/x-ndjson"}, stream=body)


class ProxyStats:
    """What a :func:`dropping_proxy` did."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.connections = 0
        self.cuts = 0


@contextlib.asynccontextmanager
async def dropping_proxy(host: str, port: int, *, cut_after: int) -> AsyncIterator[ProxyStats]:
    """Run a loopback TCP proxy to ``host:port`` that cuts each connection after ``cut_after``
    bytes from the server; yield its stats (``.url`` replaces the server's URL).
    """
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    stats = ProxyStats(f"http://127.0.0.1:{listener.extra(SocketAttribute.local_port)}")

    async def handle(client: anyio.abc.SocketStream) -> None:
        stats.connections += 1
        upstream = await anyio.connect_tcp(host, port)
        async with client, upstream, anyio.create_task_group() as tg:

            async def upload() -> None:
                with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                    async for data in client:
                        await upstream.send(data)
                tg.cancel_scope.cancel()

            tg.start_soon(upload)
            sent = 0
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                async for data in upstream:
                    room = cut_after - sent
                    await client.send(data[:room])
                    sent += min(len(data), room)
                    if sent >= cut_after:
                        stats.cuts += 1
                        break
            tg.cancel_scope.cancel()

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        try:
            yield stats
        finally:
            tg.cancel_scope.cancel()


def write_script(server: LocalServer, name: str, text: str) -> None:
    """Put a job script into the run volume ``work`` of the server's namespace."""
    volume = server.data_dir / "namespaces" / server.namespace / "volumes" / "work"
    volume.mkdir(parents=True, exist_ok=True)
    (volume / name).write_text(text, encoding="utf-8")


def server_context(server: LocalServer, url: str | None = None, **kwargs: Any) -> Context:
    """Return a Context for ``server`` (or for ``url``, e.g. a proxy in front of it)."""
    return Context(url or server.url, server.token, server.namespace, **kwargs)


def combined_log(server: LocalServer, job: str) -> list[dict[str, Any]]:
    """Return the server's combined log of ``job``: the record of what the job wrote."""
    path = server.data_dir / "namespaces" / server.namespace / "jobs" / job / "logs"
    lines = (path / "combined.ndjson").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def open_pool_connections(ctx: Context) -> int:
    """Count the pool's connections that carry a request or response right now."""
    pool = http_layer(ctx).loop_state().client._transport._pool  # type: ignore[attr-defined]
    return sum(1 for connection in pool.connections if not connection.is_idle())
