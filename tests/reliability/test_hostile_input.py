"""Hostile and bad input: invalid specs, fuzzed requests, path tricks, shell metacharacters."""

from __future__ import annotations

import base64
import json
import random
import shutil
import socket
import sqlite3
import string
import sys
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import attrs
import httpx
import pytest
import respx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_support import record, scaled
from strategies import specs
from support import write_script

import juliarun_aio as jr
from juliarun_aio import Context, JobSpec, JuliaBatch, SpecError
from juliarun_aio._jobs import JOB_KINDS
from juliarun_aio._specs import SPEC_TYPES
from juliarun_aio._wire import decode_spec, encode_spec
from juliarun_aio.server import LocalServer

# -- invalid specs ---------------------------------------------------------------------

_BAD_NAMES = st.sampled_from(
    [
        "",
        "A",
        "Upper",
        "-lead",
        "trail-",
        "a_b",
        "a.b",
        "../x",
        "a/b",
        "/abs",
        "..",
        "x" * 64,
        "\u00e9",
        "a b",
        "a\x00b",
        "%2e%2e",
        "\\x",
        7,
        3.5,
        None.__class__,
    ]
)
_BAD_TEXT = st.sampled_from(["", "nul\x00inside", 5, 2.5, b"bytes", ["list"], True])
_BAD_CPU = st.sampled_from(["0", "0m", "-1", "abc", "1.5x", "1e3", "", True, [1], "NaN"])
_BAD_MEMORY = st.sampled_from(["0", "-5Mi", "1Zi", "Mi", "", "1.2.3", False, "0.0Gi"])
_BAD_COUNT = st.sampled_from([-1, True, "3", 1.5, "many"])
_BAD_PORTS = st.sampled_from(
    [
        {"averyveryverylongname": (1, 2)},
        {"web": (0, 80)},
        {"web": (80, 70000)},
        {"a": (80, 80), "b": (81, 80)},
        {"web": (80,)},
        {"we--b": (80, 80)},
        {"123": (80, 80)},
        "web:80:80",
        {"web": ("80", 80)},
        {"Web": (80, 80)},
    ]
)
_BAD_ENV = st.sampled_from(
    [{"1A": "x"}, {"A-B": "x"}, {"A": 1}, {"A": "nul\x00"}, {"": "x"}, ["A=1"], "A=1"]
)
_BAD_LISTS = st.sampled_from(["one-string", [1], ["ok", 2], ["nul\x00"], 5])
_BAD_VOLUMES = st.sampled_from(
    [["../up"], ["ok", "ok"], ["/abs"], "vol", ["UPPER"], ["a/b"], [""], [3]]
)
_BAD_BY_FIELD: dict[str, st.SearchStrategy[object]] = {
    "name": _BAD_NAMES,
    "run_volume": _BAD_NAMES,
    "pkg_bundle": _BAD_NAMES,
    "additional_volumes": _BAD_VOLUMES,
    "start_script": _BAD_TEXT,
    "builder_script": _BAD_TEXT,
    "cfg_file": _BAD_TEXT,
    "worker_start_script": _BAD_TEXT,
    "image": _BAD_TEXT,
    "shell": _BAD_TEXT,
    "worker_shell": _BAD_TEXT,
    "passwd": _BAD_TEXT,
    "command": _BAD_TEXT,
    "args": _BAD_LISTS,
    "ports": _BAD_PORTS,
    "external": st.sampled_from(["yes", 1, 0, "true", "1"]),
    "cpu": _BAD_CPU,
    "worker_cpu": _BAD_CPU,
    "memory": _BAD_MEMORY,
    "worker_memory": _BAD_MEMORY,
    "gpu": _BAD_COUNT,
    "worker_gpu": _BAD_COUNT,
    "nworkers": _BAD_COUNT,
    "envvars": _BAD_ENV,
    "worker_envvars": _BAD_ENV,
    "restart": st.sampled_from(["Sometimes", "never", "", 1]),
}


@st.composite
def invalid_params(draw: st.DrawFn) -> tuple[str, dict[str, object]]:
    """A job type and parameters with exactly one thing wrong."""
    spec = draw(specs())
    params = dict(spec.params())
    fields = attrs.fields_dict(SPEC_TYPES[spec.kind])
    how = draw(st.sampled_from(("bad value", "unknown parameter", "missing required")))
    if how == "unknown parameter":
        params[draw(st.sampled_from(["colour", "jruntok", "Name", "name ", "kind"]))] = "x"
    elif how == "missing required":
        required = [name for name, field in fields.items() if field.default is attrs.NOTHING]
        del params[draw(st.sampled_from(required))]
    else:
        field = draw(st.sampled_from(sorted(fields)))
        params[field] = draw(_BAD_BY_FIELD[field])
    return spec.kind, params


@pytest.mark.slow
@settings(max_examples=scaled(200, 30), deadline=None)
@given(invalid_params())
def test_every_invalid_spec_raises_spec_error_before_any_request(
    case: tuple[str, dict[str, object]],
) -> None:
    """Hostile input: every invalid spec raises SpecError, and no request is ever made."""
    kind, params = case

    router = respx.MockRouter(assert_all_called=False)  # no routes: any request fails

    async def submit() -> None:
        client = httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler))
        async with client, Context("https://juliarun.invalid", "t", "ns", client=client) as ctx:
            spec_type: Any = SPEC_TYPES[kind]
            await ctx.submit_job(spec_type(**params))

    with pytest.raises(SpecError):
        anyio.run(submit)
    assert router.calls.call_count == 0


# -- valid specs round-trip through the server -----------------------------------------


def _recorded(server: LocalServer, name: str) -> tuple[str, dict[str, str]]:
    database = server.data_dir / "state.sqlite3"
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        kind, params = db.execute(
            "SELECT kind, params FROM jobs WHERE namespace = ? AND name = ?",
            (server.namespace, name),
        ).fetchone()
    return kind, json.loads(params)


def _harmless(spec: JobSpec) -> JobSpec:
    """The spec with at most 4 workers and no program that could really run here."""
    params = spec.params()
    changes: dict[str, object] = {}
    if isinstance(params.get("nworkers"), int):
        changes["nworkers"] = min(4, int(params["nworkers"]))  # type: ignore[call-overload]
    for field in ("command", "shell", "worker_shell"):
        value = params.get(field)
        if isinstance(value, str) and (shutil.which(value) or "/" in value or value in (".", "..")):
            changes[field] = "no-such-program-" + str(len(value))
    evolve: Any = attrs.evolve
    evolved: JobSpec = evolve(spec, **changes) if changes else spec
    return evolved


@pytest.mark.slow
@settings(
    max_examples=scaled(50, 20),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(spec=specs().map(_harmless))
def test_every_valid_spec_round_trips_through_the_wire_and_the_server(
    server: LocalServer, spec: JobSpec
) -> None:
    """Hostile input: every valid spec decodes to itself and is recorded by the server as sent."""
    assert decode_spec(spec.kind, encode_spec(spec)) == spec

    async def roundtrip() -> tuple[str, dict[str, str], dict[str, jr.JobInfo]]:
        async with Context(server.url, server.token, server.namespace) as ctx:
            await ctx.submit_job(spec)
            try:
                kind, params = _recorded(server, spec.name)
                return kind, params, await ctx.list_jobs()
            finally:
                await ctx.delete_job(spec, force=True)

    kind, params, listed = anyio.run(roundtrip)
    assert kind == spec.kind
    assert params == encode_spec(spec)
    assert decode_spec(kind, params) == spec
    assert listed[spec.name].kind == spec.kind


# -- fuzzing the server ----------------------------------------------------------------

_VERBS = [
    "getSystemStatus",
    "listJobs",
    "getAllJobInfo",
    "serverInfo",
    "getJobStatus",
    "getJobScale",
    "setJobScale",
    "getJobEndpoint",
    "getEncodedURL",
    "deleteJob",
    "tailJob",
    "submitJob",
    "updateJob",
    "streamLogs",
    "",
    "nope",
    "GETJOBSTATUS",
    "..",
    "%2e%2e",
    "getJobStatus%2F..",
    "x" * 300,
    "%F0%9F%92%A5",
    "%ff%fe",
    "%zz",
    "%",
]
_KINDS = [*JOB_KINDS, "", "juliabatch", "Nope", "..", "%2e%2e", "a%2Fb", "%00", "%C3%28", "x" * 500]
_NAMES = [
    "fuzz-job",
    "x",
    "a" * 63,
    "a" * 64,
    "",
    "UPPER",
    "../../etc",
    "..%2F..%2Fetc",
    "%2Fetc",
    "/etc/passwd",
    "%00",
    "%C3%28",
    "\u00e9t\u00e9",
    "%F0%9F%92%A9",
    "a%20b",
    "a+b",
    "-x",
    "x" * 10_000,
    "%zz",
    "%",
]
_PARAMS = [
    "name",
    "jruntok",
    "jrunns",
    "count",
    "stream",
    "parallelism",
    "force",
    "port",
    "cursor",
    "follow",
    "heartbeat",
    "start_script",
    "run_volume",
    "nworkers",
    "ports",
    "envvars",
    "args",
    "command",
    "image",
    "cpu",
    "memory",
    "restart",
    "additional_volumes",
    "external",
    "gpu",
    "zzz",
    "",
    "%00",
    "na%6De",
    "%zz",
]
_VALUES = [
    "0",
    "1",
    "-1",
    "99999999999999999999999",
    "true",
    "false",
    "yes",
    "stdout",
    "stderr",
    "both",
    "nan",
    "inf",
    "1e309",
    "0.001",
    "",
    "%",
    "%zz",
    "%C3%28",
    "%00",
    "%FF",
    "\u2603",
    "%E2%98%83",
    "[]",
    "[1,2]",
    '["a"',
    "{}",
    '{"A":1}',
    "Dict(",
    "a:b:c,d",
    "http:80:80",
    "x" * 100_000,
    "%F0%9F" * 50,
    "work",
    "../../..",
    "/tmp",
    "$(id)",
    "a%26b%3Dc",
    "+",
    "%2B",
    "JuliaBatch",
]


def _token_value(rng: random.Random, good: str) -> str | None:
    choice = rng.random()
    if choice < 0.45:
        return quote(good, safe="")
    options: list[str | None] = [
        None,
        "",
        "%",
        "%zz",
        "not base64!",
        "====",
        "YQ",
        "YWJj",
        "%FF%FE",
        "x" * 5000,
        quote("d3Jvbmc=", safe=""),
        "AAAA",
        "%00",
        "%C3%28",
        "////",
    ]
    return rng.choice(options)


def _fuzz_target(rng: random.Random, good_token: str, namespace: str) -> str:
    verb = rng.choice(_VERBS)
    path = f"/{verb}/"
    if rng.random() < 0.8:
        path += f"{rng.choice(_KINDS)}/"
    if rng.random() < 0.1:
        path = rng.choice(["/", "//", "/a/b/c/", "/%2F/", "/getJobStatus/JuliaBatch/extra/"])
    params: list[tuple[str, str]] = []
    token = _token_value(rng, good_token)
    if token is not None:
        params.append(("jruntok", token))
    if rng.random() < 0.9:
        params.append(("jrunns", rng.choice([namespace, namespace, "other", "", "%zz", "x" * 70])))
    if rng.random() < 0.8:
        params.append(("name", rng.choice(_NAMES)))
    for _ in range(rng.randint(0, 6)):
        params.append((rng.choice(_PARAMS), rng.choice(_VALUES)))
    if rng.random() < 0.2 and params:
        params.append(rng.choice(params))  # a repeated parameter
    rng.shuffle(params)
    query = "&".join(f"{k}={v}" if rng.random() < 0.95 else k for k, v in params)
    if rng.random() < 0.05:
        query += rng.choice(["&", "&&", "=", "&=x", "#frag", ";a=b"])
    target = f"{path}?{query}" if query else path
    # Non-ASCII and spaces are percent-encoded so the request line stays valid HTTP.
    return quote(target, safe=_PRINTABLE)


_PRINTABLE = "".join(ch for ch in string.printable if not ch.isspace())


def _raw_get(port: int, target: str, method: str = "GET") -> tuple[int, bytes]:
    """Send one request exactly as written (no client-side normalisation); return status, body."""
    request = (
        f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    ).encode("ascii")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


@pytest.mark.slow
def test_fuzzed_requests_get_an_envelope_and_never_a_500(
    server: LocalServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Hostile input: fuzzed verbs, names, queries and tokens get a 4xx envelope, never a 500."""
    rng = random.Random(2024)
    port = int(server.url.rsplit(":", 1)[1])
    count = scaled(3000, 200)
    statuses: Counter[int] = Counter()
    bad: list[str] = []
    caplog.set_level("ERROR")
    for _ in range(count):
        target = _fuzz_target(rng, _b64(server.token), server.namespace)
        method = "GET" if rng.random() < 0.95 else rng.choice(["POST", "DELETE", "HEAD", "PUT"])
        status, body = _raw_get(port, target, method)
        statuses[status] += 1
        problem = _check_answer(status, body, method)
        if problem:
            bad.append(f"{method} {target[:200]} -> {status} {body[:200]!r}: {problem}")
    status, body = _raw_get(
        port, f"/getSystemStatus/?jruntok={quote(_b64(server.token))}&jrunns=default"
    )
    server_errors = [r.getMessage() for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    record(
        "fuzzed requests",
        requests=count,
        **{f"status {k}": v for k, v in sorted(statuses.items())},
        findings=len(bad),
    )
    assert status == 200
    assert json.loads(body) == {"code": 0, "data": True}
    assert not bad, bad[:10]
    assert not server_errors, server_errors[:5]


def test_a_very_long_request_line_gets_the_envelope(server: LocalServer) -> None:
    """Hostile input: a 100 KB request line is served; a 300 KB one gets a 4xx envelope."""
    port = int(server.url.rsplit(":", 1)[1])
    token = quote(_b64(server.token), safe="")
    status, body = _raw_get(
        port, f"/getSystemStatus/?jruntok={token}&jrunns=default&pad={'x' * 100_000}"
    )
    assert status == 200
    assert json.loads(body) == {"code": 0, "data": True}
    target = f"/getSystemStatus/?jruntok={token}&jrunns=default&pad={'x' * 300_000}"
    try:
        status, body = _raw_get(port, target)
    except ConnectionResetError:
        status, body = 0, b""
    assert 400 <= status < 500
    assert json.loads(body)["code"] == status
    status, _ = _raw_get(port, f"/getSystemStatus/?jruntok={token}&jrunns=default")
    assert status == 200


@pytest.mark.anyio
async def test_a_spec_too_long_for_a_url_raises_a_typed_error_before_any_request() -> None:
    """Hostile input: a spec whose wire form cannot fit in a URL raises a JuliaRunError."""
    router = respx.MockRouter(assert_all_called=False)
    client = httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler))
    spec = JuliaBatch(
        name="big", start_script="s.py", run_volume="work", envvars={"BIG": "x" * 100_000}
    )
    async with client, Context("https://juliarun.invalid", "t", "ns", client=client) as ctx:
        with pytest.raises(jr.SpecError, match="too long to send") as caught:
            await ctx.submit_job(spec)
    assert caught.value.field == "envvars"
    assert router.calls.call_count == 0


def _b64(token: str) -> str:
    return base64.b64encode(token.encode()).decode()


def _check_answer(status: int, body: bytes, method: str) -> str | None:
    if status >= 500:
        return "server error"
    if method == "HEAD":
        return None
    try:
        envelope = json.loads(body)
    except ValueError:
        return "not JSON"
    if not isinstance(envelope, dict) or set(envelope) != {"code", "data"}:
        return "not the envelope"
    if status >= 400:
        if envelope["code"] == 0 or not isinstance(envelope["data"], str):
            return "an error without a nonzero code and a message"
    elif status == 200 and envelope["code"] != 0:
        return "200 with a nonzero code"
    return None


# -- paths cannot leave the data directory ---------------------------------------------


def _tree(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def test_names_and_volumes_cannot_reach_outside_the_data_dir(
    server: LocalServer, tmp_path: Path
) -> None:
    """Hostile input: `../`, encoded slashes and absolute paths in names and volumes go nowhere."""
    port = int(server.url.rsplit(":", 1)[1])
    token = quote(_b64(server.token), safe="")
    outside_before = _tree(tmp_path) - _tree(server.data_dir)
    tricks = [
        "../../escape",
        "..%2F..%2Fescape",
        "%2E%2E%2F%2E%2E%2Fescape",
        "/tmp/escape",
        "%2Ftmp%2Fescape",
        "..",
        "%2e%2e",
        "escape%00",
        "a/../../escape",
        "..%5C..%5Cescape",
    ]
    answers: list[tuple[str, int]] = []
    for trick in tricks:
        targets = [
            f"/submitJob/JuliaBatch/?name={trick}&start_script=s.py&run_volume=work",
            f"/submitJob/JuliaBatch/?name=okname&start_script=s.py&run_volume={trick}",
            f"/submitJob/JuliaBatch/?name=okname2&start_script=s.py&run_volume=work"
            f"&additional_volumes=%5B%22{trick}%22%5D",
            f"/submitJob/JuliaBatch/?name=okname3&start_script=s.py&run_volume=work"
            f"&pkg_bundle={trick}",
            f"/getJobStatus/JuliaBatch/?name={trick}",
            f"/tailJob/JuliaBatch/?name={trick}",
            f"/streamLogs/JuliaBatch/?name={trick}",
            f"/deleteJob/JuliaBatch/?name={trick}&force=true",
            f"/getJobStatus/{trick}/?name=x",
        ]
        for target in targets:
            status, body = _raw_get(port, f"{target}&jruntok={token}&jrunns=default")
            answers.append((target, status))
            assert status in (400, 404), (target, status, body[:200])
            assert json.loads(body)["code"] != 0
    status, body = _raw_get(port, f"/listJobs/?jruntok={token}&jrunns=default")
    assert json.loads(body) == {"code": 0, "data": {}}
    for trick in ("../x", "/abs", "a/b", ".."):
        with pytest.raises(SpecError):
            jr.JobRef("JuliaBatch", trick)
        with pytest.raises(SpecError):
            jr.JuliaBatch(name="ok", start_script="s.py", run_volume=trick)
    outside_after = _tree(tmp_path) - _tree(server.data_dir)
    assert outside_after == outside_before
    assert not list(Path("/tmp").glob("escape*"))
    record("path tricks", requests=len(answers), tricks=len(tricks))


# -- no shell between args and the process ---------------------------------------------

ARGV_SCRIPT = """\
import json, os, sys
with open(os.path.join(os.environ["JRUN_DIR"], "argv.json"), "w") as fh:
    json.dump(sys.argv[1:], fh)
print(json.dumps(sys.argv[1:]))
"""
SHELLISH = [
    "$(touch pwned-subst)",
    "`touch pwned-backtick`",
    "; touch pwned-semicolon",
    "&& touch pwned-and",
    "| touch pwned-pipe",
    "> pwned-redirect",
    "*",
    "$HOME",
    "${PATH}",
    "a b  c",
    "'single'",
    '"double"',
    "\\",
    "\u2603 unicode",
    "",
    "-c",
    "$((1+1))",
    "\ttab",
    "line\nbreak",
]


@pytest.mark.anyio
async def test_args_and_command_reach_the_process_without_a_shell(
    server: LocalServer, volume: Path
) -> None:
    """Hostile input: `$(...)`, `;`, backticks in args and command arrive literally, never run."""
    script = write_script(volume, "argv.py", f"#!{sys.executable}\n{ARGV_SCRIPT}")
    job = jr.Generic(
        name="argv", image="none", run_volume="work", command=f"./{script}", args=SHELLISH
    )
    bad_command = jr.Generic(
        name="bad-command", image="none", run_volume="work", command="true; touch pwned-command"
    )
    async with Context(server.url, server.token, server.namespace) as ctx:
        await ctx.submit_job(job)
        await ctx.submit_job(bad_command)
        with anyio.fail_after(30):
            status = await ctx.wait_for_job(job)
            failed = await ctx.wait_for_job(bad_command)
    work = server.data_dir / "namespaces" / "default" / "jobs" / "argv" / "work"
    assert status.succeeded, status
    assert json.loads((work / "argv.json").read_text()) == SHELLISH
    assert failed.failed
    assert "not found" in (failed.message or "")
    assert not list(server.data_dir.rglob("pwned*"))
    assert not list(Path.cwd().glob("pwned*"))
