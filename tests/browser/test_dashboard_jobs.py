"""The dashboard shows jobs and their logs live, and scales and deletes them."""

from __future__ import annotations

import re
from contextlib import aclosing
from pathlib import Path

import pytest
from browser_support import Page, finish, parallel, sdk
from selenium.webdriver.common.by import By
from support import write_script

from juliarun_aio import (
    Context,
    Endpoint,
    JobNotFoundError,
    JobRef,
    JobScale,
    JobSpec,
    JobStatus,
    JuliaBatch,
)
from juliarun_aio.server import LocalServer

pytestmark = pytest.mark.browser


def submit(server: LocalServer, spec: JobSpec) -> None:
    """Submit a job with the SDK."""
    sdk(server.url, server.token, server.namespace, lambda ctx: ctx.submit_job(spec))


def job_status(server: LocalServer, job: JobRef) -> JobStatus:
    """The job's status, read with the SDK."""
    return sdk(server.url, server.token, server.namespace, lambda ctx: ctx.get_job_status(job))


def job_scale(server: LocalServer, job: JobRef) -> JobScale:
    """The job's workers, read with the SDK."""
    return sdk(server.url, server.token, server.namespace, lambda ctx: ctx.get_job_scale(job))


def job_endpoint(server: LocalServer, job: JobRef) -> Endpoint:
    """The job's endpoint, read with the SDK."""
    return sdk(server.url, server.token, server.namespace, lambda ctx: ctx.get_job_endpoint(job))


def test_jobs_submitted_with_the_sdk_appear_live(
    signed_in: Page, server: LocalServer, volume: Path
) -> None:
    """A job submitted after the page opened shows up, with its phase, workers, endpoint
    link and age, and its phase changes without a reload."""
    page = signed_in
    job = parallel(volume, "live-list", nworkers=1, ports={"http": (8080, 80)})
    submit(server, job)
    page.wait(lambda: page.cell("live-list", "phase") == "running", "the new job, running")
    assert page.cell("live-list", "kind") == "JuliaParBatch"
    page.wait(lambda: page.cell("live-list", "workers") == "1 / 1", "one worker of one")
    assert re.fullmatch(r"\d+s", page.cell("live-list", "age"))
    port = job_endpoint(server, job.ref).ports["http"]
    link = page.row("live-list").find_element(By.CSS_SELECTOR, 'td[data-cell="endpoint"] a')
    assert link.get_attribute("href") == f"http://127.0.0.1:{port}/"
    finish(volume, "live-list")
    page.wait(lambda: page.cell("live-list", "phase") == "succeeded", "the job's new phase")
    assert page.find('tr[data-job="live-list"] .phase').get_attribute("class") == (
        "phase phase-succeeded"
    )


def test_log_lines_appear_live_while_the_job_prints(
    signed_in: Page, server: LocalServer, volume: Path
) -> None:
    """A job page shows each line while the job still runs, stderr apart from stdout,
    and user text as text."""
    page = signed_in
    write_script(
        volume,
        "talk.py",
        "import os, sys, time\n"
        "print('first <b>line</b> <img src=x>', flush=True)\n"
        "print('a warning', file=sys.stderr, flush=True)\n"
        "while not os.path.exists('talk.go'):\n"
        "    time.sleep(0.05)\n"
        "print('second line', flush=True)\n",
    )
    job = JuliaBatch(name="talk", start_script="talk.py", run_volume="work")
    submit(server, job)
    page.open_job("JuliaBatch", "talk")
    page.wait(lambda: "a warning" in page.log_texts(), "the first lines")
    assert job_status(server, job.ref).phase == "running"
    assert page.log_texts() == ["first <b>line</b> <img src=x>", "a warning"]
    assert page.all(".log b, .log img") == []
    classes = [line.get_attribute("class") for line in page.all(".log .line")]
    assert classes == ["line stdout", "line stderr"]
    assert page.find(".log .line .proc").text == "master"
    (volume / "talk.go").touch()
    page.wait(lambda: "second line" in page.log_texts(), "the line printed later")
    page.wait(lambda: page.field("log-state") == "ended: the job succeeded", "the end")
    assert page.log_texts()[-1] == "second line"


def test_a_followed_log_never_shows_a_new_job_given_the_same_name(
    signed_in: Page, server: LocalServer, volume: Path
) -> None:
    """A job deleted while its page follows the log ends the log there, even when a new
    job with the same name starts printing before the page reconnects."""
    page = signed_in
    for era in ("old", "new"):
        write_script(
            volume,
            f"{era}.py",
            "import time\n"
            f"for n in range(1, 11):\n    print('{era}', n, flush=True)\n"
            "time.sleep(300)\n",
        )
    old = JuliaBatch(name="reused", start_script="old.py", run_volume="work")
    new = JuliaBatch(name="reused", start_script="new.py", run_volume="work")
    submit(server, old)
    page.open_job("JuliaBatch", "reused")
    page.wait(lambda: "old 10" in page.log_texts(), "the old job's lines")

    async def replace(ctx: Context) -> None:
        await ctx.delete_job(old.ref, force=True)
        await ctx.submit_job(new)
        async with aclosing(ctx.tail_logs(new.ref)) as lines:
            async for line in lines:
                if line.text == "new 10":
                    break

    sdk(server.url, server.token, server.namespace, replace)
    page.wait(lambda: page.field("log-state") == "the job no longer exists", "the log's end")
    assert page.log_texts() == [f"old {n}" for n in range(1, 11)]
    sdk(server.url, server.token, server.namespace, lambda ctx: ctx.delete_job(new.ref, True))


def test_long_log_loads_earlier_lines_and_autoscroll_stops_when_scrolled_up(
    signed_in: Page, server: LocalServer, volume: Path
) -> None:
    """A long log opens at its end, "Load earlier lines" adds the lines before without
    moving the view, and new lines scroll the view only while it is at the bottom."""
    page = signed_in
    write_script(
        volume,
        "long.py",
        "import os, time\n"
        "for i in range(1, 2501):\n"
        "    print('line', i)\n"
        "print('line', 2500, 'printed', flush=True)\n"
        "for step in ('one', 'two'):\n"
        "    while not os.path.exists('long.' + step):\n"
        "        time.sleep(0.05)\n"
        "    print('after', step, flush=True)\n",
    )
    job = JuliaBatch(name="long", start_script="long.py", run_volume="work")
    submit(server, job)
    page.wait(
        lambda: (
            sdk(server.url, server.token, server.namespace, lambda ctx: ctx.tail_job(job, count=1))
            == "line 2500 printed"
        ),
        "the job's first 2501 lines in its log",
    )
    page.open_job("JuliaBatch", "long")
    page.wait(lambda: "line 2500 printed" in page.log_texts(), "the end of the log")
    texts = page.log_texts()
    assert texts[0] == "line 1502"
    assert len(texts) == 1000
    assert page.visible('[data-role="earlier"]')
    at_bottom = (
        "const l = document.querySelector('.log');"
        "return l.scrollHeight - l.scrollTop - l.clientHeight < 2;"
    )
    page.wait(lambda: page.js(at_bottom), "the view at the end of the log")

    page.js("document.querySelector('.log').scrollTop = 0")
    page.wait(lambda: page.visible('[data-role="follow"]'), "the follow button")
    (volume / "long.one").touch()
    page.wait(lambda: "after one" in page.log_texts(), "a new line while scrolled up")
    assert page.js("return document.querySelector('.log').scrollTop") == 0

    offset = (
        "return document.querySelector('.line[data-cursor=\"1502\"]').getBoundingClientRect().top"
    )
    before = page.js(offset)
    page.find('[data-role="earlier"]').click()
    page.wait(lambda: "line 502" in page.log_texts(), "the earlier lines")
    texts = page.log_texts()
    assert texts[:2] == ["line 502", "line 503"]
    assert texts[999:1001] == ["line 1501", "line 1502"]
    assert abs(page.js(offset) - before) < 2
    assert page.visible('[data-role="earlier"]')

    page.find('[data-role="follow"]').click()
    (volume / "long.two").touch()
    page.wait(lambda: "after two" in page.log_texts(), "the last line")
    page.wait(lambda: page.js(at_bottom), "the view following the end again")


def test_scale_from_the_page(signed_in: Page, server: LocalServer, volume: Path) -> None:
    """The scale form asks for workers through setJobScale; the page and its chart show
    them arrive."""
    page = signed_in
    job = parallel(volume, "scaled", nworkers=1)
    submit(server, job)
    page.open_job("JuliaParBatch", "scaled")
    page.wait(lambda: page.field("workers") == "1 / 1", "one worker running")
    field = page.find('[data-role="scale"] input[name="parallelism"]')
    assert field.get_attribute("value") == "1"
    field.clear()
    field.send_keys("3")
    page.find('[data-role="scale"] button').click()
    page.wait(lambda: page.field("scale-note") == "asked for 3 workers", "the scale answer")
    assert job_scale(server, job.ref).requested == 3
    page.wait(lambda: page.field("workers") == "3 / 3", "three workers running")
    chart = page.find('[data-role="chart"]')
    page.wait(lambda: chart.get_attribute("data-running") == "3", "the chart at three")
    assert int(chart.get_attribute("data-samples") or 0) >= 2
    assert len(page.all('[data-role="chart"] path.running')) == 1
    field = page.find('[data-role="scale"] input[name="parallelism"]')
    field.clear()
    field.send_keys("1")
    page.find('[data-role="scale"] button').click()
    page.wait(lambda: page.field("workers") == "1 / 1", "back to one worker")
    finish(volume, "scaled")
    page.wait(lambda: not page.visible('[data-role="scale"]'), "no scale form once ended")


def test_delete_from_the_page_asks_first(
    signed_in: Page, server: LocalServer, volume: Path
) -> None:
    """Delete opens a confirmation: cancel keeps the job, confirm deletes it (running or
    not) and goes back to the job list."""
    page = signed_in
    job = parallel(volume, "doomed", nworkers=1)
    submit(server, job)
    page.open_job("JuliaParBatch", "doomed")
    page.wait(lambda: page.field("phase") == "running", "the job running")
    page.find('[data-role="delete"]').click()
    page.wait(lambda: page.visible("dialog#confirm"), "the confirmation")
    assert "still running" in page.find("dialog#confirm").text
    page.find('dialog#confirm [data-role="cancel"]').click()
    page.wait(lambda: not page.visible("dialog#confirm"), "the confirmation to close")
    assert job_status(server, job.ref).phase == "running"

    page.find('[data-role="delete"]').click()
    page.wait(lambda: page.visible("dialog#confirm"), "the confirmation")
    page.find('dialog#confirm [data-role="ok"]').click()
    page.wait(lambda: page.visible("table.jobs"), "the job list")
    assert page.driver.current_url.endswith("/ui/#/")
    with pytest.raises(JobNotFoundError):
        job_status(server, job.ref)
    page.wait(lambda: not page.all('tr[data-job="doomed"]'), "the job gone from the list")
