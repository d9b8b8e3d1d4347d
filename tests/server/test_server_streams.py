"""The streamLogs extension over HTTP (on every backend), and the combined log's recovery and
indexing."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from server_support import BOTH_BACKENDS, Api, encode_token
from support import expand_columns, wait_until, write_script

from juliarun_aio.server import _logs
from juliarun_aio.server._logs import (
    COMBINED,
    JOURNAL,
    MAX_LINE,
    JobLog,
    LogClosedError,
    stream_log,
)

NUMBERED = (
    "import sys\n"
    "for i in range(1, 301):\n"
    "    print(f'out {i}')\n"
    "    if i % 3 == 0:\n"
    "        print(f'err {i}', file=sys.stderr, flush=True)\n"
    "        sys.stdout.flush()\n"
)
WAITING = (
    "import os, time\n"
    "print('first', flush=True)\n"
    "while not os.path.exists('go'):\n"
    "    time.sleep(0.01)\n"
    "print(time.time(), flush=True)\n"
)


def stream(api: Api, kind: str, name: str, **params: Any) -> list[dict[str, Any]]:
    """Read a whole streamLogs response as a list of JSON objects."""
    query = {"jruntok": encode_token(api.token), "jrunns": api.namespace, "name": name}
    query.update({key: str(value) for key, value in params.items()})
    with api.http.stream("GET", f"/streamLogs/{kind}/", params=query) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        return [json.loads(line) for line in response.iter_lines() if line]


@pytest.fixture
def numbered(api: Api, volume: Path) -> str:
    """A finished job that printed 300 stdout lines and 100 stderr lines."""
    write_script(volume, "numbered.py", NUMBERED)
    api.data("submitJob", "JuliaBatch", name="num", start_script="numbered.py", run_volume="work")
    api.wait_done("JuliaBatch", "num")
    return "num"


@BOTH_BACKENDS
def test_stream_sends_every_line_then_the_end_marker(api: Api, numbered: str) -> None:
    """A finished job's stream has cursors 1..N in order, then the end marker with the phase."""
    items = stream(api, "JuliaBatch", numbered)
    lines, end = items[:-1], items[-1]
    assert [item["cursor"] for item in lines] == list(range(1, 401))
    assert end == {"end": True, "cursor": 400, "phase": "succeeded"}
    stdout = [item["text"] for item in lines if item["stream"] == "stdout"]
    assert stdout == [f"out {i}" for i in range(1, 301)]
    assert all(item["proc"] == "master" for item in lines)
    assert "\n".join(item["text"] for item in lines[-50:]) == api.data(
        "tailJob", "JuliaBatch", name=numbered, count=50
    )


def test_stream_resumes_after_a_cursor(api: Api, numbered: str) -> None:
    """cursor=N sends the lines after N only, for any N."""
    full = stream(api, "JuliaBatch", numbered)[:-1]
    for cursor in (0, 1, 137, 399, 400):
        items = stream(api, "JuliaBatch", numbered, cursor=cursor)
        assert items[:-1] == full[cursor:]
        assert items[-1]["end"] is True


def test_stream_filter_skips_the_other_stream(api: Api, numbered: str) -> None:
    """stream=stderr sends only stderr lines, with their combined-log cursors."""
    full = stream(api, "JuliaBatch", numbered)[:-1]
    items = stream(api, "JuliaBatch", numbered, stream="stderr", cursor=10)
    assert items[:-1] == [item for item in full[10:] if item["stream"] == "stderr"]
    everything = stream(api, "JuliaBatch", numbered, stream="stderr")
    assert [item["text"] for item in everything[:-1]] == [f"err {i}" for i in range(3, 301, 3)]
    assert items[-1] == {"end": True, "cursor": 400, "phase": "succeeded"}


@BOTH_BACKENDS
def test_columns_format_sends_the_same_lines(api: Api, numbered: str) -> None:
    """format=columns holds exactly the lines of format=lines, from any cursor, per stream."""
    for stream_name in (None, "stdout", "stderr"):
        for cursor in (0, 1, 137, 399, 400):
            params: dict[str, Any] = {"cursor": cursor}
            if stream_name is not None:
                params["stream"] = stream_name
            lines = stream(api, "JuliaBatch", numbered, **params)
            columns = stream(api, "JuliaBatch", numbered, format="columns", **params)
            assert expand_columns(columns) == lines, (stream_name, cursor)
            assert all("texts" in item for item in columns[:-1])
    # Cursors are listed when they are not contiguous (one stream skips the other's).
    (event, end) = stream(api, "JuliaBatch", numbered, format="columns", stream="stderr")
    lines = stream(api, "JuliaBatch", numbered, stream="stderr")[:-1]
    cursors = [item["cursor"] for item in lines]
    contiguous = cursors == list(range(cursors[0], cursors[0] + 100))
    assert event.get("cursors") == (None if contiguous else cursors)
    assert event["sources"] == [[100, "stderr", "master"]]
    assert end == {"end": True, "cursor": 400, "phase": "succeeded"}


def test_an_unknown_format_is_refused(api: Api, numbered: str) -> None:
    """format= other than lines or columns is a 400 naming both."""
    query = {
        "jruntok": encode_token(api.token),
        "jrunns": api.namespace,
        "name": numbered,
        "format": "csv",
    }
    response = api.http.get("/streamLogs/JuliaBatch/", params=query)
    assert response.status_code == 400
    assert "'format' must be lines or columns" in response.json()["data"]


@BOTH_BACKENDS
def test_follow_delivers_live_lines_heartbeats_and_the_end(api: Api, volume: Path) -> None:
    """A followed stream sends heartbeats while idle, new lines live, then the end marker."""
    write_script(volume, "waiting.py", WAITING)
    api.data("submitJob", "JuliaBatch", name="live", start_script="waiting.py", run_volume="work")
    query = {
        "jruntok": encode_token(api.token),
        "jrunns": api.namespace,
        "name": "live",
        "heartbeat": "0.05",
    }
    seen: list[dict[str, Any]] = []
    latency = None
    with api.http.stream("GET", "/streamLogs/JuliaBatch/", params=query) as response:
        for raw in response.iter_lines():
            item = json.loads(raw)
            seen.append(item)
            if item.get("heartbeat") and item["cursor"] == 1 and not (volume / "go").exists():
                (volume / "go").touch()
            elif item.get("cursor") == 2 and "text" in item:
                latency = time.time() - float(item["text"])
            elif item.get("end"):
                break
    assert next(item for item in seen if "text" in item)["text"] == "first"
    assert any(item.get("heartbeat") for item in seen)
    assert seen[-1] == {"end": True, "cursor": 2, "phase": "succeeded"}
    assert latency is not None
    assert latency < 1.0


def test_follow_false_ends_after_existing_lines(api: Api, volume: Path) -> None:
    """follow=false sends the lines existing now and ends with the current phase."""
    write_script(volume, "waiting.py", WAITING)
    api.data("submitJob", "JuliaBatch", name="snap", start_script="waiting.py", run_volume="work")
    api.wait_lines("JuliaBatch", "snap", 1)
    items = stream(api, "JuliaBatch", "snap", follow="false")
    assert [item.get("text") for item in items[:-1]] == ["first"]
    assert items[-1] == {"end": True, "cursor": 1, "phase": "running"}
    api.data("deleteJob", "JuliaBatch", name="snap", force="true")


@BOTH_BACKENDS
def test_deleting_the_job_ends_its_streams(api: Api, volume: Path) -> None:
    """A followed stream ends without an end marker when its job is deleted."""
    write_script(volume, "waiting.py", WAITING)
    api.data("submitJob", "JuliaBatch", name="gone", start_script="waiting.py", run_volume="work")
    api.wait_lines("JuliaBatch", "gone", 1)
    query = {"jruntok": encode_token(api.token), "jrunns": api.namespace, "name": "gone"}
    with api.http.stream("GET", "/streamLogs/JuliaBatch/", params=query) as response:
        lines = response.iter_lines()
        assert json.loads(next(lines))["text"] == "first"
        api.data("deleteJob", "JuliaBatch", name="gone", force="true")
        assert [line for line in lines if line] == []


def test_stream_names_its_submission_and_refuses_a_later_one(api: Api, numbered: str) -> None:
    """The stream names the job's uid; uid= of a deleted job is a 404 even if the name is reused."""
    uid = api.status("JuliaBatch", numbered)["uid"]
    query = {"jruntok": encode_token(api.token), "jrunns": api.namespace, "name": numbered}
    with api.http.stream("GET", "/streamLogs/JuliaBatch/", params=query) as response:
        assert response.headers["x-juliarun-job-uid"] == uid
    assert len(stream(api, "JuliaBatch", numbered, uid=uid)) == 401
    api.data("deleteJob", "JuliaBatch", name=numbered)
    message = api.error(404, "streamLogs", "JuliaBatch", name=numbered, uid=uid)
    assert message == f"job {numbered!r} was deleted"
    api.data(
        "submitJob", "JuliaBatch", name=numbered, start_script="numbered.py", run_volume="work"
    )
    message = api.error(404, "streamLogs", "JuliaBatch", name=numbered, uid=uid, cursor=400)
    assert "was deleted" in message
    assert "another job" in message
    new_uid = api.status("JuliaBatch", numbered)["uid"]
    assert new_uid != uid
    with api.http.stream("GET", "/streamLogs/JuliaBatch/", params=query) as response:
        assert response.headers["x-juliarun-job-uid"] == new_uid
    api.wait_done("JuliaBatch", numbered)
    assert len(stream(api, "JuliaBatch", numbered, uid=new_uid)) == 401
    for bad in ("", "XYZ", uid.upper(), uid + "0"):
        assert "uid" in api.error(400, "streamLogs", "JuliaBatch", name=numbered, uid=bad)


@BOTH_BACKENDS
def test_delete_then_resubmit_never_mixes_the_two_logs(api: Api, volume: Path) -> None:
    """An open stream of a deleted job ends without the lines of a job submitted under its name."""
    write_script(volume, "waiting.py", WAITING)
    write_script(volume, "second.py", "print('second job')\n")
    api.data("submitJob", "JuliaBatch", name="reuse", start_script="waiting.py", run_volume="work")
    api.wait_lines("JuliaBatch", "reuse", 1)
    uid = api.status("JuliaBatch", "reuse")["uid"]
    query = {"jruntok": encode_token(api.token), "jrunns": api.namespace, "name": "reuse"}
    with api.http.stream("GET", "/streamLogs/JuliaBatch/", params=query) as response:
        lines = response.iter_lines()
        assert json.loads(next(lines))["text"] == "first"
        api.data("deleteJob", "JuliaBatch", name="reuse", force="true")
        api.data(
            "submitJob", "JuliaBatch", name="reuse", start_script="second.py", run_volume="work"
        )
        assert [line for line in lines if line] == []
    api.error(404, "streamLogs", "JuliaBatch", name="reuse", uid=uid, cursor=1)
    api.wait_done("JuliaBatch", "reuse")
    items = stream(api, "JuliaBatch", "reuse")
    assert [item.get("text") for item in items] == ["second job", None]
    assert api.data("tailJob", "JuliaBatch", name="reuse") == "second job"


def test_stream_rejects_bad_parameters(api: Api, numbered: str) -> None:
    """Bad streamLogs parameters answer the envelope with 400 (or 404 for an unknown job)."""
    bad = [{"cursor": "-1"}, {"cursor": "x"}, {"stream": "both"}, {"follow": "maybe"}]
    bad += [{"heartbeat": "0"}, {"heartbeat": "nan"}]
    for params in bad:
        api.error(400, "streamLogs", "JuliaBatch", **({"name": numbered} | params))
    api.error(404, "streamLogs", "JuliaBatch", name="missing")
    api.error(404, "streamLogs", "Generic", name=numbered)


def _source(directory: Path, name: str, data: bytes) -> None:
    with open(directory / name, "ab") as fh:
        fh.write(data)


def test_log_recovers_from_a_batch_cut_short(tmp_path: Path) -> None:
    """A batch half-written when the server died is dropped and re-read: nothing lost or doubled."""
    log = JobLog(tmp_path)
    log.add_source("a.out", stream="stdout", proc="master")
    _source(tmp_path, "a.out", b"one\ntwo\n")
    assert log.collect()
    _source(tmp_path, "a.out", b"three\nfour\n")
    assert log.collect()
    log.close()
    # Simulate a crash in the middle of writing the second batch.
    combined = tmp_path / COMBINED
    size = combined.stat().st_size
    with open(combined, "r+b") as fh:
        fh.truncate(size - 10)
    _source(tmp_path, "a.out", b"five\npartial")

    log = JobLog(tmp_path)
    log.add_source("a.out", stream="stdout", proc="master")
    log.collect()
    assert log.tail(10) == ["one", "two", "three", "four", "five"]
    log.drain(["a.out"])
    assert log.tail(10) == ["one", "two", "three", "four", "five", "partial"]
    assert log.last_cursor == 6
    log.close()


def test_log_recovers_from_a_journal_entry_without_its_batch(tmp_path: Path) -> None:
    """A journal entry whose batch never reached the combined log is discarded."""
    log = JobLog(tmp_path)
    log.add_source("a.out", stream="stdout", proc="master")
    _source(tmp_path, "a.out", b"one\n")
    log.collect()
    log.close()
    with open(tmp_path / JOURNAL, "ab") as fh:
        fh.write(b'{"c":2,"n":1,"b":999,"e":1999,"o":{"a.out":123}}\n{"c":3,"n"')
    log = JobLog(tmp_path)
    log.add_source("a.out", stream="stdout", proc="master")
    _source(tmp_path, "a.out", b"two\n")
    log.collect()
    assert log.tail(5) == ["one", "two"]
    log.close()


def test_log_splits_overlong_lines_and_indexes_far_cursors(tmp_path: Path) -> None:
    """A line longer than MAX_LINE is split; offset_of finds any cursor among many lines."""
    log = JobLog(tmp_path)
    log.add_source("a.out", stream="stdout", proc="worker-1")
    _source(tmp_path, "a.out", b"x" * (MAX_LINE + 5) + b"\n")
    _source(tmp_path, "a.out", b"".join(b"line %d\n" % i for i in range(30_000)))
    while log.collect():
        pass
    assert log.last_cursor == 30_002
    last, size = log.snapshot()
    for cursor in (1, 2, 3, 1025, 8195, 20_000, 30_002):
        start = log.offset_of(cursor)
        item = json.loads(log.read(start, size).split(b"\n", 1)[0])
        assert item["cursor"] == cursor
    assert log.offset_of(last + 1) == size
    assert log.tail(1) == ["line 29999"]
    log.close()


def test_closed_log_never_reads_a_later_job_in_its_directory(tmp_path: Path) -> None:
    """Once closed, a log refuses reads instead of reading the file a new job put in its place."""
    old = JobLog(tmp_path / "logs")
    old.add_source("a.out", stream="stdout", proc="master")
    _source(tmp_path / "logs", "a.out", b"old\n")
    old.collect()
    old.close()
    shutil.rmtree(tmp_path / "logs")
    new = JobLog(tmp_path / "logs")
    new.add_source("b.out", stream="stdout", proc="master")
    _source(tmp_path / "logs", "b.out", b"new\n")
    new.collect()
    assert new.tail(5) == ["new"]
    with pytest.raises(LogClosedError):
        old.tail(5)
    with pytest.raises(LogClosedError):
        old.read(0, 10)

    async def read_old() -> list[bytes]:
        return [chunk async for chunk in stream_log(old, follow=False)]

    assert asyncio.run(read_old()) == []
    new.close()


def test_log_wakes_waiters(tmp_path: Path) -> None:
    """A waiter on the log returns when a line arrives, well before its timeout."""
    log = JobLog(tmp_path)
    log.add_source("a.out", stream="stdout", proc="master")

    async def main() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()

        def write_and_collect() -> None:
            _source(tmp_path, "a.out", b"hi\n")
            log.collect()

        loop.call_later(0.05, write_and_collect)
        await log.wait(0, timeout=5)
        return loop.time() - started

    assert asyncio.run(main()) < 1
    wait_until(lambda: log.last_cursor == 1)
    log.close()


def test_log_checkpoints_keep_the_journal_short(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checkpoints empty the journal; recovery from checkpoint plus journal is exact."""
    monkeypatch.setattr(_logs, "CHECKPOINT_EVERY", 3)
    log = JobLog(tmp_path)
    log.add_source("a.out", stream="stdout", proc="master")
    for i in range(10):
        _source(tmp_path, "a.out", b"line %d\n" % i)
        assert log.collect()
    stale = (tmp_path / JOURNAL).read_bytes()
    _source(tmp_path, "a.out", b"line 10\n")
    assert log.collect()
    log.close()
    assert len((tmp_path / JOURNAL).read_bytes().splitlines()) < 3
    # The server died after writing a checkpoint but before emptying the journal.
    with open(tmp_path / JOURNAL, "r+b") as fh:
        rest = fh.read()
        fh.seek(0)
        fh.write(stale + rest)
    _source(tmp_path, "a.out", b"line 11\n")
    log = JobLog(tmp_path)
    log.add_source("a.out", stream="stdout", proc="master")
    log.collect()
    assert log.tail(100) == [f"line {i}" for i in range(12)]
    assert log.last_cursor == 12
    log.close()
