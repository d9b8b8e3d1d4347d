"""Subcommands against a mocked server: what goes on the wire, and odd answers."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import pytest
import respx

from juliarun_aio.cli import main

URL = "https://jrun.test"
TOKEN = "s3cret-token-value"
#: The connection flags of every call.
CONNECT = ["--url", URL, f"--token={TOKEN}", "--namespace", "team"]


@pytest.fixture
def server() -> Iterator[respx.MockRouter]:
    """A mocked JuliaRun server at URL; a request no route matches fails the test."""
    with respx.mock(base_url=URL, assert_all_called=False) as router:
        yield router


def ok(data: object) -> httpx.Response:
    return httpx.Response(200, json={"code": 0, "data": data})


LISTED = {"train": {"type": "JuliaParBatch"}}
STATUS = {
    "succeeded": False,
    "created": True,
    "parallelism": 2,
    "nworkers_succeeded": 0,
    "npending": 0,
    "nuptodate": 2,
}


def test_bare_name_costs_one_list_call(
    server: respx.MockRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    """NAME alone is looked up with one listJobs call, then the job verb uses its type."""
    listed = server.get("/listJobs/").mock(return_value=ok(LISTED))
    status = server.get("/getJobStatus/JuliaParBatch/").mock(return_value=ok(STATUS))
    assert main([*CONNECT, "job-status", "train"]) == 0
    assert listed.call_count == 1
    assert status.calls.last.request.url.params["name"] == "train"
    out = capsys.readouterr().out
    assert "running" in out
    assert "JuliaParBatch/train" in out


def test_type_slash_name_skips_the_lookup(
    server: respx.MockRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    """TYPE/NAME goes straight to the job verb."""
    listed = server.get("/listJobs/").mock(return_value=ok(LISTED))
    server.get("/getJobStatus/JuliaBatch/").mock(return_value=ok([True, 0, 0, True, False]))
    assert main([*CONNECT, "job-status", "JuliaBatch/old", "--json"]) == 0
    assert listed.call_count == 0
    assert '"phase": "succeeded"' in capsys.readouterr().out


def test_bad_job_type_is_a_usage_error(
    server: respx.MockRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown TYPE in TYPE/NAME exits 2 and lists the types."""
    assert main([*CONNECT, "wait", "Batch/x"]) == 2
    err = capsys.readouterr().err
    assert "JuliaBatch" in err
    assert err.count("\n") == 1


def test_submit_sends_the_wire_parameters(
    server: respx.MockRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    """submit encodes each flag once, in the wire syntax, with the credential in base64."""
    route = server.get("/submitJob/JuliaParBatch/").mock(return_value=ok(None))
    argv = [
        *CONNECT,
        "submit",
        "JuliaParBatch",
        "train",
        "--start-script",
        "main.jl",
        "--run-volume",
        "work",
        "--ports",
        "8000:8000",
        "--worker-env",
        "A=1",
        "--nworkers",
        "2",
        "--restart",
        "Never",
        "--external",
    ]
    assert main(argv) == 0
    params = route.calls.last.request.url.params
    assert dict(params) == {
        "jruntok": base64.b64encode(TOKEN.encode()).decode(),
        "jrunns": "team",
        "name": "train",
        "start_script": "main.jl",
        "run_volume": "work",
        "ports": "port8000:8000:8000",
        "worker_envvars": '{"A": "1"}',
        "nworkers": "2",
        "restart": "Never",
        "external": "true",
    }
    assert capsys.readouterr().out == "submitted JuliaParBatch/train\n"


def test_bad_positional_name_is_reported_against_name(
    server: respx.MockRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    """An invalid NAME exits 2 naming the positional NAME, not a --name flag that is not there."""
    argv = [
        *CONNECT,
        "submit",
        "JuliaBatch",
        "Bad_Name",
        "--start-script",
        "a.py",
        "--run-volume",
        "w",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("juliarun: error: NAME: ")
    assert "--name" not in err
    assert len(server.calls) == 0


def test_update_sends_the_spec(
    server: respx.MockRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    """update sends updateJob with the flags given."""
    route = server.get("/updateJob/JuliaBatch/").mock(return_value=ok(None))
    argv = [
        *CONNECT,
        "update",
        "JuliaBatch",
        "b",
        "--start-script",
        "b.jl",
        "--run-volume",
        "w",
        "--memory",
        "2Gi",
        "--json",
    ]
    assert main(argv) == 0
    assert route.calls.last.request.url.params["memory"] == "2Gi"
    assert '"updated"' in capsys.readouterr().out


def test_delete_answered_false_is_a_conflict(
    server: respx.MockRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    """A server that answers deleteJob with false (not 409) still exits 7 and says --force."""
    route = server.get("/deleteJob/JuliaBatch/").mock(return_value=ok(False))
    assert main([*CONNECT, "delete", "JuliaBatch/b"]) == 7
    assert route.calls.last.request.url.params["force"] == "false"
    assert "--force" in capsys.readouterr().err


def test_refused_scale_exits_1(
    server: respx.MockRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    """setJobScale answered false exits 1 with one line."""
    server.get("/setJobScale/JuliaBatch/").mock(return_value=ok(False))
    assert main([*CONNECT, "scale", "JuliaBatch/b", "2"]) == 1
    assert capsys.readouterr().err.startswith("juliarun: error: the server refused to scale")


def test_waiting_for_workers_of_a_finished_job_exits_5(
    server: respx.MockRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    """scale --wait on a job that already ended fails at once with the job's state (exit 5)."""
    server.get("/setJobScale/JuliaParBatch/").mock(return_value=ok(True))
    server.get("/getJobScale/JuliaParBatch/").mock(return_value=ok([0, 2]))
    ended = {**STATUS, "succeeded": False, "phase": "failed", "failed": True, "message": "oom"}
    server.get("/getJobStatus/JuliaParBatch/").mock(return_value=ok(ended))
    argv = [*CONNECT, "scale", "JuliaParBatch/train", "2", "--wait", "--timeout", "600"]
    assert main(argv) == 5
    err = capsys.readouterr().err
    assert "ended before 2 worker(s) ran" in err
    assert "phase failed" in err
    assert "'oom'" in err


def test_negative_scale_is_a_usage_error(
    server: respx.MockRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    """scale to a negative count exits 2 before any request."""
    assert main([*CONNECT, "scale", "JuliaBatch/b", "--", "-1"]) == 2
    assert len(server.calls) == 0
    assert "give 0 or more" in capsys.readouterr().err


def test_token_echoed_by_the_server_is_redacted(
    server: respx.MockRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    """A server message that quotes the credential is printed without it."""
    encoded = base64.b64encode(TOKEN.encode()).decode()
    server.get("/listJobs/").mock(
        return_value=httpx.Response(
            401, json={"code": 401, "data": f"bad token {TOKEN} ({encoded})"}
        )
    )
    assert main([*CONNECT, "list"]) == 4
    err = capsys.readouterr().err
    assert TOKEN not in err
    assert encoded not in err
    assert "[REDACTED]" in err


def test_system_not_running_exits_1(
    server: respx.MockRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    """status exits 1 when the server says it is not connected to a cluster."""
    server.get("/getSystemStatus/").mock(return_value=ok(False))
    assert main([*CONNECT, "status"]) == 1
    assert "NOT running" in capsys.readouterr().out


def test_endpoint_table_and_url(
    server: respx.MockRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    """endpoint prints host and named ports; url prints the URL alone."""
    server.get("/getJobEndpoint/Webserver/").mock(
        return_value=ok(["10.0.180.127", {"port8000": 8000}])
    )
    server.get("/getEncodedURL/Webserver/").mock(return_value=ok("https://x.test/ns/web/8000"))
    assert main([*CONNECT, "endpoint", "Webserver/web"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert rows == [["HOST", "PORT", "NAME", "PORT"], ["10.0.180.127", "port8000", "8000"]]
    assert main([*CONNECT, "url", "Webserver/web", "8000"]) == 0
    assert capsys.readouterr().out == "https://x.test/ns/web/8000\n"


def test_info_table(server: respx.MockRouter, capsys: pytest.CaptureFixture[str]) -> None:
    """info prints one row per job with phase, workers and endpoint."""
    server.get("/getAllJobInfo/").mock(
        return_value=ok(
            {
                "train": {
                    "type": "JuliaParBatch",
                    "status": STATUS,
                    "scale": [2, 3],
                    "endpoint": ["10.0.0.1", {"http": 80}],
                }
            }
        )
    )
    assert main([*CONNECT, "info"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert rows[1] == ["train", "JuliaParBatch", "running", "2/3", "10.0.0.1", "http=80"]
