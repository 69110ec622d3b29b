import io
import json
from collections import Counter

import pytest
from PIL import Image

from maskgate.config import GATE_LIMITS
from maskgate.data import sources
from maskgate.data.validation import ImageChecker, validate_all
from tests.conftest import REALDATA, box_mask, jpeg_bytes, make_row, rle, write_local

POOL = [rle(box_mask(40, 60, 2, 12, 2, 14)), rle(box_mask(40, 60, 20, 35, 30, 50))]


def run(tmp_path, rows, images=None, policy="rescale"):
    images = {"a.jpg": jpeg_bytes(40, 60)} if images is None else images
    source = sources.load_local(write_local(tmp_path / "d", rows, images))
    raws, store = source.rows["train"], source.images
    return validate_all(raws, store, policy, GATE_LIMITS)


def good(row_id="ok", **over):
    r = make_row(row_id, "a.jpg", "the box", POOL, [[0]])
    r.update(over)
    return r


def test_good_rows_pass(tmp_path):
    rows, skipped, stats = run(tmp_path, [good("x"), good("y", gt_mask_group=[[0, 1]])])
    assert [r.row_id for r in rows] == ["x", "y"] and skipped["counts"] == {}
    assert rows[0].query == "the box" and (rows[0].height, rows[0].width) == (40, 60)
    assert rows[1].groups == [[POOL[0]["counts"], POOL[1]["counts"]]]


@pytest.mark.parametrize("row, reason", [
    (good(image="missing.jpg"), "missing_image"),
    (good(image="../a.jpg"), "unsafe_image_name"),
    (good(image="/etc/passwd"), "unsafe_image_name"),
    (good(conversations=[{"from": "human", "value": "<image>\n<mask_pool>\n   "}]), "empty_query"),
    (good(conversations=[{"from": "human", "value": "<mask_pool>\nthe <mask-ref> and more"}]), "mask_ref_query"),
    (good(conversations=[{"from": "human", "value": "<mask_pool>\n" + "x" * 5000}]), "query_too_long"),
    (good(conversations="nope"), "bad_row"),
    (good(gt_mask_group=[[]]), "empty_group"),
    (good(gt_mask_group=[]), "no_group"),
    (good(gt_mask_group=[[5]]), "index_out_of_range"),
    (good(gt_mask_group=[["0"]]), "index_out_of_range"),
    (good(gt_mask_pool=[{"size": [40, 60], "counts": "zzz"}]), "bad_rle"),
    (good(gt_mask_pool=[{"size": [40, 60]}]), "bad_rle"),
    (good(gt_mask_pool=[rle(box_mask(40, 70, 0, 5, 0, 5))]), "mask_size_mismatch"),
    (good(gt_mask_pool=[rle(box_mask(40, 60, 0, 0, 0, 0))]), "empty_group"),
])
def test_each_bad_row_is_skipped_with_its_reason(tmp_path, row, reason):
    rows, skipped, _ = run(tmp_path, [good("first"), row])
    assert [r.row_id for r in rows] == ["first"]
    assert skipped["counts"] == {reason: 1}
    assert reason in skipped["examples"]


def test_rescaled_masks_are_counted(tmp_path):
    pool = [rle(box_mask(80, 120, 4, 24, 4, 28))]
    rows, skipped, stats = run(tmp_path, [good(gt_mask_pool=pool)])
    assert len(rows) == 1 and stats["masks_rescaled"] == 1
    rows, skipped, _ = run(tmp_path, [good(gt_mask_pool=pool)], policy="skip")
    assert rows == [] and skipped["counts"] == {"mask_size_mismatch": 1}


def test_duplicate_ids_bad_lines_and_bad_images(tmp_path):
    raw = [json.dumps(good("dup")), json.dumps(good("dup")), "{not json", b"\xff\xfe".decode("latin-1"),
           json.dumps(good("trunc", image="t.jpg"))]
    images = {"a.jpg": jpeg_bytes(40, 60), "t.jpg": jpeg_bytes(40, 60)[:200]}
    d = write_local(tmp_path / "d", raw, images)
    (d / "rows.jsonl").write_bytes((d / "rows.jsonl").read_bytes().replace("ÿþ".encode(), b"\xff\xfe"))
    source = sources.load_local(d)
    raws, store = source.rows["train"], source.images
    rows, skipped, stats = validate_all(raws, store, "rescale", GATE_LIMITS)
    assert [r.row_id for r in rows] == ["dup"]
    assert skipped["counts"] == {"bad_json": 1, "duplicate_id": 1, "not_utf8": 1, "undecodable_image": 1}
    assert stats["rows_in"] == 5


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P"])
def test_image_modes_decode(tmp_path, mode):
    buf = io.BytesIO()
    Image.new(mode, (60, 40)).save(buf, format="TIFF" if mode == "CMYK" else "PNG")
    checker = ImageChecker(sources.MemoryImages({"a": buf.getvalue()}), GATE_LIMITS.max_image_pixels)
    assert checker.size("a") == (40, 60)


def test_image_decoded_once_per_name():
    reads = Counter()

    class Store(sources.MemoryImages):
        def read(self, name):
            reads[name] += 1
            return super().read(name)

    checker = ImageChecker(Store({"a": jpeg_bytes(4, 4)}), GATE_LIMITS.max_image_pixels)
    for _ in range(3):
        checker.size("a")
    assert reads["a"] == 1


def test_realdata_goes_through_unchanged():
    source = sources.load_local(REALDATA)
    raws, store = source.rows["train"], source.images
    rows, skipped, stats = validate_all(raws, store, "rescale", GATE_LIMITS)
    assert len(rows) == 276 and skipped["counts"] == {} and stats["masks_rescaled"] == 0


def test_the_whole_pool_is_kept_and_its_bad_masks_are_counted_by_row(tmp_path):
    empty = rle(box_mask(40, 60, 0, 0, 0, 0))
    wide = rle(box_mask(80, 120, 0, 10, 0, 10))  # twice the size, same aspect: rescaled
    pool = POOL + [{"size": [40, 60], "counts": "not rle"}, empty, wide, {"size": [40, 70], "counts": "0"}]
    rows, skipped, stats = run(tmp_path, [good("x", gt_mask_pool=pool), good("y", gt_mask_pool=POOL, gt_mask_group=[[1]])])
    # the row stays: its query and group are fine; the pool loses the broken and empty masks outside the group
    assert [r.row_id for r in rows] == ["x", "y"] and skipped["counts"] == {}
    assert rows[0].pool[:2] == [POOL[0]["counts"], POOL[1]["counts"]] and len(rows[0].pool) == 3
    assert rows[1].pool == [POOL[0]["counts"], POOL[1]["counts"]]  # the masks outside the group are kept too
    dropped = stats["pool_masks_skipped"]
    assert dropped["counts"] == {"bad_rle": 1, "empty_mask": 1, "mask_size_mismatch": 1}
    assert all(text.startswith("row x: ") and "mask " in text for text in dropped["examples"].values())
    assert stats["pool_masks_rescaled"] == 1 and stats["masks_rescaled"] == 0  # the group's own count is as before


def test_a_bad_mask_inside_the_group_still_skips_the_row(tmp_path):
    pool = [{"size": [40, 60], "counts": "not rle"}] + POOL
    rows, skipped, stats = run(tmp_path, [good("x", gt_mask_pool=pool, gt_mask_group=[[0]])])
    assert rows == [] and skipped["counts"] == {"bad_rle": 1} and stats["pool_masks_skipped"]["counts"] == {}
