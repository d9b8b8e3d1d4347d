"""The README's commands and examples work as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

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
