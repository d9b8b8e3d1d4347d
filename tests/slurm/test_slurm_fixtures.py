"""The Slurm tests skip where Slurm is absent, and fail instead when ``CI`` is set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from slurm_support import in_ci

ROOT = Path(__file__).resolve().parents[2]
ONE_TEST = "tests/slurm/test_slurm_cluster.py::test_history_of_unknown_jobs_is_empty"


def run_without_slurm(ci: str | None) -> subprocess.CompletedProcess[str]:
    """Run one Slurm test with no Slurm command on PATH, with ``CI`` set to ``ci``."""
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    env["PATH"] = str(Path(sys.executable).parent)
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rsE", ONE_TEST],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_ci_fails_when_slurm_is_missing() -> None:
    """With CI set, a missing Slurm is an error that says how to start one, not a skip."""
    result = run_without_slurm("true")
    assert result.returncode == 1, result.stdout
    assert "1 error" in result.stdout
    assert "CI is set, so the Slurm tests may not skip" in result.stdout
    assert "scripts/slurm-up.sh --nodes 3" in result.stdout


def test_elsewhere_a_missing_slurm_skips() -> None:
    """Without CI, a missing Slurm skips the test, saying why."""
    result = run_without_slurm(None)
    assert result.returncode == 0, result.stdout
    assert "1 skipped" in result.stdout
    assert "not installed" in result.stdout


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("1", True), ("yes", True), ("", False), ("0", False), ("false", False)],
)
def test_what_counts_as_ci(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    """CI is on for any value but empty, 0, false or no (GitHub, GitLab and others set true)."""
    monkeypatch.setenv("CI", value)
    assert in_ci() is expected
    monkeypatch.delenv("CI")
    assert in_ci() is False
