"""How fast a large log is collected and streamed (a floor, and the figures printed)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from server_support import Api, encode_token
from support import write_script

LINES = 1_000_000
WRITER = f"""\
import sys
sys.stdout.write("".join(f"line number {{i}}\\n" for i in range({LINES})))
"""


@pytest.mark.slow
def test_a_million_lines_stream_fast(
    api: Api, volume: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 1,000,000-line log streams at several hundred thousand lines per second."""
    write_script(volume, "many.py", WRITER)
    started = time.perf_counter()
    api.data("submitJob", "JuliaBatch", name="many", start_script="many.py", run_volume="work")
    assert api.wait_done("JuliaBatch", "many", timeout=120)["phase"] == "succeeded"
    collected = time.perf_counter() - started

    query = {"jruntok": encode_token(api.token), "jrunns": api.namespace, "name": "many"}
    started = time.perf_counter()
    lines = 0
    last = b""
    with api.http.stream("GET", "/streamLogs/JuliaBatch/", params=query) as response:
        for chunk in response.iter_raw():
            lines += chunk.count(b"\n")
            last = chunk
    streamed = time.perf_counter() - started
    assert lines == LINES + 1  # and the end marker
    assert last.endswith(b'{"end":true,"cursor":1000000,"phase":"succeeded"}\n')
    with capsys.disabled():
        print(
            f"\n{LINES:,} lines: run + collected in {collected:.2f} s, "
            f"streamed in {streamed:.2f} s ({LINES / streamed:,.0f} lines/s)"
        )
    assert LINES / streamed > 300_000
