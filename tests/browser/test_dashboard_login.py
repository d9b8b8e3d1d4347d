"""Signing in to the dashboard, and what a page without a session, or a forged change, gets."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_support import Page, parallel, sdk
from support import QUICK_KILL, write_script

from juliarun_aio import Context, JobRef, JuliaBatch
from juliarun_aio.server import LocalServer, ServerProcess

pytestmark = pytest.mark.browser

QUIET = "import time\nprint('quiet job up', flush=True)\ntime.sleep(120)\n"


def test_a_page_without_a_session_shows_a_login_and_no_job(
    page: Page, server: LocalServer, volume: Path
) -> None:
    """Without a session the list and a job page show the login form, never a job."""
    write_script(volume, "quiet.py", QUIET)
    job = JuliaBatch(name="hidden-job", start_script="quiet.py", run_volume="work")
    sdk(server.url, server.token, server.namespace, lambda ctx: ctx.submit_job(job))
    for path in ("/ui/", "/ui/#/job/JuliaBatch/hidden-job"):
        page.open(path)
        page.wait(lambda: page.visible("form[data-role='form']"), "the login form")
        assert "hidden-job" not in page.driver.page_source
        assert page.all("table.jobs, .log") == []
    answer = page.fetch("api/getAllJobInfo")
    assert answer["status"] == 401
    assert "hidden-job" not in answer["body"]


def test_the_login_link_works_once_and_leaves_the_address_bar(
    page: Page, server: LocalServer
) -> None:
    """The printed link starts a session in an HttpOnly, SameSite=Strict cookie and
    redirects to /ui/ without the code; opened again it leads to the login form."""
    link = server.new_dashboard_url()
    page.sign_in(link)
    assert page.driver.current_url == f"{server.url}/ui/"
    assert page.find("#namespace").text == server.namespace
    cookies = page.driver.get_cookies()
    assert [cookie["name"] for cookie in cookies] == [f"juliarun_ui_{server.url.rsplit(':', 1)[1]}"]
    assert cookies[0]["httpOnly"] is True
    assert cookies[0]["sameSite"] == "Strict"
    assert cookies[0]["path"] == "/ui"
    assert page.js("return document.cookie") == ""

    page.driver.execute_cdp_cmd("Network.clearBrowserCookies", {})
    page.driver.get(link)
    page.wait(lambda: page.visible("form[data-role='form']"), "the login form")
    assert "used already" in page.field("notice")
    assert page.driver.current_url == f"{server.url}/ui/"


def test_the_login_form_takes_a_namespace_and_its_token(page: Page, server: LocalServer) -> None:
    """A wrong token is refused with a message; the right one signs in and leaves no trace
    in the page; signing out ends the session."""
    page.open("/ui/")
    page.wait(lambda: page.visible("form[data-role='form']"), "the login form")
    form = page.find("form[data-role='form']")
    namespace = form.find_element("name", "namespace")
    namespace.clear()
    namespace.send_keys(server.namespace)
    form.find_element("name", "token").send_keys("not-the-token")
    form.find_element("css selector", "button").click()
    page.wait(lambda: page.visible("[data-role='error']"), "the refusal")
    assert page.field("error") == "unknown namespace, or not its token"
    assert form.find_element("name", "token").get_attribute("value") == ""

    form.find_element("name", "token").send_keys(server.token)
    form.find_element("css selector", "button").click()
    page.wait(lambda: page.visible("table.jobs"), "the job list")
    assert server.token not in page.driver.page_source
    assert page.js("return document.querySelector('input[name=token]')") is None

    page.find("#logout").click()
    page.wait(lambda: page.visible("form[data-role='form']"), "the login form again")
    assert page.fetch("api/getAllJobInfo")["status"] == 401


def test_changes_without_the_csrf_token_are_refused(
    signed_in: Page, server: LocalServer, volume: Path
) -> None:
    """Scaling or deleting from the signed-in page without the session's CSRF token, with
    a wrong one, or with a GET is refused, and the job is unchanged."""
    page = signed_in
    job = parallel(volume, "guarded")
    sdk(server.url, server.token, server.namespace, lambda ctx: ctx.submit_job(job))
    scale = "api/setJobScale/JuliaParBatch/?name=guarded&parallelism=4"
    delete = "api/deleteJob/JuliaParBatch/?name=guarded&force=true"
    for path in (scale, delete):
        assert page.fetch(path, "POST")["status"] == 403
        assert page.fetch(path, "POST", {"X-CSRF-Token": "forged"})["status"] == 403
        assert page.fetch(path)["status"] == 405
    ref = JobRef("JuliaParBatch", "guarded")

    def requested() -> int:
        scale = sdk(server.url, server.token, server.namespace, lambda c: c.get_job_scale(ref))
        return scale.requested

    assert requested() == 1
    csrf = json.loads(page.fetch("api/session")["body"])["data"]["csrf"]
    assert page.fetch(scale, "POST", {"X-CSRF-Token": csrf})["status"] == 200
    assert requested() == 4
    sdk(server.url, server.token, server.namespace, lambda c: c.delete_job(ref, force=True))


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[ServerProcess]:
    """The server in a process of its own, logging everything, so its output can be read."""
    args = (*QUICK_KILL, "--stop-jobs", "--log-level", "debug")
    with ServerProcess(tmp_path / "data", args=args) as running:
        yield running


def everything_the_page_holds(page: Page) -> str:
    """The page's HTML, its URL and every URL it fetched, its cookies (all of them, as the
    browser keeps them) and its storage."""
    seen: dict[str, object] = page.js(
        """
        const dump = (s) => Object.fromEntries(Object.keys(s).map((k) => [k, s.getItem(k)]));
        return {
          html: document.documentElement.outerHTML,
          url: location.href,
          fetched: performance.getEntries().map((e) => e.name),
          cookie: document.cookie,
          local: dump(localStorage),
          session: dump(sessionStorage),
        };
        """
    )
    seen["cookies"] = page.driver.execute_cdp_cmd("Network.getAllCookies", {})
    return json.dumps(seen)


def test_the_token_is_nowhere_in_the_page_or_the_server_output(
    page: Page, server_process: ServerProcess
) -> None:
    """Signed in with the link or the form, following a log and scaling, the page (HTML,
    URLs, cookies, storage) never holds the token, and the server never prints it."""
    server = server_process
    page.base = server.url
    token = server.token
    forms = (token, base64.b64encode(token.encode()).decode())
    volume = server.data_dir / "namespaces" / server.namespace / "volumes" / "work"
    job = parallel(volume, "watched")

    async def submit(ctx: Context) -> None:
        await ctx.submit_job(job)

    sdk(server.url, token, server.namespace, submit)
    page.sign_in(server.dashboard_url)
    page.wait(lambda: page.cell("watched", "phase") == "running", "the job in the list")
    held = [everything_the_page_holds(page)]
    page.open_job("JuliaParBatch", "watched")
    page.wait(lambda: "started" in page.log_texts(), "the job's log")
    field = page.find('[data-role="scale"] input[name="parallelism"]')
    field.clear()
    field.send_keys("2")
    page.find('[data-role="scale"] button').click()
    page.wait(lambda: page.field("workers") == "2 / 2", "two workers")
    held.append(everything_the_page_holds(page))

    page.find("#logout").click()
    page.wait(lambda: page.visible("form[data-role='form']"), "the login form")
    page.find("input[name='token']").send_keys(token)
    page.find("form[data-role='form'] button").click()
    page.wait(lambda: page.field("workers") == "2 / 2", "the job page again")
    held.append(everything_the_page_holds(page))

    assert "watched" in held[0]
    for text in held:
        for form in forms:
            assert form not in text
    printed = server.output()
    assert "dashboard: " in printed
    for form in forms:
        assert form not in printed
