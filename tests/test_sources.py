import json
import zipfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from maskgate.data import demo
from maskgate.data import sources
from tests.conftest import box_mask, jpeg_bytes, make_row, rle, settings

ROW = make_row("r0", "a.jpg", "the box", [rle(box_mask(40, 60, 0, 9, 0, 9))], [[0]])


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet"])
def test_local_rows_formats(tmp_path, fmt):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(jpeg_bytes(40, 60))
    path = tmp_path / f"rows.{fmt}"
    if fmt == "jsonl":
        path.write_text(json.dumps(ROW) + "\n")
    elif fmt == "json":
        path.write_text(json.dumps([ROW]))
    else:
        pq.write_table(pa.Table.from_pylist([ROW]), path)
    source = sources.load_local(tmp_path)
    rows, store = source.rows["train"], source.images
    assert [r["id"] for r in rows] == ["r0"]
    assert store.read("a.jpg")[:2] == b"\xff\xd8"


def test_local_parquet_is_read_row_group_by_row_group(tmp_path, monkeypatch, params):
    from maskgate.data.validation import Validation

    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(jpeg_bytes(40, 60))
    rows = [{**ROW, "id": f"r{i}"} for i in range(7)]
    rows[5]["gt_mask_group"] = [[3]]  # in the third row group: its skip must still name it
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet", row_group_size=2)
    assert pq.ParquetFile(tmp_path / "rows.parquet").num_row_groups == 4

    def whole(*args, **kwargs):
        raise AssertionError("the rows file was read whole")

    monkeypatch.setattr(pq.ParquetFile, "read", whole)
    monkeypatch.setattr(pq, "read_table", whole)
    source = sources.load_local(tmp_path)
    raws = list(source.rows["train"])
    assert raws == pa.Table.from_pylist(rows).to_pylist()  # the same rows in the same order
    s = settings(params)
    check = Validation(source.images, s.prepare.mask_size_mismatch, s.limits)
    assert [r.row_id for r in check.rows(raws)] == ["r0", "r1", "r2", "r3", "r4", "r6"]
    assert check.skipped()["examples"]["index_out_of_range"].startswith("row 5 (id r5): ")


def test_local_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        sources.load_local(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no rows file"):
        sources.load_local(tmp_path)


def test_zip_images_with_and_without_top_folder(tmp_path):
    for top in ("", "images_resized/"):
        path = tmp_path / f"imgs{len(top)}.zip"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr(top + "a.jpg", b"abc")
        store = sources.ZipImages(path)
        assert store.read("a.jpg") == b"abc"
        with pytest.raises(sources.ImageMissing):
            store.read("b.jpg")


def test_hub_split_roles():
    assert sources.split_roles(["train", "validation"], "train", "validation", "o/d") == (
        {"train": "train", "test": "validation"}, None)
    roles, note = sources.split_roles(["validation"], "train", "validation", "o/d")
    assert roles == {"train": "validation"} and "single split" in note
    roles, note = sources.split_roles(["train", "dev"], "train", "validation", "o/d")
    assert roles == {"train": "train"} and "no split 'validation'" in note
    with pytest.raises(ValueError, match="data.hub_train_split='train' is not a split of o/d"):
        sources.split_roles(["a", "b"], "train", "validation", "o/d")


@pytest.mark.parametrize("name", ["a.jpg", "sub/a.jpg"])
def test_safe_names(name):
    assert sources.safe_name(name) == name


@pytest.mark.parametrize("name", ["../a.jpg", "/a.jpg", "a/../../b", "", None, 3, "~/a", "a\\b"])
def test_unsafe_names(name):
    assert sources.safe_name(name) is None


def test_demo_is_deterministic_and_in_row_format():
    rows_a, imgs_a = demo.generate(5, seed=3)
    rows_b, imgs_b = demo.generate(5, seed=3)
    assert rows_a == rows_b and imgs_a == imgs_b
    assert demo.generate(5, seed=4)[1] != imgs_a
    for r in rows_a:
        assert set(r) == {"id", "image", "conversations", "gt_mask_pool", "mask_pool", "gt_mask_group"}
        assert r["image"] in imgs_a
        assert all(0 <= i < len(r["gt_mask_pool"]) for i in r["gt_mask_group"][0])
