"""The README's commands and examples work as written."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from juliarun_aio import Context, JuliaParBatch
from juliarun_aio.server import LocalServer

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run installs the package and runs exactly the test command of the quick start."""
    quick_start = _blocks("console")[1].strip()
    install, test_command = (part.strip() for part in quick_start.split("&&"))
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert install.replace("python -m pip install", "").strip() in ci
    assert any(line.strip() == test_command for line in ci.splitlines())


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_python_example_runs(index: int, tmp_path: Path) -> None:
    """Each Python example in the README runs to completion against a local server."""
    code = _blocks("python")[index]
    with LocalServer() as server:
        env = {**os.environ, **server.env}
        result = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert server.token not in result.stdout + result.stderr


@pytest.mark.slow
def test_the_cluster_example_runs_over_https(tmp_path: Path) -> None:
    """The "On a cluster" Python example runs as printed against a --tls-self-signed server."""
    (code,) = [block for block in _blocks("python") if "JRUN_CA_BUNDLE" in block]
    with LocalServer(tmp_path / "data", tls_self_signed=True) as server:
        assert server.url.startswith("https://")
        env = {key: value for key, value in os.environ.items() if not key.startswith("SSL_")}
        result = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            env={**env, **server.env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "server up: True\njobs: []\n"
    assert "JuliaRun server listening on https://" in README
    assert "export JRUN_CA_BUNDLE=" in README


@pytest.mark.slow
def test_notebook_cell_follows_a_log_and_the_workers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's notebook cell runs in IPython against a running parallel job, shows
    its workers and its log lines, and ends when the job ends."""
    shell_module = pytest.importorskip("IPython.core.interactiveshell")
    (cell,) = _blocks("ipython")
    with LocalServer(tmp_path / "data") as server:
        volume = server.data_dir / "namespaces" / server.namespace / "volumes" / "work"
        volume.mkdir(parents=True)
        (volume / "master.py").write_text(
            "import time\nfor i in range(5):\n    print('step', i, flush=True)\n"
            "    time.sleep(0.3)\n"
        )
        (volume / "worker.py").write_text("import time\ntime.sleep(60)\n")
        job = JuliaParBatch(
            name="train",
            start_script="master.py",
            worker_start_script="worker.py",
            run_volume="work",
            nworkers=1,
        )

        async def submit() -> None:
            async with Context(
                url=server.url, token=server.token, namespace=server.namespace
            ) as ctx:
                await ctx.submit_job(job)

        anyio.run(submit)
        for key, value in server.env.items():
            monkeypatch.setenv(key, value)
        shell = shell_module.InteractiveShell.instance()
        # On our own event loop, as a kernel runs cells: IPython's run_cell would leave a
        # loop of its own open.
        run = functools.partial(
            shell.run_cell_async, cell, transformed_cell=shell.transform_cell(cell)
        )
        try:
            result = anyio.run(run, backend="asyncio")
        finally:
            shell_module.InteractiveShell.clear_instance()
    result.raise_error()
    shown = capsys.readouterr().out
    assert "master: step 4" in shown
    assert "JobScale(running=" in shown
