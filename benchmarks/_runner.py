"""Run the benchmarks in order and format their table."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence

from . import (
    call_overhead,
    concurrency,
    import_time,
    log_latency,
    log_throughput,
    memory,
    server_load,
    slurm,
    watchers,
)
from ._support import Row, ServerProcess, Sizes, bytecode_cache, server_process

#: Benchmarks that share one server process, by number.
ON_SHARED_SERVER: dict[int, Callable[[ServerProcess, Sizes], Awaitable[list[Row]]]] = {
    1: call_overhead.run,
    2: concurrency.run,
    3: log_throughput.run,
    4: log_latency.run,
    5: memory.run,
    6: watchers.run,
}
#: Benchmarks that need no server, or start their own.
ON_THEIR_OWN: dict[int, Callable[[Sizes], Awaitable[list[Row]]]] = {
    7: import_time.run,
    8: server_load.run,
    9: slurm.run,
}
ALL = sorted({*ON_SHARED_SERVER, *ON_THEIR_OWN})


async def run_benchmarks(
    sizes: Sizes,
    only: Sequence[int] = ALL,
    progress: Callable[[str], None] | None = None,
) -> list[Row]:
    """Run the benchmarks numbered ``only`` and return their rows."""
    rows: list[Row] = []
    shared = [n for n in only if n in ON_SHARED_SERVER]
    with bytecode_cache():
        if shared:
            with server_process() as server:
                for number in shared:
                    if progress:
                        progress(f"running {ON_SHARED_SERVER[number].__module__}")
                    rows += await ON_SHARED_SERVER[number](server, sizes)
        for number in only:
            if number in ON_THEIR_OWN:
                if progress:
                    progress(f"running {ON_THEIR_OWN[number].__module__}")
                rows += await ON_THEIR_OWN[number](sizes)
    return rows


HEADER = ("measure", "baseline", "ours", "ratio", "goal", "result")


def _cells(row: Row) -> tuple[str, ...]:
    ratio = "-" if row.ratio is None or math.isnan(row.ratio) else f"{row.ratio:.2f}"
    result = {True: "pass", False: "fall short", None: "info"}[row.passed]
    return (row.measure, row.baseline, row.ours, ratio, row.goal, result)


def format_table(rows: Sequence[Row], *, markdown: bool = False) -> str:
    """The results as an aligned text table, or a Markdown table."""
    cells = [HEADER, *(_cells(row) for row in rows)]
    if markdown:
        lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells[1:]]
    else:
        widths = [max(len(row[i]) for row in cells) for i in range(len(HEADER))]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in cells
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"{row.measure.split()[0]} {row.note}" for row in rows if row.note]
    return "\n".join([*lines, "", *notes] if notes else lines)
