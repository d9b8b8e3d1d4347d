"""What a Context keeps per event loop, and how it lets go of a loop that is gone.

Sockets, capacity limiters and events belong to the event loop they were made in: an
httpx pool opened under one ``asyncio.run`` fails in the next ("Event loop is closed"),
and an anyio limiter made under asyncio fails under trio.  So a
:class:`~juliarun_aio.Context` keeps them in a :class:`LoopState` tied to the running
loop, and starts a fresh one when it finds itself in another loop (notebook cells run
with ``asyncio.run`` one after another, a loop per test, trio after asyncio).

- **Telling loops apart.**  :func:`running_loop` returns anyio's native token of the
  running loop: the asyncio loop object, or trio's run token.  A state keeps a reference
  to its loop, so no later loop can be mistaken for it.
- **Letting go.**  The old pool's connections cannot be closed the usual way (that
  awaits, on their own loop, which is closed or busy elsewhere), and left to the garbage
  collector each would print a ``ResourceWarning``.  :func:`forget_connections` closes
  their sockets at once, without awaiting.
- **Closing under a call.**  :meth:`LoopState.close_guard` wraps the awaits of every
  public method and generator: :meth:`LoopState.close` cancels the ones in flight, which
  then raise :class:`~juliarun_aio.ClientClosedError`.
"""

from __future__ import annotations

import contextlib
import os
from types import TracebackType
from typing import Any

import anyio
import anyio.lowlevel
import httpx

from ._errors import ClientClosedError

__all__ = ["LoopState", "closed_error", "forget_connections", "running_loop"]


def running_loop() -> object | None:
    """Return an object that identifies the running event loop, or None outside one.

    anyio's event-loop token (anyio 4.11 and later) holds the asyncio loop itself, or
    trio's token of the run.
    """
    try:
        return anyio.lowlevel.current_token().native_token
    except RuntimeError:  # anyio's NoEventLoopError: no event loop runs in this thread
        return None


def closed_error(*, during: bool = False) -> ClientClosedError:
    """Return the error for a call on a closed Context (``during``: closed under it)."""
    if during:
        return ClientClosedError(
            "this Context was closed (aclose) while the call was in flight; "
            "create a new one to go on"
        )
    return ClientClosedError(
        "this Context is closed; create a new one (async with Context(...) as ctx)"
    )


class LoopState:
    """A Context's connection pool, request slots and shared pollers in one event loop.

    Attributes:
        loop: The loop it belongs to (:func:`running_loop`); ``None`` until a loop uses
            it, when it was made outside any.
        client: The pooled HTTP client.
        slots: Bounds the requests in flight (at most one per pooled connection).
        stream_slots: Bounds the log streams open at once; always fewer than ``slots``,
            so that a call can be made while every stream runs.
        pollers: The shared pollers of the watchers on this Context.
        closed: The Context was closed while this state was its current one.
    """

    def __init__(
        self, loop: object | None, client: httpx.AsyncClient, *, slots: int, stream_slots: int
    ) -> None:
        self.loop = loop
        self.client = client
        self.slots = anyio.CapacityLimiter(slots)
        self.stream_slots = anyio.CapacityLimiter(stream_slots)
        self.pollers: dict[Any, Any] = {}
        self.closed = False
        self._in_flight: set[anyio.CancelScope] = set()

    def close_guard(self) -> _CloseGuard:
        """Return a context manager for an await that :meth:`close` interrupts.

        Inside it, closing cancels the block, and any exception raised once the Context
        is closed (a connection closed under a request, say) becomes
        :class:`ClientClosedError`.  Never hold it across a ``yield``.

        Raises:
            ClientClosedError: (on entry) the Context is closed already.
        """
        return _CloseGuard(self)

    def close(self) -> None:
        """Mark the state closed and cancel every guarded await in flight."""
        self.closed = True
        for scope in list(self._in_flight):
            scope.cancel()


class _CloseGuard:
    """See :meth:`LoopState.close_guard`.  A class, not a generator: it is on every call."""

    __slots__ = ("_scope", "_state")

    def __init__(self, state: LoopState) -> None:
        self._state = state
        self._scope = anyio.CancelScope()

    def __enter__(self) -> None:
        state = self._state
        if state.closed:
            raise closed_error()
        state._in_flight.add(self._scope)
        self._scope.__enter__()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        state, scope = self._state, self._scope
        state._in_flight.discard(scope)
        scope.__exit__(exc_type, exc, tb)
        if scope.cancelled_caught:
            # The scope caught its own cancellation, which only close() sends.
            raise closed_error(during=True)
        if state.closed and isinstance(exc, Exception) and not isinstance(exc, ClientClosedError):
            raise closed_error(during=True) from exc


def forget_connections(client: httpx.AsyncClient, loop: object | None) -> None:
    """Close the sockets of ``client``'s pooled connections at once, without awaiting.

    For a pool whose event loop is not the running one (it ended, or runs elsewhere).
    This reaches into httpx, httpcore and the event loops' own objects, the only way to
    close a connection without its loop; whatever does not look as expected is left to
    the garbage collector, which closes it too (with a ``ResourceWarning``).

    Args:
        client: The client whose connections to drop; it is not used afterwards.
        loop: The loop the connections belong to (:attr:`LoopState.loop`).
    """
    transports: list[Any] = [
        getattr(client, "_transport", None),
        *getattr(client, "_mounts", {}).values(),
    ]
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        for connection in list(getattr(pool, "connections", ())):
            # httpcore: AsyncHTTPConnection -> HTTP/1.1 or HTTP/2 connection -> stream.
            stream = getattr(getattr(connection, "_connection", None), "_network_stream", None)
            if stream is not None:
                # Anything unexpected is left to the garbage collector.
                with contextlib.suppress(Exception):
                    _close_stream_now(stream, loop)


def _close_stream_now(stream: Any, loop: Any) -> None:
    """Close one of httpcore's network streams without awaiting (see above)."""
    sock = stream.get_extra_info("socket")
    detach = getattr(sock, "detach", None)
    if detach is not None:
        # trio: a trio socket over a plain one; detaching leaves nothing to warn about.
        os.close(detach())
        return
    # asyncio, through anyio: the socket belongs to an asyncio transport.
    inner: Any = getattr(stream, "_stream", None)
    while hasattr(inner, "transport_stream"):  # TLS wraps the socket stream
        inner = inner.transport_stream
    transport = getattr(inner, "_transport", None)
    if transport is None or transport.is_closing():
        return
    if loop is not None and loop.is_running():
        # Running in another thread: let it close the connection itself.
        loop.call_soon_threadsafe(transport.abort)
        return
    try:
        transport.abort()
    except RuntimeError:
        # Its loop is closed, so abort() could not schedule the last step; take it here.
        transport._call_connection_lost(None)
