"""What ``import juliarun_aio`` loads, what waits for first use, and that nothing else changes."""

from __future__ import annotations

import ast
import json
import os
import pickle
import re
import subprocess
import sys
import textwrap
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from typing_extensions import assert_type

import juliarun_aio
from juliarun_aio import (
    DEFAULT_RETRY,
    JOB_KINDS,
    Context,
    Endpoint,
    JobRef,
    JobScale,
    JobStatus,
    JobTable,
    JuliaBatch,
    RetryPolicy,
    _errors,
    make_spec,
    self_job,
)

if TYPE_CHECKING:
    from juliarun_aio import Job, JobSpec, LogBatch, LogLine, PollPolicy

#: Where the package is: every subprocess imports this tree.
ROOT = Path(juliarun_aio.__file__).resolve().parents[1]

#: All that ``import juliarun_aio`` may execute of the package: the Context and the errors.
EAGER = {
    "juliarun_aio",
    "juliarun_aio._base",
    "juliarun_aio._context",
    "juliarun_aio._errors",
    "juliarun_aio._lazy",
    "juliarun_aio._version",
}
#: Packages that ``import juliarun_aio`` must leave for first use.
DEFERRED = ("attr", "attrs", "anyio", "sniffio", "cattrs", "orjson", "starlette", "uvicorn")

#: Where each public name lives: ``from juliarun_aio import X`` gives that very object.
HOMES = {
    **dict.fromkeys(set(juliarun_aio.__all__) & set(_errors.__all__), "juliarun_aio._errors"),
    **dict.fromkeys(("initialize_cluster", "release_cluster", "self_job"), "juliarun_aio._cluster"),
    "Context": "juliarun_aio._context",
    **dict.fromkeys(("JOB_KINDS", "Job", "JobRef", "JobSpec", "make_spec"), "juliarun_aio._jobs"),
    **dict.fromkeys(("LogBatch", "LogGapWarning", "LogLine"), "juliarun_aio._logs"),
    **dict.fromkeys(
        ("Endpoint", "JobInfo", "JobScale", "JobStatus", "JobTable"), "juliarun_aio._models"
    ),
    **dict.fromkeys(("DEFAULT_RETRY", "NO_RETRIES", "RetryPolicy"), "juliarun_aio._retry"),
    **dict.fromkeys(JOB_KINDS, "juliarun_aio._specs"),
    "PollPolicy": "juliarun_aio._watch",
    "__version__": "juliarun_aio._version",
}


def _run(code: str) -> Any:
    """Run ``code`` in a fresh interpreter on this tree; return the JSON it prints."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_importing_the_package_loads_only_the_context_and_the_errors() -> None:
    """``import juliarun_aio`` executes no module of the package but those, nor attrs or anyio."""
    found = _run(
        f"""
        import json, sys
        from juliarun_aio import Context, JuliaRunError
        print(json.dumps({{
            "package": sorted(m for m in sys.modules if m.partition(".")[0] == "juliarun_aio"),
            "deferred": [m for m in {DEFERRED!r} if m in sys.modules],
        }}))
        """
    )
    assert found == {"package": sorted(EAGER), "deferred": []}


def test_every_public_name_is_the_object_of_its_module() -> None:
    """Each name of ``__all__`` resolves, on first use, to the object its module defines."""
    assert set(HOMES) == set(juliarun_aio.__all__)
    found = _run(
        f"""
        import importlib, json
        import juliarun_aio
        homes = {HOMES!r}
        listed = set(dir(juliarun_aio))
        wrong = []
        for name, home in homes.items():
            module = importlib.import_module(home)
            if getattr(juliarun_aio, name) is not getattr(module, name):
                wrong.append(name)
        namespace = {{}}
        exec("from juliarun_aio import *", namespace)
        print(json.dumps({{
            "wrong": wrong,
            "unlisted": sorted(set(homes) - listed),
            "star": sorted(set(homes) - set(namespace)),
            "alias": juliarun_aio.TimeoutError is juliarun_aio.RequestTimeoutError,
        }}))
        """
    )
    assert found == {"wrong": [], "unlisted": [], "star": [], "alias": True}


def test_every_deferred_name_is_declared_for_type_checkers() -> None:
    """The package imports each name it loads on first use for type checkers too.

    A name that only ``__getattr__`` provides would type as ``Any``, silently.
    """
    tree = ast.parse((ROOT / "juliarun_aio" / "__init__.py").read_text(encoding="utf-8"))
    declared = {
        alias.asname or alias.name
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
        for statement in node.body
        if isinstance(statement, ast.ImportFrom)
        for alias in statement.names
    }
    assert declared == set(juliarun_aio._LAZY)


def test_public_names_keep_their_types_for_type_checkers(tmp_path: Path) -> None:
    """mypy --strict sees every public name with its own type, never Any."""
    pytest.importorskip("mypy")
    names = sorted(juliarun_aio.__all__)
    program = tmp_path / "program.py"
    program.write_text(
        "from juliarun_aio import (\n"
        + "".join(f"    {name} as _{name},\n" for name in names)
        + ")\nimport juliarun_aio\n\n"
        + "".join(f"reveal_type(_{name})\nreveal_type(juliarun_aio.{name})\n" for name in names),
        encoding="utf-8",
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-error-summary",
            "--cache-dir",
            str(tmp_path / "cache"),
            str(program),
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
    )
    revealed = re.findall(r'Revealed type is "(.*)"', done.stdout)
    assert len(revealed) == 2 * len(names), done.stdout
    # A name known only to the package's __getattr__ would reveal as plain Any.
    assert [name for name, t in zip(names, revealed[::2], strict=True) if t == "Any"] == []
    assert revealed[::2] == revealed[1::2]
    assert "error:" not in done.stdout


def test_a_first_use_that_failed_half_way_can_be_retried() -> None:
    """An import interrupted on first use leaves no half-made module: the next use works."""
    found = _run(
        """
        import json, sys
        import juliarun_aio

        # The first use of the log types stops half-way: a module it needs is missing.
        models = sys.modules.get("juliarun_aio._models")
        sys.modules["juliarun_aio._models"] = None
        try:
            juliarun_aio.LogLine
        except ImportError:
            first = "failed"
        del sys.modules["juliarun_aio._models"]
        if models is not None:
            sys.modules["juliarun_aio._models"] = models
        print(json.dumps({"first": first, "then": juliarun_aio.LogLine.__name__}))
        """
    )
    assert found == {"first": "failed", "then": "LogLine"}


def test_threads_that_first_use_names_at_once_all_get_them() -> None:
    """Eight threads reading deferred names at the same moment each get the whole module."""
    found = _run(
        """
        import json, threading
        import juliarun_aio
        from juliarun_aio import _lazy

        barrier = threading.Barrier(8)
        got = []

        def use():
            barrier.wait()
            got.append((juliarun_aio.JuliaBatch.kind, _lazy.logs.LogLine.__name__))

        threads = [threading.Thread(target=use) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        print(json.dumps(sorted(set(map(tuple, got))) + [len(got)]))
        """
    )
    assert found == [["JuliaBatch", "LogLine"], 8]


def test_first_use_loads_what_was_deferred() -> None:
    """A Context, the spec classes, the log and wait types and the helpers work on first use."""
    found = _run(
        """
        import json, sys
        import juliarun_aio
        from juliarun_aio import JuliaBatch, LogBatch, PollPolicy, make_spec

        spec = make_spec("JuliaBatch", name="a", run_volume="v", start_script="s.jl")
        ctx = juliarun_aio.Context("http://127.0.0.1:9", "t", "ns")
        print(json.dumps({
            "same": spec == JuliaBatch(name="a", run_volume="v", start_script="s.jl"),
            "batch": LogBatch.__module__,
            "poll": PollPolicy().initial > 0,
            "listed": "Webserver" in dir(juliarun_aio),
            "retry": ctx.retry_policy == juliarun_aio.DEFAULT_RETRY,
            "loaded": ["juliarun_aio._http", "anyio"] == [
                m for m in ("juliarun_aio._http", "anyio") if m in sys.modules
            ],
        }))
        """
    )
    assert found == {
        "same": True,
        "batch": "juliarun_aio._logs",
        "poll": True,
        "listed": True,
        "retry": True,
        "loaded": True,
    }


def test_results_and_errors_unpickle_in_a_fresh_interpreter() -> None:
    """What one process pickles, another that only imported the package unpickles equal."""
    values = [
        JobStatus(succeeded=True, phase="succeeded", extra={"k": 1}),
        JobScale(2, 3),
        Endpoint("10.0.0.1", {"http": 8080}),
        JobRef("JuliaBatch", "a"),
        JuliaBatch(name="a", run_volume="v", start_script="s.jl", envvars={"A": "1"}),
        DEFAULT_RETRY,
        juliarun_aio.JobNotFoundError("gone", verb="getJobStatus", job="a", status_code=404),
    ]
    found = _run(
        f"""
        import json, pickle
        import juliarun_aio
        values = pickle.loads({pickle.dumps(values)!r})
        print(json.dumps([[repr(value), str(value)] for value in values]))
        """
    )
    assert found == [[repr(value), str(value)] for value in values]


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


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_cancelling_the_first_calls_leaves_every_module_whole(backend: str) -> None:
    """First calls cancelled at their first await leave the modules they loaded complete."""
    found = _run(
        f"""
        import json, sys
        import anyio, httpx
        from juliarun_aio import Context, JobRef, make_spec

        async def slow(request):
            await anyio.sleep(3600)

        async def main():
            client = httpx.AsyncClient(transport=httpx.MockTransport(slow))
            ctx = Context("http://127.0.0.1:9", "t", "ns", client=client, retries=1)
            job = JobRef("JuliaBatch", "a")
            spec = make_spec("JuliaBatch", name="a", run_volume="v", start_script="s.jl")
            calls = [
                lambda: ctx.get_job_status(job),
                lambda: ctx.tail_job(job),
                lambda: ctx.submit_job(spec),
                lambda: ctx.wait_for_job(job, timeout=3600),
                lambda: anext(ctx.tail_logs(job, mode="poll")),
            ]
            for call in calls:
                with anyio.move_on_after(0.05) as scope:
                    await call()
                assert scope.cancelled_caught
            incomplete = [
                name
                for name, module in list(sys.modules.items())
                if name.startswith("juliarun_aio") and module is not None
                and not all(hasattr(module, attr) for attr in getattr(module, "__all__", ()))
            ]
            await ctx.aclose()
            return incomplete

        print(json.dumps({{"incomplete": anyio.run(main, backend={backend!r})}}))
        """
    )
    assert found == {"incomplete": []}


async def _typed_use(ctx: Context, job: Job, spec: JobSpec, line: LogLine) -> None:
    """Not run: mypy checks that the names keep their precise types."""
    assert_type(await ctx.get_job_status(job), JobStatus)
    assert_type(await ctx.get_job_scale(job), JobScale)
    assert_type(await ctx.get_job_endpoint(job), Endpoint)
    assert_type(await ctx.get_all_job_info(), JobTable)
    assert_type(ctx.retry_policy, RetryPolicy)
    assert_type(DEFAULT_RETRY, RetryPolicy)
    assert_type(make_spec("JuliaBatch"), JobSpec)
    assert_type(JuliaBatch(name="a", run_volume="v", start_script="s.jl").ref, JobRef)
    assert_type(self_job(), JobRef)
    assert_type(line.text, str)
    async for batch in ctx.tail_log_batches(spec):
        assert_type(batch, LogBatch)
    poll: PollPolicy | None = None
    async for status in ctx.watch_job(job, poll=poll):
        assert_type(status, JobStatus)


def test_a_context_still_takes_a_retry_policy_or_a_number_of_attempts() -> None:
    """``retries=`` takes a policy or an int; the default is DEFAULT_RETRY."""
    url = "http://127.0.0.1:9"
    assert Context(url, "t", "ns", env={}).retry_policy == DEFAULT_RETRY
    assert Context(url, "t", "ns", env={}, retries=2).retry_policy == RetryPolicy(attempts=2)
    policy = RetryPolicy(initial=0)
    assert Context(url, "t", "ns", env={}, retries=policy).retry_policy is policy


def test_context_annotations_resolve_with_the_package_names() -> None:
    """get_type_hints on every Context method works given the package's names (as documented)."""
    names = {name: getattr(juliarun_aio, name) for name in juliarun_aio.__all__}
    methods = [m for m in vars(Context).values() if callable(m) and not isinstance(m, type)]
    assert len(methods) > 20
    for method in methods:
        hints = typing.get_type_hints(method, localns=names)
        assert "return" in hints, method
    assert typing.get_type_hints(Context.get_job_status, localns=names)["return"] is JobStatus
