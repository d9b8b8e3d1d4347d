"""Identity: a job deleted and submitted again under its name is another job to every stream."""

from __future__ import annotations

import base64
import functools
import json
import threading
from pathlib import Path
from typing import Any

import httpx
from reliability_support import record, scaled
from support import wait_until, write_script

from juliarun_aio.server import LocalServer

#: Prints ``<generation> <n>`` lines every few milliseconds until it is stopped.
TICKER = """\
import os, time
generation = os.environ["GENERATION"]
i = 0
while True:
    i += 1
    print(f"{generation} {i}", flush=True)
    time.sleep(0.002)
"""


def _read_stream(http: httpx.Client, query: dict[str, str], seen: list[dict[str, Any]]) -> None:
    """Append every item of a followed streamLogs answer to ``seen`` until it ends."""
    with http.stream("GET", "/streamLogs/JuliaBatch/", params=query) as response:
        assert response.headers["x-juliarun-job-uid"] == query["uid"]
        seen.extend(json.loads(line) for line in response.iter_lines() if line)


def _has_lines(seen: list[dict[str, Any]], count: int) -> bool:
    return sum(1 for item in seen if "text" in item) >= count


def test_streams_of_a_deleted_job_never_reach_the_job_that_reuses_its_name(
    server: LocalServer, volume: Path
) -> None:
    """Identity: delete-and-resubmit while a stream is open never mixes two submissions."""
    rounds = scaled(20, 4)
    write_script(volume, "ticker.py", TICKER)
    auth = {
        "jruntok": base64.b64encode(server.token.encode()).decode(),
        "jrunns": server.namespace,
    }
    foreign = lines_read = refused = 0
    with httpx.Client(base_url=server.url, timeout=30) as http:

        def call(verb: str, **params: str) -> Any:
            response = http.get(f"/{verb}/JuliaBatch/", params={**auth, **params})
            assert response.status_code == 200, response.text
            return response.json()["data"]

        def submit(generation: int) -> str:
            call(
                "submitJob",
                name="reused",
                start_script="ticker.py",
                run_volume="work",
                envvars=json.dumps({"GENERATION": str(generation)}),
            )
            uid: str = call("getJobStatus", name="reused")["uid"]
            return uid

        uid = submit(0)
        for generation in range(rounds):
            seen: list[dict[str, Any]] = []
            query = {**auth, "name": "reused", "uid": uid}
            reader = threading.Thread(target=_read_stream, args=(http, query, seen))
            reader.start()
            wait_until(functools.partial(_has_lines, seen, 20), what="lines of the job")
            call("deleteJob", name="reused", force="true")
            new_uid = submit(generation + 1)
            reader.join(30)
            assert not reader.is_alive()
            texts = [item["text"] for item in seen if "text" in item]
            foreign += sum(1 for text in texts if not text.startswith(f"{generation} "))
            lines_read += len(texts)
            assert not any(item.get("end") for item in seen)
            last = max(item["cursor"] for item in seen)
            again = http.get(
                "/streamLogs/JuliaBatch/", params={**query, "cursor": str(last), "follow": "false"}
            )
            refused += again.status_code == 404
            assert new_uid != uid
            uid = new_uid
        call("deleteJob", name="reused", force="true")
    record(
        "streams of a deleted job vs a job reusing its name",
        rounds=rounds,
        lines_read=lines_read,
        lines_of_the_other_job=foreign,
        reconnects_refused_404=refused,
    )
    assert foreign == 0
    assert refused == rounds
