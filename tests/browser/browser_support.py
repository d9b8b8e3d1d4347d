"""Helpers of the dashboard tests: Debian's headless Chromium driven by Selenium, the SDK.

Chromium and ChromeDriver come from Debian's packages (``chromium``, ``chromium-driver``);
nothing is downloaded.  The flags keep Chromium off the network (no component updates,
no background requests) and working as root.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from support import write_script

from juliarun_aio import Context, JuliaParBatch

__all__ = [
    "ARTIFACTS",
    "CHROMEDRIVER",
    "CHROMIUM",
    "UNTIL_FINISHED",
    "Page",
    "chromium_missing",
    "finish",
    "parallel",
    "sdk",
    "start_chromium",
]

T = TypeVar("T")

#: A process that says it started and runs until the file ``<job>.finish`` exists.
UNTIL_FINISHED = (
    "import os, time\n"
    "print('started', flush=True)\n"
    "while not os.path.exists(os.environ['JRUN_NAME'] + '.finish'):\n"
    "    time.sleep(0.05)\n"
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
#: Where screenshots of failed tests (and the README's screenshot) go.
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,820",
    "--force-device-scale-factor=1",
)


def chromium_missing() -> str | None:
    """Say what is missing to run the browser tests, or None when nothing is."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            return f"{path} is missing: apt-get install chromium chromium-driver"
    return None


def start_chromium(profile: Path) -> WebDriver:
    """Start headless Chromium with a fresh profile directory."""
    options = webdriver.ChromeOptions()
    # Both paths given: Selenium then never looks for (or downloads) a browser or driver.
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def sdk(url: str, token: str, namespace: str, call: Callable[[Context], Awaitable[T]]) -> T:
    """Run ``call`` with a fresh SDK Context, from synchronous test code."""

    async def main() -> T:
        async with Context(url=url, token=token, namespace=namespace) as ctx:
            return await call(ctx)

    return anyio.run(main)


def finish(volume: Path, name: str) -> None:
    """Let the processes of a job started with :data:`UNTIL_FINISHED` end."""
    (volume / f"{name}.finish").touch()


def parallel(
    volume: Path, name: str, *, nworkers: int = 1, ports: dict[str, tuple[int, int]] | None = None
) -> JuliaParBatch:
    """A parallel job whose master and workers run until :func:`finish`."""
    write_script(volume, "until_finished.py", UNTIL_FINISHED)
    return JuliaParBatch(
        name=name,
        start_script="until_finished.py",
        worker_start_script="until_finished.py",
        run_volume="work",
        nworkers=nworkers,
        ports=ports,
    )


class Page:
    """The dashboard in the browser: navigation, waiting, and reading what is shown.

    Args:
        driver: The browser.
        base: The server's URL.
    """

    def __init__(self, driver: WebDriver, base: str) -> None:
        self.driver = driver
        self.base = base.rstrip("/")
        self.last_job: str | None = None

    def open(self, path: str = "/ui/") -> None:
        """Load a page of the server."""
        if path.startswith("/ui/#/job/"):
            self.last_job = path
        self.driver.get(self.base + path)

    def open_job(self, kind: str, name: str) -> None:
        """Load the page of one job."""
        self.open(f"/ui/#/job/{kind}/{name}")

    def wait(self, check: Callable[[], T], what: str, timeout: float = 20.0) -> T:
        """Poll ``check`` until it returns something truthy; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        value: T | None = None
        while True:
            try:
                value = check()
            except (NoSuchElementException, StaleElementReferenceException):
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; last value {value!r}")
            time.sleep(0.05)

    def find(self, css: str) -> WebElement:
        """The first element matching ``css``."""
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def all(self, css: str) -> list[WebElement]:
        """Every element matching ``css``."""
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def visible(self, css: str) -> bool:
        """Whether an element matching ``css`` is shown."""
        return any(element.is_displayed() for element in self.all(css))

    def js(self, script: str, *args: Any) -> Any:
        """Run JavaScript in the page and return its value."""
        return self.driver.execute_script(script, *args)

    def fetch(self, path: str, method: str = "GET", headers: dict[str, str] | None = None) -> Any:
        """Make a request from the page (same origin, with its cookies); return status, body."""
        return self.driver.execute_async_script(
            """
            const [path, method, headers, done] = arguments;
            fetch(path, {method, headers, credentials: "same-origin"})
              .then(async (r) => done({status: r.status, body: await r.text()}))
              .catch((e) => done({status: -1, body: String(e)}));
            """,
            path,
            method,
            headers or {},
        )

    def sign_in(self, link: str) -> None:
        """Open a dashboard link and wait for the job list."""
        self.driver.get(link)
        self.wait(lambda: self.visible("table.jobs"), "the job list after signing in")

    def row(self, name: str) -> WebElement:
        """The row of job ``name`` in the job list."""
        return self.find(f'tr[data-job="{name}"]')

    def cell(self, name: str, cell: str) -> str:
        """The text of one cell of a job's row."""
        return self.row(name).find_element(By.CSS_SELECTOR, f'td[data-cell="{cell}"]').text

    def log_texts(self) -> list[str]:
        """The text of every log line shown on a job page."""
        texts: list[str] = self.js(
            "return [...document.querySelectorAll('.log .line .text')].map(e => e.textContent)"
        )
        return texts

    def field(self, role: str) -> str:
        """The text of a ``data-role`` element of the current view."""
        return self.find(f'[data-role="{role}"]').text

    def screenshot(self, name: str) -> Path:
        """Save a screenshot of the current page under :data:`ARTIFACTS`."""
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def save_failure(self, name: str) -> None:
        """Keep what helps explain a failure: the page, its HTML and console, the job list
        and the last job page."""
        try:
            self.screenshot(f"{name}-current")
            (ARTIFACTS / f"{name}-current.html").write_text(self.driver.page_source)
            entries = self.driver.get_log("browser")  # type: ignore[no-untyped-call]
            console = "\n".join(str(entry) for entry in entries)
            (ARTIFACTS / f"{name}-console.txt").write_text(console)
            self.open("/ui/#/")
            time.sleep(1.5)
            self.screenshot(f"{name}-jobs")
            if self.last_job is not None:
                self.open(self.last_job)
                time.sleep(1.5)
                self.screenshot(f"{name}-job")
        except WebDriverException:
            pass
