import pyarrow as pa
import pytest

from maskgate.utils import tables
SCHEMA = pa.schema([("i", pa.int32())])


def test_atomic_dir_replaces_only_on_success(tmp_path):
    out = tmp_path / "out"
    with tables.atomic_dir(out) as tmp:
        (tmp / "a").write_text("1")
    assert (out / "a").read_text() == "1"
    with pytest.raises(RuntimeError):
        with tables.atomic_dir(out) as tmp:
            (tmp / "a").write_text("half")
            raise RuntimeError("killed")
    assert (out / "a").read_text() == "1"  # the old output stands, no half-written one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_shards_split_and_read_back_in_order(tmp_path):
    paths = tables.write_shards(({"i": i} for i in range(10)), tmp_path, "train", SCHEMA, shard_size=4)
    assert [p.name for p in paths] == ["train-00000.parquet", "train-00001.parquet", "train-00002.parquet"]
    assert [r["i"] for r in tables.iter_shards(tmp_path, "train")] == list(range(10))


def test_write_json_is_sorted_and_stable(tmp_path):
    tables.write_json({"b": 1, "a": {"d": 2, "c": 3}}, tmp_path / "r.json")
    assert (tmp_path / "r.json").read_text() == '{\n  "a": {\n    "c": 3,\n    "d": 2\n  },\n  "b": 1\n}\n'


def test_records_by_key_give_each_keys_records_in_file_order_whatever_the_order_asked(tmp_path):
    import random

    schema = pa.schema([("k", pa.string()), ("i", pa.int32())])
    rng = random.Random(0)
    records = [{"k": rng.choice("abcdefg"), "i": i} for i in range(200)]  # keys interleaved, not in runs
    tables.write_records(records, tmp_path / "t.parquet", schema, row_group=7)
    by_key = tables.RecordsByKey(tmp_path / "t.parquet", "k")
    assert len(by_key) == 200 and sorted(by_key.keys()) == sorted({r["k"] for r in records})
    for key in ["g", "a", "c", "a", "b", "f", "e", "d"]:
        assert by_key.get(key) == [r for r in records if r["k"] == key]
    assert by_key.get("z") == []
    assert len(by_key.cache) <= 2  # row groups held: the last two read


def test_records_by_key_read_a_file_sorted_by_key_one_row_group_at_a_time(tmp_path, monkeypatch):
    schema = pa.schema([("k", pa.string()), ("i", pa.int32())])
    records = [{"k": f"img{i // 5:03d}", "i": i} for i in range(100)]  # runs of 5 rows, row groups of 8
    tables.write_records(records, tmp_path / "t.parquet", schema, row_group=8)
    by_key = tables.RecordsByKey(tmp_path / "t.parquet", "k")
    reads = []
    read = by_key.file.read_row_group
    monkeypatch.setattr(by_key.file, "read_row_group", lambda g, **kw: reads.append(g) or read(g, **kw))
    assert [r["i"] for k in sorted(by_key.keys()) for r in by_key.get(k)] == list(range(100))
    assert reads == list(range(13))  # each row group once, in order


@pytest.mark.parametrize("open_files", [1, 2, 16])
def test_row_groups_hold_at_most_open_files_and_read_the_same(tmp_path, open_files):
    paths = tables.write_shards(({"i": i} for i in range(50)), tmp_path, "x", SCHEMA, 10)
    rows = tables.RowGroups(paths, open_files=open_files)
    order = [49, 0, 11, 48, 25, 3, 3, 37, 12]
    assert rows.take(order, ["i"]).column("i").to_pylist() == order
    assert len(rows._files) <= open_files
    assert rows.read(["i"]).column("i").to_pylist() == list(range(50))
    assert len(rows._files) <= open_files
