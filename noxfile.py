"""Developer tasks: `nox` runs tests, lint and typecheck; `nox -s bench` runs benchmarks."""

from __future__ import annotations

from pathlib import Path

import nox

TESTS = Path(__file__).parent / "tests"

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (asyncio and trio) with the local server."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Check style and common bugs with ruff."""
    session.install("ruff")
    session.run("ruff", "check", "juliarun_aio", "tests", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "juliarun_aio", "tests", "benchmarks", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    """Type-check the package and its tests with mypy --strict."""
    session.install("-e", ".[test]", "mypy")
    session.run("mypy", "--strict", "juliarun_aio", *sorted(str(p) for p in TESTS.glob("*.py")))
    # Each test folder has its own conftest.py and support modules imported by plain
    # name (pytest's rootdir import mode), so mypy checks each folder on its own.
    for folder in ("server", "cli", "reliability", "browser", "slurm"):
        session.run("mypy", "--strict", str(TESTS / folder), str(TESTS / "strategies.py"))


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Run the benchmarks against a local server; pass --quick for a short run."""
    session.install("-e", ".[bench]")
    session.run("python", "-m", "benchmarks", *session.posargs)
