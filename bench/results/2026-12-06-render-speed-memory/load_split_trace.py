"""train's load_split step by step: RSS after each step and the peak during it (polled every 5 ms).
With a second argument, Dataset() is given that fingerprint instead of hashing the table.

    PYTHONPATH=. python bench/results/2026-12-06-render-speed-memory/load_split_trace.py RENDERED [FINGERPRINT]
"""
import sys
import threading
import time
from pathlib import Path

import psutil

P = psutil.Process()
peak = [0]


def poll():
    while True:
        peak[0] = max(peak[0], P.memory_info().rss)
        time.sleep(0.005)


threading.Thread(target=poll, daemon=True).start()


def rss(tag):
    time.sleep(0.03)
    print(f"{tag:<16} rss {P.memory_info().rss / 2**20:7.0f} MiB  peak during {peak[0] / 2**20:7.0f} MiB", flush=True)
    peak[0] = 0


import pyarrow as pa  # noqa: E402
from datasets import Dataset  # noqa: E402
from datasets.table import InMemoryTable  # noqa: E402

from maskgate.model.train import KEEP_COLUMNS, ROW  # noqa: E402
from maskgate.utils import tables  # noqa: E402

rss("imports")
shards = tables.RowGroups(sorted(Path(sys.argv[1]).glob("train-*.parquet")))
rss("RowGroups")
small = shards.read([c for c in KEEP_COLUMNS if c != "overlay"])
rss(f"read {small.nbytes / 2**20:.0f} MiB")
small = small.append_column(ROW, pa.array(range(len(shards)), pa.int64()))
ds = Dataset(InMemoryTable(small), fingerprint=sys.argv[2]) if len(sys.argv) > 2 else Dataset(InMemoryTable(small))
rss("Dataset()")
