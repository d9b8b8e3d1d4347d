"""Entry points: ``python -m juliarun_aio``, --version, and the ``server`` delegation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from juliarun_aio import __version__
from juliarun_aio.cli import main

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
        [sys.executable, "-m", "juliarun_aio", "server", "--token", "no-equals-sign"],
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
