"""The benchmark harness still runs: every measure of the quick size produces numbers."""

from __future__ import annotations

import math
import re
import tempfile
from pathlib import Path

import anyio
import pytest
from support import in_ci

from benchmarks._runner import ALL, format_table, run_benchmarks
from benchmarks._support import QUICK


@pytest.mark.slow
def test_quick_benchmarks_produce_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each measure yields rows of finite numbers and leaves no files behind; the Slurm one
    says why it skipped where there is no cluster (and may not skip in CI)."""
    # A temporary directory of its own, so that other benchmark runs cannot blur the check.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    rows = anyio.run(run_benchmarks, QUICK, ALL)
    numbers = {re.match(r"\d+", row.measure) for row in rows}
    assert {int(match[0]) for match in numbers if match} == set(ALL)
    for row in rows:
        if row.ours.startswith("skipped: "):
            assert row.measure.startswith("9. Slurm"), row
            assert not in_ci(), row
            continue
        assert row.numbers, row.measure
        assert all(math.isfinite(value) for value in row.numbers.values()), row
    assert len(format_table(rows).splitlines()) >= len(rows) + 2
    assert list(tmp_path.glob("juliarun-bench-*")) == []
