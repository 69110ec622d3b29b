"""The render parent's hold on the negatives: every example of a split as records grouped by image (before),
against tables.RecordsByKey read image by image (after); peak RSS of this process (polled every 10 ms).
BIG: a negatives-like file made of 8 copies of a split, each under its own image names, in image order.

    PYTHONPATH=. python bench/results/2026-12-06-render-speed-memory/negatives_by_image.py SPLIT.parquet BIG.parquet old|new
"""
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from maskgate.utils import tables

P = psutil.Process()
peak = [0]


def poll():
    while True:
        peak[0] = max(peak[0], P.memory_info().rss)
        time.sleep(0.01)


split, big, how = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
if not big.exists():
    t = pq.read_table(split)
    images = t.column("image").to_pylist()
    parts = [t.set_column(t.schema.get_field_index("image"), "image", pa.array([f"c{k}/{x}" for x in images]))
             for k in range(8)]
    pq.write_table(pa.concat_tables(parts), big, row_group_size=256)
    sys.exit(f"made {big}; run again to measure")
threading.Thread(target=poll, daemon=True).start()
time.sleep(0.05)
start = P.memory_info().rss
if how == "old":
    by_image = defaultdict(list)
    for e in tables.read_table(big):
        by_image[e["image"]].append(e)
    n = sum(len(v) for v in by_image.values())
else:
    ex = tables.RecordsByKey(big, "image")
    n = sum(len(ex.get(k)) for k in sorted(ex.keys()))
time.sleep(0.05)
print(f"{how}: {n} examples, peak RSS {peak[0] / 2**20:.0f} MiB (start {start / 2**20:.0f} MiB)")
