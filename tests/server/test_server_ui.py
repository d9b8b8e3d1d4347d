"""The dashboard's HTTP side: its files and headers, sessions, login, CSRF, and its API."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from server_support import FAST, Api
from support import wait_until, write_script

from juliarun_aio.server import LocalServer, ServerConfig, ServerProcess, create_app
from juliarun_aio.server import _ui as ui_module
from juliarun_aio.server._engine import Engine
from juliarun_aio.server._ui import SESSION_IDLE, SESSION_LIFETIME, Dashboard

UI_FILES = Path(ui_module.__file__).with_name("ui")


@contextmanager
def signed_in(server: LocalServer, namespace: str | None = None) -> Iterator[httpx.Client]:
    """A client that opened a dashboard link of ``server``."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        answer = client.get(server.new_dashboard_url(namespace))
        assert answer.status_code == 303
        yield client


def csrf_of(client: httpx.Client) -> str:
    """The CSRF token of the client's session."""
    token: str = client.get("/ui/api/session").json()["data"]["csrf"]
    return token


@pytest.fixture
def ui(server: LocalServer) -> Iterator[httpx.Client]:
    """A client signed in to the server's dashboard."""
    with signed_in(server) as client:
        yield client


def test_the_page_and_its_files_come_with_strict_headers(server: LocalServer) -> None:
    """/ui/ and its files are served with a CSP without inline code, no framing, no-store
    answers; /ui redirects; other file names are not served."""
    with httpx.Client(base_url=server.url) as client:
        page = client.get("/ui/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp
        assert "script-src 'self';" in csp
        assert "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["referrer-policy"] == "no-referrer"
        assert page.headers["cache-control"] == "no-store"
        for name, media_type in ui_module.STATIC_FILES.items():
            answer = client.get(f"/ui/static/{name}")
            assert answer.status_code == 200
            assert answer.headers["content-type"] == media_type
            assert answer.headers["x-frame-options"] == "DENY"
        redirect = client.get("/ui")
        assert (redirect.status_code, redirect.headers["location"]) == (308, "ui/")
        for path in ("/ui/static/index.html", "/ui/static/..%2f_ui.py", "/ui/static/x.js"):
            assert client.get(path).status_code == 404


def test_the_page_fetches_nothing_from_elsewhere_and_has_no_inline_code() -> None:
    """The shipped files name no other site and the HTML carries no inline script or
    style, so the CSP needs no exception."""
    html = (UI_FILES / "index.html").read_text()
    assert re.findall(r"<script(?![^>]*\bsrc=)", html) == []
    assert " style=" not in html
    assert "<style" not in html
    assert re.findall(r"\son[a-z]+=", html) == []
    for path in UI_FILES.iterdir():
        text = path.read_text()
        # The SVG namespace is a name, not something fetched.
        urls = set(re.findall(r"https?://[^\s\"'`)]+", text)) - {"http://www.w3.org/2000/svg"}
        assert urls == set(), path.name


def test_the_api_needs_a_session(server: LocalServer, api: Api) -> None:
    """Without a session (or with an unknown one) the API answers 401 and shows no job."""
    api.data("submitJob", "JuliaBatch", name="unseen", start_script="x.py", run_volume="work")
    port = server.url.rsplit(":", 1)[1]
    for cookies in ({}, {f"juliarun_ui_{port}": "made-up"}):
        with httpx.Client(base_url=server.url, cookies=cookies) as client:
            for path in ("/ui/api/getAllJobInfo", "/ui/api/session", "/ui/api/listJobs"):
                answer = client.get(path)
                assert answer.status_code == 401
                assert "unseen" not in answer.text
                assert answer.headers["cache-control"] == "no-store"


def test_a_login_link_works_once(server: LocalServer) -> None:
    """A link sets an HttpOnly, SameSite=Strict cookie and sends the browser to /ui/; the
    same link again signs nobody in."""
    link = server.new_dashboard_url()
    with httpx.Client() as first, httpx.Client() as second:
        answer = first.get(link)
        assert (answer.status_code, answer.headers["location"]) == (303, "./")
        cookie = answer.headers["set-cookie"]
        for attribute in ("HttpOnly", "SameSite=strict", "Path=/ui", f"Max-Age={SESSION_LIFETIME}"):
            assert attribute in cookie
        session = first.get(f"{server.url}/ui/api/session").json()["data"]
        assert session["namespace"] == server.namespace
        assert len(session["csrf"]) >= 32

        again = second.get(link)
        assert (again.status_code, again.headers["location"]) == (303, "./?login=expired")
        assert "set-cookie" not in again.headers
        assert second.get(f"{server.url}/ui/api/session").status_code == 401
        # A browser that is signed in already just goes on.
        assert first.get(link).headers["location"] == "./"


def test_login_links_are_for_one_namespace(tmp_path: Path) -> None:
    """A link made for a namespace signs in to that namespace only; an unknown namespace
    gets no link."""
    tokens = {"default": "token-default", "team": "token-team"}
    with LocalServer(tmp_path / "data", tokens=tokens, **FAST) as server:
        api = Api(server.url, "token-default", "default")
        try:
            api.data("submitJob", "JuliaBatch", name="mine", start_script="x.py", run_volume="work")
        finally:
            api.close()
        with signed_in(server, "team") as client:
            assert client.get("/ui/api/session").json()["data"]["namespace"] == "team"
            assert client.get("/ui/api/getAllJobInfo").json()["data"] == {}
            missing = client.get("/ui/api/getJobStatus/JuliaBatch/", params={"name": "mine"})
            assert missing.status_code == 404
        with pytest.raises(ValueError, match="no namespace 'nobody'"):
            server.new_dashboard_url("nobody")


def test_the_api_answers_like_the_protocol(
    server: LocalServer, api: Api, ui: httpx.Client, volume: Path
) -> None:
    """Each read verb answers the same through the dashboard's API as through the protocol,
    errors included."""
    write_script(volume, "hello.py", "print('hello')\n")
    api.data("submitJob", "JuliaBatch", name="same", start_script="hello.py", run_volume="work")
    api.wait_done("JuliaBatch", "same")
    for verb, kind, params in (
        ("getAllJobInfo", None, {}),
        ("listJobs", None, {}),
        ("getJobStatus", "JuliaBatch", {"name": "same"}),
        ("getJobScale", "JuliaBatch", {"name": "same"}),
        ("tailJob", "JuliaBatch", {"name": "same"}),
        ("getJobStatus", "JuliaBatch", {"name": "other"}),
        ("getJobStatus", "Nope", {"name": "same"}),
        ("getJobScale", "JuliaBatch", {}),
    ):
        path = f"/{verb}/{kind}/" if kind else f"/{verb}/"
        direct = api.get(verb, kind, **params)
        through_ui = ui.get(f"/ui/api{path}", params=params)
        assert (through_ui.status_code, through_ui.json()) == (direct.status_code, direct.json())
        assert through_ui.headers["cache-control"] == "no-store"
    status = api.status("JuliaBatch", "same")
    assert isinstance(status["created_at"], float)


def test_changes_need_a_post_with_the_csrf_token(
    server: LocalServer, api: Api, ui: httpx.Client, volume: Path
) -> None:
    """setJobScale and deleteJob need a POST from this site with the session's CSRF token;
    the verbs that submit or redefine jobs are not offered; no credential is taken."""
    write_script(volume, "wait.py", "import time\ntime.sleep(60)\n")
    api.data(
        "submitJob",
        "JuliaParBatch",
        name="par",
        start_script="wait.py",
        worker_start_script="wait.py",
        run_volume="work",
        nworkers=1,
    )
    wait_until(
        lambda: api.data("getJobScale", "JuliaParBatch", name="par") == [1, 1],
        what="the worker to run",
    )
    path = "/ui/api/setJobScale/JuliaParBatch/"
    params = {"name": "par", "parallelism": "2"}
    csrf = csrf_of(ui)
    refused = (
        ui.get(path, params=params),
        ui.post(path, params=params),
        ui.post(path, params=params, headers={"X-CSRF-Token": "forged"}),
        ui.post(
            path,
            params=params,
            headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"},
        ),
    )
    assert [answer.status_code for answer in refused] == [405, 403, 403, 403]
    assert api.data("getJobScale", "JuliaParBatch", name="par") == [1, 1]
    accepted = ui.post(path, params=params, headers={"X-CSRF-Token": csrf, "Origin": server.url})
    assert accepted.json() == {"code": 0, "data": True}
    assert api.data("getJobScale", "JuliaParBatch", name="par")[1] == 2

    assert ui.get("/ui/api/submitJob/JuliaBatch/", params={"name": "x"}).status_code == 404
    assert ui.post("/ui/api/updateJob/JuliaParBatch/", params={"name": "par"}).status_code == 404
    with_token = ui.get("/ui/api/getAllJobInfo", params={"jruntok": "x", "jrunns": "default"})
    assert with_token.status_code == 400
    assert ui.post("/ui/api/getAllJobInfo", headers={"X-CSRF-Token": csrf}).status_code == 405

    deleted = ui.post(
        "/ui/api/deleteJob/JuliaParBatch/",
        params={"name": "par", "force": "true"},
        headers={"X-CSRF-Token": csrf},
    )
    assert deleted.json() == {"code": 0, "data": True}
    assert api.get("getJobStatus", "JuliaParBatch", name="par").status_code == 404


def test_the_login_form(tmp_path: Path) -> None:
    """The form signs in with a namespace and its own token, sent as JSON from this site;
    anything else is refused and starts no session."""
    tokens = {"default": "token-default", "team": "token-team"}
    with LocalServer(tmp_path / "data", tokens=tokens, **FAST) as server:
        for body, headers, status in (
            ({"namespace": "default", "token": "wrong"}, {}, 401),
            ({"namespace": "default", "token": "token-team"}, {}, 401),
            ({"namespace": "nobody", "token": "token-team"}, {}, 401),
            ({"namespace": "default"}, {}, 400),
            ({"namespace": "default", "token": "token-default"}, {"Origin": "http://x.test"}, 403),
        ):
            with httpx.Client(base_url=server.url) as client:
                answer = client.post("/ui/api/login", json=body, headers=headers)
                assert answer.status_code == status, body
                assert "set-cookie" not in answer.headers
                assert client.get("/ui/api/session").status_code == 401
        with httpx.Client(base_url=server.url) as client:
            form = client.post("/ui/api/login", data={"namespace": "team", "token": "token-team"})
            assert form.status_code == 415
            assert client.post("/ui/api/login", content=b"{not json").status_code == 415
            answer = client.post(
                "/ui/api/login",
                json={"namespace": "team", "token": "token-team"},
                headers={"Origin": server.url},
            )
            assert answer.json() == {"code": 0, "data": {"namespace": "team"}}
            assert "HttpOnly" in answer.headers["set-cookie"]
            assert client.get("/ui/api/session").json()["data"]["namespace"] == "team"


def test_signing_out_ends_the_session(ui: httpx.Client) -> None:
    """Sign-out needs the CSRF token; afterwards the session no longer works."""
    assert ui.post("/ui/api/logout").status_code == 403
    assert ui.get("/ui/api/getAllJobInfo").status_code == 200
    answer = ui.post("/ui/api/logout", headers={"X-CSRF-Token": csrf_of(ui)})
    assert answer.json() == {"code": 0, "data": True}
    assert ui.get("/ui/api/getAllJobInfo").status_code == 401


def test_the_log_stream_can_start_from_the_end(api: Api, ui: httpx.Client, volume: Path) -> None:
    """streamLogs takes tail=N to start N lines before the end, else works as the verb."""
    write_script(volume, "ten.py", "for i in range(1, 11):\n    print('line', i)\n")
    api.data("submitJob", "JuliaBatch", name="ten", start_script="ten.py", run_volume="work")
    api.wait_done("JuliaBatch", "ten")
    path = "/ui/api/streamLogs/JuliaBatch/"
    answer = ui.get(path, params={"name": "ten", "tail": "3"})
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/x-ndjson"
    assert answer.headers["cache-control"] == "no-store"
    items = [json.loads(line) for line in answer.text.splitlines()]
    assert [item.get("text") for item in items[:-1]] == ["line 8", "line 9", "line 10"]
    assert items[-1] == {"end": True, "cursor": 10, "phase": "succeeded"}
    everything = ui.get(path, params={"name": "ten", "tail": "100", "follow": "false"})
    assert len(everything.text.splitlines()) == 11
    from_cursor = ui.get(path, params={"name": "ten", "cursor": "9"})
    assert [json.loads(line).get("text") for line in from_cursor.text.splitlines()] == [
        "line 10",
        None,
    ]
    both = ui.get(path, params={"name": "ten", "tail": "3", "cursor": "2"})
    assert both.status_code == 400
    assert ui.get(path, params={"name": "none", "tail": "3"}).status_code == 404
    assert ui.get(path, params={"name": "ten", "tail": "-1"}).status_code == 400


@contextmanager
def in_memory(tmp_path: Path, now: list[float]) -> Iterator[tuple[Dashboard, httpx.ASGITransport]]:
    """An application with a dashboard whose clock reads ``now[0]``, served in memory."""
    engine = Engine(ServerConfig(data_dir=tmp_path / "data", tokens={"default": "t0ken"}))
    dashboard = Dashboard(engine, clock=lambda: now[0])
    try:
        app = create_app(engine, manage_engine=False, dashboard=dashboard)
        yield dashboard, httpx.ASGITransport(app=app)
    finally:
        engine.stop()


@pytest.mark.anyio
async def test_sessions_expire_when_idle_and_after_their_lifetime(tmp_path: Path) -> None:
    """A session ends after SESSION_IDLE seconds without a request, and SESSION_LIFETIME
    seconds after it began however much it is used."""
    now = [1000.0]
    base = "http://testserver"
    with in_memory(tmp_path, now) as (dashboard, transport):
        async with httpx.AsyncClient(transport=transport, base_url=base) as idle:
            await idle.get(dashboard.login_url(base, "default"))
            now[0] += SESSION_IDLE - 1
            assert (await idle.get("/ui/api/getAllJobInfo")).status_code == 200
            now[0] += SESSION_IDLE + 1
            assert (await idle.get("/ui/api/getAllJobInfo")).status_code == 401
        async with httpx.AsyncClient(transport=transport, base_url=base) as busy:
            await busy.get(dashboard.login_url(base, "default"))
            started = now[0]
            while now[0] - started < SESSION_LIFETIME - SESSION_IDLE:
                now[0] += SESSION_IDLE - 1
                assert (await busy.get("/ui/api/getAllJobInfo")).status_code == 200
            now[0] = started + SESSION_LIFETIME + 1
            assert (await busy.get("/ui/api/getAllJobInfo")).status_code == 401


@pytest.mark.anyio
async def test_the_least_recently_used_session_goes_when_there_are_too_many(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past MAX_SESSIONS the session unused for longest ends; the others go on."""
    monkeypatch.setattr(ui_module, "MAX_SESSIONS", 2)
    now = [0.0]
    base = "http://testserver"
    with in_memory(tmp_path, now) as (dashboard, transport):
        clients = [httpx.AsyncClient(transport=transport, base_url=base) for _ in range(3)]
        try:
            for client in clients[:2]:
                now[0] += 1
                await client.get(dashboard.login_url(base, "default"))
            now[0] += 1
            assert (await clients[0].get("/ui/api/session")).status_code == 200  # used last
            now[0] += 1
            await clients[2].get(dashboard.login_url(base, "default"))
            statuses = [(await client.get("/ui/api/session")).status_code for client in clients]
            assert statuses == [200, 401, 200]
        finally:
            for client in clients:
                await client.aclose()


@pytest.mark.slow
def test_the_server_prints_a_dashboard_link(data_dir: Path) -> None:
    """``python -m juliarun_aio.server`` prints ``dashboard: <URL>``, which signs in once,
    and never prints the token."""
    with ServerProcess(data_dir, args=("--log-level", "debug")) as server:
        with httpx.Client() as client:
            assert client.get(server.dashboard_url).headers["location"] == "./"
            assert client.get(f"{server.url}/ui/api/session").status_code == 200
            client.post(
                f"{server.url}/ui/api/login",
                json={"namespace": server.namespace, "token": server.token},
            )
        printed = server.output()
    assert f"dashboard: {server.dashboard_url}\n" in printed
    assert server.token not in printed
