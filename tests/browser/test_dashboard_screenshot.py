"""The README's pictures of the dashboard: the job list and a job page, with typical jobs.

They are written to ``test-artifacts/dashboard-jobs.png`` and
``test-artifacts/dashboard-job.png`` at every run; ``docs/dashboard.png`` is a copy of
the first (refresh it by copying when the page changes).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from browser_support import Page, sdk
from support import write_script

from juliarun_aio import Context, JobRef, JuliaBatch, JuliaParBatch
from juliarun_aio.server import LocalServer

pytestmark = pytest.mark.browser

MASTER = (
    "import os, sys, time\n"
    "print('loading 1.2 GB of training data', flush=True)\n"
    "print('warning: no GPU found, training on the CPU', file=sys.stderr, flush=True)\n"
    "epoch = 0\n"
    "while not os.path.exists('train.finish'):\n"
    "    epoch += 1\n"
    "    print(f'epoch {epoch:3d}  loss {1.9 / epoch:.4f}  workers ok', flush=True)\n"
    "    time.sleep(0.4)\n"
)
WORKER = (
    "import os, time\n"
    "print(os.environ['JRUN_PROC'], 'joined the cluster', flush=True)\n"
    "while not os.path.exists('train.finish'):\n"
    "    time.sleep(0.1)\n"
)
SERVE = "import os, time\nwhile not os.path.exists('train.finish'):\n    time.sleep(0.1)\n"


async def scene(ctx: Context) -> None:
    """Submit a finished, a failed, a serving and a parallel job."""
    await ctx.submit_job(
        JuliaBatch(name="prepare-data", start_script="prepare.py", run_volume="work")
    )
    await ctx.submit_job(
        JuliaBatch(name="nightly-report", start_script="report.py", run_volume="work")
    )
    await ctx.submit_job(
        JuliaBatch(
            name="results-api",
            start_script="serve.py",
            run_volume="work",
            ports={"http": (8000, 80)},
        )
    )
    await ctx.submit_job(
        JuliaParBatch(
            name="train",
            start_script="master.py",
            worker_start_script="worker.py",
            run_volume="work",
            nworkers=1,
        )
    )


def test_readme_screenshots(page: Page, server: LocalServer, volume: Path) -> None:
    """The job list and a job page are photographed with four jobs in four phases."""
    write_script(volume, "prepare.py", "for i in range(3):\n    print('prepared part', i)\n")
    write_script(
        volume,
        "report.py",
        "import sys\nprint('report: source table missing', file=sys.stderr)\nsys.exit(2)\n",
    )
    write_script(volume, "serve.py", SERVE)
    write_script(volume, "master.py", MASTER)
    write_script(volume, "worker.py", WORKER)
    try:
        sdk(server.url, server.token, server.namespace, scene)
        page.sign_in(server.new_dashboard_url())
        page.open_job("JuliaParBatch", "train")
        page.wait(lambda: page.field("workers") == "1 / 1", "the first worker")
        time.sleep(4)  # a stretch of the chart at one worker
        sdk(
            server.url,
            server.token,
            server.namespace,
            lambda ctx: ctx.set_job_scale(JobRef("JuliaParBatch", "train"), 3),
        )
        page.wait(lambda: page.field("workers") == "3 / 3", "three workers")
        time.sleep(3)  # and a stretch at three
        page.wait(lambda: len(page.log_texts()) >= 14, "a screenful of log")
        job_page = page.screenshot("dashboard-job")
        page.open("/ui/#/")
        phases = {
            "prepare-data": "succeeded",
            "nightly-report": "failed",
            "results-api": "running",
            "train": "running",
        }
        page.wait(
            lambda: all(page.cell(name, "phase") == phase for name, phase in phases.items()),
            "the four jobs in their phases",
        )
        jobs_page = page.screenshot("dashboard-jobs")
    finally:
        (volume / "train.finish").touch()
    for path in (job_page, jobs_page):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
