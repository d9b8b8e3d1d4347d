"""The error tree: its shape, the status/message mapping and what errors print."""

from __future__ import annotations

import builtins

import anyio
import pytest

import juliarun_aio
from juliarun_aio import (
    ApiError,
    AuthenticationError,
    BadRequestError,
    CertificateError,
    ClientClosedError,
    ConfigurationError,
    ConflictError,
    EventLoopError,
    JobNotFoundError,
    JobStateError,
    JuliaRunError,
    PermissionDeniedError,
    RateLimitError,
    RequestTimeoutError,
    ResponseError,
    ServerError,
    SpecError,
    TransportError,
    WaitTimeoutError,
)
from juliarun_aio._errors import api_error_class, excerpt, hint_for, shorten
from juliarun_aio.cli._errors import CLI_TERMS


@pytest.mark.parametrize(
    ("cls", "parents"),
    [
        (ConfigurationError, (JuliaRunError,)),
        (ClientClosedError, (JuliaRunError,)),
        (EventLoopError, (JuliaRunError,)),
        (SpecError, (JuliaRunError, ValueError)),
        (ResponseError, (JuliaRunError,)),
        (TransportError, (JuliaRunError,)),
        (RequestTimeoutError, (TransportError, builtins.TimeoutError)),
        (CertificateError, (TransportError,)),
        (WaitTimeoutError, (JuliaRunError, builtins.TimeoutError)),
        (JobStateError, (JuliaRunError,)),
        (ApiError, (JuliaRunError,)),
        (BadRequestError, (ApiError,)),
        (AuthenticationError, (ApiError,)),
        (PermissionDeniedError, (ApiError,)),
        (JobNotFoundError, (ApiError,)),
        (ConflictError, (ApiError,)),
        (RateLimitError, (ApiError,)),
        (ServerError, (ApiError,)),
    ],
)
def test_tree_shape(cls: type[Exception], parents: tuple[type[Exception], ...]) -> None:
    """Every error class sits where the module docstring draws it, under JuliaRunError."""
    for parent in parents:
        assert issubclass(cls, parent)
    assert issubclass(cls, JuliaRunError)


def test_every_exported_error_is_in_the_tree() -> None:
    """Each exception class exported by the package (warnings aside) derives from JuliaRunError."""
    exported = [getattr(juliarun_aio, name) for name in juliarun_aio.__all__]
    errors = [
        obj
        for obj in exported
        if isinstance(obj, type) and issubclass(obj, BaseException) and not issubclass(obj, Warning)
    ]
    assert len(errors) == 19
    assert all(issubclass(cls, JuliaRunError) for cls in errors)


@pytest.mark.parametrize("module", ["juliarun_aio", "juliarun_aio.server", "juliarun_aio.cli"])
def test_star_import_shadows_no_builtin(module: str) -> None:
    """``from juliarun_aio import *`` leaves every builtin, TimeoutError included, alone."""
    namespace: dict[str, object] = {}
    exec(f"from {module} import *", namespace)
    shadowed = sorted(
        name for name in namespace if hasattr(builtins, name) and name != "__builtins__"
    )
    assert shadowed == []


def test_old_timeout_name_is_an_alias_outside_all() -> None:
    """``juliarun_aio.TimeoutError`` still names the request timeout, but is not exported."""
    assert juliarun_aio.TimeoutError is RequestTimeoutError
    assert "TimeoutError" not in juliarun_aio.__all__
    assert "RequestTimeoutError" in juliarun_aio.__all__


@pytest.mark.anyio
async def test_builtin_timeout_error_still_catches_anyio_timeouts() -> None:
    """After a star import, ``except TimeoutError`` catches an event-loop timeout."""
    namespace: dict[str, object] = {}
    exec("from juliarun_aio import *", namespace)
    timeout_error = namespace.get("TimeoutError", builtins.TimeoutError)
    assert isinstance(timeout_error, type)
    with pytest.raises(timeout_error):
        with anyio.fail_after(0.001):
            await anyio.sleep(1)


def test_transport_errors_are_not_api_errors() -> None:
    """TransportError and ApiError are separate branches, so callers can tell them apart."""
    assert not issubclass(TransportError, ApiError)
    assert not issubclass(ApiError, TransportError)
    assert not issubclass(WaitTimeoutError, TransportError)


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, JobNotFoundError),
        (409, ConflictError),
        (429, RateLimitError),
        (500, ServerError),
        (502, ServerError),
        (503, ServerError),
        (599, ServerError),
        (405, ApiError),
        (418, ApiError),
        (302, ApiError),
        (200, ApiError),
    ],
)
def test_api_error_class_by_status(status: int, cls: type[ApiError]) -> None:
    """The HTTP status picks the class when it is specific."""
    assert api_error_class(status, "") is cls


@pytest.mark.parametrize(
    ("message", "cls"),
    [
        ("job foo not found", JobNotFoundError),
        ("No such job: foo", JobNotFoundError),
        ("job does not exist", JobNotFoundError),
        ("Unknown job type or name", JobNotFoundError),
        ("job foo already exists", ConflictError),
        ("job is incomplete; use force", ConflictError),
        ("Conflict", ConflictError),
        ("Unauthorized", AuthenticationError),
        ("invalid token", AuthenticationError),
        ("bad token supplied", AuthenticationError),
        ("unauthenticated request", AuthenticationError),
        ("Forbidden", PermissionDeniedError),
        ("not allowed in namespace x", PermissionDeniedError),
        ("permission denied", PermissionDeniedError),
        ("something odd happened", ApiError),
        ("", ApiError),
    ],
)
def test_api_error_class_by_message(message: str, cls: type[ApiError]) -> None:
    """With a 200 status (nonzero envelope code) the message picks the class."""
    assert api_error_class(200, message) is cls


def test_status_wins_over_message() -> None:
    """A specific status is not overridden by a misleading message."""
    assert api_error_class(409, "not found") is ConflictError
    assert api_error_class(503, "job not found") is ServerError


def test_every_api_class_is_reachable() -> None:
    """Every ApiError subclass is produced by api_error_class for some input."""
    reached = {api_error_class(s) for s in (400, 401, 403, 404, 409, 429, 500, 418)}
    assert reached == {
        BadRequestError,
        AuthenticationError,
        PermissionDeniedError,
        JobNotFoundError,
        ConflictError,
        RateLimitError,
        ServerError,
        ApiError,
    }


@pytest.mark.parametrize(
    "cls",
    [
        BadRequestError,
        AuthenticationError,
        PermissionDeniedError,
        JobNotFoundError,
        ConflictError,
        RateLimitError,
        ServerError,
    ],
)
def test_every_specific_class_has_a_hint(cls: type[ApiError]) -> None:
    """Each specific ApiError says what to do next."""
    assert hint_for(cls)
    assert hint_for(ApiError) == ""


@pytest.mark.parametrize(
    ("cls", "verb", "sdk", "cli"),
    [
        (AuthenticationError, None, "token=/token_file= (or JRUN_TOKEN", "--token/--token-file"),
        (PermissionDeniedError, None, "namespace= (or JRUN_NAMESPACE)", "--namespace (or"),
        (JobNotFoundError, "getJobStatus", "list_jobs()", "'juliarun list'"),
        (
            ConflictError,
            "submitJob",
            "(delete_job(), with force=True",
            "'juliarun delete', with --force",
        ),
        (ConflictError, "deleteJob", "add force=True to stop", "add --force to stop"),
    ],
)
def test_hints_name_settings_in_the_callers_terms(
    cls: type[ApiError], verb: str | None, sdk: str, cli: str
) -> None:
    """One hint per error, naming Python arguments for the SDK and flags for the CLI."""
    assert sdk in hint_for(cls, verb=verb)
    assert cli in hint_for(cls, verb=verb, terms=CLI_TERMS)


def test_hint_for_a_system_verb_404_names_the_url() -> None:
    """A 404 from a system verb says no server answers at the URL, in the caller's terms."""
    assert "at http://x/api; check the URL (url= or JRUN_URL)" in hint_for(
        JobNotFoundError, system_verb_at="http://x/api"
    )
    assert "(--url or JRUN_URL)" in hint_for(
        JobNotFoundError, system_verb_at="http://x", terms=CLI_TERMS
    )


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [("abc", 3, "abc"), ("abcd", 3, "..."), ("abcdef", 5, "ab..."), ("", 5, "")],
)
def test_shorten_cuts_at_the_limit(text: str, limit: int, expected: str) -> None:
    """shorten() keeps text up to the limit and marks a cut with an ellipsis."""
    assert shorten(text, limit) == expected


def test_excerpt_cuts_long_values() -> None:
    """excerpt() quotes short values whole and cuts long ones with an ellipsis."""
    assert excerpt("abc") == "'abc'"
    long = excerpt("x" * 1000, limit=50)
    assert len(long) == 50
    assert long.endswith("...")


def test_str_includes_verb_and_job() -> None:
    """str() of an error names the verb and the job it was about."""
    error = JobNotFoundError(
        "server answered 404: no such job",
        verb="getJobStatus",
        job="sim-1",
        status_code=404,
        code=404,
        server_message="no such job",
    )
    assert str(error) == "server answered 404: no such job [getJobStatus, job 'sim-1']"
    assert (error.verb, error.job, error.status_code, error.code) == (
        "getJobStatus",
        "sim-1",
        404,
        404,
    )
    assert error.server_message == "no such job"


def test_str_with_verb_only_or_nothing() -> None:
    """System verbs show only the verb; context-free errors show only the message."""
    assert str(ServerError("boom", verb="listJobs")) == "boom [listJobs]"
    assert str(ConfigurationError("set JRUN_URL")) == "set JRUN_URL"


def test_api_error_defaults() -> None:
    """An ApiError without an HTTP status defaults to 200 and no code."""
    error = ApiError("no")
    assert (error.status_code, error.code, error.server_message) == (200, None, "")


def test_transport_error_counts_attempts() -> None:
    """TransportError and RequestTimeoutError carry the number of attempts made."""
    assert TransportError("down", attempts=3).attempts == 3
    timeout = RequestTimeoutError("slow", verb="getJobScale", job="w")
    assert timeout.attempts == 1
    assert str(timeout) == "slow [getJobScale, job 'w']"


def test_response_error_keeps_status_and_body() -> None:
    """ResponseError records the status and an excerpt of what was sent."""
    error = ResponseError("bad JSON", verb="listJobs", status_code=200, body="'<html>'")
    assert (error.status_code, error.body) == (200, "'<html>'")
    assert "listJobs" in str(error)


def test_spec_error_names_the_field() -> None:
    """SpecError is a ValueError that names the offending field first."""
    error = SpecError("ports", "port 0 is out of range")
    assert error.field == "ports"
    assert str(error) == "ports: port 0 is out of range"
    assert isinstance(error, ValueError)


def test_timeout_errors_are_caught_as_builtin_timeouts() -> None:
    """Code catching the builtin TimeoutError also catches both timeout kinds."""
    for error in (RequestTimeoutError("t"), WaitTimeoutError("w")):
        with pytest.raises(builtins.TimeoutError):
            raise error
