"""What the CLI prints while it waits: progress with the job's message."""

from __future__ import annotations

import io

from juliarun_aio import JobScale
from juliarun_aio.cli._output import Output


def test_worker_progress_lines_carry_the_job_message() -> None:
    """Without a terminal, each change of scale or message prints one line, with the message."""
    stdout = io.StringIO()
    out = Output(stdout=stdout, interactive=False)
    with out.worker_progress("train", 3) as report:
        report(None, None)
        report(JobScale(running=0, requested=3), None)
        report(JobScale(running=0, requested=3), None)
        report(JobScale(running=0, requested=3), "worker-3 cannot start: no script")
    assert stdout.getvalue().splitlines() == [
        "train: ?/3 workers running",
        "train: 0/3 workers running (3 requested)",
        "train: 0/3 workers running (3 requested): worker-3 cannot start: no script",
    ]


def test_worker_progress_bar_shows_the_job_message() -> None:
    """On a terminal the live bar's description carries the job's message."""
    stdout = io.StringIO()
    out = Output(stdout=stdout, interactive=True)
    with out.worker_progress("train", 3) as report:
        report(JobScale(running=1, requested=3), "worker-3 cannot start: no script")
    assert "train: workers running: worker-3 cannot start: no script" in stdout.getvalue()
