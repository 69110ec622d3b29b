from collections import Counter

import pytest

from maskgate import masks, negatives
from tests.conftest import box_mask

CFG = {"per_positive": 4, "hard_fraction": 0.5, "max_iou": 0.9}


def row(row_id, image, groups, h=40, w=60):
    return {"row_id": row_id, "image": image, "query": f"q {row_id}", "height": h, "width": w,
            "groups": [[masks.encode(m) for m in g] for g in groups]}


def boxes(i, h=40, w=60):
    """Four boxes, placed a little differently in each image."""
    return [box_mask(h, w, 0, 10, i, 10 + i), box_mask(h, w, 20, 30, 20 + i, 30 + i),
            box_mask(h, w, 0, 10, 40 - i, 50 - i), box_mask(h, w, 25, 38, i, 15 + i)]


@pytest.fixture
def rows():
    out = []
    for i in range(5):
        b = boxes(2 * i)
        out += [row(f"i{i}-a", f"img{i}", [[b[0]]]), row(f"i{i}-b", f"img{i}", [[b[1], b[2]]]),
                row(f"i{i}-c", f"img{i}", [[b[3]]]),
                # the same group as i{i}-a in other words, plus one pixel: must never be its negative
                row(f"i{i}-d", f"img{i}", [[b[0] | box_mask(40, 60, 10, 11, 2 * i, 2 * i + 1)]])]
    out.append(row("big", "img-big", [[box_mask(80, 120, 0, 40, 0, 40)]], h=80, w=120))
    return out


def test_counts_kinds_and_provenance(rows):
    examples, counts = negatives.make_examples(rows, CFG, seed=0)
    per_row = Counter(e["row_id"] for e in examples)
    assert set(per_row.values()) == {5}  # 1 positive + 4 negatives each
    for e in examples:
        assert e["label"] == int(e["kind"] == "positive")
        src = next(r for r in rows if r["row_id"] == e["source_row_id"])
        if e["kind"] in ("positive", "hard"):
            assert src["image"] == e["image"]
        else:
            assert src["image"] != e["image"]
        assert all(masks.decode(c, e["height"], e["width"]).shape == (e["height"], e["width"]) for c in e["masks"])
    assert counts["short"] == 0


def test_no_negative_overlaps_the_right_group(rows):
    examples, counts = negatives.make_examples(rows, CFG, seed=0)
    by_row = {}
    for e in examples:
        by_row.setdefault(e["row_id"], []).append(e)
    for exs in by_row.values():
        pos = masks.union(masks.decode_group(exs[0]["masks"], exs[0]["height"], exs[0]["width"]))
        for e in exs[1:]:
            assert masks.iou(pos, masks.union(masks.decode_group(e["masks"], e["height"], e["width"]))) < CFG["max_iou"]
            assert sorted(e["masks"]) != sorted(exs[0]["masks"])
    assert counts["refused_iou_hard"] > 0  # the near-duplicate groups were met and refused


def test_short_rows_are_filled_with_easy(rows):
    examples, counts = negatives.make_examples(rows, dict(CFG, hard_fraction=1.0), seed=0)
    big = [e for e in examples if e["row_id"] == "big"]
    assert [e["kind"] for e in big] == ["positive"] + ["easy"] * 4
    assert counts["filled_with_easy"] >= 4


def test_deterministic_and_seeded(rows):
    a = negatives.make_examples(rows, CFG, seed=0)[0]
    assert a == negatives.make_examples(rows, CFG, seed=0)[0]
    assert a != negatives.make_examples(rows, CFG, seed=1)[0]


@pytest.mark.parametrize("k", [2, 7])
def test_per_positive_range(rows, k):
    with pytest.raises(ValueError, match="between 3 and 6"):
        negatives.make_examples(rows, dict(CFG, per_positive=k), seed=0)
