"""Configuration: resolution order, token files that rotate, and redaction everywhere."""

from __future__ import annotations

import base64
import logging
import os
import traceback
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from juliarun_aio import (
    ApiError,
    AuthenticationError,
    ConfigurationError,
    Context,
    JobRef,
    JobScale,
    JuliaBatch,
    JuliaRunError,
    ResponseError,
    RetryPolicy,
    ServerError,
    TransportError,
)
from juliarun_aio._config import (
    DEFAULT_URL,
    REDACTED,
    TokenSource,
    build_query,
    encode_token,
    install_log_redaction,
    redact,
    resolve_config,
    secret_forms,
)

URL = "https://jrun.test"
TOKEN = "tok>>>>>?>"
B64 = "dG9rPj4+Pj4/Pg=="
B64_PCT = "dG9rPj4%2BPj4%2FPg%3D%3D"
SECRETS = (TOKEN, B64, B64_PCT)
NS = "research"
JOB = JobRef("JuliaBatch", "sim-1")
ZERO = RetryPolicy(attempts=2, initial=0, maximum=0)


def ok(data: object = None) -> httpx.Response:
    """Return a successful envelope answer."""
    return httpx.Response(200, json={"code": 0, "data": data})


def sent_token(request: httpx.Request) -> str:
    """Return the raw token a request carried (decoded from its base64 jruntok)."""
    for item in request.url.query.decode("ascii").split("&"):
        key, _, value = item.partition("=")
        if key == "jruntok":
            return base64.b64decode(urllib.parse.unquote(value)).decode()
    raise AssertionError("no jruntok in the request")


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    """Mock the JuliaRun server; any request not routed fails the test."""
    with respx.mock(base_url=URL, assert_all_called=False) as mock:
        yield mock


@pytest.fixture
def sa_dir(tmp_path: Path) -> Path:
    """A fake Kubernetes service-account directory with a token and a namespace."""
    directory = tmp_path / "serviceaccount"
    directory.mkdir()
    (directory / "token").write_text("sa-token\n")
    (directory / "namespace").write_text("cluster-ns\n")
    return directory


@pytest.fixture
def no_sa(tmp_path: Path) -> Path:
    """A service-account directory that does not exist (not in a cluster)."""
    return tmp_path / "missing"


# -- resolution order --------------------------------------------------------------------


def test_arguments_beat_environment_and_cluster(sa_dir: Path, tmp_path: Path) -> None:
    """Explicit arguments win over JRUN_* variables and in-cluster defaults."""
    env_token = tmp_path / "env-token"
    env_token.write_text("env-file-token")
    env = {
        "JRUN_URL": "https://env.test",
        "JRUN_TOKEN": "env-token",
        "JRUN_TOKEN_FILE": str(env_token),
        "JRUN_NAMESPACE": "env-ns",
        "KUBERNETES_SERVICE_HOST": "10.0.0.1",
    }
    config = resolve_config(URL, "arg-token", "arg-ns", env=env, service_account_dir=sa_dir)
    assert (config.url, config.namespace, config.token.current()) == (URL, "arg-ns", "arg-token")
    assert not config.token.is_file
    assert config.in_cluster


def test_environment_beats_cluster(sa_dir: Path) -> None:
    """JRUN_URL, JRUN_TOKEN and JRUN_NAMESPACE win over the in-cluster defaults."""
    env = {
        "JRUN_URL": "https://env.test/",
        "JRUN_TOKEN": "env-token",
        "JRUN_NAMESPACE": "env-ns",
        "KUBERNETES_SERVICE_HOST": "10.0.0.1",
    }
    config = resolve_config(env=env, service_account_dir=sa_dir)
    assert (config.url, config.namespace, config.token.current()) == (
        "https://env.test",
        "env-ns",
        "env-token",
    )


def test_token_file_from_environment(no_sa: Path, tmp_path: Path) -> None:
    """JRUN_TOKEN_FILE names a file whose (stripped) content is the token."""
    path = tmp_path / "token"
    path.write_text("  file-token\n")
    env = {"JRUN_URL": URL, "JRUN_TOKEN_FILE": str(path), "JRUN_NAMESPACE": NS}
    config = resolve_config(env=env, service_account_dir=no_sa)
    assert config.token.current() == "file-token"
    assert config.token.is_file
    assert not config.in_cluster


@pytest.mark.parametrize(
    ("token", "token_file", "env", "expected"),
    [
        ("arg", None, {"JRUN_TOKEN": "env"}, "arg"),
        (None, "FILE", {"JRUN_TOKEN": "env"}, "from-file"),
        ("arg", "FILE", {}, "arg"),
        (None, None, {"JRUN_TOKEN": "env", "JRUN_TOKEN_FILE": "FILE"}, "env"),
        (None, None, {"JRUN_TOKEN_FILE": "FILE"}, "from-file"),
        ("", None, {"JRUN_TOKEN": "env"}, "env"),
    ],
)
def test_token_precedence(
    no_sa: Path,
    tmp_path: Path,
    token: str | None,
    token_file: str | None,
    env: dict[str, str],
    expected: str,
) -> None:
    """token= > token_file= > JRUN_TOKEN > JRUN_TOKEN_FILE; an empty value is not given."""
    path = tmp_path / "tok"
    path.write_text("from-file")
    env = {k: str(path) if v == "FILE" else v for k, v in env.items()}
    env |= {"JRUN_URL": URL, "JRUN_NAMESPACE": NS}
    config = resolve_config(
        token=token,
        token_file=path if token_file else None,
        env=env,
        service_account_dir=no_sa,
    )
    assert config.token.current() == expected


@pytest.mark.parametrize("env", [{"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, {}])
def test_in_cluster_defaults(sa_dir: Path, env: dict[str, str]) -> None:
    """In a cluster the service URL and the service-account token and namespace are used."""
    config = resolve_config(env=env, service_account_dir=sa_dir)
    assert config.url == DEFAULT_URL
    assert config.namespace == "cluster-ns"
    assert config.token.current() == "sa-token"
    assert config.token.path == sa_dir / "token"
    assert config.in_cluster


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"JRUN_TOKEN": "t", "JRUN_NAMESPACE": NS}, "JRUN_URL"),
        ({"JRUN_URL": URL, "JRUN_NAMESPACE": NS}, "JRUN_TOKEN"),
        ({"JRUN_URL": URL, "JRUN_NAMESPACE": NS}, "JRUN_TOKEN_FILE"),
        ({"JRUN_URL": URL, "JRUN_TOKEN": "t"}, "JRUN_NAMESPACE"),
        ({"JRUN_URL": URL, "JRUN_TOKEN": "t", "JRUN_NAMESPACE": ""}, "JRUN_NAMESPACE"),
        ({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, "JRUN_TOKEN"),
    ],
)
def test_missing_settings_name_the_variable(
    no_sa: Path, env: dict[str, str], variable: str
) -> None:
    """Outside a cluster a missing setting raises ConfigurationError naming the variable."""
    with pytest.raises(ConfigurationError, match=variable):
        resolve_config(env=env, service_account_dir=no_sa)


def test_in_cluster_without_namespace_file(sa_dir: Path) -> None:
    """A cluster whose namespace file is missing asks for JRUN_NAMESPACE."""
    (sa_dir / "namespace").unlink()
    with pytest.raises(ConfigurationError, match="JRUN_NAMESPACE"):
        resolve_config(env={}, service_account_dir=sa_dir)


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("ftp://jrun.test", "http"),
        ("jrun.test:8080", "http"),
        ("http://", "http"),
        ("https://jrun.test/?a=b", "query"),
        ("http://[::1", "invalid"),
    ],
)
def test_bad_urls(no_sa: Path, url: str, match: str) -> None:
    """A URL that is not http(s)://host[:port][/path] is a ConfigurationError."""
    with pytest.raises(ConfigurationError, match=match):
        resolve_config(url, "t", NS, env={}, service_account_dir=no_sa)


@pytest.mark.anyio
async def test_context_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Context() with no arguments resolves from os.environ."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("JRUN_URL", URL)
    monkeypatch.setenv("JRUN_TOKEN", TOKEN)
    monkeypatch.setenv("JRUN_NAMESPACE", "from-env")
    async with Context() as ctx:
        assert (ctx.url, ctx.namespace) == (URL, "from-env")


def test_context_configuration_error_names_the_variable() -> None:
    """Context without settings outside a cluster says which variable to set."""
    with pytest.raises(ConfigurationError, match="JRUN_URL"):
        Context(env={})


# -- TokenSource ---------------------------------------------------------------------------


def test_token_source_needs_exactly_one_origin(tmp_path: Path) -> None:
    """TokenSource takes a value or a path, not both or neither."""
    with pytest.raises(ValueError, match="exactly one"):
        TokenSource()
    with pytest.raises(ValueError, match="exactly one"):
        TokenSource("t", tmp_path / "t")


def test_token_file_errors(tmp_path: Path) -> None:
    """A missing or empty token file is a ConfigurationError naming the file."""
    with pytest.raises(ConfigurationError, match="cannot read the token file"):
        TokenSource(path=tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigurationError, match="is empty"):
        TokenSource(path=empty)


def test_token_file_change_is_re_read(tmp_path: Path) -> None:
    """A rotated token file is read again on the next use."""
    path = tmp_path / "token"
    path.write_text("first")
    source = TokenSource(path=path)
    assert source.current() == "first"
    path.write_text("second-token")
    assert source.current() == "second-token"
    replacement = tmp_path / "token.new"
    replacement.write_text("third")
    replacement.replace(path)  # a new inode, as Kubernetes' atomic swap does
    assert source.current() == "third"


def test_token_file_mid_rewrite_keeps_the_last_token(tmp_path: Path) -> None:
    """A token file caught empty or missing mid-rotation keeps the last good token."""
    path = tmp_path / "token"
    path.write_text("good")
    source = TokenSource(path=path)
    path.write_text("")
    assert source.current() == "good"
    path.unlink()
    assert source.current() == "good"
    path.write_text("fresh")
    assert source.current() == "fresh"


def test_refresh_reads_unconditionally(tmp_path: Path) -> None:
    """refresh() re-reads even when the file looks unchanged and says if the token changed."""
    path = tmp_path / "token"
    path.write_text("aaaa")
    source = TokenSource(path=path)
    silent_rewrite(path, "bbbb")
    assert source.current() == "aaaa"  # same inode, size and mtime: not noticed
    assert source.refresh() is True
    assert source.current() == "bbbb"
    assert source.refresh() is False
    assert TokenSource("value").refresh() is False


def test_token_source_repr_hides_the_token(tmp_path: Path) -> None:
    """TokenSource's repr shows where the token comes from, never the token."""
    assert TOKEN not in repr(TokenSource(TOKEN))
    path = tmp_path / "token"
    path.write_text(TOKEN)
    assert repr(TokenSource(path=path)) == f"TokenSource(file={str(path)!r}, token={REDACTED})"


def silent_rewrite(path: Path, text: str) -> None:
    """Rewrite a file in place keeping its inode, size and mtime (undetectable by stat)."""
    before = path.stat()
    assert len(text.encode()) == before.st_size
    path.write_text(text)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


# -- rotation through the Context ------------------------------------------------------------


@pytest.mark.anyio
async def test_changed_token_file_is_used_on_the_next_call(
    router: respx.MockRouter, tmp_path: Path
) -> None:
    """A rotated token file is sent (base64) on the very next request."""
    path = tmp_path / "token"
    path.write_text("token-one")
    route = router.get(path="/getSystemStatus/").mock(return_value=ok(True))
    async with Context(URL, namespace=NS, token_file=path, env={}) as ctx:
        await ctx.get_system_status()
        path.write_text("token-two-longer")
        await ctx.get_system_status()
    assert [sent_token(call.request) for call in route.calls] == ["token-one", "token-two-longer"]


@pytest.mark.anyio
async def test_401_re_reads_the_file_and_retries_once(
    router: respx.MockRouter, tmp_path: Path
) -> None:
    """After a 401 the token file is re-read and the call retried once, with the new token."""
    path = tmp_path / "token"
    path.write_text("old-tok")

    def answer(request: httpx.Request) -> httpx.Response:
        if sent_token(request) == "new-tok":
            return ok([2, 2])
        silent_rewrite(path, "new-tok")  # rotated behind our back
        return httpx.Response(401, json={"code": 401, "data": "token expired"})

    route = router.get(path="/getJobScale/JuliaBatch/").mock(side_effect=answer)
    async with Context(URL, namespace=NS, token_file=path, retries=ZERO, env={}) as ctx:
        assert await ctx.get_job_scale(JOB) == JobScale(2, 2)
    assert [sent_token(call.request) for call in route.calls] == ["old-tok", "new-tok"]


@pytest.mark.anyio
async def test_401_twice_raises_authentication_error(
    router: respx.MockRouter, tmp_path: Path
) -> None:
    """A second 401 after re-reading the file raises AuthenticationError (two calls)."""
    path = tmp_path / "token"
    path.write_text("bad-token")
    route = router.get(path="/getJobScale/JuliaBatch/").mock(
        return_value=httpx.Response(401, json={"code": 401, "data": "token expired"})
    )
    async with Context(URL, namespace=NS, token_file=path, retries=ZERO, env={}) as ctx:
        with pytest.raises(AuthenticationError) as info:
            await ctx.get_job_scale(JOB)
    assert route.call_count == 2
    assert info.value.status_code == 401
    assert "JRUN_TOKEN" in str(info.value)


@pytest.mark.anyio
async def test_401_with_a_fixed_token_is_not_retried(router: respx.MockRouter) -> None:
    """A fixed token cannot change, so a 401 is raised after one call."""
    route = router.get(path="/listJobs/").mock(return_value=httpx.Response(401, text="nope"))
    async with Context(URL, TOKEN, NS, retries=ZERO, env={}) as ctx:
        with pytest.raises(AuthenticationError):
            await ctx.list_jobs()
    assert route.call_count == 1


@pytest.mark.anyio
async def test_401_on_a_write_is_retried_with_the_new_token(
    router: respx.MockRouter, tmp_path: Path
) -> None:
    """A refused write (401) was not applied, so it is resent once with the re-read token."""
    path = tmp_path / "token"
    path.write_text("old-tok")

    def answer(request: httpx.Request) -> httpx.Response:
        if sent_token(request) == "new-tok":
            return ok(None)
        silent_rewrite(path, "new-tok")
        return httpx.Response(401, text="expired")

    route = router.get(path="/submitJob/JuliaBatch/").mock(side_effect=answer)
    spec = JuliaBatch(name="sim-1", start_script="m.jl", run_volume="vol")
    async with Context(URL, namespace=NS, token_file=path, retries=ZERO, env={}) as ctx:
        await ctx.submit_job(spec)
    assert route.call_count == 2


# -- encoding and redaction helpers -----------------------------------------------------------


def test_encode_token_is_base64_of_utf8() -> None:
    """The wire credential is base64 of the raw token's UTF-8 bytes."""
    assert encode_token(TOKEN) == B64
    assert encode_token("é") == "w6k="


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ([("a", "b")], "a=b"),
        ([("a", "x y")], "a=x%20y"),
        ([("a", "A-z_0.9~")], "a=A-z_0.9~"),
        ([("a", "/+=&?#%")], "a=%2F%2B%3D%26%3F%23%25"),
        ([("a", "é")], "a=%C3%A9"),
        ([("a", "")], "a="),
        ([("k y", "1"), ("b", "2")], "k%20y=1&b=2"),
    ],
)
def test_build_query_is_rfc3986(params: list[tuple[str, str]], expected: str) -> None:
    """build_query keeps unreserved characters and %-encodes the rest (space = %20)."""
    assert build_query(params) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("GET /x/?jruntok=abc%2B&jrunns=n", f"GET /x/?jruntok={REDACTED}&jrunns=n"),
        ("jruntok=abc def", f"jruntok={REDACTED} def"),
        ("'jruntok=abc'", f"'jruntok={REDACTED}'"),
        ("no secret here", "no secret here"),
        (f"echo {TOKEN} and {B64}", f"echo {REDACTED} and {REDACTED}"),
        (f"pct {B64_PCT}", f"pct {REDACTED}"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    """redact() removes jruntok values and every literal form of the secret."""
    assert redact(text, secret_forms(TOKEN)) == expected


def test_secret_forms_cover_every_spelling() -> None:
    """secret_forms lists the raw token, its base64 and their percent-encodings."""
    forms = set(secret_forms(TOKEN))
    assert {TOKEN, B64, B64_PCT} <= forms
    # A raw token this short would garble messages; its base64 and jruntok= still match.
    assert secret_forms("abc") == ("YWJj",)


@pytest.mark.parametrize(
    "name", ["httpx", "httpcore", "httpcore.connection", "httpcore.http11", "httpcore.proxy"]
)
def test_log_filter_covers_httpx_and_httpcore_loggers(
    caplog: pytest.LogCaptureFixture, name: str
) -> None:
    """Records of the httpx and httpcore loggers lose their jruntok values."""
    install_log_redaction()
    install_log_redaction()  # idempotent
    logger = logging.getLogger(name)
    assert logger.filters.count(logger.filters[0]) == 1
    with caplog.at_level(logging.DEBUG, logger=name):
        logger.debug("GET %s done", f"{URL}/listJobs/?jruntok={B64_PCT}&jrunns=x")
    expected = f"GET {URL}/listJobs/?jruntok={REDACTED}&jrunns=x done"
    assert caplog.records[-1].getMessage() == expected


# -- redaction end to end -------------------------------------------------------------------


def formatted(exc: BaseException) -> str:
    """Render an exception every way a user might see it, chain and attributes included."""
    parts = ["".join(traceback.format_exception(exc)), str(exc), repr(exc)]
    link: BaseException | None = exc
    seen: set[int] = set()
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        parts += [str(link), repr(link), repr(vars(link))]
        link = link.__cause__ or link.__context__
    return "\n".join(parts)


def assert_clean(text: str) -> None:
    """Fail if any form of the credential appears in ``text``."""
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked in: {text[:2000]}"


def echo_url(request: httpx.Request) -> httpx.Response:
    """A server that puts the request URL (and so the credential) in its error text."""
    return httpx.Response(500, text=f"internal error handling {request.url} for {TOKEN}")


def connect_with_url(request: httpx.Request) -> httpx.Response:
    """Fail to connect with the full URL in the message, chained to a lower-level error."""
    try:
        raise OSError(f"connect to {request.url} failed")
    except OSError as low:
        raise httpx.ConnectError(f"cannot reach {request.url}", request=request) from low


def timeout_with_url(request: httpx.Request) -> httpx.Response:
    """Time out reading, with the URL in the message."""
    raise httpx.ReadTimeout(f"read timed out: {request.url}", request=request)


@pytest.mark.anyio
async def test_no_credential_in_logs_or_exceptions(
    router: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    """The token, its base64 and its %-encoded base64 appear in no log record and no error."""
    for name in ("juliarun_aio", "httpx", "httpcore"):
        caplog.set_level(logging.DEBUG, logger=name)
    router.get(path="/getSystemStatus/").mock(return_value=ok(True))
    router.get(path="/listJobs/").mock(side_effect=echo_url)
    router.get(path="/getAllJobInfo/").mock(side_effect=connect_with_url)
    router.get(path="/getJobStatus/JuliaBatch/").mock(
        return_value=httpx.Response(404, json={"code": 404, "data": f"no job for token {B64}"})
    )
    router.get(path="/getJobScale/JuliaBatch/").mock(side_effect=timeout_with_url)
    router.get(path="/getJobEndpoint/JuliaBatch/").mock(
        return_value=httpx.Response(200, json={"echo": f"jruntok={B64_PCT}", "raw": TOKEN * 30})
    )
    router.get(path="/getEncodedURL/JuliaBatch/").mock(return_value=ok({"url": B64}))
    router.get(path="/tailJob/JuliaBatch/").mock(
        return_value=httpx.Response(401, text=f"bad credential {B64}")
    )
    router.get(path="/updateJob/JuliaBatch/").mock(side_effect=timeout_with_url)
    router.get(path="/submitJob/JuliaBatch/").mock(side_effect=connect_with_url)
    spec = JuliaBatch(name="sim-1", start_script="m.jl", run_volume="vol")

    errors: list[JuliaRunError] = []
    async with Context(URL, TOKEN, NS, retries=ZERO, env={}) as ctx:
        assert await ctx.get_system_status() is True
        calls: list[Any] = [
            ctx.list_jobs,
            ctx.get_all_job_info,
            lambda: ctx.get_job_status(JOB),
            lambda: ctx.get_job_scale(JOB),
            lambda: ctx.get_job_endpoint(JOB),
            lambda: ctx.get_encoded_url(JOB, 80),
            lambda: ctx.tail_job(JOB),
            lambda: ctx.update_job(spec),
            lambda: ctx.submit_job(spec),
        ]
        for call in calls:
            with pytest.raises(JuliaRunError) as info:
                await call()
            errors.append(info.value)
        assert_clean(repr(ctx))

    kinds = [type(e) for e in errors]
    assert ServerError in kinds
    assert AuthenticationError in kinds
    assert ResponseError in kinds
    assert sum(isinstance(e, TransportError) for e in errors) == 4
    for error in errors:
        assert_clean(formatted(error))
        if isinstance(error, ApiError):
            assert_clean(error.server_message)
        if isinstance(error, ResponseError):
            assert_clean(error.body)
    transport = next(e for e in errors if isinstance(e, TransportError))
    assert REDACTED in str(transport)
    assert isinstance(transport.__cause__, httpx.HTTPError)
    assert REDACTED in str(transport.__cause__)

    log = caplog.text + "\n".join(
        record.getMessage() + (record.exc_text or "") for record in caplog.records
    )
    assert "HTTP Request: GET" in log  # the httpx records were captured, redacted
    assert f"jruntok={REDACTED}" in log
    assert_clean(log)


@pytest.mark.anyio
async def test_no_credential_in_token_file_contexts(
    router: respx.MockRouter, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """A rotated token (old and new) leaks nowhere either."""
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "token"
    path.write_text(TOKEN)
    new_token = "rotated-secret-token"
    answers = iter(
        [
            lambda request: httpx.Response(401, text=f"expired {encode_token(new_token)}"),
            echo_url,  # the 500 quotes the URL and the old raw token
        ]
    )

    def answer(request: httpx.Request) -> httpx.Response:
        return next(answers)(request)

    route = router.get(path="/listJobs/").mock(side_effect=answer)
    async with Context(URL, namespace=NS, token_file=path, retries=1, env={}) as ctx:
        path.write_text(new_token)
        with pytest.raises(ServerError) as info:
            await ctx.list_jobs()
        assert route.call_count == 2
        text = formatted(info.value) + caplog.text + repr(ctx)
    assert_clean(text)
    assert new_token not in text
    assert encode_token(new_token) not in text
