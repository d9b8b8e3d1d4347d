"""The CLI end to end against a real local server: output and exit codes."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from juliarun_aio.cli import main
from juliarun_aio.server import LocalServer

REPO = Path(__file__).resolve().parents[2]

SCRIPTS = {
    "ok.py": "import sys\nprint('line 1')\nprint('line 2')\nprint('oops', file=sys.stderr)\n"
    "print('line 3')\n",
    "fail.py": "print('about to fail', flush=True)\nraise SystemExit(3)\n",
    "forever.py": "import time\nprint('up', flush=True)\ntime.sleep(120)\n",
}


@pytest.fixture(scope="module")
def local() -> Iterator[LocalServer]:
    """One local server for the module, on a free loopback port."""
    with LocalServer(kill_grace=1.0) as server:
        yield server


@pytest.fixture
def scripts(tmp_path: Path) -> dict[str, str]:
    """Job scripts in a temporary directory, by name."""
    paths = {}
    for name, text in SCRIPTS.items():
        path = tmp_path / name
        path.write_text(text)
        paths[name] = str(path)
    return paths


@pytest.fixture
def env(local: LocalServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point the CLI at the local server through JRUN_URL/JRUN_TOKEN/JRUN_NAMESPACE."""
    for key, value in local.env.items():
        monkeypatch.setenv(key, value)
    return local.env


@pytest.fixture
def job_name(request: pytest.FixtureRequest) -> str:
    """A job name unique to the test."""
    test: str = request.node.name
    return "t-" + test.removeprefix("test_").replace("_", "-")[:40].strip("-")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def submit(capsys: pytest.CaptureFixture[str], kind: str, name: str, *flags: str) -> None:
    code, _, err = run(capsys, "submit", kind, name, "--run-volume", "work", *flags)
    assert code == 0, err


def assert_one_line_error(err: str) -> None:
    assert err.startswith("juliarun: error: ")
    assert err.count("\n") == 1
    assert " -- " in err
    assert "Traceback" not in err


def test_token_starting_with_a_dash_works_as_token_equals_value(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """--token=VALUE passes any token, one that starts with '-' too; --help shows that form."""
    with LocalServer(tmp_path / "data", tokens={"default": "-starts-with-a-dash"}) as server:
        code, out, err = run(
            capsys, "--url", server.url, "--token=-starts-with-a-dash", "-n", "default", "list"
        )
    assert code == 0, err
    assert "-starts-with-a-dash" not in out + err
    assert main(["list", "--help"]) == 0
    assert "written --token=VALUE" in " ".join(capsys.readouterr().out.split())


@pytest.mark.usefixtures("env")
def test_submit_follow_streams_the_log(
    capsys: pytest.CaptureFixture[str], scripts: dict[str, str], job_name: str
) -> None:
    """submit -f prints every log line and exits 0 once the job succeeded."""
    code, out, err = run(
        capsys,
        "submit",
        "JuliaBatch",
        job_name,
        "--start-script",
        scripts["ok.py"],
        "--run-volume",
        "work",
        "-f",
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"submitted JuliaBatch/{job_name}"
    assert [line for line in lines if line.startswith("line")] == ["line 1", "line 2", "line 3"]
    assert "oops" in lines


@pytest.mark.usefixtures("env")
def test_submit_wait_of_a_failing_job_exits_5(
    capsys: pytest.CaptureFixture[str], scripts: dict[str, str], job_name: str
) -> None:
    """submit --wait exits 5 with one line when the job fails."""
    code, _, err = run(
        capsys,
        "submit",
        "JuliaBatch",
        job_name,
        "--start-script",
        scripts["fail.py"],
        "--run-volume",
        "work",
        "--wait",
    )
    assert code == 5
    assert_one_line_error(err)
    assert f"juliarun logs {job_name}" in err


@pytest.mark.usefixtures("env")
def test_logs_follow_and_tail(
    capsys: pytest.CaptureFixture[str], scripts: dict[str, str], job_name: str
) -> None:
    """logs -f replays a finished job's log; --tail N starts with the last N lines."""
    submit(capsys, "JuliaBatch", job_name, "--start-script", scripts["ok.py"], "--wait")
    code, out, _ = run(capsys, "logs", job_name, "-f")
    assert code == 0
    assert [x for x in out.splitlines() if x.startswith("line")] == ["line 1", "line 2", "line 3"]
    code, out, _ = run(capsys, "logs", job_name, "--tail", "2", "--stream", "stdout")
    assert code == 0
    assert out.splitlines() == ["line 2", "line 3"]
    code, out, _ = run(capsys, "logs", job_name, "-f", "--tail", "1", "--stream", "stdout")
    assert (code, out) == (0, "line 3\n")
    code, out, _ = run(capsys, "logs", f"JuliaBatch/{job_name}", "-f", "--json")
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert {"text": "oops", "stream": "stderr"}.items() <= next(
        r for r in records if r["text"] == "oops"
    ).items()


@pytest.mark.usefixtures("env")
def test_scale_wait_and_job_status_json(
    capsys: pytest.CaptureFixture[str], scripts: dict[str, str], job_name: str
) -> None:
    """scale N --wait returns once N workers run; job-status --json reports the job."""
    submit(
        capsys,
        "JuliaParBatch",
        job_name,
        "--start-script",
        scripts["forever.py"],
        "--worker-start-script",
        scripts["forever.py"],
    )
    code, out, err = run(capsys, "scale", job_name, "2", "--wait", "--timeout", "30", "--json")
    assert code == 0, err
    assert json.loads(out) == {
        "name": job_name,
        "type": "JuliaParBatch",
        "requested": 2,
        "running": 2,
    }
    code, out, _ = run(capsys, "job-status", job_name, "--json")
    assert code == 0
    status = json.loads(out)
    assert status["name"] == job_name
    assert status["type"] == "JuliaParBatch"
    assert status["completed"] is False
    assert status["phase"] == "running"
    code, out, _ = run(capsys, "info", "--json")
    entry = next(job for job in json.loads(out) if job["name"] == job_name)
    assert entry["scale"] == {"running": 2, "requested": 2}
    assert run(capsys, "delete", job_name, "--force")[0] == 0


@pytest.mark.usefixtures("env")
def test_scale_wait_shows_why_workers_cannot_start(
    capsys: pytest.CaptureFixture[str], scripts: dict[str, str], job_name: str, tmp_path: Path
) -> None:
    """scale --wait shows the job's message in its progress lines and in its error."""
    missing = tmp_path / "no-such-worker.py"
    submit(
        capsys,
        "JuliaParBatch",
        job_name,
        "--start-script",
        scripts["forever.py"],
        "--worker-start-script",
        str(missing),
    )
    code, out, err = run(capsys, "scale", job_name, "3", "--wait", "--timeout", "8")
    assert code != 0
    assert_one_line_error(err)
    reason = f"cannot start: worker_start_script '{missing}' not found"
    assert any(reason in line and "workers running" in line for line in out.splitlines()), out
    assert reason in err
    assert run(capsys, "delete", job_name, "--force")[0] == 0


@pytest.mark.usefixtures("env")
def test_delete_needs_force_while_running(
    capsys: pytest.CaptureFixture[str], scripts: dict[str, str], job_name: str
) -> None:
    """delete of a running job exits 7 and says --force; with --force it goes, then exit 3."""
    submit(capsys, "JuliaBatch", job_name, "--start-script", scripts["forever.py"])
    code, _, err = run(capsys, "delete", job_name)
    assert code == 7
    assert_one_line_error(err)
    assert "--force" in err
    code, out, err = run(capsys, "delete", job_name, "--force")
    assert code == 0, err
    assert out == f"deleted JuliaBatch/{job_name}\n"
    code, _, err = run(capsys, "job-status", job_name)
    assert code == 3
    assert_one_line_error(err)


@pytest.mark.usefixtures("env")
def test_delete_of_a_finished_job_needs_no_force(
    capsys: pytest.CaptureFixture[str], scripts: dict[str, str], job_name: str
) -> None:
    """A completed job is deleted without --force."""
    submit(capsys, "JuliaBatch", job_name, "--start-script", scripts["ok.py"], "--wait")
    assert run(capsys, "delete", job_name) == (0, f"deleted JuliaBatch/{job_name}\n", "")


@pytest.mark.usefixtures("env")
def test_list_shows_jobs_as_table_and_json(
    capsys: pytest.CaptureFixture[str], scripts: dict[str, str], job_name: str
) -> None:
    """list prints NAME/TYPE columns, or JSON objects with --json."""
    submit(capsys, "JuliaBatch", job_name, "--start-script", scripts["ok.py"])
    code, out, _ = run(capsys, "list")
    assert code == 0
    assert out.splitlines()[0].split() == ["NAME", "TYPE"]
    assert [job_name, "JuliaBatch"] in [line.split() for line in out.splitlines()]
    code, out, _ = run(capsys, "list", "--json")
    assert {"name": job_name, "type": "JuliaBatch"} in json.loads(out)


@pytest.mark.usefixtures("env")
def test_unknown_job_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    """A job that does not exist exits 3 with one line, by NAME and by TYPE/NAME."""
    code, out, err = run(capsys, "job-status", "no-such-job")
    assert (code, out) == (3, "")
    assert_one_line_error(err)
    assert "juliarun list" in err
    code, _, err = run(capsys, "wait", "JuliaBatch/no-such-job")
    assert code == 3
    assert_one_line_error(err)


def test_wrong_token_exits_4_without_leaking_it(
    capsys: pytest.CaptureFixture[str], local: LocalServer
) -> None:
    """A wrong token exits 4 with one line, and neither token appears anywhere."""
    wrong = "wrong-token-0123456789"
    code, out, err = run(
        capsys, "--url", local.url, f"--token={wrong}", "--namespace", local.namespace, "list"
    )
    assert code == 4
    assert out == ""
    assert_one_line_error(err)
    for secret in (wrong, local.token):
        assert secret not in err
        assert base64.b64encode(secret.encode()).decode() not in err


def test_wrong_namespace_exits_4(capsys: pytest.CaptureFixture[str], local: LocalServer) -> None:
    """A token used in another namespace exits 4."""
    code, _, err = run(
        capsys, "list", "--url", local.url, f"--token={local.token}", "--namespace", "other"
    )
    assert code == 4
    assert_one_line_error(err)


@pytest.mark.usefixtures("env")
def test_wait_timeout_exits_6(
    capsys: pytest.CaptureFixture[str], scripts: dict[str, str], job_name: str
) -> None:
    """wait --timeout on a job that keeps running exits 6."""
    submit(capsys, "JuliaBatch", job_name, "--start-script", scripts["forever.py"])
    code, _, err = run(capsys, "wait", job_name, "--timeout", "0.5")
    assert code == 6
    assert_one_line_error(err)
    assert run(capsys, "delete", job_name, "--force")[0] == 0


@pytest.mark.usefixtures("env")
def test_submit_twice_is_a_conflict(
    capsys: pytest.CaptureFixture[str], scripts: dict[str, str], job_name: str
) -> None:
    """Submitting a name that exists exits 7."""
    submit(capsys, "JuliaBatch", job_name, "--start-script", scripts["ok.py"])
    code, _, err = run(
        capsys,
        "submit",
        "JuliaBatch",
        job_name,
        "--start-script",
        scripts["ok.py"],
        "--run-volume",
        "work",
    )
    assert code == 7
    assert_one_line_error(err)


@pytest.mark.usefixtures("env")
def test_status_endpoint_and_url(
    capsys: pytest.CaptureFixture[str], scripts: dict[str, str], job_name: str
) -> None:
    """status, endpoint and url answer for a job with named ports."""
    code, out, _ = run(capsys, "status", "--json")
    assert code == 0
    assert json.loads(out)["running"] is True
    submit(
        capsys,
        "JuliaBatch",
        job_name,
        "--start-script",
        scripts["forever.py"],
        "--ports",
        "http:8080:80",
    )
    code, out, err = run(capsys, "endpoint", job_name, "--json")
    assert code == 0, err
    assert set(json.loads(out)["ports"]) == {"http"}  # the local server picks the port
    code, out, err = run(capsys, "url", job_name, "http")
    assert code == 0, err
    assert out.startswith("http")
    assert run(capsys, "delete", job_name, "--force")[0] == 0


def test_missing_configuration_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a URL the CLI says which flag or variable to set, exit 1."""
    code, _, err = run(capsys, "list")
    assert code == 1
    assert_one_line_error(err)
    assert "JRUN_URL" in err


def test_unreachable_server_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A server that does not answer is exit 1 with a hint, not a traceback."""
    code, _, err = run(
        capsys, "--url", "http://127.0.0.1:9", "--token=t", "--namespace", "n", "status"
    )
    assert code == 1
    assert_one_line_error(err)


def cli_process(env: dict[str, str], *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "juliarun_aio", *argv],
        env={**os.environ, **env, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_with_130(
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    scripts: dict[str, str],
    job_name: str,
) -> None:
    """SIGINT during logs -f exits 130 without a traceback."""
    submit(capsys, "JuliaBatch", job_name, "--start-script", scripts["forever.py"])
    process = cli_process(env, "logs", job_name, "-f")
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "up\n"
        time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 130
    assert "Traceback" not in err
    assert run(capsys, "delete", job_name, "--force")[0] == 0


@pytest.mark.slow
def test_demo_runs_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    """juliarun demo runs start to finish and exits 0, leaving its dashboard link and its
    table in the output."""
    started = time.monotonic()
    code, out, err = run(capsys, "demo")
    assert code == 0, err
    assert re.search(r"^dashboard: http://127\.0\.0\.1:\d+/ui/login\?code=\S+ ", out, re.M)
    assert "demo-parallel  JuliaParBatch  running    3/3" in out
    assert "deleted demo-parallel" in out
    assert time.monotonic() - started < 60


@pytest.mark.usefixtures("env")
def test_submit_follow_timeout_exits_6(
    capsys: pytest.CaptureFixture[str], scripts: dict[str, str], job_name: str
) -> None:
    """submit -f --timeout bounds the whole command: exit 6 for a job that keeps running."""
    code, out, err = run(
        capsys,
        "submit",
        "JuliaBatch",
        job_name,
        "--start-script",
        scripts["forever.py"],
        "--run-volume",
        "work",
        "-f",
        "--timeout",
        "1",
    )
    assert code == 6
    assert "up" in out.splitlines()
    assert_one_line_error(err)
    assert run(capsys, "delete", job_name, "--force")[0] == 0


@pytest.mark.usefixtures("env")
def test_submit_follow_json_is_one_document_per_line(
    capsys: pytest.CaptureFixture[str], scripts: dict[str, str], job_name: str
) -> None:
    """submit -f --json prints JSON lines: the submission, each log line, the final status."""
    code, out, err = run(
        capsys,
        "submit",
        "JuliaBatch",
        job_name,
        "--start-script",
        scripts["ok.py"],
        "--run-volume",
        "work",
        "-f",
        "--json",
    )
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert records[0] == {"submitted": {"type": "JuliaBatch", "name": job_name}}
    assert [r["text"] for r in records[1:-1] if r["text"].startswith("line")] == [
        "line 1",
        "line 2",
        "line 3",
    ]
    assert records[-1]["phase"] == "succeeded"
