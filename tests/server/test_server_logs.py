"""The combined log across restarts: recovery keeps every line once, and reads from any cursor.

A property test writes the output of a few processes in many small pieces, collects it in
many batches with the log's constants made tiny (so that a few hundred lines cross every
batch, index, checkpoint and read-chunk boundary), restarts the log at random points --
gracefully, killed in the middle of a write, or with its journal, combined log and index
cut at arbitrary points -- and after each step reads the log from many cursors.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from unittest import mock

import attrs
from hypothesis import given
from hypothesis import strategies as st
from strategies import stored_logs
from support import expand_columns

from juliarun_aio.server import _logs
from juliarun_aio.server._logs import (
    COMBINED,
    INDEX,
    JOURNAL,
    JobLog,
    encode_columns,
    stream_log,
)

#: (file, stream, proc) of the processes writing into the log.
SOURCES = (("m.out", "stdout", "master"), ("m.err", "stderr", "master"), ("w.out", "stdout", "w1"))
#: Tiny constants: a batch of 3 lines, an index point every 2, a checkpoint every 4 batches,
#: reads of 64 bytes (a JSON line is longer, so reads grow), sources read 64 bytes a pass.
TINY: dict[str, Any] = {
    "BATCH_LINES": 3,
    "INDEX_EVERY": 2,
    "CHECKPOINT_EVERY": 4,
    "STREAM_CHUNK": 64,
    "MAX_LINE": 64,
    "COLUMNS_EVENT": 64,
}
#: Line texts: any Unicode without newlines, short enough that a line is never split.
LINE_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\n"), max_size=10)


class _CrashError(Exception):
    """The server died in the middle of a write."""


@contextmanager
def _tiny_log_constants() -> Iterator[None]:
    with mock.patch.multiple(_logs, **TINY):
        yield


@contextmanager
def _writes_crash_after(budget: int) -> Iterator[None]:
    """Let the log write ``budget`` more bytes, then stop it in the middle of a write."""
    real = _logs._write_all
    left = [budget]

    def write_all(fd: int, data: bytes) -> None:
        if len(data) <= left[0]:
            left[0] -= len(data)
            real(fd, data)
            return
        real(fd, data[: left[0]])
        raise _CrashError

    with mock.patch.object(_logs, "_write_all", write_all):
        yield


@attrs.define
class _Writer:
    """What one process will print, and how much of it it has printed."""

    planned: bytes
    written: int = 0

    def complete_lines(self) -> list[str]:
        return [line.decode() for line in self.planned[: self.written].split(b"\n")[:-1]]

    def all_lines(self) -> list[str]:
        lines = self.planned.split(b"\n")
        if lines[-1] == b"":
            lines.pop()
        return [line.decode() for line in lines]


def _open(directory: Path) -> JobLog:
    log = JobLog(directory)
    for key, stream, proc in SOURCES:
        log.add_source(key, stream=stream, proc=proc)
    return log


def _lines_on_disk(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (directory / COMBINED).read_bytes().splitlines()]


def _check_log(directory: Path, writers: list[_Writer], *, complete: bool) -> list[dict[str, Any]]:
    """The combined log holds each process's lines once, in order, under cursors 1..N."""
    lines = _lines_on_disk(directory)
    assert [line["cursor"] for line in lines] == list(range(1, len(lines) + 1))
    for (_, stream, proc), writer in zip(SOURCES, writers, strict=True):
        texts = [line["text"] for line in lines if (line["stream"], line["proc"]) == (stream, proc)]
        expected = writer.all_lines() if complete else writer.complete_lines()
        if complete:
            assert texts == expected
        else:
            assert texts == expected[: len(texts)]
    return lines


def _streamed(
    log: JobLog, requests: list[tuple[int, str | None]], *, columns: bool = False
) -> list[list[dict[str, Any]]]:
    """The streamLogs items (follow=false) of each ``(after, stream)`` request.

    With ``columns``, the ``columns`` events are spelt out as the line objects they hold.
    """

    async def one(after: int, stream: str | None) -> list[dict[str, Any]]:
        body = stream_log(log, after=after, stream=stream, follow=False, columns=columns)
        chunks = [chunk async for chunk in body]
        items = [json.loads(line) for line in b"".join(chunks).splitlines()]
        return expand_columns(items) if columns else items

    async def all_of_them() -> list[list[dict[str, Any]]]:
        return [await asyncio.wait_for(one(*request), 30) for request in requests]

    return asyncio.run(all_of_them())


def _check_reads(log: JobLog, lines: list[dict[str, Any]], cursors: set[int]) -> None:
    """Reading from each cursor returns exactly the lines from there to the end."""
    last, size = log.snapshot()
    assert last == len(lines)
    requests: list[tuple[int, str | None]] = []
    for cursor in sorted(cursors):
        start = log.offset_of(cursor)
        got: list[dict[str, Any]] = []
        while start < size:
            data = log.read(start, size)
            got += [json.loads(line) for line in data.splitlines()]
            start += len(data)
        assert got == lines[cursor - 1 :], f"read from cursor {cursor}"
        requests += [(cursor - 1, stream) for stream in (None, "stdout", "stderr")]
    for columns in (False, True):
        answers = _streamed(log, requests, columns=columns)
        for (after, stream), items in zip(requests, answers, strict=True):
            expected = [line for line in lines[after:] if stream in (None, line["stream"])]
            assert items[:-1] == expected, f"stream={stream} after {after}, columns={columns}"
            assert items[-1] == {"end": True, "cursor": max(last, after), "phase": "pending"}
    assert log.tail(3) == [line["text"] for line in lines[-3:]]


def _cursors(count: int, extra: int) -> set[int]:
    return {1, 2, count // 2, count, count + 1, extra % (count + 2) or 1} - {0}


# One step: ("write", source, bytes) | ("collect",) | ("read", n) | ("restart",)
# | ("crash", bytes) | ("cut", journal %, combined %, index %).
STEPS = st.one_of(
    st.tuples(st.just("write"), st.integers(0, len(SOURCES) - 1), st.integers(1, 120)),
    st.tuples(st.just("collect")),
    st.tuples(st.just("read"), st.integers(0, 10_000)),
    st.tuples(st.just("restart")),
    st.tuples(st.just("crash"), st.integers(0, 2_000)),
    st.tuples(st.just("cut"), st.integers(0, 100), st.integers(0, 100), st.integers(0, 100)),
)


def _cut(directory: Path, journal: int, combined: int, index: int) -> None:
    for name, percent in ((JOURNAL, journal), (COMBINED, combined), (INDEX, index)):
        path = directory / name
        if path.exists():
            size = path.stat().st_size
            with open(path, "r+b") as fh:
                fh.truncate(size * percent // 100)


@given(
    plans=st.lists(st.lists(LINE_TEXT, max_size=60), min_size=len(SOURCES), max_size=len(SOURCES)),
    steps=st.lists(STEPS, max_size=40),
    final_newline=st.booleans(),
)
def test_log_reads_exactly_from_any_cursor_after_any_restarts(
    plans: list[list[str]], steps: list[tuple[Any, ...]], final_newline: bool
) -> None:
    """After graceful, killed or damaged restarts, a read from any cursor is exact."""
    writers = [_Writer("".join(f"{text}\n" for text in plan).encode()) for plan in plans]
    if not final_newline and plans[0] and plans[0][-1]:
        writers[0].planned = writers[0].planned[:-1]  # the process ends without a newline
    with tempfile.TemporaryDirectory() as tmp, _tiny_log_constants():
        directory = Path(tmp)
        log = _open(directory)
        seen: list[dict[str, Any]] = []
        try:
            for step in steps:
                if step[0] == "write":
                    writer, path = writers[step[1]], directory / SOURCES[step[1]][0]
                    with open(path, "ab") as fh:
                        fh.write(writer.planned[writer.written : writer.written + step[2]])
                    writer.written = min(writer.written + step[2], len(writer.planned))
                elif step[0] == "collect":
                    log.collect()
                elif step[0] == "read":
                    lines = _check_log(directory, writers, complete=False)
                    _check_reads(log, lines, _cursors(len(lines), step[1]))
                else:
                    if step[0] == "crash":
                        with suppress(_CrashError), _writes_crash_after(step[1]):
                            while log.collect():
                                pass
                    log.close()
                    if step[0] == "cut":
                        _cut(directory, *step[1:])
                    log = _open(directory)
                    lines = _check_log(directory, writers, complete=False)
                    if step[0] == "cut":
                        assert lines == seen[: len(lines)]
                    else:  # nothing that readers could see is lost or changed
                        assert lines[: len(seen)] == seen
                    _check_reads(log, lines, _cursors(len(lines), len(seen)))
                seen = _lines_on_disk(directory)
            for writer, (key, _, _) in zip(writers, SOURCES, strict=True):
                with open(directory / key, "ab") as fh:
                    fh.write(writer.planned[writer.written :])
                writer.written = len(writer.planned)
            while log.collect():
                pass
            log.drain([key for key, _, _ in SOURCES])
            lines = _check_log(directory, writers, complete=True)
            _check_reads(log, lines, _cursors(len(lines), len(steps)))
            log.close()
            log = _open(directory)  # the next server reads the sources from where they were
            while log.collect():
                pass
            log.drain([key for key, _, _ in SOURCES])
            assert _lines_on_disk(directory) == lines
            _check_reads(log, lines, _cursors(len(lines), len(seen)))
        finally:
            log.close()


def test_recovered_log_reads_from_its_first_line(tmp_path: Path) -> None:
    """A reopened log with index points reads from cursor 1 (not from its last index point)."""
    log = _open(tmp_path)
    for batch in range(10):
        with open(tmp_path / "m.out", "ab") as fh:
            fh.write(b"".join(b"line %d\n" % i for i in range(batch * 2000, batch * 2000 + 2000)))
        while log.collect():
            pass
    log.close()
    log = _open(tmp_path)
    try:
        lines = _lines_on_disk(tmp_path)
        assert len(lines) == 20_000
        _check_reads(log, lines, {1, 100, 2001, 10_000, 20_000, 20_001})
    finally:
        log.close()


def test_checkpoint_never_records_an_offset_older_than_its_lines(tmp_path: Path) -> None:
    """A checkpoint written by a source's batch holds that source's new offset: no repeats."""
    with mock.patch.object(_logs, "CHECKPOINT_EVERY", 3):
        log = _open(tmp_path)
        for i in range(3):
            with open(tmp_path / "m.out", "ab") as fh:
                fh.write(b"line %d\n" % i)
            log.collect()
        log.close()
        log = _open(tmp_path)
        log.collect()
        try:
            assert log.tail(10) == ["line 0", "line 1", "line 2"]
        finally:
            log.close()


def test_index_points_that_miss_their_line_are_dropped(tmp_path: Path) -> None:
    """An index file whose points do not match the log is cut where it stops matching."""
    with mock.patch.object(_logs, "INDEX_EVERY", 2), mock.patch.object(_logs, "BATCH_LINES", 2):
        log = _open(tmp_path)
        with open(tmp_path / "m.out", "ab") as fh:
            fh.write(b"".join(b"line %d\n" % i for i in range(20)))
        while log.collect():
            pass
        log.close()
        good = (tmp_path / INDEX).read_bytes().splitlines()
        cursor, byte = good[2].split()
        damaged = [*good[:2], cursor + b" " + str(int(byte) + 1).encode(), *good[3:]]
        (tmp_path / INDEX).write_bytes(b"\n".join(damaged) + b"\n")
        log = _open(tmp_path)
        try:
            assert (tmp_path / INDEX).read_bytes().splitlines() == good[:2]
            _check_reads(log, _lines_on_disk(tmp_path), set(range(1, 22)))
        finally:
            log.close()


def test_offsets_stay_exact_while_the_log_grows(tmp_path: Path) -> None:
    """offset_of and read give the asked line while another thread appends batches."""
    log = _open(tmp_path)
    stop = threading.Event()

    def grow() -> None:
        i = 0
        while not stop.is_set() and i < 200_000:
            with open(tmp_path / "m.out", "ab") as fh:
                fh.write(b"".join(b"line %d\n" % n for n in range(i, i + 500)))
            i += 500
            while log.collect():
                pass

    writer = threading.Thread(target=grow)
    writer.start()
    try:
        checked = 0
        while writer.is_alive() and checked < 2000:
            last, size = log.snapshot()
            if last == 0:
                time.sleep(0.001)
                continue
            for cursor in {1, last // 3, last // 2, last}:
                line = json.loads(log.read(log.offset_of(cursor), size).split(b"\n", 1)[0])
                assert (line["cursor"], line["text"]) == (cursor, f"line {cursor - 1}")
                checked += 1
    finally:
        stop.set()
        writer.join()
        log.close()
    assert checked > 100


@given(log=stored_logs(), event_bytes=st.integers(1, 400))
def test_columns_hold_exactly_the_stored_lines(
    log: tuple[list[dict[str, Any]], bytes], event_bytes: int
) -> None:
    """Any run of stored lines, cut into events of any size, reads back as the same lines."""
    objects, stored = log
    with mock.patch.object(_logs, "COLUMNS_EVENT", event_bytes):
        sent, count = _logs.columns_events(stored)
    assert count == len(objects)
    events = [json.loads(line) for line in sent.splitlines()]
    assert expand_columns(events) == objects
    assert all("texts" in event for event in events)
    whole = json.loads(encode_columns(stored))
    pairs = list(itertools.pairwise(objects))
    assert ("cursors" in whole) == any(b["cursor"] - a["cursor"] > 1 for a, b in pairs)
    assert len(whole["sources"]) == 1 + sum(
        (a["stream"], a["proc"]) != (b["stream"], b["proc"]) for a, b in pairs
    )


def test_lines_the_collector_did_not_write_are_sent_as_they_are() -> None:
    """Bytes that do not read as stored lines are sent unchanged, never misread."""
    for odd in (
        b'{"cursor":1,"text":"a","stream":"stdout","proc":"master"}\n',
        b'{"cursor":x,"stream":"stdout","proc":"master","text":"a"}\n',
        b'{"cursor":1,"stream":"stdout","proc":"master","text":"a"}\nnot json\n',
    ):
        assert encode_columns(odd) == odd
