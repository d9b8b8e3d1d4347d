"""Entry points: ``python -m juliarun_aio``, --version, and the ``server`` delegation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from juliarun_aio import __version__
from juliarun_aio.cli import main
from juliarun_aio.cli._demo import demo_scripts

REPO = Path(__file__).resolve().parents[2]


def test_python_m_runs_the_cli() -> None:
    """python -m juliarun_aio --version prints the version and exits 0."""
    done = subprocess.run(
        [sys.executable, "-m", "juliarun_aio", "--version"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, f"juliarun {__version__}\n")


def test_help_loads_only_the_parser() -> None:
    """``juliarun --help`` and a usage error load neither rich, anyio nor the SDK's calls."""
    # As installed with the [cli] extra: rich but not click, so that httpx leaves rich alone.
    code = """
import contextlib, io, sys
sys.modules["click"] = None
from juliarun_aio.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    codes = [main(["--help"]), main(["submit", "JuliaBatch", "--help"]), main(["--nope"])]
heavy = ("rich", "anyio", "juliarun_aio._http", "juliarun_aio._logs", "juliarun_aio.cli._runner")
print(codes, [name for name in heavy if name in sys.modules])
"""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert (done.returncode, done.stdout) == (0, "[0, 0, 2] []\n"), done.stderr


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    """--help names every subcommand and the exit codes."""
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for command in (
        "status",
        "list",
        "info",
        "submit",
        "update",
        "job-status",
        "scale",
        "endpoint",
        "url",
        "logs",
        "wait",
        "delete",
        "server",
        "demo",
    ):
        assert f"    {command} " in text
    assert "exit codes:" in text


def test_server_help_is_the_servers(capsys: pytest.CaptureFixture[str]) -> None:
    """juliarun server --help shows the local server's own flags."""
    assert main(["server", "--help"]) == 0
    assert "--data-dir" in capsys.readouterr().out


def test_server_configuration_error_is_one_line() -> None:
    """A bad server flag value exits 1 with one line (in a process: the server sets up logging)."""
    done = subprocess.run(
        [sys.executable, "-m", "juliarun_aio", "server", "--token=no-equals-sign"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("juliarun: error: ")
    assert done.stderr.count("\n") == 1


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """juliarun with no command exits 2."""
    assert main([]) == 2
    assert "juliarun: error: " in capsys.readouterr().err


def test_missing_rich_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without the [cli] extra, juliarun says what to install instead of a traceback."""
    for name in [m for m in sys.modules if m.startswith(("juliarun_aio.cli.", "rich"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "rich", None)
    assert main(["list"]) == 1
    assert capsys.readouterr().err == (
        "juliarun: error: the command line needs rich, which is not installed -- "
        "pip install 'juliarun_aio[cli]'\n"
    )


def test_demo_uses_julia_scripts_only_with_julia(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The demo picks the .jl scripts when julia is on PATH, the .py ones otherwise."""
    monkeypatch.setenv("PATH", str(tmp_path))
    assert {Path(p).suffix for p in demo_scripts().values()} == {".py"}
    julia = tmp_path / "julia"
    julia.write_text("#!/bin/sh\n")
    julia.chmod(0o755)
    scripts = demo_scripts()
    assert {Path(p).suffix for p in scripts.values()} == {".jl"}
    assert all(Path(p).is_file() for p in scripts.values())
