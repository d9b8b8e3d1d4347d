"""Fixtures of the dashboard tests: one headless Chromium per run, one server per module.

Without Chromium the tests are skipped, unless ``CI`` is set: there a missing browser is
a failure (CI installs it).  A failed test leaves screenshots of the page it was on, the
job list and the last job page under ``test-artifacts/``.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from browser_support import Page, chromium_missing, start_chromium
from selenium.webdriver.chrome.webdriver import WebDriver

from juliarun_aio.server import LocalServer

CALL_REPORT = pytest.StashKey[pytest.TestReport]()


def in_ci() -> bool:
    """Whether the tests run in CI (``CI`` set to anything but empty, 0 or false)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each test's outcome where its ``page`` fixture can see it."""
    report = yield
    if report.when == "call":
        item.stash[CALL_REPORT] = report
    return report


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    """Headless Chromium with a fresh profile, shared by the tests of a run."""
    missing = chromium_missing()
    if missing is not None:
        if in_ci():
            pytest.fail(f"the browser tests need Chromium in CI: {missing}")
        pytest.skip(missing)
    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """A local server shared by the tests of a module (job names differ per test)."""
    with LocalServer(tmp_path_factory.mktemp("data"), kill_grace=0.5) as running:
        yield running


@pytest.fixture
def volume(server: LocalServer) -> Path:
    """The run volume ``work`` of the server's namespace."""
    path = server.data_dir / "namespaces" / server.namespace / "volumes" / "work"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def page(browser: WebDriver, server: LocalServer, request: pytest.FixtureRequest) -> Iterator[Page]:
    """The browser with no cookie and a blank page; screenshots are kept if the test fails."""
    browser.execute_cdp_cmd("Network.clearBrowserCookies", {})
    browser.get("about:blank")
    page = Page(browser, server.url)
    yield page
    report = request.node.stash.get(CALL_REPORT, None)
    if report is not None and report.failed:
        page.save_failure(request.node.name)


@pytest.fixture
def signed_in(page: Page, server: LocalServer) -> Page:
    """The browser signed in to the server's namespace, on the job list."""
    page.sign_in(server.new_dashboard_url())
    return page
