"""5. Memory: peak RSS growth of a process streaming a job's whole log.

Each measurement is one fresh process (:mod:`benchmarks._memory_child`): bare httpx
reading the ``streamLogs`` bytes (the floor: the HTTP stack's buffers) and the SDK's
``tail_logs(follow=False)``, over the big and the small log.  Flat means the growth
does not follow the log's size.
"""

from __future__ import annotations

import json
import subprocess
import sys

from ._support import Row, ServerProcess, Sizes, bulk_log

MB = 1 << 20
#: Growth from the small to the big log that still counts as flat.
FLAT_SLACK = 10 * MB


def _growth(server: ServerProcess, name: str, lines: int, mode: str) -> int:
    command = [
        sys.executable,
        "-m",
        "benchmarks._memory_child",
        server.url,
        server.token,
        name,
        str(lines),
        mode,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=600)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["lines"] == lines, result
    return int(result["growth"])


async def run(server: ServerProcess, sizes: Sizes) -> list[Row]:
    async with server.context() as ctx:
        big = await bulk_log(server, ctx, sizes.log_lines)
        small = await bulk_log(server, ctx, sizes.small_log_lines)
    results: dict[tuple[str, int], float] = {}
    for job, lines in ((small, sizes.small_log_lines), (big, sizes.log_lines)):
        for mode in ("bare", "sdk"):
            results[(mode, lines)] = _growth(server, job.name, lines, mode)
    bare = results[("bare", sizes.log_lines)]
    ours = results[("sdk", sizes.log_lines)]
    ours_small = results[("sdk", sizes.small_log_lines)]
    flat = ours - ours_small <= FLAT_SLACK
    big_label, small_label = f"{sizes.log_lines:,}", f"{sizes.small_log_lines:,}"
    return [
        Row(
            f"5. memory: peak RSS growth streaming {big_label} lines",
            f"bare httpx {bare / MB:.1f} MB",
            f"tail_logs {ours / MB:.1f} MB",
            ours / bare if bare else None,
            "<= 50 MB",
            ours <= 50 * MB,
            {"bare_bytes": bare, "sdk_bytes": ours},
        ),
        Row(
            f"5b. memory: flat in log size ({small_label} -> {big_label} lines)",
            f"tail_logs at {small_label}: {ours_small / MB:.1f} MB",
            f"at {big_label}: {ours / MB:.1f} MB",
            ours / ours_small if ours_small else None,
            f"+<= {FLAT_SLACK // MB} MB",
            flat,
            {"sdk_small_bytes": ours_small},
        ),
    ]
