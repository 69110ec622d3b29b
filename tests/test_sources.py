import json
import zipfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from maskgate import demo, sources
from tests.conftest import box_mask, jpeg_bytes, make_row, rle

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
    rows, store = sources.load_local(tmp_path)
    assert [r["id"] for r in rows] == ["r0"]
    assert store.read("a.jpg")[:2] == b"\xff\xd8"


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


def test_hub_path_uses_datasets_and_the_archive(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub

    archive = tmp_path / "images_resized.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("a.jpg", jpeg_bytes(40, 60))
    asked = []
    monkeypatch.setattr(datasets, "get_dataset_split_names", lambda repo: ["train", "validation"])
    monkeypatch.setattr(datasets, "load_dataset", lambda repo, split: asked.append(split) or [dict(ROW, id=split)])
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, f, repo_type: str(tmp_path / f))
    rows, store = sources.load_hub("org/ds", "all", "images_resized.zip")
    assert [r["id"] for r in rows] == ["train", "validation"] and asked == ["train", "validation"]
    assert store.read("a.jpg")[:2] == b"\xff\xd8"
    with pytest.raises(ValueError, match="not a split"):
        sources.load_hub("org/ds", "test", "images_resized.zip")


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


def test_unreachable_hub_says_what_to_do(monkeypatch):
    import datasets

    def offline(repo):
        raise ConnectionError("Couldn't reach it")

    monkeypatch.setattr(datasets, "get_dataset_split_names", offline)
    with pytest.raises(sources.HubUnreachable, match="data.source=local"):
        sources.load_hub("org/ds", "all", "images_resized.zip")
