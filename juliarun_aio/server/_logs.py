"""Job logs: collecting process output into one numbered log, and reading it back.

Every job has a log directory holding

- one *source* file per process stream (``master-1a2b3c4d.out``, ``...err``), written
  directly by the process (the server only reads them);
- ``combined.ndjson``: the job's combined log.  Line N is the JSON object of the log line
  with cursor N, exactly as the ``streamLogs`` extension sends it::

      {"cursor":N,"stream":"stdout","proc":"worker-1","text":"..."}

  Cursors are therefore the line numbers of this file: contiguous, 1-based, stable.
- ``journal.ndjson``: one entry per batch of lines appended to the combined log since the
  last checkpoint, written *before* the batch: ``{"c": first cursor, "n": lines, "b": byte
  offset of the batch, "e": byte offset after it, "o": {source: bytes consumed after it}}``.
- ``checkpoint.json``: ``{"c": next cursor, "b": log size, "o": {source: bytes consumed}}``,
  replaced atomically every :data:`CHECKPOINT_EVERY` batches, after which the journal is
  emptied -- so the journal stays small however long the job runs.
- ``index.txt``: the sparse cursor -> byte offset index, one ``cursor offset`` line at
  least :data:`INDEX_EVERY` lines apart, appended after the lines it points to.  The
  point "line 1 at byte 0" is implicit.

Recovery (at open) starts from the checkpoint, applies the longest run of complete,
contiguous journal entries whose batch is entirely in the combined log, and truncates the
combined log, the journal and the index to that state (an index point is kept only if
its line starts where it says).  A server killed at any instant thus resumes with no line
lost, none repeated and none cut: a half-written batch is dropped and read again from the
sources.  Readers check that the line they start from has the cursor they asked for.

The collector cuts complete lines only; a trailing partial line is emitted when its
process has exited (:meth:`JobLog.drain`).  A line longer than :data:`MAX_LINE` bytes is
split into pieces of that size.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import json
import logging
import operator
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import contextmanager
from itertools import compress, pairwise
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any, BinaryIO

import attrs

from ._private import make_private_dirs, open_private, write_private

__all__ = [
    "FORMATS",
    "MAX_LINE",
    "Collector",
    "JobLog",
    "LogClosedError",
    "LogCorruptError",
    "columns_events",
    "encode_columns",
    "stream_log",
]

logger = logging.getLogger("juliarun_aio.server")

COMBINED = "combined.ndjson"
JOURNAL = "journal.ndjson"
CHECKPOINT = "checkpoint.json"
INDEX = "index.txt"

#: Bytes read from one source per collection pass, and the longest line kept whole.
MAX_LINE = 1 << 20
#: Lines per journal entry (and so the coarsest granularity of the index).
BATCH_LINES = 8192
#: Minimum distance in lines between two points of the sparse index.
INDEX_EVERY = 1024
#: Batches between two checkpoints (and so the most entries the journal holds).
CHECKPOINT_EVERY = 256
#: Bytes sent per chunk of a log stream.
STREAM_CHUNK = 1 << 20
#: The encodings of a ``streamLogs`` body: a JSON object per log line, or per chunk.
FORMATS = ("lines", "columns")
#: The most bytes of stored lines one ``columns`` event holds (but a longer line).
COLUMNS_EVENT = 1 << 17


class LogClosedError(OSError):
    """The log was closed (its job deleted) while it was being read."""


class LogCorruptError(RuntimeError):
    """The combined log on disk does not match what its journal recorded.

    Raised rather than sending lines under cursors that are not theirs.
    """


@attrs.define
class _Source:
    """One process stream being tailed."""

    key: str
    path: Path
    prefix: str  # the constant middle of every encoded line of this source
    offset: int
    fh: BinaryIO | None = None


def _line_prefix(stream: str, proc: str) -> str:
    quoted_stream, quoted_proc = encode_basestring_ascii(stream), encode_basestring_ascii(proc)
    return f',"stream":{quoted_stream},"proc":{quoted_proc},"text":'


def stream_marker(stream: str) -> bytes:
    """Return the bytes that only lines of ``stream`` contain (quotes in text are escaped)."""
    return f'"stream":{encode_basestring_ascii(stream)},'.encode("ascii")


class JobLog:
    """The combined log of one job, its sources, and the waiters on it.

    Writers (the collector thread and :meth:`drain`) hold an internal lock; readers take
    consistent snapshots and read with ``pread`` on their own descriptor, so streaming
    never blocks collection.

    Args:
        directory: The job's log directory (created if missing).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = make_private_dirs(directory)
        self._lock = threading.Lock()
        self._sources: dict[str, _Source] = {}
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._on_wait: Callable[[], None] | None = None
        self._idx_cursor: list[int] = []
        self._idx_byte: list[int] = []
        self._offsets: dict[str, int] = {}
        self._last = 0
        self._size = 0
        self.phase = "pending"
        self._finished = False
        self._closed = False
        self._released = False
        self._journal_entries = 0
        # Opened on the first write and closed once the log is complete, so that finished
        # jobs hold no file descriptors; readers open the log per call.
        self._writers: tuple[int, int, int] | None = None
        os.close(open_private(directory / COMBINED, os.O_WRONLY))
        self._recover()

    # -- recovery -------------------------------------------------------------------------

    def _recover(self) -> None:
        combined_path = self.directory / COMBINED
        log_size = combined_path.stat().st_size
        next_cursor, next_byte = 1, 0
        try:
            checkpoint = json.loads((self.directory / CHECKPOINT).read_bytes())
            if checkpoint["b"] <= log_size:
                next_cursor, next_byte = checkpoint["c"], checkpoint["b"]
                self._offsets.update(checkpoint["o"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # no checkpoint yet: the journal holds everything
        journal_path = self.directory / JOURNAL
        journal = journal_path.read_bytes() if journal_path.exists() else b""
        kept_journal = pos = 0
        while (end := journal.find(b"\n", pos)) >= 0:
            try:
                entry = json.loads(journal[pos:end])
                first, count, start, stop = entry["c"], entry["n"], entry["b"], entry["e"]
                offsets = entry["o"]
            except (ValueError, KeyError, TypeError):
                break
            if first + count > next_cursor:  # else: already in the checkpoint
                if first != next_cursor or start != next_byte or stop > log_size:
                    break
                self._offsets.update(offsets)
                next_cursor, next_byte = first + count, stop
                self._journal_entries += 1
            pos = kept_journal = end + 1
        self._last, self._size = next_cursor - 1, next_byte
        if journal_path.exists() and kept_journal != len(journal):
            os.truncate(journal_path, kept_journal)
        if log_size != next_byte:
            os.truncate(combined_path, next_byte)
        self._recover_index()

    def _recover_index(self) -> None:
        # Line 1 starts at byte 0: that point is implicit (never written to the file), so
        # it is always the first, whatever the file holds.
        self._idx_cursor, self._idx_byte = [1], [0]
        path = self.directory / INDEX
        if not path.exists():
            return
        data = path.read_bytes()
        pos = kept = 0
        with self._reader() as fd:
            while (end := data.find(b"\n", pos)) >= 0:
                cursor_text, _, byte_text = data[pos:end].partition(b" ")
                if not (cursor_text.isdigit() and byte_text.isdigit()):
                    break
                cursor, byte = int(cursor_text), int(byte_text)
                # Points beyond the recovered log belong to lines that were dropped; a
                # point is kept only if its line really starts there.
                if not (
                    self._idx_cursor[-1] < cursor <= self._last
                    and self._idx_byte[-1] < byte < self._size
                    and _starts_line(fd, byte, cursor)
                ):
                    break
                self._idx_cursor.append(cursor)
                self._idx_byte.append(byte)
                pos = kept = end + 1
        if kept != len(data):
            os.truncate(path, kept)

    # -- state ------------------------------------------------------------------------------

    @property
    def last_cursor(self) -> int:
        """The cursor of the newest line (0 when the log is empty)."""
        return self._last

    @property
    def finished(self) -> bool:
        """True once the job is complete and every line of it is in the log."""
        return self._finished

    def snapshot(self) -> tuple[int, int]:
        """Return ``(last cursor, byte size)`` of the combined log, consistently."""
        with self._lock:
            return self._last, self._size

    @property
    def has_waiters(self) -> bool:
        """True while a stream is waiting for new lines of this log."""
        return bool(self._waiters)

    def set_wait_hook(self, hook: Callable[[], None] | None) -> None:
        """Call ``hook`` whenever a stream starts waiting for new lines (the collector's nudge)."""
        self._on_wait = hook

    def readable(self) -> bool:
        """False once streams of this log should end (log closed or readers released)."""
        return not (self._closed or self._released)

    def set_state(self, phase: str, *, finished: bool) -> None:
        """Record the job's phase and whether its log is complete; wake waiters on a change."""
        with self._lock:
            if (self.phase, self._finished) == (phase, finished):
                return
            self.phase = phase
            self._finished = finished
            if finished:
                self._close_writers()
        self._notify()

    def release_readers(self) -> None:
        """End every stream of this log (without an end marker); collection goes on."""
        self._released = True
        self._notify()

    def close(self) -> None:
        """Close the files, end every stream of this log (without an end marker)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for source in self._sources.values():
                if source.fh is not None:
                    source.fh.close()
            self._sources.clear()
            self._close_writers()
        self._notify()

    def _open_writers(self) -> tuple[int, int, int]:
        if self._writers is None:
            flags = os.O_WRONLY | os.O_APPEND
            self._writers = (
                open_private(self.directory / COMBINED, flags),
                open_private(self.directory / JOURNAL, flags),
                open_private(self.directory / INDEX, flags),
            )
        return self._writers

    def _close_writers(self) -> None:
        if self._writers is not None:
            for fd in self._writers:
                os.close(fd)
            self._writers = None

    @contextmanager
    def _reader(self) -> Iterator[int]:
        fd = os.open(self.directory / COMBINED, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            # A log is closed before its directory is removed, so a log still open after
            # the open() above means fd is this log's file, not that of a job submitted
            # later under the same name.
            if self._closed:
                raise LogClosedError(f"the log in {self.directory} was closed")
            yield fd
        finally:
            os.close(fd)

    # -- collection -----------------------------------------------------------------------

    def add_source(self, key: str, *, stream: str, proc: str) -> Path:
        """Start tailing ``directory/key``, resuming where an earlier server stopped.

        Args:
            key: The source's file name in the log directory (``master-1a2b3c4d.out``).
            stream: ``stdout`` or ``stderr``.
            proc: The process label shown in log lines (``master``, ``worker-2``).

        Returns:
            The path of the source file.
        """
        path = self.directory / key
        with self._lock:
            if not self._closed and key not in self._sources:
                self._sources[key] = _Source(
                    key, path, _line_prefix(stream, proc), self._offsets.get(key, 0)
                )
        return path

    def collect(self) -> bool:
        """Append the complete lines the sources have gained; return True if any were."""
        with self._lock:
            if self._closed:
                return False
            sources = self._sources.values()
            grew = False
            for source in sources:
                grew = self._collect_source(source, final=False) or grew
        if grew:
            self._notify()
        return grew

    def drain(self, keys: Iterable[str]) -> None:
        """Collect the sources ``keys`` to their end (their processes have exited), then drop them.

        A trailing line without a newline is emitted as a line.
        """
        with self._lock:
            if self._closed:
                return
            for key in keys:
                source = self._sources.pop(key, None)
                if source is None:
                    continue
                while self._collect_source(source, final=True):
                    pass
                if source.fh is not None:
                    source.fh.close()
        self._notify()

    def _collect_source(self, source: _Source, *, final: bool) -> bool:
        if source.fh is None:
            try:
                source.fh = open(source.path, "rb")  # noqa: SIM115 - kept open while tailing
            except FileNotFoundError:
                return False
        data = os.pread(source.fh.fileno(), MAX_LINE, source.offset)
        if not data:
            return False
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            if len(data) < MAX_LINE and not final:
                return False  # a partial line: wait for the rest of it
            cut = len(data)
        elif final and len(data) < MAX_LINE:
            cut = len(data)  # the process has exited: its partial last line is complete
        raw = data[:cut]
        lines = raw.split(b"\n")
        if raw.endswith(b"\n"):
            lines.pop()
        offset = source.offset
        for start in range(0, len(lines), BATCH_LINES):
            batch = lines[start : start + BATCH_LINES]
            offset += sum(map(len, batch)) + len(batch)
            self._append(source, batch, min(offset, source.offset + cut))
        source.offset += cut
        return True

    def _append(self, source: _Source, lines: list[bytes], offset: int) -> None:
        first = self._last + 1
        prefix = source.prefix
        # One decode for the batch ("\n" never occurs inside a UTF-8 sequence).
        texts = b"\n".join(lines).decode("utf-8", "replace").split("\n")
        quoted = map(encode_basestring_ascii, texts)
        encoded = "".join(
            [f'{{"cursor":{cursor}{prefix}{text}}}\n' for cursor, text in enumerate(quoted, first)]
        ).encode("ascii")
        end = self._size + len(encoded)
        entry = {"c": first, "n": len(lines), "b": self._size, "e": end, "o": {source.key: offset}}
        log_fd, journal_fd, index_fd = self._open_writers()
        _write_all(journal_fd, json.dumps(entry, separators=(",", ":")).encode() + b"\n")
        _write_all(log_fd, encoded)
        if first - self._idx_cursor[-1] >= INDEX_EVERY:
            _write_all(index_fd, b"%d %d\n" % (first, self._size))
            self._idx_cursor.append(first)
            self._idx_byte.append(self._size)
        # Before a checkpoint copies the offsets: a checkpoint with the offset from before
        # this batch would make the next server read the batch's lines a second time.
        self._offsets[source.key] = offset
        self._last += len(lines)
        self._size = end
        self._journal_entries += 1
        if self._journal_entries >= CHECKPOINT_EVERY:
            self._checkpoint()

    def _checkpoint(self) -> None:
        """Record the whole state in the checkpoint file, then empty the journal."""
        state = {"c": self._last + 1, "b": self._size, "o": self._offsets}
        write_private(
            self.directory / CHECKPOINT, json.dumps(state, separators=(",", ":")).encode()
        )
        os.ftruncate(self._open_writers()[1], 0)
        self._journal_entries = 0

    # -- waiting ----------------------------------------------------------------------------

    def _notify(self) -> None:
        with self._lock:
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(_wake, future)
            except RuntimeError:  # that event loop is closed; nobody is waiting any more
                continue

    async def wait(self, after: int, timeout: float) -> None:
        """Wait until a line after cursor ``after`` exists, the state changes, or ``timeout``."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._last > after or self._finished or not self.readable():
                return
            self._waiters.append((loop, future))
        hook = self._on_wait
        if hook is not None:
            hook()  # a reader is waiting: collect this log promptly from now on
        try:
            await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            with self._lock:
                if (loop, future) in self._waiters:
                    self._waiters.remove((loop, future))

    # -- reading ------------------------------------------------------------------------------

    def offset_of(self, cursor: int) -> int:
        """Return the byte offset where line ``cursor`` starts (``1 <= cursor <= last + 1``).

        Raises:
            LogCorruptError: The combined log does not hold that line where it should.
        """
        with self._lock:
            if cursor > self._last:
                return self._size
            i = bisect.bisect_right(self._idx_cursor, cursor) - 1
            point_cursor, point_byte = self._idx_cursor[i], self._idx_byte[i]
        with self._reader() as fd:
            pos = _skip_lines(fd, point_byte, cursor - point_cursor)
            if not _starts_line(fd, pos, cursor):
                # Never send other lines as if they were the ones asked for.
                raise LogCorruptError(
                    f"{self.directory / COMBINED} does not hold line {cursor} at byte {pos}"
                )
        return pos

    def read(self, start: int, stop: int) -> bytes:
        """Return whole lines from byte ``start`` up to at most byte ``stop`` (at least one line).

        ``stop`` must be the end of a line (a size from :meth:`snapshot`) after ``start``.

        Raises:
            LogCorruptError: The combined log ends before ``stop``.
        """
        want = min(stop - start, STREAM_CHUNK)
        with self._reader() as fd:
            while True:
                data = os.pread(fd, want, start)
                cut = data.rfind(b"\n") + 1
                if cut:
                    return data[:cut]
                if len(data) < want or want >= stop - start:
                    raise LogCorruptError(
                        f"{self.directory / COMBINED} has no complete line between bytes "
                        f"{start} and {stop}"
                    )
                want = min(want * 2, stop - start)

    def tail(self, count: int, stream: str | None = None) -> list[str]:
        """Return the text of the last ``count`` lines, optionally of one ``stream`` only."""
        if count <= 0:
            return []
        marker = stream_marker(stream) if stream else None
        _, pos = self.snapshot()
        found: list[bytes] = []
        rest = b""
        with self._reader() as fd:
            while pos > 0 and len(found) < count:
                size = min(pos, 1 << 16)
                pos -= size
                block = os.pread(fd, size, pos) + rest
                lines = block.split(b"\n")
                rest = lines[0] if pos > 0 else b""
                complete = lines[1:] if pos > 0 else lines
                for line in reversed(complete):
                    if line and (marker is None or marker in line):
                        found.append(line)
                        if len(found) == count:
                            break
        return [json.loads(line)["text"] for line in reversed(found)]


def _skip_lines(fd: int, pos: int, count: int) -> int:
    """Return the offset ``count`` lines after ``pos`` (or the end of the file)."""
    while count:
        data = os.pread(fd, STREAM_CHUNK, pos)
        if not data:
            break
        newlines = data.count(b"\n")
        if newlines < count:
            count -= newlines
            pos += len(data)
            continue
        at = -1
        for _ in range(count):
            at = data.find(b"\n", at + 1)
        return pos + at + 1
    return pos


def _starts_line(fd: int, pos: int, cursor: int) -> bool:
    """Whether the line of ``cursor`` starts at byte ``pos``."""
    expected = b'{"cursor":%d,' % cursor
    return os.pread(fd, len(expected), pos) == expected


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _json_line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def _filter(data: bytes, marker: bytes) -> bytes:
    return b"".join([line + b"\n" for line in data.split(b"\n")[:-1] if marker in line])


def _read_selected(
    log: JobLog, start: int, stop: int, marker: bytes | None, columns: bool
) -> tuple[int, int, bytes]:
    """Read whole lines from byte ``start`` (:meth:`JobLog.read`) and encode them to send.

    Args:
        log: The log.
        start: Where to read from, the start of a line.
        stop: Where to read up to at most, the end of a line.
        marker: Send only the lines holding it (:func:`stream_marker`), or all.
        columns: Send the lines as ``columns`` events (:func:`columns_events`).

    Returns:
        The bytes and lines read, and what to send of them.
    """
    data = log.read(start, stop)
    if marker is not None:
        selected = _filter(data, marker)
        return len(data), data.count(b"\n"), columns_events(selected)[0] if columns else selected
    if columns:
        sent, lines = columns_events(data)
        return len(data), lines, sent
    return len(data), data.count(b"\n"), data


def columns_events(data: bytes) -> tuple[bytes, int]:
    """Encode whole stored lines as ``columns`` events (:func:`encode_columns`).

    Each event holds at most :data:`COLUMNS_EVENT` bytes of stored lines (but a longer
    line, alone): a client keeps only whole events, so smaller events are what a
    connection that drops now and then still gets through.

    Returns:
        The events, and the number of lines in ``data``.
    """
    events = []
    lines = start = 0
    while start < len(data):
        stop = data.rfind(b"\n", start, start + COLUMNS_EVENT) + 1
        if stop <= start:  # one line longer than an event: it goes alone
            stop = data.index(b"\n", start) + 1
        count = data.count(b"\n", start, stop)
        events.append(_encode_columns(data, start, stop, count))
        lines += count
        start = stop
    return b"".join(events), lines


def _cursor_at(data: bytes, pos: int) -> int | None:
    """The cursor of the stored line starting at ``pos``, or ``None``."""
    head = b'{"cursor":'
    if not data.startswith(head, pos):
        return None
    digits = data[pos + len(head) : data.find(b",", pos)]
    return int(digits) if digits.isdigit() else None


# What a stored line holds, in the order the collector writes it (see the module's
# docstring).  A key with its quotes (`,"text":`) never occurs inside a JSON string,
# where every quote is escaped, and a raw newline never does either: so each stored line
# matches these patterns exactly once, at its own keys.
_FIELDS_OF_LINE = re.compile(
    rb'^\{"cursor":(\d+),"stream":("[a-z]+"),"proc":("(?:[^"\\]|\\.)*"),"text":(".*)\}$',
    re.MULTILINE,
)


def encode_columns(data: bytes) -> bytes:
    """Re-encode whole stored lines as one ``columns`` event of ``streamLogs``.

    ``{"cursor": <last line's>, "texts": [...], "sources": [[count, stream, proc], ...]}``
    and ``"cursors": [...]`` when the lines are not contiguous (a one-stream request).
    The texts are copied as the JSON strings they are stored as: nothing is decoded, and
    the work per line is one regular-expression match, in C.  Lines that do not start
    and end as the collector writes them (never expected) are returned unchanged, one
    object each, which a client of the ``columns`` format reads as well.
    """
    return _encode_columns(data, 0, len(data), data.count(b"\n"))


@functools.lru_cache(maxsize=256)
def _texts_of(source: bytes) -> re.Pattern[bytes]:
    """The pattern of a stored line's text, on lines of one ``source`` only."""
    return re.compile(re.escape(source) + rb'(".*)}\n')


def _encode_columns(data: bytes, start: int, stop: int, count: int) -> bytes:
    """:func:`encode_columns` of ``data[start:stop]``, which holds ``count`` lines."""
    first = _cursor_at(data, start)
    last = _cursor_at(data, data.rfind(b"\n", start, stop - 1) + 1 if count > 1 else start)
    if not count or first is None or last is None:
        return data[start:stop]
    first_line = data[start : data.index(b"\n", start)]
    begin, end = first_line.find(b',"stream":'), first_line.find(b',"text":')
    if last - first == count - 1 and 0 < begin < end:
        # Contiguous lines (the usual case: a collector pass appends a run of lines from
        # one source): when every line has the first one's source, only the texts are
        # needed.  A line matches once at most (it has one "stream" key).
        source = first_line[begin : end + len(b',"text":')]
        quoted = _texts_of(source).findall(data, start, stop)
        if len(quoted) == count:
            stream_proc = source[len(b',"stream":') : -len(b',"text":')]
            return b'{"cursor":%d,"texts":[%s],"sources":[[%d,%s]]}\n' % (
                last,
                b",".join(quoted),
                count,
                stream_proc.replace(b',"proc":', b",", 1),
            )
    rows = _FIELDS_OF_LINE.findall(data, start, stop)
    if len(rows) != count:
        return data[start:stop]
    cursors, streams, procs, texts = zip(*rows, strict=True)
    keys = list(zip(streams, procs, strict=True))
    starts = [0, *compress(range(1, count), map(operator.ne, keys, keys[1:])), count]
    sources = b",".join(
        b"[%d,%s,%s]" % (run_end - run_start, streams[run_start], procs[run_start])
        for run_start, run_end in pairwise(starts)
    )
    listed = b"" if last - first == count - 1 else b',"cursors":[%s]' % b",".join(cursors)
    return b'{"cursor":%d,"texts":[%s],"sources":[%s]%s}\n' % (
        last,
        b",".join(texts),
        sources,
        listed,
    )


async def stream_log(
    log: JobLog,
    *,
    after: int = 0,
    stream: str | None = None,
    follow: bool = True,
    heartbeat: float = 5.0,
    columns: bool = False,
) -> AsyncIterator[bytes]:
    """Yield the ``streamLogs`` response body: NDJSON lines, heartbeats and the end marker.

    Args:
        log: The job's log.
        after: Send lines with a cursor greater than this.
        stream: ``stdout`` or ``stderr`` to send only that stream (cursors of the other
            are skipped), or ``None`` for both.
        follow: Keep waiting for new lines until the job ends; when false, end after the
            lines that exist now.
        heartbeat: Seconds without output after which a heartbeat line is sent.
        columns: Send each chunk of log lines as one ``columns`` event
            (:func:`encode_columns`) instead of one object per line.

    The generator returns without an end marker when the log is closed (job deleted or
    server stopping); a client then reconnects and learns why.
    """
    marker = stream_marker(stream) if stream else None
    pos = max(after, 0)
    byte_pos: int | None = None
    # Without follow, the end marker tells the phase when the lines were counted: a phase
    # read later could be final while lines written meanwhile are not among those sent.
    limit_phase = log.phase
    limit = log.snapshot() if not follow else None
    last_sent = time.monotonic()
    # The next chunk is read (and encoded) on a worker thread while the last one is being
    # sent, instead of after the client has taken it.
    ahead: asyncio.Task[tuple[int, int, bytes]] | None = None
    try:
        while log.readable():
            finished, phase = log.finished, log.phase if limit is None else limit_phase
            last, size = limit or log.snapshot()
            if pos < last:
                try:
                    if byte_pos is None:
                        byte_pos = await asyncio.to_thread(log.offset_of, pos + 1)
                    if ahead is None:
                        ahead = _read_ahead(log, byte_pos, size, marker, columns)
                    read, lines, data = await ahead
                except OSError:
                    if log.readable():
                        raise
                    return  # the log was closed under us (job deleted)
                finally:
                    ahead = None
                byte_pos += read
                pos += lines
                if pos < last:
                    ahead = _read_ahead(log, byte_pos, size, marker, columns)
                if data:
                    last_sent = time.monotonic()
                    yield data
                continue
            if limit is not None or finished:
                yield _json_line({"end": True, "cursor": pos, "phase": phase})
                return
            idle = time.monotonic() - last_sent
            if idle >= heartbeat:
                last_sent = time.monotonic()
                yield _json_line({"heartbeat": True, "cursor": pos})
                continue
            await log.wait(pos, heartbeat - idle)
    finally:
        if ahead is not None:
            ahead.cancel()
            # A read that failed meanwhile (its log closed) is dropped with the stream.
            ahead.add_done_callback(_retrieve)


def _read_ahead(
    log: JobLog, start: int, stop: int, marker: bytes | None, columns: bool
) -> asyncio.Task[tuple[int, int, bytes]]:
    """Start :func:`_read_selected` on a worker thread."""
    return asyncio.ensure_future(
        asyncio.to_thread(_read_selected, log, start, stop, marker, columns)
    )


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


@attrs.define
class _Tail:
    """The collector's schedule for one log."""

    log: JobLog
    due: float = 0.0  # monotonic time of the next pass over this log
    interval: float = 0.0  # the time between the last pass and ``due``
    idle: int = 0  # passes in a row that found nothing new


class Collector:
    """A thread that tails the sources of every registered log.

    Sources are plain files, so the only way to see them grow is to look.  Looking at
    every source every ``interval`` costs one ``pread`` per source per pass -- with
    hundreds of quiet jobs that is tens of thousands of empty reads a second.  So each
    log has its own interval: ``interval`` while it grows (a line reaches a stream in
    about that time), doubling after each pass that found nothing, up to ``max_interval``.
    A log goes back to ``interval`` as soon as it grows, and is kept there while a stream
    waits on it (:meth:`JobLog.wait` nudges the collector), so the readers that care see
    new lines within ``interval`` even after a quiet spell.  The lines of a process that
    exits never wait for the schedule: the supervisor drains its sources at once.

    Args:
        interval: Seconds between passes over a log that is growing or being streamed.
        max_interval: Longest time between passes over a quiet log.
    """

    #: Quiet passes at ``interval`` before backing off: the pass right after a growth
    #: (which drains a backlog larger than one read) and one more, so that a process
    #: printing a line every few milliseconds stays at the short interval.
    FAST_PASSES = 2

    def __init__(self, interval: float = 0.01, max_interval: float = 0.25) -> None:
        self._interval = interval
        self._max_interval = max(max_interval, interval)
        self._tails: dict[tuple[str, str], _Tail] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="juliarun-log-collector", daemon=True
        )

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (after its current pass)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()

    def register(self, key: tuple[str, str], log: JobLog) -> None:
        """Tail ``log``'s sources from now on."""
        with self._lock:
            self._tails[key] = _Tail(log)
        log.set_wait_hook(lambda: self.nudge(key))
        self._wake.set()

    def unregister(self, key: tuple[str, str]) -> None:
        """Stop tailing the log registered under ``key``."""
        with self._lock:
            tail = self._tails.pop(key, None)
        if tail is not None:
            tail.log.set_wait_hook(None)

    def nudge(self, key: tuple[str, str]) -> None:
        """Collect the log registered under ``key`` now, and at the short interval again."""
        with self._lock:
            tail = self._tails.get(key)
            if tail is None:
                return
            tail.due, tail.idle, tail.interval = 0.0, 0, 0.0
        self._wake.set()

    def _next_interval(self, tail: _Tail) -> float:
        if tail.idle < self.FAST_PASSES or tail.log.has_waiters:
            return self._interval
        doublings = min(tail.idle - self.FAST_PASSES + 1, 16)
        return min(self._interval * (1 << doublings), self._max_interval)

    def _run(self) -> None:
        while not self._stop.is_set():
            # Cleared before the pass: a nudge during it makes the wait below return at once.
            self._wake.clear()
            with self._lock:
                tails = list(self._tails.values())
            now = time.monotonic()
            next_due = now + self._max_interval
            for tail in tails:
                # A log due within a quarter of its interval is taken in this pass too,
                # so that quiet logs share wake-ups instead of each having its own.
                if tail.due - tail.interval / 4 <= now:
                    try:
                        grew = tail.log.collect()
                    except OSError:
                        logger.exception("collecting the log in %s failed", tail.log.directory)
                        grew = False
                    # Under the lock, so that a nudge is never overwritten by this update.
                    with self._lock:
                        if grew:
                            # Look again right away: a pass reads at most MAX_LINE per source.
                            tail.idle, tail.due, tail.interval = 0, now, 0.0
                        else:
                            tail.idle += 1
                            tail.interval = self._next_interval(tail)
                            tail.due = now + tail.interval
                next_due = min(next_due, tail.due)
            delay = next_due - time.monotonic()
            if delay > 0:
                self._wake.wait(delay)
