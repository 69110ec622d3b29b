"""RSS of negatives.build as it goes: every 5,000 rows of each split, the process's RSS, the bytes pyarrow's
memory pool holds, and the Python heap's blocks (sys.getallocatedblocks), to tell growth from noise.

    PYTHONPATH=. python bench/results/2026-12-02-negatives-flat/rss_trace.py /tmp/flat100k
(WORK as bench/scale.py left it: WORK/prepared, WORK/params.yaml; writes WORK/trace-negatives.)
"""
import sys
import time
from pathlib import Path

import psutil
import pyarrow as pa

from maskgate import config
from maskgate.data import negatives

work = Path(sys.argv[1])
proc = psutil.Process()
t0 = time.perf_counter()


class Trace:
    """Stands in for tqdm in build: prints a line every 5,000 rows."""

    def __init__(self, total, desc, unit):
        self.total, self.desc, self.n = total, desc, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.line()

    def update(self, n):
        self.n += n
        if self.n % 5000 == 0:
            self.line()

    def line(self):
        print(f"{self.desc}: {self.n:>6} of {self.total} rows, {time.perf_counter() - t0:7.1f} s, "
              f"RSS {proc.memory_info().rss / 2**20:6.1f} MiB, pyarrow pool {pa.total_allocated_bytes() / 2**20:5.1f} MiB, "
              f"python blocks {sys.getallocatedblocks()}", flush=True)


negatives.tqdm = Trace
p = config.load(work / "params.yaml")
negatives.build(work / "prepared", work / "trace-negatives", p.negatives, p.seed)
print(f"peak RSS (ru_maxrss) {__import__('resource').getrusage(0).ru_maxrss / 1024:.1f} MiB")
