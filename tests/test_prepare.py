import json

import pytest

from maskgate.data import prepare, prepared
from maskgate.utils import tables
from tests.conftest import jpeg_bytes, make_row, settings, write_local


def test_prepare_writes_rows_images_and_report(tmp_path, boxes_dataset, params):
    params["data"].update(source="local", path=str(boxes_dataset))
    s = settings(params)
    report = prepare.prepare(s.data, s.prepare, s.seed, tmp_path / "p", s.limits)
    assert report["rows_in"] == 12 and sum(report["kept"].values()) == 12 and report["skipped"] == {}
    for split in ("train", "val"):
        rows = prepared.read_rows(tmp_path / "p", split)
        images = {r["image"] for r in tables.iter_shards(tmp_path / "p", f"images-{split}")}
        assert {r["image"] for r in rows} == images
    json.dumps(report)


def test_too_many_bad_rows_fail_with_the_reasons(tmp_path, params):
    rows = [make_row(f"r{i}", "missing.jpg", "q", [], [[0]]) for i in range(3)]
    rows.append(make_row("ok", "a.jpg", "q", [{"size": [4, 4], "counts": "04"}], [[0]]))
    folder = write_local(tmp_path / "d", rows, {"a.jpg": jpeg_bytes(4, 4)})
    params["data"].update(source="local", path=str(folder))
    with pytest.raises(prepare.TooManyBadRows, match="missing_image: 3"):
        s = settings(params)
        prepare.prepare(s.data, s.prepare, s.seed, tmp_path / "p", s.limits)
    assert not (tmp_path / "p").exists()


def test_mask_ref_rows_do_not_count_as_bad():
    skipped = {"counts": {"mask_ref_query": 30}, "examples": {"mask_ref_query": "x"}}
    prepare.check_bad_fraction(100, skipped, 0.05)
    with pytest.raises(prepare.TooManyBadRows):
        prepare.check_bad_fraction(100, {"counts": {"bad_rle": 6}, "examples": {"bad_rle": "x"}}, 0.05)


def test_prepare_keeps_every_pool_mask(tmp_path, boxes_dataset, params):
    params["data"].update(source="local", path=str(boxes_dataset))
    s = settings(params)
    report = prepare.prepare(s.data, s.prepare, s.seed, tmp_path / "p", s.limits)
    rows = prepared.read_rows(tmp_path / "p", "train")
    # boxes_dataset: three boxes per image, each row's group holds one or two of them
    assert rows and all(len(r["pool"]) == 3 and set(r["groups"][0]) < set(r["pool"]) for r in rows)
    assert report["pool_masks_skipped"] == {} and report["pool_masks_rescaled"] == 0
