"""Where the rest of negatives' growth goes: copy a written {split}.parquet through tables.write_records
(one row group read at a time, the stage's writer) and print the RSS every 200 row groups, with the
Python heap's blocks. Nothing else grows here, so what grows is the writer's (the footer metadata it
keeps until the file is closed: each row group's column chunks and their statistics).

    PYTHONPATH=. python bench/results/2026-12-02-negatives-flat/writer_trace.py /tmp/flat100k/trace-negatives/train.parquet
"""
import hashlib
import sys
import tempfile
from pathlib import Path

import psutil
import pyarrow.parquet as pq

from maskgate.data.negatives import EXAMPLE_SCHEMA
from maskgate.utils import tables

source = Path(sys.argv[1])
proc = psutil.Process()
f = pq.ParquetFile(source)


def records():
    for g in range(f.num_row_groups):
        if g % 200 == 0:
            print(f"row group {g:>5} of {f.num_row_groups}: RSS {proc.memory_info().rss / 2**20:6.1f} MiB, "
                  f"python blocks {sys.getallocatedblocks()}", flush=True)
        yield from f.read_row_group(g, use_threads=False).to_pylist()


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


with tempfile.TemporaryDirectory(dir=source.parent) as d:
    n = tables.write_records(records(), Path(d) / "copy.parquet", EXAMPLE_SCHEMA)
    rss_closed = proc.memory_info().rss
    same = digest(Path(d) / "copy.parquet") == digest(source)
print(f"{n} records written, the same bytes as {source.name}: {same}; footer of {source.name}: "
      f"{f.metadata.serialized_size} bytes; RSS after close {rss_closed / 2**20:.1f} MiB, "
      f"peak (ru_maxrss) {__import__('resource').getrusage(0).ru_maxrss / 1024:.1f} MiB")
