"""Demo parallel job, worker: announce itself to the master, then stay up until stopped."""

import os
import pathlib
import time

MAX_SECONDS = 120

pid = os.getpid()
jobdir = pathlib.Path(os.environ.get("JRUN_DIR", "."))
partial = sum(i * i for i in range(pid % 1000))
report = jobdir / f"worker-{pid}.txt"
temporary = report.with_suffix(".tmp")
temporary.write_text(f"pid {pid}, partial sum {partial}\n")
temporary.replace(report)  # the master never sees a half-written report
print(f"worker {pid}: ready", flush=True)
time.sleep(MAX_SECONDS)
