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
