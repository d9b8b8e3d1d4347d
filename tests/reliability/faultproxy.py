"""A fault-injecting HTTP/1.1 proxy on loopback, to put between the SDK and a server.

:class:`FaultProxy` listens on ``127.0.0.1`` (a free port) and forwards to an upstream
server on loopback.  It understands just enough HTTP/1.1 (request heads, ``Content-Length``
and chunked responses) to keep connections alive and to break them on purpose.  Each
request draws at most one fault from a seeded RNG at the configured rate:

- ``refuse``: a new connection is reset as soon as it is accepted (before any request);
  :meth:`FaultProxy.refuse_connections` closes the listener itself for a while, so that
  connects are refused by the kernel (``ECONNREFUSED``).
- ``reset``: the connection is reset after the request arrived, before forwarding it.
- ``reset_after``: the request is forwarded and answered, then the connection is reset
  instead of sending the answer (the server applied the call; the client cannot know).
- ``stall``: no answer at all (forwarded or not) until the client gives up.
- ``status``: an error answer made up by the proxy -- 502 (a gateway's HTML page, after
  forwarding or not), 503 (an envelope, not forwarded), 429 (not forwarded) -- with or
  without ``Retry-After`` (seconds, an HTTP date, or a long wait).
- ``truncate``: the answer's head and part of its body, then the connection closes.
- ``bad_json``: a 200 answer whose body is not JSON.

Streamed answers (chunked, e.g. ``streamLogs``) are passed through untouched except that,
with ``cut_every=N``, the connection is cut after about N log lines (sometimes mid-line;
a ``columns`` event counts the lines it carries).
What was injected is counted in :attr:`FaultProxy.injected`.  Everything stays on
127.0.0.1.
"""

from __future__ import annotations

import collections
import contextlib
import email.utils
import json
import random
import socket
import struct
import time
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Final

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

__all__ = ["ALL_FAULTS", "FaultProxy"]

LOOPBACK: Final = "127.0.0.1"
ALL_FAULTS: Final = (
    "refuse",
    "reset",
    "reset_after",
    "stall",
    "status",
    "truncate",
    "bad_json",
)
#: Faults that need the whole answer in hand; streamed answers never get them.
_AFTER_FORWARD = frozenset({"reset_after", "truncate", "bad_json"})
_MAX_HEAD = 64 * 1024
_RECEIVE = 65536
_GATEWAY_PAGE = b"<html><body><h1>502 Bad Gateway</h1>upstream went away</body></html>"
_DISCONNECTS = (
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,
)


class _Reader:
    """Buffered reads from a byte stream: heads, exact lengths, chunked framing."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def _fill(self) -> bool:
        try:
            data = await self.stream.receive(_RECEIVE)
        except _DISCONNECTS:
            return False
        self.buf += data
        return True

    async def until(self, separator: bytes, limit: int = _MAX_HEAD) -> bytes | None:
        """Return the bytes up to and including ``separator``; None on EOF or overflow."""
        while True:
            at = self.buf.find(separator)
            if at >= 0:
                end = at + len(separator)
                data = bytes(self.buf[:end])
                del self.buf[:end]
                return data
            if len(self.buf) > limit or not await self._fill():
                return None

    async def exactly(self, size: int) -> bytes | None:
        """Return exactly ``size`` bytes; None on EOF first."""
        while len(self.buf) < size:
            if not await self._fill():
                return None
        data = bytes(self.buf[:size])
        del self.buf[:size]
        return data

    async def wait_eof(self) -> None:
        """Discard whatever arrives until the peer closes."""
        while await self._fill():
            self.buf.clear()


def _headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    found: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            found[name.strip().lower()] = value.strip()
    return found


def _response(status: int, reason: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _log_lines(body: bytes) -> list[tuple[int, int]]:
    """Where each NDJSON event of ``body`` ends (after its newline), and the log lines it carries.

    A ``columns`` event (``format=columns``) carries its ``texts``; any other event counts one.
    """
    ends: list[tuple[int, int]] = []
    start = 0
    while (at := body.find(b"\n", start)) >= 0:
        weight = 1
        if b'"texts"' in body[start:at]:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                weight = max(1, len(json.loads(body[start:at])["texts"]))
        ends.append((at + 1, weight))
        start = at + 1
    return ends


async def _reset(stream: anyio.abc.SocketStream) -> None:
    """Close ``stream`` with a TCP RST instead of a FIN."""
    with contextlib.suppress(OSError):
        raw: socket.socket = stream.extra(SocketAttribute.raw_socket)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(*_DISCONNECTS):
        await stream.aclose()


class _Connection:
    """One client connection and the upstream connection serving it (opened lazily)."""

    def __init__(self, client: anyio.abc.SocketStream) -> None:
        self.client = client
        self.upstream: anyio.abc.SocketStream | None = None
        self.up: _Reader | None = None

    async def close_upstream(self) -> None:
        if self.upstream is not None:
            upstream, self.upstream, self.up = self.upstream, None, None
            with contextlib.suppress(*_DISCONNECTS):
                await upstream.aclose()

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await self.close_upstream()
            with contextlib.suppress(*_DISCONNECTS):
                await self.client.aclose()


class _ClosedError(Exception):
    """The client connection is finished (closed, reset or cut on purpose)."""


class FaultProxy:
    """A loopback HTTP proxy to ``127.0.0.1:upstream_port`` that injects faults.

    Use as ``async with FaultProxy(port, rate=0.2, seed=1) as proxy:`` and point the
    client at :attr:`url`.

    Args:
        upstream_port: The server's port on 127.0.0.1.
        rate: Chance, per request (and per new connection for ``refuse``), of a fault.
        seed: Seeds the RNG that picks faults, so a run can be replayed.
        faults: The kinds to draw from (default: all of :data:`ALL_FAULTS`).
        cut_every: Cut streamed answers after about this many lines (None: never).
        stall_limit: Longest a stalled request is held, in seconds.
    """

    def __init__(
        self,
        upstream_port: int,
        *,
        rate: float = 0.0,
        seed: int = 0,
        faults: tuple[str, ...] = ALL_FAULTS,
        cut_every: int | None = None,
        stall_limit: float = 60.0,
    ) -> None:
        unknown = set(faults) - set(ALL_FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}")
        self.upstream_port = upstream_port
        self.rate = rate
        self.faults = faults
        self.cut_every = cut_every
        self.stall_limit = stall_limit
        self.rng = random.Random(seed)
        #: Faults injected, by kind (``status`` split as ``status-502`` etc.).
        self.injected: collections.Counter[str] = collections.Counter()
        self.requests = 0
        self.connections = 0
        #: Streamed answers cut on purpose, and the lines they carried in total.
        self.cuts = 0
        self.streamed_lines = 0
        self.port = 0
        self._listener: anyio.abc.SocketListener | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._serving: anyio.CancelScope | None = None
        self._exit_stack: contextlib.AsyncExitStack | None = None

    @property
    def url(self) -> str:
        """The proxy's URL, to use instead of the server's."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def total_injected(self) -> int:
        """All faults injected so far (cuts of streams not included)."""
        return sum(self.injected.values())

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> FaultProxy:
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        try:
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(self._tg.cancel_scope.cancel)
            await self._listen(0)
        except BaseException:
            await stack.__aexit__(None, None, None)
            raise
        self._exit_stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close_listener()
        assert self._exit_stack is not None
        await self._exit_stack.__aexit__(exc_type, exc, tb)

    async def _listen(self, port: int) -> None:
        assert self._tg is not None
        multi = await anyio.create_tcp_listener(local_host=LOOPBACK, local_port=port)
        listener = multi.listeners[0]
        assert isinstance(listener, anyio.abc.SocketListener)
        self._listener = listener
        self.port = listener.extra(SocketAttribute.local_port)
        scope = anyio.CancelScope()
        self._serving = scope
        tg = self._tg

        async def serve() -> None:
            with scope:
                while True:
                    try:
                        stream = await listener.accept()
                    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                        return
                    tg.start_soon(self._handle, stream)

        tg.start_soon(serve)

    async def _close_listener(self) -> None:
        if self._serving is not None:
            self._serving.cancel()
            self._serving = None
        if self._listener is not None:
            with contextlib.suppress(*_DISCONNECTS):
                await self._listener.aclose()
            self._listener = None

    @contextlib.asynccontextmanager
    async def refuse_connections(self) -> AsyncIterator[None]:
        """Close the listening socket for the duration: new connects get ECONNREFUSED."""
        port = self.port
        await self._close_listener()
        self.injected["refuse_window"] += 1
        try:
            yield
        finally:
            await self._listen(port)

    # -- faults ------------------------------------------------------------------------

    def _draw(self, allowed: tuple[str, ...]) -> str | None:
        if not allowed or self.rng.random() >= self.rate:
            return None
        return self.rng.choice(allowed)

    def _status_answer(self) -> tuple[bytes, bool, str]:
        """A made-up error answer, whether to forward first, and its counter name."""
        status = self.rng.choice((502, 503, 429))
        headers = {"Content-Type": "application/json"}
        choice = self.rng.random()
        if choice < 0.3:
            headers["Retry-After"] = "0"
        elif choice < 0.45:
            past = email.utils.formatdate(time.time() - 5, usegmt=True)
            headers["Retry-After"] = past
        elif choice < 0.5:
            headers["Retry-After"] = "3600"  # longer than any client should wait
        if status == 502:
            headers["Content-Type"] = "text/html"
            return (
                _response(502, "Bad Gateway", _GATEWAY_PAGE, headers),
                self.rng.random() < 0.5,
                "status-502",
            )
        if status == 503:
            body = b'{"code": 503, "data": "service unavailable"}'
            return _response(503, "Service Unavailable", body, headers), False, "status-503"
        body = b'{"code": 429, "data": "too many requests"}'
        return _response(429, "Too Many Requests", body, headers), False, "status-429"

    # -- connections -------------------------------------------------------------------

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        self.connections += 1
        if self._draw(("refuse",) if "refuse" in self.faults else ()):
            self.injected["refuse"] += 1
            await _reset(client)
            return
        conn = _Connection(client)
        try:
            reader = _Reader(client)
            while True:
                head = await reader.until(b"\r\n\r\n")
                if head is None:
                    return
                self.requests += 1
                await self._exchange(conn, reader, head)
        except _ClosedError:
            return
        finally:
            await conn.aclose()

    async def _exchange(self, conn: _Connection, reader: _Reader, head: bytes) -> None:
        """Answer one request (a GET, so no body)."""
        client = conn.client
        streaming = b"/streamLogs/" in head.split(b"\r\n", 1)[0]
        allowed = tuple(
            f for f in self.faults if f != "refuse" and not (streaming and f in _AFTER_FORWARD)
        )
        fault = self._draw(allowed)
        if fault == "reset":
            self.injected["reset"] += 1
            await _reset(client)
            raise _ClosedError
        if fault == "status":
            answer, forward, name = self._status_answer()
            self.injected[name] += 1
            if forward and not streaming:
                await self._forward(conn, head)
            await self._send(client, answer)
            return
        if fault == "stall":
            self.injected["stall"] += 1
            if self.rng.random() < 0.5 and not streaming:
                await self._forward(conn, head)
            with anyio.move_on_after(self.stall_limit):
                await reader.wait_eof()
            await _reset(client)
            raise _ClosedError
        up = await self._request(conn, head)
        response_head = await up.until(b"\r\n\r\n")
        if response_head is None:
            raise _ClosedError
        headers = _headers(response_head)
        if "content-length" not in headers:
            await self._send(client, response_head)
            await self._relay_chunked(client, up)
            return
        body = await up.exactly(int(headers["content-length"]))
        if body is None:
            raise _ClosedError
        if fault == "reset_after":
            self.injected["reset_after"] += 1
            await _reset(client)
            raise _ClosedError
        if fault == "truncate":
            self.injected["truncate"] += 1
            await self._send(client, response_head + body[: len(body) // 2])
            await _reset(client)
            raise _ClosedError
        if fault == "bad_json":
            self.injected["bad_json"] += 1
            garbage = self.rng.choice((b'{"code": 0, "data": ', b"<html>oops</html>", b"\xff\xfe{"))
            await self._send(
                client, _response(200, "OK", garbage, {"Content-Type": "application/json"})
            )
            return
        await self._send(client, response_head + body)

    async def _request(self, conn: _Connection, head: bytes) -> _Reader:
        """Send the request upstream (connecting first if needed); return the answer's reader."""
        if conn.upstream is None:
            try:
                conn.upstream = await anyio.connect_tcp(LOOPBACK, self.upstream_port)
            except OSError:
                # The server is down (restarting): answer as a gateway would.
                self.injected["upstream_down"] += 1
                page = _response(502, "Bad Gateway", _GATEWAY_PAGE, {"Connection": "close"})
                await self._send(conn.client, page)
                raise _ClosedError from None
            conn.up = _Reader(conn.upstream)
        try:
            await conn.upstream.send(head)
        except _DISCONNECTS:
            await _reset(conn.client)
            raise _ClosedError from None
        assert conn.up is not None
        return conn.up

    async def _forward(self, conn: _Connection, head: bytes) -> None:
        """Let the server handle the request and throw its answer away."""
        up = await self._request(conn, head)
        response_head = await up.until(b"\r\n\r\n")
        length = _headers(response_head or b"").get("content-length")
        if response_head is None or length is None or await up.exactly(int(length)) is None:
            await conn.close_upstream()

    async def _send(self, client: anyio.abc.SocketStream, data: bytes) -> None:
        try:
            await client.send(data)
        except _DISCONNECTS:
            raise _ClosedError from None

    async def _relay_chunked(self, client: anyio.abc.SocketStream, up: _Reader) -> None:
        """Pass a chunked body through, cutting it after about ``cut_every`` lines."""
        budget = self._cut_budget()
        while True:
            size_line = await up.until(b"\r\n")
            if size_line is None:
                raise _ClosedError  # the server went away mid-stream: so does the client
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            data = await up.exactly(size + 2)
            if data is None:
                raise _ClosedError
            ends = _log_lines(data[:size])
            lines = sum(weight for _, weight in ends)
            if budget is not None and lines >= budget:
                # Cut after the event that carries the budget-th log line, sometimes a few
                # bytes into the next event.
                carried, end = 0, size
                for end, weight in ends:  # noqa: B007 - the end where the loop stops is used
                    carried += weight
                    if carried >= budget:
                        break
                cut = end + (self.rng.randint(1, 20) if self.rng.random() < 0.5 else 0)
                self.cuts += 1
                self.streamed_lines += carried
                await self._send(client, size_line + data[: min(cut, size)])
                await _reset(client)
                raise _ClosedError
            if budget is not None:
                budget -= lines
            self.streamed_lines += lines
            await self._send(client, size_line + data)
            if size == 0:
                return

    def _cut_budget(self) -> int | None:
        if self.cut_every is None:
            return None
        spread = max(1, self.cut_every // 4)
        return max(1, self.cut_every + self.rng.randint(-spread, spread))
