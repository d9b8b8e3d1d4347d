"""Demo batch job: estimate pi in five steps, printing progress as it goes."""

import os
import random
import sys
import time

STEPS = 5
SAMPLES = 100_000

print(f"hello from {os.environ.get('JRUN_TYPE', '?')}/{os.environ.get('JRUN_NAME', '?')}")
rng = random.Random(2017)  # noqa: S311 - a Monte Carlo estimate, not a secret
inside = 0
for step in range(1, STEPS + 1):
    inside += sum(rng.random() ** 2 + rng.random() ** 2 <= 1.0 for _ in range(SAMPLES))
    print(f"step {step}/{STEPS}: pi is about {4 * inside / (step * SAMPLES):.4f}", flush=True)
    time.sleep(0.3)
print("a line on stderr, to show both streams", file=sys.stderr, flush=True)
print("done")
