"""Context: the exact request of every verb, response parsing, errors, retries, lifecycle."""

from __future__ import annotations

import base64
import builtins
import json
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
import respx
from support import http_layer

from juliarun_aio import (
    JOB_KINDS,
    NO_RETRIES,
    ApiError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    ConfigurationError,
    ConflictError,
    Context,
    Endpoint,
    JobInfo,
    JobNotFoundError,
    JobRef,
    JobScale,
    JobStatus,
    JobTable,
    JuliaBatch,
    JuliaParBatch,
    PermissionDeniedError,
    RateLimitError,
    RequestTimeoutError,
    ResponseError,
    RetryPolicy,
    ServerError,
    TransportError,
)
from juliarun_aio._http import MAX_URL_LENGTH
from juliarun_aio._wire import encode_spec

URL = "https://jrun.test"
TOKEN = "tok>>>>>?>"  # chosen so that its base64 holds '+', '/' and '='
B64 = "dG9rPj4+Pj4/Pg=="
B64_PCT = "dG9rPj4%2BPj4%2FPg%3D%3D"
NS = "research"
JOB = JobRef("JuliaParBatch", "sim-1")
ZERO = RetryPolicy(attempts=3, initial=0, maximum=0)

OBSERVED_STATUS = {
    "succeeded": False,
    "created": True,
    "parallelism": 0,
    "nworkers_succeeded": 0,
    "npending": 0,
    "nuptodate": 0,
}


def make_ctx(**kwargs: Any) -> Context:
    """Return a Context on the mocked server with zero backoff and a clean environment."""
    kwargs.setdefault("retries", ZERO)
    kwargs.setdefault("env", {})
    return Context(URL, TOKEN, kwargs.pop("namespace", NS), **kwargs)


def ok(data: object = None) -> httpx.Response:
    """Return a successful envelope answer."""
    return httpx.Response(200, json={"code": 0, "data": data})


def fail(status: int, message: str = "no", code: int | None = None) -> httpx.Response:
    """Return an error answer with the envelope (code defaults to the status)."""
    return httpx.Response(status, json={"code": status if code is None else code, "data": message})


def query(request: httpx.Request) -> dict[str, str]:
    """Decode a request's query exactly: ``%XX`` only, a literal '+' stays '+'."""
    pairs = [item.split("=", 1) for item in request.url.query.decode("ascii").split("&")]
    decoded = [(urllib.parse.unquote(k), urllib.parse.unquote(v)) for k, v in pairs]
    keys = [k for k, _ in decoded]
    assert len(keys) == len(set(keys)), f"repeated parameter in {keys}"
    return dict(decoded)


def raw_query(request: httpx.Request) -> dict[str, str]:
    """Return the query's values still percent-encoded, as sent on the wire."""
    return dict(item.split("=", 1) for item in request.url.query.decode("ascii").split("&"))


def signed(**params: str) -> dict[str, str]:
    """Return the full expected query: credential, namespace and the verb's own params."""
    return {"jruntok": B64, "jrunns": NS, **params}


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    """Mock the JuliaRun server; any request not routed fails the test."""
    with respx.mock(base_url=URL, assert_all_called=False) as mock:
        yield mock


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the delays the retry loops ask for, without sleeping."""
    delays: list[float] = []

    async def fake_sleep(delay: float) -> None:
        delays.append(delay)
        await anyio.lowlevel.checkpoint()

    monkeypatch.setattr(anyio, "sleep", fake_sleep)
    return delays


# -- requests: method, path and every query parameter -------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "verb"),
    [
        ("get_system_status", "getSystemStatus"),
        ("list_jobs", "listJobs"),
        ("get_all_job_info", "getAllJobInfo"),
    ],
)
async def test_system_verb_request(router: respx.MockRouter, method: str, verb: str) -> None:
    """System verbs GET ROOT/<verb>/ with exactly jruntok (base64) and jrunns."""
    route = router.get(path=f"/{verb}/").mock(
        return_value=ok({} if verb != "getSystemStatus" else True)
    )
    async with make_ctx() as ctx:
        await getattr(ctx, method)()
    request = route.calls.last.request
    assert request.method == "GET"
    assert request.url.path == f"/{verb}/"
    assert query(request) == signed()
    assert raw_query(request)["jruntok"] == B64_PCT
    assert request.content == b""


@pytest.mark.anyio
@pytest.mark.parametrize("kind", JOB_KINDS)
async def test_job_type_segment(router: respx.MockRouter, kind: str) -> None:
    """Job verbs GET ROOT/<verb>/<JobType>/ for each of the eight job types, with name."""
    route = router.get(path=f"/getJobStatus/{kind}/").mock(return_value=ok(OBSERVED_STATUS))
    async with make_ctx() as ctx:
        await ctx.get_job_status(JobRef(kind, "job-1"))
    request = route.calls.last.request
    assert request.url.path == f"/getJobStatus/{kind}/"
    assert query(request) == signed(name="job-1")


JobCall = Callable[[Context], Any]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("call", "verb", "params", "data"),
    [
        (lambda c: c.get_job_status(JOB), "getJobStatus", {}, OBSERVED_STATUS),
        (lambda c: c.get_job_scale(JOB), "getJobScale", {}, [0, 0]),
        (lambda c: c.get_job_endpoint(JOB), "getJobEndpoint", {}, ["10.0.0.1", {}]),
        (lambda c: c.get_encoded_url(JOB, 8000), "getEncodedURL", {"port": "8000"}, "u"),
        (lambda c: c.get_encoded_url(JOB, "http"), "getEncodedURL", {"port": "http"}, "u"),
        (lambda c: c.set_job_scale(JOB, 4), "setJobScale", {"parallelism": "4"}, True),
        (lambda c: c.set_job_scale(JOB, 0), "setJobScale", {"parallelism": "0"}, True),
        (lambda c: c.delete_job(JOB), "deleteJob", {"force": "false"}, True),
        (lambda c: c.delete_job(JOB, force=True), "deleteJob", {"force": "true"}, True),
        (lambda c: c.tail_job(JOB), "tailJob", {"count": "50"}, ""),
        (lambda c: c.tail_job(JOB, count=7), "tailJob", {"count": "7"}, ""),
        (
            lambda c: c.tail_job(JOB, "stderr", 10),
            "tailJob",
            {"count": "10", "stream": "stderr"},
            "",
        ),
        (
            lambda c: c.tail_job(JOB, stream="stdout"),
            "tailJob",
            {"count": "50", "stream": "stdout"},
            "",
        ),
    ],
)
async def test_job_verb_request(
    router: respx.MockRouter, call: JobCall, verb: str, params: dict[str, str], data: object
) -> None:
    """Each job verb sends its own parameters and nothing else (force/count always)."""
    route = router.get(path=f"/{verb}/JuliaParBatch/").mock(return_value=ok(data))
    async with make_ctx() as ctx:
        await call(ctx)
    assert route.call_count == 1
    request = route.calls.last.request
    assert request.method == "GET"
    assert query(request) == signed(name="sim-1", **params)


@pytest.mark.anyio
async def test_get_all_job_info_returns_a_job_table(router: respx.MockRouter) -> None:
    """get_all_job_info returns a JobTable, which notebooks display as a table."""
    router.get(path="/getAllJobInfo/").mock(
        return_value=ok({"a": {"type": "JuliaBatch", "status": OBSERVED_STATUS}})
    )
    async with make_ctx() as ctx:
        jobs = await ctx.get_all_job_info()
    assert type(jobs) is JobTable
    assert jobs == {"a": JobInfo("a", "JuliaBatch", JobStatus(created=True))}
    assert "<table" in jobs._repr_html_()


@pytest.mark.anyio
async def test_spec_is_accepted_where_a_job_is(router: respx.MockRouter) -> None:
    """A spec instance works as a job argument through its ref."""
    spec = JuliaBatch(name="batch-7", start_script="main.jl", run_volume="vol")
    route = router.get(path="/getJobScale/JuliaBatch/").mock(return_value=ok([1, 1]))
    async with make_ctx() as ctx:
        assert await ctx.get_job_scale(spec) == JobScale(1, 1)
    assert query(route.calls.last.request) == signed(name="batch-7")


SPEC = JuliaParBatch(
    name="sim-1",
    start_script="run sim.jl",
    run_volume="vol",
    additional_volumes=["data", "refs"],
    ports={"http": (8000, 80)},
    external=True,
    gpu=1,
    cpu="500m",
    envvars={"GREETING": "hello world"},
    nworkers=3,
    restart="Never",
)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "verb"), [("submit_job", "submitJob"), ("update_job", "updateJob")]
)
async def test_submit_and_update_send_one_parameter_per_set_field(
    router: respx.MockRouter, method: str, verb: str
) -> None:
    """submitJob/updateJob carry exactly the fields the caller set, stringified."""
    route = router.get(path=f"/{verb}/JuliaParBatch/").mock(return_value=ok(None))
    async with make_ctx() as ctx:
        assert await getattr(ctx, method)(SPEC) is None
    request = route.calls.last.request
    sent = query(request)
    assert sent == signed(**encode_spec(SPEC))
    assert set(sent) == {"jruntok", "jrunns", *SPEC.params()}
    # Plain values as the Julia client prints them.
    assert sent["name"] == "sim-1"
    assert sent["start_script"] == "run sim.jl"
    assert sent["external"] == "true"
    assert sent["gpu"] == "1"
    assert sent["nworkers"] == "3"
    assert sent["cpu"] == "500m"
    assert sent["restart"] == "Never"
    assert sent["ports"] == "http:8000:80"
    assert json.loads(sent["additional_volumes"]) == ["data", "refs"]
    assert json.loads(sent["envvars"]) == {"GREETING": "hello world"}
    # RFC 3986: a space is %20, never '+'.
    raw = raw_query(request)
    assert raw["start_script"] == "run%20sim.jl"
    assert "+" not in request.url.query.decode("ascii")


@pytest.mark.anyio
async def test_unset_fields_are_not_sent(router: respx.MockRouter) -> None:
    """A minimal spec sends only its required fields."""
    route = router.get(path="/submitJob/JuliaBatch/").mock(return_value=ok(None))
    async with make_ctx() as ctx:
        await ctx.submit_job(JuliaBatch(name="b", start_script="m.jl", run_volume="v"))
    assert query(route.calls.last.request) == signed(name="b", start_script="m.jl", run_volume="v")


@pytest.mark.anyio
async def test_query_is_rfc3986_encoded(router: respx.MockRouter) -> None:
    """Reserved characters are %-encoded, unreserved ones kept, space as %20."""
    route = router.get(path="/listJobs/").mock(return_value=ok({}))
    async with make_ctx(namespace="team a/b~c.d_e-f&g=h+é") as ctx:
        await ctx.list_jobs()
    raw = raw_query(route.calls.last.request)
    assert raw["jrunns"] == "team%20a%2Fb~c.d_e-f%26g%3Dh%2B%C3%A9"
    assert query(route.calls.last.request)["jrunns"] == "team a/b~c.d_e-f&g=h+é"


@pytest.mark.anyio
async def test_root_path_and_user_agent(router: respx.MockRouter) -> None:
    """A URL with a path prefix keeps it; requests identify the SDK."""
    route = router.get(path="/jr/listJobs/").mock(return_value=ok({}))
    async with Context(f"{URL}/jr/", TOKEN, NS, env={}) as ctx:
        assert ctx.url == f"{URL}/jr"
        await ctx.list_jobs()
    assert route.calls.last.request.headers["User-Agent"].startswith("juliarun_aio/")


# -- settings too long for a URL -------------------------------------------------------

LONGEST_JOB = JobRef(max(JOB_KINDS, key=len), "x" * 63)


def test_a_token_too_long_for_any_request_is_refused_when_the_context_is_built() -> None:
    """A 60,000-character token is a ConfigurationError naming the token, never showing it."""
    token = "t" * 60_000
    with pytest.raises(ConfigurationError, match="the token is too long") as caught:
        Context(URL, token, NS, env={})
    message = str(caught.value)
    assert "JRUN_TOKEN" in message
    assert "tttt" not in message
    assert base64.b64encode(b"tttt").decode() not in message


@pytest.mark.anyio
async def test_the_longest_token_accepted_leaves_room_for_every_plain_call(
    router: respx.MockRouter,
) -> None:
    """The bound is the real one: the longest token accepted still sends each call."""

    client = httpx.AsyncClient()  # one for the search: a client per Context is slow

    def accepted(length: int) -> bool:
        try:
            Context(URL, "t" * length, NS, env={}, client=client)
        except ConfigurationError:
            return False
        return True

    low, high = 1, 60_000
    async with client:
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if accepted(middle) else (low, middle)
    assert 45_000 < low < 49_152  # about 3/4 of the URL limit, less the call itself
    router.get(path=f"/getJobStatus/{LONGEST_JOB.kind}/").mock(return_value=ok(OBSERVED_STATUS))
    router.get(path=f"/tailJob/{LONGEST_JOB.kind}/").mock(return_value=ok("a"))
    async with Context(URL, "t" * low, NS, env={}, retries=ZERO) as ctx:
        await ctx.get_job_status(LONGEST_JOB)
        await ctx.tail_job(LONGEST_JOB, "stdout", 250_000)
        url = http_layer(ctx).build_url(
            "streamLogs",
            LONGEST_JOB,
            {"cursor": str(2**63 - 1), "follow": "false", "heartbeat": "3600", "stream": "stdout"},
        )
        assert len(str(url)) <= MAX_URL_LENGTH


@pytest.mark.anyio
async def test_a_token_file_rewritten_too_long_is_refused_before_sending(
    router: respx.MockRouter, tmp_path: Path
) -> None:
    """A rotated token too long for any URL is a ConfigurationError, not a SpecError on name."""
    path = tmp_path / "token"
    path.write_text("short\n")
    route = router.get(path="/listJobs/").mock(return_value=ok({}))
    async with Context(URL, namespace=NS, token_file=path, env={}, retries=ZERO) as ctx:
        await ctx.list_jobs()
        path.write_text("t" * 60_000 + "\n")
        with pytest.raises(ConfigurationError, match="the token is too long"):
            await ctx.list_jobs()
    assert route.call_count == 1


def test_a_namespace_too_long_for_any_request_is_refused() -> None:
    """The namespace is named when it is what leaves no room in the URL."""
    with pytest.raises(ConfigurationError, match="the namespace is too long"):
        Context(URL, TOKEN, "n" * 70_000, env={})


@pytest.mark.anyio
async def test_wrong_path_prefix_says_the_server_was_not_found(router: respx.MockRouter) -> None:
    """A system verb answered 404 (a wrong path prefix) names the URL, not a job name."""
    router.get(path="/api/getSystemStatus/").mock(
        return_value=httpx.Response(404, text="Not Found")
    )
    router.get(path="/api/getJobStatus/JuliaParBatch/").mock(return_value=fail(404))
    async with Context(f"{URL}/api", TOKEN, NS, retries=ZERO, env={}) as ctx:
        with pytest.raises(JobNotFoundError) as info:
            await ctx.get_system_status()
        assert f"no JuliaRun server was found at {URL}/api" in str(info.value)
        assert "job name" not in str(info.value)
        with pytest.raises(JobNotFoundError, match="check the job name"):
            await ctx.get_job_status(JOB)


# -- responses: every result shape ---------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("call", "verb", "data", "expected"),
    [
        (lambda c: c.get_system_status(), "getSystemStatus/", True, True),
        (lambda c: c.get_system_status(), "getSystemStatus/", False, False),
        (
            lambda c: c.list_jobs(),
            "listJobs/",
            {"a": {"type": "JuliaBatch"}, "b": {"type": "Notebook"}},
            {"a": JobInfo("a", "JuliaBatch"), "b": JobInfo("b", "Notebook")},
        ),
        (lambda c: c.list_jobs(), "listJobs/", {}, {}),
        (
            lambda c: c.get_all_job_info(),
            "getAllJobInfo/",
            {
                "sim-1": {
                    "type": "JuliaParBatch",
                    "status": OBSERVED_STATUS,
                    "scale": [0, 0],
                    "endpoint": ["10.0.180.127", {"port8000": 8000}],
                }
            },
            {
                "sim-1": JobInfo(
                    "sim-1",
                    "JuliaParBatch",
                    JobStatus(created=True),
                    JobScale(0, 0),
                    Endpoint("10.0.180.127", {"port8000": 8000}),
                )
            },
        ),
        (
            lambda c: c.get_job_status(JOB),
            "getJobStatus/JuliaParBatch/",
            OBSERVED_STATUS,
            JobStatus(created=True),
        ),
        (
            lambda c: c.get_job_status(JOB),
            "getJobStatus/JuliaParBatch/",
            [True, 3, 3, True, False],
            JobStatus(
                succeeded=True,
                nworkers_succeeded=3,
                nworkers_started=3,
                created=True,
                is_notebook=False,
            ),
        ),
        (lambda c: c.get_job_scale(JOB), "getJobScale/JuliaParBatch/", [0, 0], JobScale(0, 0)),
        (lambda c: c.get_job_scale(JOB), "getJobScale/JuliaParBatch/", [2, 3], JobScale(2, 3)),
        (
            lambda c: c.get_job_endpoint(JOB),
            "getJobEndpoint/JuliaParBatch/",
            ["10.0.180.127", {"port8000": 8000}],
            Endpoint("10.0.180.127", {"port8000": 8000}),
        ),
        (
            lambda c: c.get_job_endpoint(JOB),
            "getJobEndpoint/JuliaParBatch/",
            None,
            Endpoint(None, {}),
        ),
        (
            lambda c: c.get_encoded_url(JOB, 8000),
            "getEncodedURL/JuliaParBatch/",
            "https://jrun.test/p/abc",
            "https://jrun.test/p/abc",
        ),
        (
            lambda c: c.tail_job(JOB),
            "tailJob/JuliaParBatch/",
            "line 1\nline 2",
            "line 1\nline 2",
        ),
        (lambda c: c.tail_job(JOB), "tailJob/JuliaParBatch/", None, ""),
        (lambda c: c.delete_job(JOB), "deleteJob/JuliaParBatch/", True, True),
        (lambda c: c.delete_job(JOB), "deleteJob/JuliaParBatch/", False, False),
        (lambda c: c.set_job_scale(JOB, 2), "setJobScale/JuliaParBatch/", True, True),
        (lambda c: c.set_job_scale(JOB, 2), "setJobScale/JuliaParBatch/", False, False),
        (lambda c: c.set_job_scale(JOB, 2), "setJobScale/JuliaParBatch/", "true", True),
        (lambda c: c.submit_job(SPEC), "submitJob/JuliaParBatch/", None, None),
        (lambda c: c.update_job(SPEC), "updateJob/JuliaParBatch/", None, None),
    ],
)
async def test_result_parsing(
    router: respx.MockRouter, call: JobCall, verb: str, data: object, expected: object
) -> None:
    """Each verb's ``data`` becomes its typed result (incl. the legacy 5-array status)."""
    router.get(path=f"/{verb}").mock(return_value=ok(data))
    async with make_ctx() as ctx:
        assert await call(ctx) == expected


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("call", "verb", "data", "quoted"),
    [
        (lambda c: c.get_system_status(), "getSystemStatus/", "yes", "'yes'"),
        (lambda c: c.list_jobs(), "listJobs/", ["a"], "['a']"),
        (lambda c: c.get_job_status(JOB), "getJobStatus/JuliaParBatch/", "running", "'running'"),
        (lambda c: c.get_job_scale(JOB), "getJobScale/JuliaParBatch/", [1], "[1]"),
        (lambda c: c.get_job_endpoint(JOB), "getJobEndpoint/JuliaParBatch/", 5, "5"),
        (lambda c: c.get_encoded_url(JOB, 1), "getEncodedURL/JuliaParBatch/", ["u"], "['u']"),
        (lambda c: c.tail_job(JOB), "tailJob/JuliaParBatch/", {"lines": []}, "{'lines': []}"),
    ],
)
async def test_malformed_data_is_a_response_error(
    router: respx.MockRouter, call: JobCall, verb: str, data: object, quoted: str
) -> None:
    """A well-formed envelope with malformed data raises ResponseError quoting it."""
    route = router.get(path=f"/{verb}").mock(return_value=ok(data))
    async with make_ctx() as ctx:
        with pytest.raises(ResponseError) as info:
            await call(ctx)
    assert quoted in str(info.value)
    assert info.value.verb == verb.split("/", maxsplit=1)[0]
    assert route.call_count == 1


# -- errors: both paths, same classes --------------------------------------------------


STATUS_CLASSES = [
    (400, BadRequestError),
    (401, AuthenticationError),
    (403, PermissionDeniedError),
    (404, JobNotFoundError),
    (409, ConflictError),
    (429, RateLimitError),
    (500, ServerError),
    (502, ServerError),
    (503, ServerError),
    (418, ApiError),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("status", "cls"), STATUS_CLASSES)
@pytest.mark.parametrize("form", ["envelope", "plain"])
async def test_http_status_errors(
    router: respx.MockRouter, status: int, cls: type[ApiError], form: str
) -> None:
    """An error status maps to one class whether the body is an envelope or plain text."""
    if form == "envelope":
        response = httpx.Response(status, json={"code": 7, "data": "job said no"})
    else:
        response = httpx.Response(status, text="job said no\n")
    route = router.get(path="/getJobStatus/JuliaParBatch/").mock(return_value=response)
    async with make_ctx(retries=NO_RETRIES) as ctx:
        with pytest.raises(ApiError) as info:
            await ctx.get_job_status(JOB)
    error = info.value
    assert type(error) is cls
    assert (error.verb, error.job, error.status_code) == ("getJobStatus", "sim-1", status)
    assert error.code == (7 if form == "envelope" else None)
    assert error.server_message == "job said no"
    assert "getJobStatus" in str(error)
    assert "sim-1" in str(error)
    assert "job said no" in str(error)
    assert route.call_count == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("message", "cls"),
    [
        ("job sim-1 not found", JobNotFoundError),
        ("job sim-1 already exists", ConflictError),
        ("invalid token", AuthenticationError),
        ("namespace forbidden", PermissionDeniedError),
        ("kaboom", ApiError),
    ],
)
async def test_nonzero_code_with_200(
    router: respx.MockRouter, message: str, cls: type[ApiError]
) -> None:
    """A 200 answer with a nonzero code is an ApiError of the class its message implies."""
    router.get(path="/getJobStatus/JuliaParBatch/").mock(return_value=fail(200, message, code=-1))
    async with make_ctx() as ctx:
        with pytest.raises(ApiError) as info:
            await ctx.get_job_status(JOB)
    error = info.value
    assert type(error) is cls
    assert (error.status_code, error.code, error.server_message) == (200, -1, message)
    assert (error.verb, error.job) == ("getJobStatus", "sim-1")


@pytest.mark.anyio
async def test_status_and_code_paths_agree(router: respx.MockRouter) -> None:
    """A 404 status and a 200 with a nonzero code saying "not found" raise the same class."""
    route = router.get(path="/getJobScale/JuliaParBatch/")
    route.side_effect = [fail(404, "job not found"), fail(200, "job not found", code=1)]
    async with make_ctx() as ctx:
        for _ in range(2):
            with pytest.raises(JobNotFoundError):
                await ctx.get_job_scale(JOB)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("response", "shown"),
    [
        (httpx.Response(200, text="<html>hello</html>"), "<html>hello</html>"),
        (httpx.Response(200, text=""), "''"),
        (httpx.Response(200, json=[1, 2]), "[1, 2]"),
        (httpx.Response(200, json={"data": True}), "{'data': True}"),
        (httpx.Response(200, json="ok"), "'ok'"),
        (httpx.Response(204), "''"),
    ],
)
async def test_unreadable_2xx_is_a_response_error(
    router: respx.MockRouter, response: httpx.Response, shown: str
) -> None:
    """Invalid JSON or JSON without the envelope raises ResponseError once (not retried)."""
    route = router.get(path="/getSystemStatus/").mock(return_value=response)
    async with make_ctx() as ctx:
        with pytest.raises(ResponseError) as info:
            await ctx.get_system_status()
    error = info.value
    assert shown in str(error)
    assert (error.verb, error.status_code) == ("getSystemStatus", response.status_code)
    assert route.call_count == 1


@pytest.mark.anyio
async def test_non_envelope_json_error_body(router: respx.MockRouter) -> None:
    """An error status with a JSON body that is not an envelope keeps that body as message."""
    router.get(path="/getJobStatus/JuliaParBatch/").mock(
        return_value=httpx.Response(404, json={"detail": "Not Found"})
    )
    async with make_ctx() as ctx:
        with pytest.raises(JobNotFoundError) as info:
            await ctx.get_job_status(JOB)
    assert info.value.code is None
    assert info.value.server_message == "{'detail': 'Not Found'}"


@pytest.mark.anyio
async def test_empty_and_huge_error_bodies(router: respx.MockRouter) -> None:
    """An empty body says "(no message)"; a huge page is cut to a short excerpt."""
    route = router.get(path="/listJobs/")
    route.side_effect = [httpx.Response(400), httpx.Response(400, text="x" * 100_000)]
    async with make_ctx() as ctx:
        with pytest.raises(BadRequestError) as empty:
            await ctx.list_jobs()
        with pytest.raises(BadRequestError) as huge:
            await ctx.list_jobs()
    assert "(no message)" in str(empty.value)
    assert len(huge.value.server_message) == 500
    assert len(str(huge.value)) < 1000


@pytest.mark.anyio
async def test_string_zero_code_is_success(router: respx.MockRouter) -> None:
    """An envelope whose code is the string "0" is a success."""
    router.get(path="/getSystemStatus/").mock(
        return_value=httpx.Response(200, json={"code": "0", "data": True})
    )
    async with make_ctx() as ctx:
        assert await ctx.get_system_status() is True


# -- retries of reads ------------------------------------------------------------------


def connect_error(request: httpx.Request) -> httpx.Response:
    """Fail like a refused connection."""
    raise httpx.ConnectError("connection refused", request=request)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "first",
    [
        httpx.ConnectError("refused"),
        httpx.ConnectTimeout("slow connect"),
        httpx.ReadTimeout("slow answer"),
        httpx.ReadError("reset by peer"),
        httpx.RemoteProtocolError("server hung up"),
        httpx.PoolTimeout("pool"),
        httpx.Response(408, text="request timeout"),
        httpx.Response(429, json={"code": 429, "data": "slow down"}),
        httpx.Response(500, text="Internal Server Error"),
        httpx.Response(502, text="Bad Gateway"),
        httpx.Response(503, json={"code": 503, "data": "busy"}),
        httpx.Response(504, text="Gateway Timeout"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v.status_code),
)
async def test_reads_retry_transient_failures(
    router: respx.MockRouter, sleeps: list[float], first: httpx.Response | Exception
) -> None:
    """A read retries transport errors, timeouts, 408, 429 and 5xx, then succeeds."""
    route = router.get(path="/getJobScale/JuliaParBatch/")
    route.side_effect = [first, first, ok([1, 2])]
    async with make_ctx() as ctx:
        assert await ctx.get_job_scale(JOB) == JobScale(1, 2)
    assert route.call_count == 3
    assert sleeps == [0.0, 0.0]


@pytest.mark.anyio
@pytest.mark.parametrize("status", [400, 403, 404, 409, 501])
async def test_reads_do_not_retry_definite_answers(router: respx.MockRouter, status: int) -> None:
    """A read is not retried after an answer that will not change."""
    route = router.get(path="/getJobScale/JuliaParBatch/").mock(return_value=fail(status))
    async with make_ctx() as ctx:
        with pytest.raises(ApiError):
            await ctx.get_job_scale(JOB)
    assert route.call_count == 1


@pytest.mark.anyio
async def test_read_attempts_are_bounded_for_statuses(router: respx.MockRouter) -> None:
    """A read that keeps failing with 503 gives up after the policy's attempts."""
    route = router.get(path="/listJobs/").mock(return_value=fail(503, "busy"))
    async with make_ctx(retries=RetryPolicy(attempts=4, initial=0, maximum=0)) as ctx:
        with pytest.raises(ServerError) as info:
            await ctx.list_jobs()
    assert route.call_count == 4
    assert info.value.status_code == 503


@pytest.mark.anyio
async def test_read_attempts_are_bounded_for_transport_errors(router: respx.MockRouter) -> None:
    """A read that cannot connect raises TransportError naming the number of attempts."""
    route = router.get(path="/listJobs/").mock(side_effect=connect_error)
    async with make_ctx() as ctx:
        with pytest.raises(TransportError) as info:
            await ctx.list_jobs()
    error = info.value
    assert route.call_count == 3
    assert error.attempts == 3
    assert not isinstance(error, RequestTimeoutError)
    assert "after 3 attempt(s)" in str(error)
    assert "ConnectError" in str(error)
    assert (error.verb, error.job) == ("listJobs", None)
    assert isinstance(error.__cause__, httpx.ConnectError)


@pytest.mark.anyio
async def test_timeouts_raise_timeout_error(router: respx.MockRouter) -> None:
    """A read that keeps timing out raises RequestTimeoutError, also a builtin TimeoutError."""
    route = router.get(path="/getJobStatus/JuliaParBatch/").mock(
        side_effect=httpx.ReadTimeout("timed out")
    )
    async with make_ctx() as ctx:
        with pytest.raises(RequestTimeoutError) as info:
            await ctx.get_job_status(JOB)
    assert isinstance(info.value, TransportError)
    assert isinstance(info.value, builtins.TimeoutError)
    assert (info.value.attempts, route.call_count) == (3, 3)
    assert info.value.job == "sim-1"


@pytest.mark.anyio
async def test_no_retries_policy(router: respx.MockRouter) -> None:
    """With ``retries=1`` a failing read is tried once."""
    route = router.get(path="/listJobs/").mock(return_value=fail(503))
    async with make_ctx(retries=1) as ctx:
        assert ctx.retry_policy.attempts == 1
        with pytest.raises(ServerError):
            await ctx.list_jobs()
    assert route.call_count == 1


@pytest.mark.anyio
async def test_retry_after_is_honoured(router: respx.MockRouter, sleeps: list[float]) -> None:
    """A 429/503 with Retry-After waits what the server asked (seconds or HTTP date)."""
    route = router.get(path="/listJobs/")
    route.side_effect = [
        httpx.Response(429, headers={"Retry-After": "3"}, json={"code": 429, "data": "slow"}),
        httpx.Response(503, headers={"Retry-After": "Thu, 01 Jan 1970 00:00:00 GMT"}),
        ok({}),
    ]
    async with make_ctx() as ctx:
        assert await ctx.list_jobs() == {}
    assert sleeps == [3.0, 0.0]


@pytest.mark.anyio
async def test_too_long_retry_after_is_not_waited_for(
    router: respx.MockRouter, sleeps: list[float]
) -> None:
    """A Retry-After beyond max_retry_after raises the error at once."""
    route = router.get(path="/listJobs/").mock(
        return_value=httpx.Response(429, headers={"Retry-After": "3600"}, text="later")
    )
    async with make_ctx() as ctx:
        with pytest.raises(RateLimitError):
            await ctx.list_jobs()
    assert route.call_count == 1
    assert sleeps == []


@pytest.mark.anyio
async def test_timeouts_per_context_and_per_call(router: respx.MockRouter) -> None:
    """Timeouts are finite by default and overridable per Context and per call."""
    route = router.get(path="/listJobs/").mock(return_value=ok({}))
    async with make_ctx() as ctx:
        await ctx.list_jobs()
        default = route.calls.last.request.extensions["timeout"]
        await ctx.list_jobs(timeout=2.5)
        per_call = route.calls.last.request.extensions["timeout"]
    async with make_ctx(timeout=httpx.Timeout(9.0, connect=1.0)) as ctx:
        await ctx.list_jobs()
        per_context = route.calls.last.request.extensions["timeout"]
    assert default == {"connect": 5.0, "read": 30.0, "write": 30.0, "pool": 30.0}
    assert per_call == {"connect": 2.5, "read": 2.5, "write": 2.5, "pool": 2.5}
    assert per_context == {"connect": 1.0, "read": 9.0, "write": 9.0, "pool": 9.0}


@pytest.mark.parametrize("bad", [0, -1.0, True, "5"])
def test_timeout_must_be_positive(bad: Any) -> None:
    """A zero, negative or non-numeric timeout is refused before any request."""
    with pytest.raises(ValueError, match="timeout"):
        make_ctx(timeout=bad)


# -- writes: never duplicated ------------------------------------------------------------


@pytest.mark.anyio
async def test_submit_timeout_then_exists_is_success(router: respx.MockRouter) -> None:
    """A submit whose reply is lost succeeds when a read shows the job exists; sent once."""
    submit = router.get(path="/submitJob/JuliaParBatch/").mock(
        side_effect=httpx.ReadTimeout("timed out")
    )
    status = router.get(path="/getJobStatus/JuliaParBatch/").mock(return_value=ok(OBSERVED_STATUS))
    async with make_ctx() as ctx:
        await ctx.submit_job(SPEC)
    assert submit.call_count == 1
    assert status.call_count == 1
    assert query(status.calls.last.request) == signed(name="sim-1")


@pytest.mark.anyio
async def test_submit_timeout_then_not_found_is_resent_once(router: respx.MockRouter) -> None:
    """A lost submit that a read shows did not land is sent exactly once more."""
    submit = router.get(path="/submitJob/JuliaParBatch/")
    submit.side_effect = [httpx.ReadTimeout("timed out"), ok(None)]
    status = router.get(path="/getJobStatus/JuliaParBatch/").mock(return_value=fail(404))
    async with make_ctx() as ctx:
        await ctx.submit_job(SPEC)
    assert submit.call_count == 2
    assert status.call_count == 1
    assert query(submit.calls[0].request) == query(submit.calls[1].request)


@pytest.mark.anyio
async def test_submit_connect_error_is_resent(router: respx.MockRouter) -> None:
    """A submit that never reached the server is resent without a follow-up read."""
    submit = router.get(path="/submitJob/JuliaParBatch/")
    submit.side_effect = [httpx.ConnectError("refused"), httpx.ConnectTimeout("slow"), ok(None)]
    status = router.get(path="/getJobStatus/JuliaParBatch/").mock(return_value=ok(OBSERVED_STATUS))
    async with make_ctx() as ctx:
        await ctx.submit_job(SPEC)
    assert submit.call_count == 3
    assert status.call_count == 0


@pytest.mark.anyio
async def test_submit_connect_errors_exhaust_the_budget(router: respx.MockRouter) -> None:
    """A submit that can never connect raises TransportError after the policy's attempts."""
    submit = router.get(path="/submitJob/JuliaParBatch/").mock(side_effect=connect_error)
    async with make_ctx() as ctx:
        with pytest.raises(TransportError) as info:
            await ctx.submit_job(SPEC)
    assert submit.call_count == 3
    assert info.value.attempts == 3


@pytest.mark.anyio
@pytest.mark.parametrize(
    "failure",
    [
        httpx.Response(500, text="oops"),
        httpx.Response(503, json={"code": 503, "data": "busy"}),
        httpx.Response(408),
        httpx.Response(200, text="<html>proxy</html>"),
        httpx.ReadError("reset"),
        httpx.WriteTimeout("stalled"),
        httpx.RemoteProtocolError("hung up"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v.status_code),
)
async def test_ambiguous_submit_is_settled_by_a_read(
    router: respx.MockRouter, failure: httpx.Response | Exception
) -> None:
    """Every failure that may have reached the server is checked, not blindly resent."""
    submit = router.get(path="/submitJob/JuliaParBatch/").mock(side_effect=[failure])
    status = router.get(path="/getJobStatus/JuliaParBatch/").mock(return_value=ok(OBSERVED_STATUS))
    async with make_ctx() as ctx:
        await ctx.submit_job(SPEC)
    assert (submit.call_count, status.call_count) == (1, 1)


@pytest.mark.anyio
async def test_resent_submit_meeting_conflict_is_success(router: respx.MockRouter) -> None:
    """If the resent submit meets 409, the first one landed late: success, no third send."""
    submit = router.get(path="/submitJob/JuliaParBatch/")
    submit.side_effect = [httpx.ReadTimeout("timed out"), fail(409, "job exists already")]
    router.get(path="/getJobStatus/JuliaParBatch/").mock(return_value=fail(404))
    async with make_ctx() as ctx:
        await ctx.submit_job(SPEC)
    assert submit.call_count == 2


@pytest.mark.anyio
async def test_first_submit_conflict_is_an_error(router: respx.MockRouter) -> None:
    """A 409 to the first submit is the caller's conflict, not retried or checked."""
    submit = router.get(path="/submitJob/JuliaParBatch/").mock(return_value=fail(409, "exists"))
    status = router.get(path="/getJobStatus/JuliaParBatch/").mock(return_value=ok(OBSERVED_STATUS))
    async with make_ctx() as ctx:
        with pytest.raises(ConflictError) as info:
            await ctx.submit_job(SPEC)
    assert (submit.call_count, status.call_count) == (1, 0)
    assert (info.value.verb, info.value.job) == ("submitJob", "sim-1")


@pytest.mark.anyio
async def test_submit_unknown_outcome_is_not_resent(router: respx.MockRouter) -> None:
    """When the follow-up read fails too, the error says the outcome is unknown; no resend."""
    submit = router.get(path="/submitJob/JuliaParBatch/").mock(
        side_effect=httpx.ReadTimeout("timed out")
    )
    router.get(path="/getJobStatus/JuliaParBatch/").mock(return_value=fail(503))
    async with make_ctx() as ctx:
        with pytest.raises(RequestTimeoutError) as info:
            await ctx.submit_job(SPEC)
    assert submit.call_count == 1
    assert "outcome is unknown" in str(info.value)


@pytest.mark.anyio
async def test_submit_resends_are_bounded(router: respx.MockRouter) -> None:
    """Lost submits that reads show did not land are resent within the attempt budget."""
    submit = router.get(path="/submitJob/JuliaParBatch/").mock(
        return_value=httpx.Response(502, text="bad gateway")
    )
    router.get(path="/getJobStatus/JuliaParBatch/").mock(return_value=fail(404))
    async with make_ctx() as ctx:
        with pytest.raises(ServerError) as info:
            await ctx.submit_job(SPEC)
    assert submit.call_count == ZERO.attempts
    assert "not applied" in str(info.value)


@pytest.mark.anyio
async def test_submit_rate_limited_is_retried(router: respx.MockRouter) -> None:
    """A 429 refusal is retried even for a write: the server did not act on it."""
    submit = router.get(path="/submitJob/JuliaParBatch/")
    submit.side_effect = [fail(429, "slow down"), ok(None)]
    status = router.get(path="/getJobStatus/JuliaParBatch/").mock(return_value=fail(404))
    async with make_ctx() as ctx:
        await ctx.submit_job(SPEC)
    assert (submit.call_count, status.call_count) == (2, 0)


@pytest.mark.anyio
@pytest.mark.parametrize("status", [400, 403, 404, 501, 505])
async def test_write_api_errors_are_final(router: respx.MockRouter, status: int) -> None:
    """A definite refusal of a write is raised at once, without a follow-up read."""
    route = router.get(path="/setJobScale/JuliaParBatch/").mock(return_value=fail(status))
    scale = router.get(path="/getJobScale/JuliaParBatch/").mock(return_value=ok([0, 0]))
    async with make_ctx() as ctx:
        with pytest.raises(ApiError):
            await ctx.set_job_scale(JOB, 2)
    assert (route.call_count, scale.call_count) == (1, 0)


@pytest.mark.anyio
async def test_set_scale_5xx_but_applied_is_success(router: respx.MockRouter) -> None:
    """A 5xx to setJobScale is success when a read shows requested == n."""
    route = router.get(path="/setJobScale/JuliaParBatch/").mock(return_value=fail(500))
    scale = router.get(path="/getJobScale/JuliaParBatch/").mock(return_value=ok([1, 4]))
    async with make_ctx() as ctx:
        assert await ctx.set_job_scale(JOB, 4) is True
    assert (route.call_count, scale.call_count) == (1, 1)


@pytest.mark.anyio
async def test_set_scale_5xx_not_applied_is_resent(router: respx.MockRouter) -> None:
    """A 5xx to setJobScale is resent when a read shows another requested count."""
    route = router.get(path="/setJobScale/JuliaParBatch/")
    route.side_effect = [fail(500), ok(True)]
    router.get(path="/getJobScale/JuliaParBatch/").mock(return_value=ok([1, 1]))
    async with make_ctx() as ctx:
        assert await ctx.set_job_scale(JOB, 4) is True
    assert route.call_count == 2


@pytest.mark.anyio
@pytest.mark.parametrize(
    "failure",
    [httpx.ReadTimeout("timed out"), httpx.Response(502, text="bad gateway")],
    ids=["timeout", "502"],
)
async def test_update_ambiguous_is_unknown_and_not_resent(
    router: respx.MockRouter, failure: httpx.Response | Exception
) -> None:
    """An update whose reply is lost raises an error saying the outcome is unknown."""
    route = router.get(path="/updateJob/JuliaParBatch/").mock(side_effect=[failure, ok(None)])
    async with make_ctx() as ctx:
        with pytest.raises((TransportError, ServerError)) as info:
            await ctx.update_job(SPEC)
    assert route.call_count == 1
    assert "outcome is unknown" in str(info.value)
    assert info.value.verb == "updateJob"


@pytest.mark.anyio
async def test_update_connect_error_is_resent(router: respx.MockRouter) -> None:
    """An update that never reached the server is resent."""
    route = router.get(path="/updateJob/JuliaParBatch/")
    route.side_effect = [httpx.ConnectError("refused"), ok(None)]
    async with make_ctx() as ctx:
        await ctx.update_job(SPEC)
    assert route.call_count == 2


@pytest.mark.anyio
async def test_delete_lost_reply_but_gone_is_success(router: respx.MockRouter) -> None:
    """A delete whose reply is lost succeeds when the job is gone."""
    route = router.get(path="/deleteJob/JuliaParBatch/").mock(side_effect=httpx.ReadTimeout("t"))
    router.get(path="/getJobStatus/JuliaParBatch/").mock(return_value=fail(404))
    async with make_ctx() as ctx:
        assert await ctx.delete_job(JOB, force=True) is True
    assert route.call_count == 1


@pytest.mark.anyio
async def test_delete_lost_reply_still_there_is_resent(router: respx.MockRouter) -> None:
    """A delete whose job still exists is resent; a 404 then means the first one landed."""
    route = router.get(path="/deleteJob/JuliaParBatch/")
    route.side_effect = [httpx.ReadTimeout("t"), fail(404, "no such job")]
    router.get(path="/getJobStatus/JuliaParBatch/").mock(return_value=ok(OBSERVED_STATUS))
    async with make_ctx() as ctx:
        assert await ctx.delete_job(JOB) is True
    assert route.call_count == 2
    assert query(route.calls[1].request)["force"] == "false"


@pytest.mark.anyio
async def test_delete_missing_job_is_an_error(router: respx.MockRouter) -> None:
    """Deleting a job that does not exist raises JobNotFoundError."""
    router.get(path="/deleteJob/JuliaParBatch/").mock(return_value=fail(404, "no such job"))
    async with make_ctx() as ctx:
        with pytest.raises(JobNotFoundError):
            await ctx.delete_job(JOB)


@pytest.mark.anyio
@pytest.mark.parametrize("bad", [-1, True, 2.5, "3"])
async def test_set_scale_validates_before_sending(router: respx.MockRouter, bad: Any) -> None:
    """A negative or non-int parallelism is refused before any request."""
    async with make_ctx() as ctx:
        with pytest.raises(ValueError, match="parallelism"):
            await ctx.set_job_scale(JOB, bad)
    assert not router.calls


@pytest.mark.anyio
@pytest.mark.parametrize(("stream", "count"), [("stdin", 5), (None, -1)])
async def test_tail_validates_before_sending(
    router: respx.MockRouter, stream: str | None, count: int
) -> None:
    """An unknown stream or a negative count is refused before any request."""
    async with make_ctx() as ctx:
        with pytest.raises(ValueError):
            await ctx.tail_job(JOB, stream, count)
    assert not router.calls


# -- lifecycle ---------------------------------------------------------------------------


CALLS: list[JobCall] = [
    lambda c: c.get_system_status(),
    lambda c: c.list_jobs(),
    lambda c: c.get_all_job_info(),
    lambda c: c.get_job_status(JOB),
    lambda c: c.get_job_scale(JOB),
    lambda c: c.set_job_scale(JOB, 1),
    lambda c: c.get_job_endpoint(JOB),
    lambda c: c.get_encoded_url(JOB, 80),
    lambda c: c.delete_job(JOB),
    lambda c: c.tail_job(JOB),
    lambda c: c.submit_job(SPEC),
    lambda c: c.update_job(SPEC),
    lambda c: c.server_info(),
]


@pytest.mark.anyio
@pytest.mark.parametrize("call", CALLS)
async def test_use_after_close(router: respx.MockRouter, call: JobCall) -> None:
    """Every verb on a closed Context raises ClientClosedError without sending."""
    ctx = make_ctx()
    await ctx.aclose()
    with pytest.raises(ClientClosedError, match="closed"):
        await call(ctx)
    assert not router.calls


@pytest.mark.anyio
async def test_close_is_idempotent_and_final() -> None:
    """aclose() closes the owned pool once; the Context cannot be re-entered."""
    ctx = make_ctx()
    client = http_layer(ctx).loop_state().client
    async with ctx:
        assert "closed" not in repr(ctx)
    assert ctx.closed
    assert client.is_closed
    await ctx.aclose()
    with pytest.raises(ClientClosedError):
        await ctx.__aenter__()
    with pytest.raises(ClientClosedError):
        _ = http_layer(ctx).loop_state()
    assert "closed" in repr(ctx)


@pytest.mark.anyio
async def test_injected_client_is_used_and_left_open() -> None:
    """An injected client carries the requests and is not closed by the Context."""
    router = respx.MockRouter(base_url=URL, assert_all_called=False)
    route = router.get(path="/getSystemStatus/").mock(return_value=ok(True))
    async with httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler)) as client:
        async with make_ctx(client=client) as ctx:
            assert http_layer(ctx).loop_state().client is client
            assert await ctx.get_system_status() is True
        assert not client.is_closed
        assert route.call_count == 1


@pytest.mark.anyio
async def test_repr_shows_url_and_namespace_only() -> None:
    """repr(ctx) names the URL and namespace and never the credential."""
    async with make_ctx() as ctx:
        text = repr(ctx)
    assert text == f"<Context url={URL!r} namespace={NS!r}>"
    assert ctx.namespace == NS
    for secret in (TOKEN, B64, B64_PCT):
        assert secret not in text


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_context_can_be_created_without_a_running_loop(backend: str) -> None:
    """A Context made outside any event loop works once a loop runs it."""
    ctx = make_ctx()

    async def use() -> bool:
        async with ctx:
            return await ctx.get_system_status()

    with respx.mock(base_url=URL) as router:
        router.get(path="/getSystemStatus/").mock(return_value=ok(True))
        assert anyio.run(use, backend=backend) is True
    assert ctx.closed


@pytest.mark.anyio
async def test_server_info_extension(router: respx.MockRouter) -> None:
    """server_info returns the extension's answer, remembered after one call."""
    route = router.get(path="/serverInfo/").mock(
        return_value=ok({"server": "juliarun_aio", "extensions": ["logStream"]})
    )
    async with make_ctx() as ctx:
        assert await ctx.server_info() == {"server": "juliarun_aio", "extensions": ["logStream"]}
        assert await ctx.server_info() == {"server": "juliarun_aio", "extensions": ["logStream"]}
    assert route.call_count == 1
    assert query(route.calls.last.request) == signed()


@pytest.mark.anyio
@pytest.mark.parametrize(
    "answer",
    [
        fail(404, "unknown verb"),
        httpx.Response(404, text="Not Found"),
        httpx.Response(200, text="?"),
    ],
)
async def test_server_info_absent_on_plain_servers(
    router: respx.MockRouter, answer: httpx.Response
) -> None:
    """A plain JuliaRun server without serverInfo gives None, asked only once."""
    route = router.get(path="/serverInfo/").mock(return_value=answer)
    async with make_ctx() as ctx:
        assert await ctx.server_info() is None
        assert await ctx.server_info() is None
    assert route.call_count == 1


@pytest.mark.anyio
async def test_concurrent_calls_share_one_context(router: respx.MockRouter) -> None:
    """Many calls in flight on one Context each get their own answer."""
    router.get(path="/getJobScale/JuliaParBatch/").mock(
        side_effect=lambda request: ok([int(query(request)["name"][4:]), 0])
    )
    results: dict[int, JobScale] = {}
    async with make_ctx(limits=httpx.Limits(max_connections=3)) as ctx:

        async def one(i: int) -> None:
            results[i] = await ctx.get_job_scale(JobRef("JuliaParBatch", f"job-{i}"))

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(one, i)
    assert results == {i: JobScale(i, 0) for i in range(20)}
