"""Credentials, namespaces, malformed requests, and the exact requests of JuliaRunClient.jl."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import logging
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_support import FAST, Api, encode_token
from support import write_script

from juliarun_aio.server import Engine, LocalServer, ServerConfig, create_app

SLEEPER = "import time\nprint('up', flush=True)\ntime.sleep(60)\n"


@pytest.fixture
def two_namespaces(tmp_path: Path) -> Iterator[LocalServer]:
    """A server with namespaces ``default`` and ``team``, each with its own token."""
    tokens = {"default": "token-default", "team": "token-team"}
    with LocalServer(tmp_path / "data", tokens=tokens, **FAST) as server:
        yield server


def test_missing_or_wrong_credentials_are_401(api: Api) -> None:
    """No token, undecodable base64 and an unknown token all answer 401 with the envelope."""
    response = api.http.get("/listJobs/", params={"jrunns": "default"})
    assert response.status_code == 401
    assert response.json()["code"] == 401
    bad = api.http.get("/listJobs/", params={"jruntok": "%%%not-base64", "jrunns": "default"})
    assert bad.status_code == 401
    assert api.get("listJobs", token="wrong").status_code == 401
    assert api.get("listJobs", namespace="").status_code == 400


def test_token_of_another_namespace_is_403(two_namespaces: LocalServer) -> None:
    """A valid token used for another namespace answers 403."""
    api = Api(two_namespaces.url, "token-team", "default")
    try:
        assert "namespace" in api.error(403, "listJobs")
        assert api.data("listJobs", namespace="team") == {}
        assert api.error(403, "getJobStatus", "JuliaBatch", name="x", namespace="elsewhere")
    finally:
        api.close()


def test_namespaces_are_isolated(two_namespaces: LocalServer, tmp_path: Path) -> None:
    """Jobs of one namespace are invisible (404) from another; names may repeat across them."""
    default = Api(two_namespaces.url, "token-default", "default")
    team = Api(two_namespaces.url, "token-team", "team")
    try:
        for ns in ("default", "team"):
            work = two_namespaces.data_dir / "namespaces" / ns / "volumes" / "work"
            work.mkdir(parents=True)
            write_script(work, "hello.py", f"print('{ns}')\n")
        default.data(
            "submitJob", "JuliaBatch", name="job", start_script="hello.py", run_volume="work"
        )
        assert team.data("listJobs") == {}
        team.error(404, "getJobStatus", "JuliaBatch", name="job")
        team.error(404, "deleteJob", "JuliaBatch", name="job", force="true")
        team.error(404, "tailJob", "JuliaBatch", name="job", count=5)
        team.data("submitJob", "JuliaBatch", name="job", start_script="hello.py", run_volume="work")
        default.wait_done("JuliaBatch", "job")
        team.wait_done("JuliaBatch", "job")
        assert default.lines("JuliaBatch", "job") == ["default"]
        assert team.lines("JuliaBatch", "job") == ["team"]
    finally:
        default.close()
        team.close()


def test_token_never_appears_in_logs(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    """Neither the raw nor the base64 token is written to any log record."""
    caplog.set_level(logging.DEBUG)
    api.data("listJobs")
    api.get("nosuchverb")
    api.get("getJobStatus", "JuliaBatch", name="nope")
    api.get("listJobs", token="wrong-token")
    for secret in (api.token, encode_token(api.token), "wrong-token", encode_token("wrong-token")):
        assert secret not in caplog.text


MALFORMED: list[tuple[str, dict[str, str], int]] = [
    ("/nosuchverb/", {}, 404),
    ("/getJobStatus/NoSuchType/", {"name": "x"}, 404),
    ("/getJobStatus/", {"name": "x"}, 404),
    ("/listJobs/JuliaBatch/", {}, 404),
    ("/a/b/c/", {}, 404),
    ("/getJobStatus/JuliaBatch/", {}, 400),
    ("/getJobStatus/JuliaBatch/", {"name": "Bad_Name"}, 400),
    ("/getJobStatus/JuliaBatch/", {"name": "a" * 70}, 400),
    ("/tailJob/JuliaBatch/", {"name": "x", "count": "many"}, 400),
    ("/setJobScale/JuliaBatch/", {"name": "x", "parallelism": "-2"}, 400),
    ("/setJobScale/JuliaBatch/", {"name": "x"}, 400),
    ("/deleteJob/JuliaBatch/", {"name": "x", "force": "maybe"}, 400),
    ("/tailJob/JuliaBatch/", {"name": "x", "stream": "stdin"}, 400),
    (
        "/submitJob/JuliaBatch/",
        {"name": "x", "start_script": "a", "run_volume": "w", "envvars": "{"},
        400,
    ),
    (
        "/submitJob/JuliaBatch/",
        {"name": "x", "start_script": "a", "run_volume": "w", "ports": "Dict("},
        400,
    ),
    (
        "/submitJob/Generic/",
        {"name": "x", "image": "i", "run_volume": "w", "args": "[1, 2]"},
        400,
    ),
    ("/submitJob/JuliaBatch/", {"name": "x", "start_script": "a\x00b", "run_volume": "w"}, 400),
]


def test_malformed_requests_are_4xx_with_the_envelope(api: Api) -> None:
    """Malformed requests answer a 4xx status and the error envelope, never a 500."""
    for path, params, status in MALFORMED:
        query = {"jruntok": encode_token(api.token), "jrunns": api.namespace} | params
        response = api.http.get(path, params=query)
        assert response.status_code == status, (path, params, response.text)
        body = response.json()
        assert body["code"] == status
        assert isinstance(body["data"], str)


def test_odd_http_is_handled(api: Api) -> None:
    """Other methods get 405, repeated or undecodable parameters 400; the server keeps going."""
    auth = f"jruntok={quote(encode_token(api.token))}&jrunns=default"
    assert api.http.post(f"/listJobs/?{auth}").status_code == 405
    assert api.http.get(f"/getJobStatus/JuliaBatch/?{auth}&name=a&name=b").status_code == 400
    assert api.http.get(f"/getJobStatus/JuliaBatch/?{auth}&name=%FF%FE").status_code == 400
    assert api.http.get(f"/listJobs/?{auth}&%ZZ=1").status_code == 200
    assert api.data("getSystemStatus") is True


def test_fuzzed_queries_never_fail_the_server(server: LocalServer) -> None:
    """Random parameters to every read verb answer 2xx/4xx with an envelope, never a 5xx."""
    api = Api(server.url, server.token, server.namespace)
    verbs = ["getJobStatus", "getJobScale", "setJobScale", "getJobEndpoint", "getEncodedURL"]
    verbs += ["deleteJob", "tailJob", "streamLogs"]
    keys = st.sampled_from(["name", "count", "stream", "force", "parallelism", "port", "cursor"])

    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        verb=st.sampled_from(verbs),
        kind=st.sampled_from(["JuliaBatch", "Generic", "JuliaParBatch"]),
        params=st.dictionaries(keys, st.text(max_size=12)),
    )
    def check(verb: str, kind: str, params: dict[str, str]) -> None:
        response = api.get(verb, kind, **params)
        assert response.status_code < 500, response.text
        if response.status_code >= 400:
            assert response.json()["code"] == response.status_code

    try:
        check()
    finally:
        api.close()


def julia_query(params: dict[str, str]) -> str:
    """Build a query string the way HTTP.jl does for JuliaRunClient.jl (RFC 3986, space=%20)."""
    query = "&".join(f"{quote(k, safe='-._~')}={quote(v, safe='-._~')}" for k, v in params.items())
    assert "+" not in query
    assert " " not in query
    return query


def test_replay_of_juliarunclient_requests(server: LocalServer, volume: Path) -> None:
    """The exact requests JuliaRunClient.jl sends get the documented answers."""
    write_script(
        volume,
        "master.py",
        "import os, time\n"
        "env = os.environ\n"
        "print('A =', env['A'], env['GREETING'], 'port', env['JRUN_PORT_HTTP'], flush=True)\n"
        "while not os.path.exists('finish'):\n    time.sleep(0.02)\n",
    )
    write_script(volume, "worker.py", "import time\ntime.sleep(60)\n")
    # The Julia client sends base64 of the token file's bytes, which may end in a newline.
    auth = {
        "jruntok": base64.b64encode(server.token.encode() + b"\n").decode(),
        "jrunns": "default",
    }
    client = httpx.Client(timeout=30)
    helper = Api(server.url, server.token, "default")

    def call(verb: str, kind: str | None = None, **params: str) -> object:
        path = f"/{verb}/{kind}/" if kind else f"/{verb}/"
        response = client.get(f"{server.url}{path}?{julia_query(auth | params)}")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["code"] == 0, body
        return body["data"]

    try:
        assert call("getSystemStatus") is True
        submitted = call(
            "submitJob",
            "JuliaParBatch",
            name="jlpar",
            start_script="master.py",
            run_volume="work",
            worker_start_script="worker.py",
            nworkers="1",
            ports='Dict("http" => (80, 80))',
            envvars='Dict("A"=>"1", "GREETING"=>"hello world")',
            additional_volumes='["data"]',
            external="false",
            restart="Never",
        )
        assert submitted is None
        assert call("listJobs") == {"jlpar": {"type": "JuliaParBatch"}}
        status = call("getJobStatus", "JuliaParBatch", name="jlpar")
        assert isinstance(status, dict)
        for key, kind in {
            "succeeded": bool,
            "created": bool,
            "parallelism": int,
            "nworkers_succeeded": int,
            "npending": int,
            "nuptodate": int,
        }.items():
            assert isinstance(status[key], kind)
        assert call("setJobScale", "JuliaParBatch", name="jlpar", parallelism="2") is True
        helper.wait_scale("JuliaParBatch", "jlpar", 2)
        assert call("getJobScale", "JuliaParBatch", name="jlpar") == [2, 2]
        endpoint = call("getJobEndpoint", "JuliaParBatch", name="jlpar")
        assert isinstance(endpoint, list)
        host, ports = endpoint
        assert host == "127.0.0.1"
        assert list(ports) == ["http"]
        assert call("getEncodedURL", "JuliaParBatch", name="jlpar", port="80") == (
            f"http://127.0.0.1:{ports['http']}/"
        )
        tail = helper.wait_lines("JuliaParBatch", "jlpar", 1)
        assert tail == [f"A = 1 hello world port {ports['http']}"]
        assert call("tailJob", "JuliaParBatch", name="jlpar", count="50") == tail[0]
        assert call("tailJob", "JuliaParBatch", name="jlpar", count="50", stream="stderr") == ""
        assert call("deleteJob", "JuliaParBatch", name="jlpar", force="true") is True
        assert call("listJobs") == {}
    finally:
        client.close()
        helper.close()


def test_unexpected_errors_are_500_and_the_server_survives(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception inside a verb answers a 500 envelope; later requests work."""

    def broken(self: Engine, namespace: str) -> dict[str, object]:
        raise RuntimeError("boom")

    monkeypatch.setattr(Engine, "list_jobs", broken)
    response = api.get("listJobs")
    assert response.status_code == 500
    body = response.json()
    assert body["code"] == 500
    assert "boom" not in body["data"]
    monkeypatch.undo()
    assert api.data("listJobs") == {}


def test_create_app_manages_its_engine(tmp_path: Path) -> None:
    """create_app starts the engine on startup and stops it on shutdown when mounted alone."""
    engine = Engine(ServerConfig(data_dir=tmp_path / "data", tokens={"default": "t"}))
    app = create_app(engine, url=lambda: "http://testserver")
    query = {"jruntok": encode_token("t"), "jrunns": "default"}

    async def main() -> object:
        async with app.router.lifespan_context(app):
            assert engine.url == "http://testserver"
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url=engine.url) as client:
                response = await client.get("/getSystemStatus/", params=query)
                return response.json()

    assert asyncio.run(main()) == {"code": 0, "data": True}


def _raw_get(url: str, target: str) -> tuple[int, Any]:
    """GET with http.client, which (unlike httpx) sends URLs of any length."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("GET", target)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_long_queries_work_and_too_long_ones_get_414(api: Api, volume: Path) -> None:
    """A 100 KB submitJob query is served; a query over 256 KiB is a 414 envelope."""
    write_script(volume, "env.py", "import os\nprint(len(os.environ['BIG']))\n")
    auth = julia_query({"jruntok": encode_token(api.token), "jrunns": "default"})
    big = julia_query(
        {
            "name": "big",
            "start_script": "env.py",
            "run_volume": "work",
            "envvars": json.dumps({"BIG": "x" * 100_000}),
        }
    )
    status, body = _raw_get(api.url, f"/submitJob/JuliaBatch/?{auth}&{big}")
    assert (status, body) == (200, {"code": 0, "data": None})
    assert api.wait_done("JuliaBatch", "big")["phase"] == "succeeded"
    assert api.lines("JuliaBatch", "big") == ["100000"]
    status, body = _raw_get(api.url, f"/getSystemStatus/?{auth}&pad={'x' * 300_000}")
    assert status == body["code"] == 414


def test_long_queries_are_served_where_httptools_is_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvicorn would pick httptools where installed, which refuses queries over 64 KiB."""
    # A stand-in that makes httptools look installed, and fails if it is ever used.
    monkeypatch.setitem(sys.modules, "httptools", types.ModuleType("httptools"))
    with LocalServer(tmp_path / "data", **FAST) as server:
        auth = julia_query({"jruntok": encode_token(server.token), "jrunns": "default"})
        status, body = _raw_get(server.url, f"/getSystemStatus/?{auth}&pad={'x' * 100_000}")
    assert (status, body) == (200, {"code": 0, "data": True})
