"""Parquet tables and shards written atomically, read back in place with pyarrow.

Stage outputs are folders of a few large parquet files (DVC slows badly on many small files).
A folder is built under a temporary name and renamed into place at the end, so an interrupted
stage never leaves a half-written output where DVC would cache it.
"""
from __future__ import annotations

import contextlib
import heapq
import json
import os
import shutil
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

ROW_GROUP = 256


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it replaces `path`, on failure it is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary name beside `path` to write to; renamed over `path` when the block ends without an
    error, so a reader never sees half a file. On an error the temporary file is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_json(obj, path: Path) -> None:
    """Pretty, key-sorted JSON (git diffs read well), written to a temporary name first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_table(records: list[dict], path: Path, schema: pa.Schema) -> None:
    pq.write_table(pa.Table.from_pylist(records, schema=schema), path, row_group_size=ROW_GROUP)


def write_records(records: Iterable[dict], path: Path, schema: pa.Schema, row_group: int = ROW_GROUP) -> int:
    """write_table for records made one by one (the same bytes): `row_group` of them in memory at a time;
    how many were written."""
    n, buffer = 0, []
    with pq.ParquetWriter(path, schema) as writer:
        for record in records:
            buffer.append(record)
            if len(buffer) == row_group:
                writer.write_table(pa.Table.from_pylist(buffer, schema=schema))
                n, buffer = n + len(buffer), []
        if buffer or not n:  # an empty split still gets a file with its schema
            writer.write_table(pa.Table.from_pylist(buffer, schema=schema))
            n += len(buffer)
    return n


def iter_records(path: Path, columns: list[str] | None = None) -> Iterator[dict]:
    """The records of one parquet file in order, one row group in memory at a time. One thread: read
    with the pool of threads, each thread's allocator kept its own memory and the RSS grew with each file."""
    f = open_parquet(path)
    for i in range(f.num_row_groups):
        yield from f.read_row_group(i, columns=columns, use_threads=False).to_pylist()


class ExternalSort:
    """Records sorted by `key` with a bound on what is held: `add` buffers up to `run` records, then
    writes them sorted to a parquet file (a run) in `folder`; `sorted()` merges the runs (heapq.merge,
    one row group of `row_group` records per run in memory), first merging `fan_in` runs at a time into
    longer runs while there are more. Equal keys keep the order they were added in. The runs are the
    caller's to remove (they are in `folder`).
    """

    def __init__(self, folder: Path, schema: pa.Schema, key, run: int = 2048, fan_in: int = 32,
                 row_group: int = 32):
        self.folder, self.schema, self.key = Path(folder), schema, key
        self.run, self.fan_in, self.row_group = run, fan_in, row_group
        self.buffer: list[dict] = []
        self.runs: list[Path] = []
        self.made = 0
        self.folder.mkdir(parents=True, exist_ok=True)

    def add(self, record: dict) -> None:
        self.buffer.append(record)
        if len(self.buffer) >= self.run:
            self._spill()

    def _new_run(self) -> Path:
        self.made += 1
        return self.folder / f"run-{self.made:06d}.parquet"

    def _spill(self) -> None:
        if self.buffer:
            self.buffer.sort(key=self.key)  # stable: equal keys stay in the order added
            path = self._new_run()
            write_records(self.buffer, path, self.schema, self.row_group)
            self.runs.append(path)
            self.buffer = []

    def _merge(self, paths: list[Path]) -> Iterator[dict]:
        return heapq.merge(*(iter_records(p) for p in paths), key=self.key)

    def sorted(self) -> Iterator[dict]:
        """Every record added, in key order. `runs` stays in the order the records were added (a merge
        of the first runs replaces them at the front), and heapq.merge takes ties from the earlier input
        first, so the sort is stable."""
        self._spill()
        while len(self.runs) > self.fan_in:
            head, self.runs = self.runs[:self.fan_in], self.runs[self.fan_in:]
            path = self._new_run()
            write_records(self._merge(head), path, self.schema, self.row_group)
            for p in head:
                p.unlink()
            self.runs.insert(0, path)
        return self._merge(list(self.runs))


class ShardWriter:
    """Writes records into `{prefix}-00000.parquet`, `-00001`, ... of `shard_size` records each,
    in row groups of `row_group` records (the unit `RowGroups` reads for one row)."""

    def __init__(self, folder: Path, prefix: str, schema: pa.Schema, shard_size: int, row_group: int = ROW_GROUP):
        self.folder, self.prefix, self.schema, self.shard_size = Path(folder), prefix, schema, shard_size
        self.row_group = row_group
        self.index, self.in_shard, self.writer, self.buffer, self.paths = 0, 0, None, [], []

    def add(self, record: dict) -> None:
        if self.writer is None:
            path = self.folder / f"{self.prefix}-{self.index:05d}.parquet"
            self.writer, self.in_shard = pq.ParquetWriter(path, self.schema), 0
            self.paths.append(path)
        self.buffer.append(record)
        self.in_shard += 1
        if len(self.buffer) >= self.row_group:
            self._flush()
        if self.in_shard >= self.shard_size:
            self._close_shard()

    def end_group(self) -> None:
        """End the current row group here (render: after each image's examples; see shards.py)."""
        if self.writer is not None:
            self._flush()

    def _flush(self) -> None:
        if self.buffer:
            table = pa.Table.from_pylist(self.buffer, schema=self.schema)
            self.buffer = []  # the records' own copy freed before the writer encodes (images: 256 of them)
            self.writer.write_table(table)

    def _close_shard(self) -> None:
        self._flush()
        self.writer.close()
        self.writer, self.index = None, self.index + 1

    def close(self) -> list[Path]:
        if self.writer is not None:
            self._close_shard()
        return self.paths


def write_shards(records: Iterable[dict], folder: Path, prefix: str, schema: pa.Schema, shard_size: int) -> list[Path]:
    w = ShardWriter(folder, prefix, schema, shard_size)
    for r in records:
        w.add(r)
    return w.close()


def shard_paths(folder: Path, prefix: str) -> list[Path]:
    return sorted(Path(folder).glob(f"{prefix}-*.parquet"))


def open_parquet(path: Path) -> pq.ParquetFile:
    """A parquet file opened for reading; ValueError naming the file if it is cut short or not parquet."""
    try:
        return pq.ParquetFile(path)
    except pa.ArrowInvalid as e:
        raise ValueError(f"{path} is not a readable parquet file: {e}") from None


def read_table(path: Path, columns: list[str] | None = None) -> list[dict]:
    return open_parquet(path).read(columns=columns).to_pylist()


class RecordsByKey:
    """The records of one parquet file grouped by the value of one column, read in place.

    Why: render wants each image's examples while it walks the prepared images, and reading the whole
    negatives table as records held every example of the split in the parent (about 4.5 kB each; 2 GB
    and more at MaskGroups-HQ's 450,000). Here only the key column is read whole, to where each key's
    rows are (8 bytes a row); `get` reads the row groups those rows lie in, keeping the last two read, so
    a file whose keys come in runs in the order they are asked for (the negatives, sorted by image as
    prepare's images are) is read once, row group by row group. Any other order gives the same records,
    re-reading row groups.
    """

    def __init__(self, path: Path, key: str, cache: int = 2):
        import numpy as np

        self.file = open_parquet(path)
        column = self.file.read(columns=[key], use_threads=False).column(key).combine_chunks().dictionary_encode()
        codes = column.indices.to_numpy(zero_copy_only=False)
        self.order = np.argsort(codes, kind="stable")  # rows grouped by key, each key's in file order
        self.starts = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=len(column.dictionary)))])
        self.code = {k: i for i, k in enumerate(column.dictionary.to_pylist())}
        meta = self.file.metadata
        self.groups = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
        self.cache: dict[int, list[dict]] = {}
        self.cache_size = cache

    def __len__(self) -> int:
        return int(self.starts[-1])

    def keys(self) -> list:
        return list(self.code)

    def get(self, key) -> list[dict]:
        """The records whose column is `key`, in file order ([] for a key the file does not hold)."""
        import numpy as np

        if key not in self.code:
            return []
        i = self.code[key]
        rows = self.order[self.starts[i]:self.starts[i + 1]]
        groups = np.searchsorted(self.groups, rows, side="right") - 1
        return [self._group(int(g))[int(r - self.groups[g])] for r, g in zip(rows, groups)]

    def _group(self, g: int) -> list[dict]:
        if g not in self.cache:
            if len(self.cache) >= self.cache_size:
                self.cache.pop(next(iter(self.cache)))  # the oldest read
            self.cache[g] = self.file.read_row_group(g, use_threads=False).to_pylist()
        return self.cache[g]


def iter_shards(folder: Path, prefix: str, columns: list[str] | None = None) -> Iterator[dict]:
    """Records of every shard in order, one row group in memory at a time (iter_records of each)."""
    for path in shard_paths(folder, prefix):
        yield from iter_records(path, columns)


class RowGroups:
    """Rows of parquet files by position (the files' rows one after another), read in place.

    Why not `datasets.load_dataset("parquet")`: it writes an Arrow copy of every file into its cache,
    keyed by path and modification time, so each re-render and each queued experiment adds another
    full copy of the overlays (tens of GB at MaskGroups-HQ scale). Here nothing is written: a lookup
    reads the row group that holds the row, with only the columns asked for. The files are opened
    lazily in each process (DataLoader workers fork), so the object pickles as its paths and offsets.

    At most `open_files` files are held open, the least recently read closed first: an open shard holds
    its parsed footer, about 1.6 MB for a render shard of 2,000 rows (and about 1 MB more once read), so
    holding every shard grew with the split (225 train shards at 450,000 rows: some 550 MB, in each
    DataLoader worker). Opening one again costs about 1.6 ms, against 3 to 4 ms to read a row group's overlays.
    Reads run on the calling thread: with pyarrow's thread pool each thread's allocator kept its own memory.
    """

    def __init__(self, paths: Iterable[Path], open_files: int = 16):
        self.paths = [Path(p) for p in paths]
        starts, groups = [0], []
        for fi, path in enumerate(self.paths):
            meta = open_parquet(path).metadata
            for g in range(meta.num_row_groups):
                groups.append((fi, g))
                starts.append(starts[-1] + meta.row_group(g).num_rows)
        self.groups, self.starts = groups, starts  # row group k holds rows starts[k] .. starts[k+1]-1
        self._files: dict[int, pq.ParquetFile] = {}  # least recently read first
        self._pid = os.getpid()
        self.open_files = open_files

    def __len__(self) -> int:
        return self.starts[-1]

    def __getstate__(self):
        return {**self.__dict__, "_files": {}}

    def _file(self, fi: int) -> pq.ParquetFile:
        if self._pid != os.getpid():  # a forked worker: its own file handles
            self._files, self._pid = {}, os.getpid()
        f = self._files.pop(fi, None)
        self._files[fi] = f = open_parquet(self.paths[fi]) if f is None else f  # now the most recently read
        while len(self._files) > self.open_files:
            self._files.pop(next(iter(self._files)))
        return f

    def take(self, indices: Iterable[int], columns: list[str]) -> pa.Table:
        """The rows at `indices`, in that order; each row group touched is read once."""
        import bisect

        indices = [int(i) for i in indices]
        wanted: dict[int, list[tuple[int, int]]] = {}  # row group -> [(position in the answer, row in the group)]
        for pos, i in enumerate(indices):
            if not 0 <= i < len(self):
                raise IndexError(f"row {i} of {len(self)}")
            k = bisect.bisect_right(self.starts, i) - 1
            wanted.setdefault(k, []).append((pos, i - self.starts[k]))
        pieces, order = [], []
        for k, rows in wanted.items():
            fi, g = self.groups[k]
            pieces.append(self._file(fi).read_row_group(g, columns=columns, use_threads=False).take([r for _, r in rows]))
            order += [pos for pos, _ in rows]
        if not pieces:  # no index asked for: an empty table of the columns
            return self._file(0).schema_arrow.empty_table().select(columns)
        table = pa.concat_tables(pieces)
        back = [0] * len(order)  # answer position -> row of `table`
        for j, pos in enumerate(order):
            back[pos] = j
        return table.take(back)

    def read(self, columns: list[str]) -> pa.Table:
        """Whole columns of every file, in order (the small ones: a table of them fits in memory)."""
        return pa.concat_tables([self._file(fi).read(columns=columns, use_threads=False) for fi in range(len(self.paths))])
