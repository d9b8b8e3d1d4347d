"""What ``import juliarun_aio`` loads, and what waits for first use."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

#: Modules that ``import juliarun_aio`` must not execute: each is loaded on first use.
DEFERRED = (
    "juliarun_aio._specs",  # the job spec classes
    "juliarun_aio.cli",
    "juliarun_aio.server",
    "cattrs",
    "orjson",
    "starlette",
    "uvicorn",
)
#: Modules that ``import juliarun_aio`` registers but executes only when first read from.
LAZY = ("juliarun_aio._logs", "juliarun_aio._watch", "juliarun_aio._wire")


def _run(code: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_importing_the_package_leaves_the_heavy_modules_for_later() -> None:
    """``import juliarun_aio`` neither imports the deferred modules nor runs the lazy ones."""
    found = _run(
        f"""
        import json, sys, types
        import juliarun_aio
        print(json.dumps({{
            "imported": [m for m in {DEFERRED!r} if m in sys.modules],
            "executed": [m for m in {LAZY!r} if type(sys.modules[m]) is types.ModuleType],
        }}))
        """
    )
    assert found == {"imported": [], "executed": []}


def test_first_use_loads_what_was_deferred() -> None:
    """The spec classes, the log and wait types and the helpers all work on first use."""
    found = _run(
        """
        import json, sys, types
        import juliarun_aio
        from juliarun_aio import JuliaBatch, LogBatch, PollPolicy, make_spec
        from juliarun_aio._wire import encode_spec

        spec = make_spec("JuliaBatch", name="a", run_volume="v", start_script="s.jl")
        print(json.dumps({
            "same": spec == JuliaBatch(name="a", run_volume="v", start_script="s.jl"),
            "wire": encode_spec(spec)["name"],
            "batch": LogBatch.__module__,
            "poll": PollPolicy().initial > 0,
            "listed": "Webserver" in dir(juliarun_aio),
            "executed": type(sys.modules["juliarun_aio._logs"]) is types.ModuleType,
        }))
        """
    )
    assert found == {
        "same": True,
        "wire": "a",
        "batch": "juliarun_aio._logs",
        "poll": True,
        "listed": True,
        "executed": True,
    }


def test_an_unknown_name_is_an_attribute_error() -> None:
    """A name the package does not have raises AttributeError, as without lazy names."""
    found = _run(
        """
        import json, juliarun_aio
        try:
            juliarun_aio.NoSuchThing
        except AttributeError as exc:
            print(json.dumps({"error": str(exc)}))
        """
    )
    assert found == {"error": "module 'juliarun_aio' has no attribute 'NoSuchThing'"}
