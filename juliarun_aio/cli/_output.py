"""What the CLI prints: JSON for scripts, tables and progress on a terminal, else plain text.

Results go to stdout; messages about what is happening go to stdout too, except with
``--json``, where stdout holds only JSON and messages go to stderr.  Everything printed
passes through the credential filter first, so no token reaches the screen or a log file.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TextIO

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from .._models import JobScale, JobStatus, endpoint_text, phase_of

__all__ = ["Output", "endpoint_text", "phase_of", "status_to_json"]


def status_to_json(status: JobStatus) -> dict[str, object]:
    """Return the status as the server sent it, plus ``phase`` and ``completed``."""
    return {**status.to_wire(), "phase": phase_of(status), "completed": status.completed}


class Output:
    """The CLI's terminal.

    Args:
        json_mode: Print results as JSON and messages to stderr.
        redact: Removes credentials from text; applied to everything printed.
        stdout: Where results go (default ``sys.stdout`` at construction).
        stderr: Where errors go (default ``sys.stderr`` at construction).
        interactive: Use tables and live progress (default: when stdout is a terminal).
    """

    def __init__(
        self,
        *,
        json_mode: bool = False,
        redact: Callable[[str], str] = str,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
        interactive: bool | None = None,
    ) -> None:
        self.json_mode = json_mode
        self.redact = redact
        self._out = stdout or sys.stdout
        self._err = stderr or sys.stderr
        self.console = Console(file=self._out, highlight=False)
        self.interactive = self.console.is_terminal if interactive is None else interactive

    # -- results ---------------------------------------------------------------------

    def write(self, text: str) -> None:
        """Print one line of a result (a URL, a log line) exactly as given."""
        self._out.write(self.redact(text) + "\n")
        self._out.flush()

    def json(self, value: object, *, compact: bool = False) -> None:
        """Print a JSON document (``compact`` for one-per-line streams)."""
        text = json.dumps(value, indent=None if compact else 2, ensure_ascii=False)
        self.write(text)

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        """Print a table: boxed on a terminal, aligned plain columns otherwise."""
        if self.interactive:
            table = Table(box=box.SIMPLE_HEAD, show_edge=False)
            for column in columns:
                table.add_column(column, overflow="fold")
            for row in rows:
                table.add_row(*(Text(self.redact(cell)) for cell in row))
            self.console.print(table)
            return
        cells = [list(columns), *([self.redact(cell) for cell in row] for row in rows)]
        widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
        for row in cells:
            self.write(
                "  ".join(
                    cell.ljust(width) for cell, width in zip(row, widths, strict=True)
                ).rstrip()
            )

    # -- messages --------------------------------------------------------------------

    def info(self, text: str, style: str = "") -> None:
        """Say what is happening (stdout, or stderr with ``--json``)."""
        text = self.redact(text)
        if self.interactive and not self.json_mode:
            self.console.print(Text(text, style=style))
            return
        stream = self._err if self.json_mode else self._out
        stream.write(text + "\n")
        stream.flush()

    def heading(self, text: str) -> None:
        """Start a section of a longer run (the demo)."""
        if self.interactive and not self.json_mode:
            self.console.rule(Text(text, style="bold"), align="left")
        else:
            self.info(f"== {text}")

    def error(self, what: str, todo: str = "") -> None:
        """Print the one-line error: ``juliarun: error: <what> -- <what to do>``."""
        line = f"juliarun: error: {what}" + (f" -- {todo}" if todo else "")
        self._err.write(self.redact(" ".join(line.split())) + "\n")
        self._err.flush()

    def warn(self, text: str) -> None:
        """Print ``juliarun: warning: <text>`` on stderr."""
        self._err.write(self.redact(f"juliarun: warning: {text}") + "\n")
        self._err.flush()

    # -- live progress ---------------------------------------------------------------

    @contextlib.contextmanager
    def worker_progress(
        self, job: str, wanted: int
    ) -> Iterator[Callable[[JobScale | None, str | None], None]]:
        """Show workers coming up: a live bar on a terminal, a line per change otherwise.

        Yields:
            A function to call with each new :class:`JobScale` (``None`` before the
            first) and the job's message (why a worker cannot start, say), shown with it.
        """
        if not self.interactive or self.json_mode:
            shown: list[str] = []

            def report(scale: JobScale | None, message: str | None) -> None:
                counts = "?" if scale is None else str(scale.running)
                line = f"{job}: {counts}/{wanted} workers running"
                if scale is not None:
                    line += f" ({scale.requested} requested)"
                if message:
                    line += f": {message}"
                if shown[-1:] != [line]:
                    shown.append(line)
                    self.info(line)

            yield report
            return
        columns = (
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=self.console) as progress:
            title = f"{job}: workers running"
            task = progress.add_task(title, total=max(wanted, 1))

            def advance(scale: JobScale | None, message: str | None) -> None:
                description = Text(title + (f": {self.redact(message)}" if message else ""))
                running = 0 if scale is None else min(scale.running, wanted)
                progress.update(task, completed=running, description=description.plain)

            yield advance
            if wanted == 0:
                progress.update(task, completed=1)

    @contextlib.contextmanager
    def status_progress(self, job: str) -> Iterator[Callable[[JobStatus], None]]:
        """Show a job's phase while waiting: a spinner on a terminal, a line per change.

        Yields:
            A function to call with each new :class:`JobStatus`.
        """
        if not self.interactive or self.json_mode:
            seen: list[str] = []

            def report(status: JobStatus) -> None:
                phase = phase_of(status)
                if seen[-1:] != [phase]:
                    seen.append(phase)
                    self.info(f"{job}: {phase}")

            yield report
            return
        with self.console.status(f"{job}: waiting") as spinner:

            def show(status: JobStatus) -> None:
                spinner.update(f"{job}: {phase_of(status)}")

            yield show
