"""In-job helpers: self_job from the environment, and scaling the current job."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator

import httpx
import pytest
import respx

from juliarun_aio import (
    ApiError,
    ConfigurationError,
    Context,
    JobRef,
    JobScale,
    RetryPolicy,
    SpecError,
    WaitTimeoutError,
    initialize_cluster,
    release_cluster,
    self_job,
)
from juliarun_aio._watch import PollPolicy

URL = "https://jrun.test"
NS = "research"
NO_WAIT = PollPolicy(0, 0)
RUNNING = {"succeeded": False, "phase": "running", "failed": False}


def ok(data: object = None) -> httpx.Response:
    """Return a successful envelope answer."""
    return httpx.Response(200, json={"code": 0, "data": data})


def params(request: httpx.Request) -> dict[str, str]:
    """Decode a request's query parameters, credential and namespace left out."""
    pairs = urllib.parse.parse_qsl(request.url.query.decode("ascii"), strict_parsing=True)
    return {k: v for k, v in pairs if k not in ("jruntok", "jrunns")}


@pytest.fixture
def in_job(monkeypatch: pytest.MonkeyPatch) -> JobRef:
    """Pretend to run inside the parallel job ``par-1``."""
    monkeypatch.setenv("JRUN_TYPE", "JuliaParBatch")
    monkeypatch.setenv("JRUN_NAME", "par-1")
    return JobRef("JuliaParBatch", "par-1")


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    """Mock the JuliaRun server; any request not routed fails the test."""
    with respx.mock(base_url=URL, assert_all_called=False) as mock:
        yield mock


def make_ctx() -> Context:
    """Return a Context on the mocked server with zero backoff."""
    return Context(URL, "tok", NS, retries=RetryPolicy(initial=0, maximum=0), env={})


def test_self_job_from_env_mapping() -> None:
    """self_job builds the JobRef from JRUN_TYPE and JRUN_NAME."""
    ref = self_job({"JRUN_TYPE": "Notebook", "JRUN_NAME": "nb-7", "JRUN_DIR": "/x"})
    assert ref == JobRef("Notebook", "nb-7")


def test_self_job_reads_the_process_environment(in_job: JobRef) -> None:
    """Without a mapping self_job reads os.environ."""
    assert self_job() == in_job


@pytest.mark.parametrize(
    "env",
    [{}, {"JRUN_TYPE": "JuliaBatch"}, {"JRUN_NAME": "x"}, {"JRUN_TYPE": "", "JRUN_NAME": "x"}],
)
def test_self_job_outside_a_job(env: dict[str, str]) -> None:
    """Outside a job self_job raises ConfigurationError naming both variables."""
    with pytest.raises(ConfigurationError, match="JRUN_TYPE and JRUN_NAME"):
        self_job(env)


def test_self_job_with_a_bad_type() -> None:
    """An unknown JRUN_TYPE is a SpecError naming the kind."""
    with pytest.raises(SpecError) as info:
        self_job({"JRUN_TYPE": "Spark", "JRUN_NAME": "x"})
    assert info.value.field == "kind"


@pytest.mark.anyio
async def test_release_cluster_scales_to_zero(router: respx.MockRouter, in_job: JobRef) -> None:
    """release_cluster sends one setJobScale(parallelism=0) for the current job."""
    route = router.get(path="/setJobScale/JuliaParBatch/").mock(return_value=ok(True))
    async with make_ctx() as ctx:
        assert await release_cluster(ctx) is True
    assert route.call_count == 1
    assert params(route.calls.last.request) == {"name": "par-1", "parallelism": "0"}
    assert len(router.calls) == 1


@pytest.mark.anyio
async def test_release_cluster_returns_the_answer(router: respx.MockRouter, in_job: JobRef) -> None:
    """release_cluster reports the server's false answer instead of hiding it."""
    router.get(path="/setJobScale/JuliaParBatch/").mock(return_value=ok(False))
    async with make_ctx() as ctx:
        assert await release_cluster(ctx) is False


@pytest.mark.anyio
async def test_release_cluster_outside_a_job(
    router: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """release_cluster outside a job fails before any request."""
    monkeypatch.delenv("JRUN_TYPE", raising=False)
    monkeypatch.delenv("JRUN_NAME", raising=False)
    async with make_ctx() as ctx:
        with pytest.raises(ConfigurationError):
            await release_cluster(ctx)
    assert not router.calls


@pytest.mark.anyio
async def test_initialize_cluster_scales_then_waits(
    router: respx.MockRouter, in_job: JobRef
) -> None:
    """initialize_cluster sends setJobScale(n), then polls the scale (and status) until n run."""
    scale = router.get(path="/setJobScale/JuliaParBatch/").mock(return_value=ok(True))
    polls = router.get(path="/getJobScale/JuliaParBatch/")
    polls.side_effect = [ok([0, 3]), ok([1, 3]), ok([1, 3]), ok([3, 3])]
    router.get(path="/getJobStatus/JuliaParBatch/").mock(return_value=ok(RUNNING))
    async with make_ctx() as ctx:
        assert await initialize_cluster(ctx, 3, poll=NO_WAIT) == JobScale(3, 3)
    sequence = [(call.request.url.path, params(call.request)) for call in router.calls]
    poll = [
        ("/getJobScale/JuliaParBatch/", {"name": "par-1"}),
        ("/getJobStatus/JuliaParBatch/", {"name": "par-1"}),
    ]
    assert sequence == [
        ("/setJobScale/JuliaParBatch/", {"name": "par-1", "parallelism": "3"}),
        *poll * 4,
    ]
    assert scale.call_count == 1


@pytest.mark.anyio
async def test_initialize_cluster_already_running(router: respx.MockRouter, in_job: JobRef) -> None:
    """When n workers already run, one scale read ends the wait."""
    router.get(path="/setJobScale/JuliaParBatch/").mock(return_value=ok(True))
    polls = router.get(path="/getJobScale/JuliaParBatch/").mock(return_value=ok([2, 2]))
    router.get(path="/getJobStatus/JuliaParBatch/").mock(return_value=ok(RUNNING))
    async with make_ctx() as ctx:
        assert await initialize_cluster(ctx, 2) == JobScale(2, 2)
    assert polls.call_count == 1


@pytest.mark.anyio
async def test_initialize_cluster_refused(router: respx.MockRouter, in_job: JobRef) -> None:
    """A false answer to setJobScale raises at once instead of waiting for nothing."""
    router.get(path="/setJobScale/JuliaParBatch/").mock(return_value=ok(False))
    polls = router.get(path="/getJobScale/JuliaParBatch/").mock(return_value=ok([0, 0]))
    async with make_ctx() as ctx:
        with pytest.raises(ApiError, match="refused") as info:
            await initialize_cluster(ctx, 4, poll=NO_WAIT)
    assert (info.value.verb, info.value.job) == ("setJobScale", "par-1")
    assert polls.call_count == 0


@pytest.mark.anyio
async def test_initialize_cluster_times_out(router: respx.MockRouter, in_job: JobRef) -> None:
    """Workers that do not come in time raise WaitTimeoutError naming the job and n."""
    router.get(path="/setJobScale/JuliaParBatch/").mock(return_value=ok(True))
    router.get(path="/getJobScale/JuliaParBatch/").mock(return_value=ok([1, 4]))
    router.get(path="/getJobStatus/JuliaParBatch/").mock(return_value=ok(RUNNING))
    async with make_ctx() as ctx:
        with pytest.raises(WaitTimeoutError, match="did not reach 4 running worker") as info:
            await initialize_cluster(ctx, 4, timeout=0, poll=NO_WAIT)
    assert info.value.job == "par-1"
