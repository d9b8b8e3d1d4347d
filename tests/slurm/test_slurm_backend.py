"""The server's Slurm backend on a real three-node cluster: jobs spread over the nodes, reach
each other and the server, stream their logs; what the backend refuses, and why jobs wait."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from slurm_support import NODES, eventually
from support import (
    SLURM_HOST,
    SLURM_SERVER,
    Api,
    cancel_slurm_jobs,
    encode_token,
    on_loopback,
    write_script,
)

from juliarun_aio import Context, JobStateError, JuliaParBatch
from juliarun_aio.server import LocalServer, ServerProcess
from juliarun_aio.server._backend import BackendError
from juliarun_aio.server._slurm_cli import SlotName, SlurmCli

pytestmark = pytest.mark.slurm

#: Short grace and backoff so that stops and restarts are quick.
FAST: dict[str, Any] = {"kill_grace": 0.5, "restart_backoff": 0.05, "restart_backoff_max": 0.2}

#: The master of a tiny cluster: listens on its port ``cluster``, checks the cookie of each
#: worker that connects and prints who joined from which node.
MASTER = """\
import os, socket
server = socket.create_server(("", int(os.environ["JRUN_PORT_CLUSTER"])))
print("master on", os.environ["SLURMD_NODENAME"], flush=True)
while True:
    conn, _ = server.accept()
    cookie, proc, node = conn.recv(1000).decode().split()
    conn.close()
    ok = cookie == os.environ["JRUN_CLUSTER_COOKIE"]
    print("joined" if ok else "refused", proc, node, flush=True)
"""
#: A worker: connects to its master with the cookie, then stays.
WORKER = """\
import os, socket, time
address = (os.environ["JRUN_MASTER_HOST"], int(os.environ["JRUN_PORT_CLUSTER"]))
with socket.create_connection(address, timeout=30) as conn:
    conn.sendall(" ".join(
        [os.environ["JRUN_CLUSTER_COOKIE"], os.environ["JRUN_PROC"], os.environ["SLURMD_NODENAME"]]
    ).encode())
time.sleep(300)
"""


def live_jobs(slurm: SlurmCli, uid: str) -> dict[str, list[str]]:
    """Slot -> the states of the live Slurm jobs of a submission (by name)."""
    found: dict[str, list[str]] = {}
    for job in slurm.queue():
        name = SlotName.parse(job.name)
        if name is not None and name.uid == uid and not job.status.state.finished:
            found.setdefault(name.slot, []).append(job.state)
    return found


@pytest.fixture
def server(tmp_path: Path, slurm: SlurmCli) -> Iterator[LocalServer]:
    """A server running its jobs on the cluster; whatever it leaves is cancelled."""
    del slurm
    with LocalServer(tmp_path / "data", **SLURM_SERVER, **FAST) as running:
        yield running
    cancel_slurm_jobs(tmp_path / "data")


@pytest.fixture
def api(server: LocalServer) -> Iterator[Api]:
    """A protocol client of :func:`server`."""
    client = Api(server.url, server.token, server.namespace, ca_bundle=server.ca_bundle)
    yield client
    client.close()


def volume(server: LocalServer | ServerProcess) -> Path:
    """The run volume ``work``."""
    return server.data_dir / "namespaces" / server.namespace / "volumes" / "work"


def test_workers_spread_over_the_nodes_join_their_master_and_scale(
    server: LocalServer, api: Api, slurm: SlurmCli
) -> None:
    """Six workers of 6 CPUs each run on several nodes and reach the master with the cookie;
    scaled 6 -> 1 -> 4 while it runs, Slurm holds exactly the slots asked for."""
    write_script(volume(server), "master.py", MASTER)
    write_script(volume(server), "worker.py", WORKER)
    api.data(
        "submitJob",
        "JuliaParBatch",
        name="cluster",
        start_script="master.py",
        worker_start_script="worker.py",
        run_volume="work",
        nworkers=6,
        worker_cpu="6",
        ports="cluster:9009:9009",
    )
    uid = api.status("JuliaParBatch", "cluster")["uid"]

    def joined() -> dict[str, str] | None:
        lines = api.lines("JuliaParBatch", "cluster", stream="stdout")
        assert not [line for line in lines if line.startswith("refused")]
        found = {line.split()[1]: line.split()[2] for line in lines if line.startswith("joined")}
        return found if len(found) == 6 else None

    nodes = eventually(joined, "six workers to join", 60)
    assert set(nodes) == {f"worker-{i}" for i in range(1, 7)}
    assert len(set(nodes.values())) >= 2, nodes  # 16 CPUs a node: at most two workers each
    assert api.data("getJobScale", "JuliaParBatch", name="cluster") == [6, 6]
    host, ports = api.data("getJobEndpoint", "JuliaParBatch", name="cluster")
    assert host in NODES.values()
    assert set(ports) == {"cluster"}

    assert api.data("setJobScale", "JuliaParBatch", name="cluster", parallelism=1) is True
    eventually(
        lambda: live_jobs(slurm, uid) == {"master": ["RUNNING"], "worker-1": ["RUNNING"]} or None,
        "Slurm to hold the master and one worker",
        30,
    )
    assert api.data("getJobScale", "JuliaParBatch", name="cluster") == [1, 1]
    assert api.data("setJobScale", "JuliaParBatch", name="cluster", parallelism=4) is True
    api.wait_scale("JuliaParBatch", "cluster", 4, timeout=60)
    rejoined = eventually(
        lambda: (
            [
                line.split()[1]
                for line in api.lines("JuliaParBatch", "cluster", stream="stdout")
                if line.startswith("joined")
            ][6:]
            or None
        ),
        "workers to join again",
        60,
    )
    eventually(
        lambda: (
            len(
                [
                    line
                    for line in api.lines("JuliaParBatch", "cluster")
                    if line.startswith("joined")
                ]
            )
            == 9
            or None
        ),
        "three workers to join again",
        60,
    )
    assert set(rejoined) <= {"worker-2", "worker-3", "worker-4"}
    live = live_jobs(slurm, uid)
    assert sorted(live) == ["master", "worker-1", "worker-2", "worker-3", "worker-4"]
    assert all(states == ["RUNNING"] for states in live.values())
    assert api.data("deleteJob", "JuliaParBatch", name="cluster", force="true") is True
    assert live_jobs(slurm, uid) == {}


#: Serves HTTP on its port and prints numbered, timestamped lines, bursts of them at once.
SERVE_AND_PRINT = """\
import http.server, os, sys, threading, time
port = int(os.environ["JRUN_PORT_HTTP"])
server = http.server.HTTPServer(("", port), http.server.SimpleHTTPRequestHandler)
threading.Thread(target=server.serve_forever, daemon=True).start()
print("serving on", os.environ["SLURMD_NODENAME"], flush=True)
for i in range(1, 2001):
    print(f"line {i} {time.time()}", flush=i % 100 == 0 or i > 1900)
    if i > 1900:
        time.sleep(0.01)
while not os.path.exists("finish"):
    time.sleep(0.05)
"""


def read_stream(api: Api, name: str, **params: Any) -> list[dict[str, Any]]:
    """``streamLogs`` items until the end, or until the connection is cut (``until``)."""
    until = params.pop("until", None)
    query = {"jruntok": encode_token(api.token), "jrunns": api.namespace, "name": name}
    query.update({key: str(value) for key, value in params.items()})
    items: list[dict[str, Any]] = []
    with api.http.stream("GET", "/streamLogs/JuliaBatch/", params=query) as response:
        assert response.status_code == 200
        for raw in response.iter_lines():
            item = json.loads(raw)
            items.append(item)
            if item.get("end") or (until is not None and item.get("cursor") == until):
                break
    return items


def test_a_job_on_another_node_serves_at_its_endpoint_and_streams_its_log(
    tmp_path: Path, slurm: SlurmCli
) -> None:
    """A job on node3 answers HTTP at its endpoint from here; its live log streams exactly,
    and a stream cut in the middle resumes from its cursor with nothing lost or repeated."""
    del slurm
    data_dir = tmp_path / "data"
    settings = {**SLURM_SERVER, "sbatch_args": ("--nodelist=node3",)}
    with LocalServer(data_dir, **settings, **FAST) as server:
        api = Api(server.url, server.token, server.namespace, ca_bundle=server.ca_bundle)
        try:
            write_script(volume(server), "serve.py", SERVE_AND_PRINT)
            api.data(
                "submitJob",
                "JuliaBatch",
                name="web",
                start_script="serve.py",
                run_volume="work",
                ports="http:8080:80",
            )
            first = read_stream(api, "web", until=1000)
            rest = read_stream(api, "web", cursor=first[-1]["cursor"], until=2001)
            received = time.time()
            items = [item for item in first + rest if "text" in item]
            assert items[0]["text"] == "serving on node3"
            assert [item["cursor"] for item in items] == list(range(1, 2002))
            assert [item["text"].split()[1] for item in items[1:]] == [
                str(i) for i in range(1, 2001)
            ]
            latency = received - float(items[-1]["text"].split()[2])
            assert latency < 5.0  # a generous bound: the log is live, not collected at the end

            host, ports = api.data("getJobEndpoint", "JuliaBatch", name="web")
            assert host == NODES["node3"]
            url = api.data("getEncodedURL", "JuliaBatch", name="web", port="http")
            assert url == f"http://{host}:{ports['http']}/"
            assert httpx.get(url + "serve.py", timeout=10).text == SERVE_AND_PRINT

            (volume(server) / "finish").touch()
            status = api.wait_done("JuliaBatch", "web", timeout=60)
            assert status["phase"] == "succeeded"
            whole = read_stream(api, "web")
            assert whole[:2001] == items
            assert whole[2001]["stream"] == "stderr"  # the server's access log line
            assert "GET /serve.py" in whole[2001]["text"]
            assert whole[2002:] == [{"end": True, "cursor": 2002, "phase": "succeeded"}]
        finally:
            api.close()
    cancel_slurm_jobs(data_dir)


#: Calls the server back as a job does: ``Context()`` from the job's environment alone
#: (``JRUN_URL``, ``JRUN_TOKEN``, ``JRUN_NAMESPACE``, ``JRUN_CA_BUNDLE``).
CALL_BACK = """\
import os
import anyio
from juliarun_aio import Context

async def main():
    async with Context() as ctx:
        jobs = await ctx.list_jobs()
    print(os.environ["SLURMD_NODENAME"], os.environ["JRUN_URL"], *sorted(jobs), flush=True)

anyio.run(main)
"""


@pytest.mark.parametrize("host", [SLURM_HOST, "0.0.0.0"])
def test_jobs_on_other_nodes_call_the_server_back_over_tls(
    tmp_path: Path, slurm: SlurmCli, host: str
) -> None:
    """A job on node3 calls the server with ``Context()`` over HTTPS, trusting
    ``JRUN_CA_BUNDLE``: at the server's address towards the nodes (also when it listens on
    every interface), which its self-signed certificate names."""
    del slurm
    data_dir = tmp_path / "data"
    args = ("--backend", "slurm", "--tls-self-signed", "--sbatch-arg=--nodelist=node3")
    with ServerProcess(data_dir, host=host, args=args) as server:
        # Tests call only loopback and the project's addresses (the wildcard's URL names this
        # machine as other machines dial it).
        url = server.url if host == SLURM_HOST else on_loopback(server.url)
        api = Api(url, server.token, server.namespace, ca_bundle=server.ca_bundle)
        try:
            write_script(volume(server), "call.py", CALL_BACK)
            api.data(
                "submitJob", "JuliaBatch", name="caller", start_script="call.py", run_volume="work"
            )
            status = api.wait_done("JuliaBatch", "caller", timeout=60)
            assert status["phase"] == "succeeded", api.lines("JuliaBatch", "caller")
            node, url, *jobs = api.lines("JuliaBatch", "caller")[0].split()
            assert node == "node3"
            assert url == f"https://{SLURM_HOST}:{server.port}"
            assert jobs == ["caller"]
        finally:
            api.close()
    cancel_slurm_jobs(data_dir)


def test_jobs_say_why_they_wait_and_what_slurm_refused(tmp_path: Path, slurm: SlurmCli) -> None:
    """A job Slurm holds is pending with Slurm's reason in its message; one Slurm refuses fails
    with Slurm's words; deleting the waiting one leaves nothing of it in the queue."""
    data_dir = tmp_path / "data"
    settings = {**SLURM_SERVER, "sbatch_args": ("--begin=now+1hour",)}
    with LocalServer(data_dir, **settings, **FAST) as server:
        api = Api(server.url, server.token, server.namespace, ca_bundle=server.ca_bundle)
        try:
            write_script(volume(server), "hello.py", "print('hello')\n")
            for name, memory in (("later", "64Mi"), ("huge", "1Ti")):
                api.data(
                    "submitJob",
                    "JuliaBatch",
                    name=name,
                    start_script="hello.py",
                    run_volume="work",
                    memory=memory,
                )
            status = api.wait_status(
                "JuliaBatch",
                "later",
                lambda status: "waiting for its start time" in status.get("message", ""),
                "Slurm's reason",
            )
            assert status["phase"] == "pending"
            assert status["message"] == (
                "master: waiting for its start time (Slurm: PENDING, BeginTime)"
            )
            assert status["created"] is True
            assert status["waiting"] == {
                "master": "waiting for its start time (Slurm: PENDING, BeginTime)"
            }
            huge = api.wait_done("JuliaBatch", "huge")
            assert huge["phase"] == "failed"
            assert huge["created"] is False
            assert huge["message"].startswith("master: Slurm refused the job: sbatch: error:")
            assert "Memory specification can not be satisfied" in huge["message"]
            uid = status["uid"]
            assert live_jobs(slurm, uid) == {"master": ["PENDING"]}
            assert api.data("deleteJob", "JuliaBatch", name="later", force="true") is True
            assert live_jobs(slurm, uid) == {}
        finally:
            api.close()
    cancel_slurm_jobs(data_dir)


def test_a_wait_for_workers_slurm_will_never_start_ends_with_the_reason(
    tmp_path: Path, slurm: SlurmCli
) -> None:
    """Workers queued behind a dependency that can no longer hold are not "on their way":
    wait_for_workers ends early with Slurm's reason instead of waiting out its timeout."""
    dead = subprocess.run(
        ["sbatch", "--parsable", "--job-name=jrtest.dead", "--output=/dev/null", "--wrap=exit 1"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()

    def failed() -> bool | None:
        state = subprocess.run(
            ["squeue", "--noheader", "--states=all", f"--jobs={dead}", "--format=%T"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        return True if state == "FAILED" else None

    eventually(failed, "the dependency to fail")
    data_dir = tmp_path / "data"
    settings = {**SLURM_SERVER, "sbatch_args": (f"--dependency=afterok:{dead}",)}
    with LocalServer(data_dir, **settings, **FAST) as server:
        write_script(volume(server), "idle.py", "import time\ntime.sleep(300)\n")
        job = JuliaParBatch(
            name="blocked",
            start_script="idle.py",
            worker_start_script="idle.py",
            run_volume="work",
            nworkers=1,
        )

        async def wait() -> None:
            async with Context(
                server.url, server.token, server.namespace, verify=server.ca_bundle
            ) as ctx:
                await ctx.submit_job(job)
                async with aclosing(ctx.wait_for_workers(job.ref, 1, timeout=120)) as scales:
                    async for _scale in scales:
                        pass

        started = time.monotonic()
        with pytest.raises(JobStateError, match="can never be satisfied"):
            anyio.run(wait)
        assert time.monotonic() - started < 100, "the wait ran to its timeout"
    cancel_slurm_jobs(data_dir)


def test_addresses_the_nodes_cannot_reach_are_refused(tmp_path: Path, slurm: SlurmCli) -> None:
    """A server listening on loopback only refuses to start: its jobs could not call it."""
    del slurm
    server = LocalServer(tmp_path / "data", backend="slurm", host="127.0.0.1")
    with pytest.raises(BackendError, match="listen on an address the nodes reach"):
        server.start()


def test_a_partition_slurm_does_not_have_is_refused_naming_those_it_has(
    tmp_path: Path, slurm: SlurmCli
) -> None:
    """A misspelt --partition stops the server saying so and listing the partitions."""
    del slurm
    server = LocalServer(tmp_path / "data", partition="nosuch", **SLURM_SERVER)
    with pytest.raises(BackendError) as caught:
        server.start()
    assert str(caught.value).startswith("--partition nosuch: Slurm has no such partition")
    assert str(caught.value).endswith("its partitions are debug")


def test_a_data_directory_the_nodes_do_not_see_is_refused(tmp_path: Path, slurm: SlurmCli) -> None:
    """A data directory only the server sees (a mount of its own) stops it with one line."""
    del slurm
    if os.geteuid() != 0:
        pytest.skip("mounting a file system of its own needs root")
    data_dir = tmp_path / "private"
    data_dir.mkdir()
    server = [sys.executable, "-m", "juliarun_aio.server", "--data-dir", str(data_dir)]
    server += ["--backend", "slurm", "--host", SLURM_HOST, "--tls-self-signed", "--token=default=t"]
    # The server runs in a mount namespace of its own, with a tmpfs over its data directory:
    # the nodes see the empty directory below it.
    script = 'mount -t tmpfs jr-private "$1" && shift && exec "$@"'
    unshare = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]
    result = subprocess.run(
        [*unshare, str(data_dir), *server],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={key: value for key, value in os.environ.items() if not key.startswith("JRUN_")},
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"juliarun-server: the data directory ({data_dir}) is not ")
    assert "put it on a file system that every node mounts at the same path" in result.stderr
    assert list(data_dir.iterdir()) == []
