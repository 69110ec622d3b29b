import dataclasses
import hashlib
import json
from collections import Counter

import numpy as np
import pytest

from maskgate import config
from maskgate.config import Negatives
from maskgate.data import masks, negatives, prepare
from maskgate.evaluation import metrics
from maskgate.utils import tables
from tests.conftest import settings
from tests.conftest import box_mask

def cfg(**changes) -> Negatives:
    return Negatives(**{"per_positive": 4, "hard_fraction": 0.5, "max_iou": 0.9, "missing_instance": 0,
                        "extra_instance": 0, "pool_hard": False, "max_easy_fill_share": 0.25, **changes})


def row(row_id, image, groups, h=40, w=60, pool=None):
    """A prepared row; its pool is the masks of its groups unless given (prepare keeps the whole gt_mask_pool)."""
    encoded = [[masks.encode(m) for m in g] for g in groups]
    pool = [c for g in encoded for c in g] if pool is None else [masks.encode(m) for m in pool]
    return {"row_id": row_id, "image": image, "query": f"q {row_id}", "height": h, "width": w,
            "groups": encoded, "pool": pool}


def boxes(i, h=40, w=60):
    """Four boxes, placed a little differently in each image."""
    return [box_mask(h, w, 0, 10, i, 10 + i), box_mask(h, w, 20, 30, 20 + i, 30 + i),
            box_mask(h, w, 0, 10, 40 - i, 50 - i), box_mask(h, w, 25, 38, i, 15 + i)]


@pytest.fixture
def rows():
    out = []
    for i in range(5):
        b = boxes(2 * i)
        near = b[0] | box_mask(40, 60, 10, 11, 2 * i, 2 * i + 1)
        pool = b + [near]  # every object of the image, as prepare keeps it
        out += [row(f"i{i}-a", f"img{i}", [[b[0]]], pool=pool), row(f"i{i}-b", f"img{i}", [[b[1], b[2]]], pool=pool),
                row(f"i{i}-c", f"img{i}", [[b[3]]], pool=pool),
                # the same group as i{i}-a in other words, plus one pixel: must never be its negative
                row(f"i{i}-d", f"img{i}", [[near]], pool=pool)]
    out.append(row("big", "img-big", [[box_mask(80, 120, 0, 40, 0, 40)]], h=80, w=120))
    return out


def test_counts_kinds_and_provenance(rows):
    examples, counts = negatives.make_examples(rows, cfg(), seed=0)
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
    examples, counts = negatives.make_examples(rows, cfg(), seed=0)
    by_row = {}
    for e in examples:
        by_row.setdefault(e["row_id"], []).append(e)
    for exs in by_row.values():
        pos = masks.union(masks.decode_group(exs[0]["masks"], exs[0]["height"], exs[0]["width"]))
        for e in exs[1:]:
            assert masks.iou(pos, masks.union(masks.decode_group(e["masks"], e["height"], e["width"]))) < cfg().max_iou
            assert sorted(e["masks"]) != sorted(exs[0]["masks"])
    assert counts["refused_iou_hard"] > 0  # the near-duplicate groups were met and refused


def test_short_rows_are_filled_with_easy(rows):
    examples, counts = negatives.make_examples(rows, cfg(hard_fraction=1.0), seed=0)
    big = [e for e in examples if e["row_id"] == "big"]
    assert [e["kind"] for e in big] == ["positive"] + ["easy"] * 4
    assert counts["filled_with_easy"] >= 4


def test_deterministic_and_seeded(rows):
    a = negatives.make_examples(rows, cfg(), seed=0)[0]
    assert a == negatives.make_examples(rows, cfg(), seed=0)[0]
    assert a != negatives.make_examples(rows, cfg(), seed=1)[0]


@pytest.mark.parametrize("k", [2, 7])
def test_per_positive_range(rows, k):
    with pytest.raises(ValueError, match="between 3 and 6"):
        negatives.make_examples(rows, cfg(per_positive=k), seed=0)


# ----------------------------------------------------------------------------- instance kinds

INSTANCE_ON = cfg(missing_instance=1, extra_instance=2)


def digest(examples, counts) -> str:
    return hashlib.sha256(json.dumps([examples, dict(sorted(counts.items()))], sort_keys=True).encode()).hexdigest()


def by_row(examples):
    out = {}
    for e in examples:
        out.setdefault(e["row_id"], []).append(e)
    return out


def union(e):
    return masks.union(masks.decode_group(e["masks"], e["height"], e["width"]))


def test_defaults_unchanged_by_the_instance_kinds(rows):
    # The digest of this fixture's output at seed 0 made by the code before the instance kinds
    # existed (commit b932c4a): the defaults must still give exactly those examples and counts.
    before = "c2e59c27accad7d42f95d911c6c5e86e7d921e0889c47fbd7a33b58f3e2f7f62"
    assert digest(*negatives.make_examples(rows, cfg(), seed=0)) == before
    assert digest(*negatives.make_examples(rows, cfg(missing_instance=0, extra_instance=0), seed=0)) == before


def test_instance_kinds_leave_hard_and_easy_as_they_were(rows):
    off = negatives.make_examples(rows, cfg(), seed=0)[0]
    on = negatives.make_examples(rows, INSTANCE_ON, seed=0)[0]
    assert [e for e in on if e["kind"] in ("positive", "hard", "easy")] == off
    only_missing = negatives.make_examples(rows, cfg(missing_instance=1), seed=0)[0]
    missing = [e for e in on if e["kind"] == "missing_instance"]
    assert missing == [e for e in only_missing if e["kind"] == "missing_instance"]


def test_missing_instance_is_a_strict_subset_and_single_mask_rows_are_counted(rows):
    examples, counts = negatives.make_examples(rows, INSTANCE_ON, seed=0)
    missing = [e for e in examples if e["kind"] == "missing_instance"]
    assert {e["row_id"] for e in missing} == {f"i{i}-b" for i in range(5)}  # the only groups of 2 masks
    for e in missing:
        right = by_row(examples)[e["row_id"]][0]
        assert set(e["masks"]) < set(right["masks"]) and len(e["masks"]) == len(right["masks"]) - 1
        assert e["label"] == 0 and (e["source_row_id"], e["source_group"]) == (e["row_id"], 0)
        assert masks.iou(union(e), union(right)) < cfg().max_iou
    assert counts["single_mask_group"] == sum(len(r["groups"][0]) == 1 for r in rows) == 16
    assert counts["short_missing_instance"] == 0


def test_extra_instance_adds_one_mask_of_the_same_image(rows):
    examples, counts = negatives.make_examples(rows, INSTANCE_ON, seed=0)
    extra = [e for e in examples if e["kind"] == "extra_instance"]
    source = {r["row_id"]: r for r in rows}
    assert len(extra) == 2 * (len(rows) - 1)  # every row but "big", alone on its image, gets 2
    for e in extra:
        right = by_row(examples)[e["row_id"]][0]
        added = set(e["masks"]) - set(right["masks"])
        assert set(e["masks"]) > set(right["masks"]) and len(added) == 1
        src = source[e["source_row_id"]]
        assert src["image"] == e["image"] and added <= set(src["groups"][e["source_group"]])
        assert masks.iou(union(e), union(right)) < cfg().max_iou
    assert counts["no_other_mask"] == 1  # "big"
    # adding i{i}-d's near copy of i{i}-a's box to i{i}-a changes almost no pixel: refused, counted
    assert counts["refused_iou_extra_instance"] >= 5


def test_instance_kinds_obey_max_iou_and_count_each_instance_once():
    big, tiny = box_mask(40, 60, 0, 30, 0, 40), box_mask(40, 60, 35, 37, 55, 57)
    near = big.copy()
    near[30, 0] = True
    rows = [row("bt", "img0", [[big, tiny]]), row("twice", "img1", [[big, big]]),
            row("near", "img1", [[near]]), row("other", "img2", [[box_mask(40, 60, 5, 9, 50, 58)]])]
    examples, counts = negatives.make_examples(rows, cfg(missing_instance=2, extra_instance=1), seed=0)
    missing = [e for e in examples if e["kind"] == "missing_instance"]
    # "bt" without the tiny box is the right group's picture: refused; without the big one it is kept
    assert [(e["row_id"], e["masks"]) for e in missing] == [("bt", [masks.encode(tiny)])]
    assert counts["refused_iou_missing_instance"] == 1 and counts["short_missing_instance"] == 1
    # a group listing one mask twice holds one instance: it cannot lose one
    assert counts["single_mask_group"] == 3
    # "twice" and "near" are each other's only extra mask, and it adds one pixel at most: refused
    assert not [e for e in examples if e["kind"] == "extra_instance" and e["image"] == "img1"]
    assert counts["refused_iou_extra_instance"] == 2 and counts["short_extra_instance"] == 2


def test_instance_kinds_are_seeded_per_row(rows):
    a = negatives.make_examples(rows, INSTANCE_ON, seed=0)[0]
    assert a == negatives.make_examples(rows, INSTANCE_ON, seed=0)[0]
    assert a != negatives.make_examples(rows, INSTANCE_ON, seed=1)[0]

    def instance_examples(examples):
        return sorted((e["example_id"], e["masks"], e["source_row_id"], e["source_group"])
                      for e in examples if e["kind"] in negatives.INSTANCE_KINDS)

    # a row's instance negatives do not depend on the order of the other rows
    assert instance_examples(a) == instance_examples(negatives.make_examples(rows[::-1], INSTANCE_ON, seed=0)[0])


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_instance_settings_are_checked(params, bad):
    params["negatives"]["missing_instance"] = bad
    with pytest.raises(config.ParamsError, match=r"^test params: negatives\.missing_instance"):
        settings(params)


def test_by_kind_reports_the_instance_kinds(rows):
    examples, _ = negatives.make_examples(rows, INSTANCE_ON, seed=0)
    p = np.random.default_rng(0).random(len(examples))
    m = metrics.compute_metrics([e["label"] for e in examples], p, [e["kind"] for e in examples], [0.5], 0.9)
    kinds = Counter(e["kind"] for e in examples)
    assert set(m["by_kind"]) == {"hard", "easy", "missing_instance", "extra_instance"}
    for kind, scores in m["by_kind"].items():
        assert (scores["n"], scores["n_positive"]) == (kinds["positive"] + kinds[kind], kinds["positive"])


def stage_outputs(prepared, out, cfg):
    report = negatives.build(prepared, out, cfg, seed=0)
    return report, {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_stage_output_and_report(tmp_path, boxes_dataset, params):
    params["data"].update(source="local", path=str(boxes_dataset))
    s = settings(params)
    prepare.prepare(s.data, s.prepare, s.seed, tmp_path / "prepared", s.limits)
    assert s.negatives.missing_instance == s.negatives.extra_instance == 0  # off in params.yaml

    before = stage_outputs(tmp_path / "prepared", tmp_path / "a", s.negatives)
    assert stage_outputs(tmp_path / "prepared", tmp_path / "b", s.negatives) == before  # byte-identical
    assert set(before[0]) == {"examples", "kinds", "refused_iou", "filled_with_easy", "hard_slots", "easy_fill_share",
                              "short"}
    # 6 images of 2 rows, 3 objects: 2 hard slots per row. Without the pool the other row's group fills one
    # and the other goes easy; with it, a pool draw (the one-box row gets one lower box, the two-box row a
    # swap) fills it
    off = negatives.build(tmp_path / "prepared", tmp_path / "off", dataclasses.replace(s.negatives, pool_hard=False), 0)
    on = negatives.build(tmp_path / "prepared", tmp_path / "on", dataclasses.replace(s.negatives, pool_hard=True), 0)
    assert (off["hard_slots"]["train"], off["easy_fill_share"]["train"]) == (20, 0.5)
    assert on["easy_fill_share"]["train"] == 0.0 and on["kinds"]["train"]["pool_other"] > 0
    assert on["kinds"]["train"]["pool_swap"] > 0 and "pool_swap" in on["refused_iou"]["train"]
    # build streams the examples into the file (never holding a split's list): the same rows make_examples gives
    import pyarrow.parquet as pq

    from maskgate.data.prepared import read_rows

    for split in ("train", "val"):
        expected, _ = negatives.make_examples(read_rows(tmp_path / "prepared", split), s.negatives, 0)
        assert pq.read_table(tmp_path / "a" / f"{split}.parquet").to_pylist() == expected

    on = dataclasses.replace(s.negatives, missing_instance=1, extra_instance=1, pool_hard=True)
    report, files = stage_outputs(tmp_path / "prepared", tmp_path / "c", on)
    assert stage_outputs(tmp_path / "prepared", tmp_path / "d", on) == (report, files)
    assert report["missing_instance"]["train"]["single_mask_group"] > 0  # the "top box" rows, one mask each
    assert set(report["extra_instance"]["train"]) == {"no_other_mask", "short"}
    assert report["kinds"]["train"]["missing_instance"] > 0 and report["kinds"]["train"]["extra_instance"] > 0
    assert set(report["refused_iou"]["train"]) == {"hard", "easy", "missing_instance", "extra_instance",
                                                   *negatives.POOL_KINDS}
    written = tables.read_table(tmp_path / "c" / "train.parquet")
    assert Counter(e["kind"] for e in written) == Counter(report["kinds"]["train"])


# ----------------------------------------------------------------------------- hard negatives from the pool

POOL_ON = cfg(pool_hard=True)


def test_pool_hard_fills_the_slots_easy_would_take(rows):
    off, off_counts = negatives.make_examples(rows, cfg(hard_fraction=1.0), seed=0)
    on, on_counts = negatives.make_examples(rows, cfg(hard_fraction=1.0, pool_hard=True), seed=0)
    # every other-row hard negative is kept as it was; only slots filled with easy ones change
    assert [e for e in on if e["kind"] == "hard"] == [e for e in off if e["kind"] == "hard"]
    assert on_counts["filled_with_easy"] < off_counts["filled_with_easy"]
    pool_kinds = Counter(e["kind"] for e in on if e["kind"] in negatives.POOL_KINDS)
    assert pool_kinds["pool_other"] > 0 and pool_kinds["pool_swap"] > 0
    source = {r["row_id"]: r for r in rows}
    for e in on:
        if e["kind"] not in negatives.POOL_KINDS:
            continue
        r, right = source[e["row_id"]], set(source[e["row_id"]]["groups"][0])
        assert (e["source_row_id"], e["source_group"], e["label"]) == (e["row_id"], negatives.POOL_GROUP, 0)
        assert set(e["masks"]) <= set(r["pool"])
        if e["kind"] == "pool_other":  # outside the group, as many objects as the group has (or all outside)
            assert not set(e["masks"]) & right
            assert len(e["masks"]) == min(len(right), len(set(r["pool"]) - right))
        else:  # one object swapped
            assert len(set(e["masks"]) - right) == 1 and len(right - set(e["masks"])) == 1
        assert masks.iou(union(e), union(by_row(on)[e["row_id"]][0])) < cfg().max_iou
    # "big" is alone on its image with a one-mask pool: nothing to draw, still filled with easy
    assert [e["kind"] for e in by_row(on)["big"]] == ["positive"] + ["easy"] * 4


def test_pool_hard_obeys_max_iou():
    big = box_mask(40, 60, 0, 30, 0, 40)
    near = big.copy()
    near[30, 0] = True  # the same object under another mask: a swap or a pool_other of it is the right picture
    rows = [row("r", "img0", [[big]], pool=[big, near]), row("o", "img1", [[box_mask(40, 60, 5, 9, 50, 58)]])]
    examples, counts = negatives.make_examples(rows, POOL_ON, seed=0)
    assert not [e for e in examples if e["kind"] in negatives.POOL_KINDS]
    assert counts["refused_iou_pool_other"] > 0


def test_pool_hard_is_deterministic_and_seeded(rows):
    a = negatives.make_examples(rows, POOL_ON, seed=0)
    assert digest(*a) == digest(*negatives.make_examples(rows, POOL_ON, seed=0))
    assert a[0] != negatives.make_examples(rows, POOL_ON, seed=1)[0]


def test_pool_hard_needs_the_pool(rows):
    rows[0] = {k: v for k, v in rows[0].items() if k != "pool"}
    negatives.make_examples(rows, cfg(), seed=0)  # off: the pool is not read
    with pytest.raises(ValueError, match=r"row i0-a: no mask pool.*re-run prepare"):
        negatives.make_examples(rows, POOL_ON, seed=0)


def test_easy_fill_share_warns_above_the_limit():
    report = {"easy_fill_share": {"train": 0.3, "val": 0.2, "test": None}, "filled_with_easy": {"train": 6},
              "hard_slots": {"train": 20}}
    lines = negatives.fill_warnings(report, cfg(max_easy_fill_share=0.25))
    assert len(lines) == 1 and "train: 6 of 20 hard slots (30.0%)" in lines[0] and "pool_hard" in lines[0]
    assert negatives.fill_warnings(report, cfg(max_easy_fill_share=0.3)) == []


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_max_easy_fill_share_is_checked(params, bad):
    params["negatives"]["max_easy_fill_share"] = bad
    with pytest.raises(config.ParamsError, match=r"negatives\.max_easy_fill_share must be in \[0, 1\]"):
        settings(params)


# ----------------------------------------------------------------------------- the stage streams its rows

def generated_prepared(folder, seed=0):
    """rows-{split}.parquet written as prepare writes them (sorted by image, then row id): images of two
    sizes (easy negatives get scaled) with 1-4 rows each, a second group on some rows, groups of 1-3
    boxes (a box listed twice now and then) and pools with more boxes and one-pixel near copies (refused
    by max_iou). The negatives stage reads nothing else of the folder."""
    from maskgate.data.prepared import ROW_SCHEMA, SPLITS

    rng = np.random.default_rng(seed)

    def box(h, w):
        y0, x0 = int(rng.integers(0, h - 4)), int(rng.integers(0, w - 4))
        return box_mask(h, w, y0, int(rng.integers(y0 + 2, h + 1)), x0, int(rng.integers(x0 + 2, w + 1)))

    folder.mkdir(parents=True)
    for split, n_images in zip(SPLITS, (24, 8, 5)):
        records = []
        for i in range(n_images):
            h, w = (40, 60) if i % 3 else (64, 48)
            objects = [box(h, w) for _ in range(int(rng.integers(2, 7)))]
            near = objects[0].copy()
            near[(h - 1) if near[0, 0] else 0, 0] = True
            pool = [masks.encode(m) for m in objects + [near]]
            for r in range(int(rng.integers(1, 5))):
                groups = []
                for _ in range(1 + (rng.random() < 0.3)):
                    pick = rng.choice(len(pool), int(rng.integers(1, 4)), replace=False)
                    groups.append([pool[j] for j in pick] + [pool[pick[0]]] * (rng.random() < 0.1))
                records.append({"row_id": f"{split}-{i:02d}-{r}", "image": f"{split}/img{i:02d}.jpg",
                                "query": f"query {r}", "height": h, "width": w, "groups": groups, "pool": pool})
        tables.write_records(sorted(records, key=prepare.row_key), folder / f"rows-{split}.parquet", ROW_SCHEMA)
    return folder


STREAM_CFGS = {
    "defaults": cfg(),
    "pool_hard": cfg(pool_hard=True),
    "instances": cfg(missing_instance=1, extra_instance=2),
    "all_on": cfg(per_positive=6, hard_fraction=1.0, max_iou=0.8, pool_hard=True, missing_instance=2,
                  extra_instance=1),
    "easy_only": cfg(per_positive=3, hard_fraction=0.0),
}


def output_digest(out, report) -> str:
    """The report and every split's records (not the parquet bytes, which name the pyarrow version)."""
    import pyarrow.parquet as pq

    tables_ = {p.name: pq.read_table(p).to_pylist() for p in sorted(out.iterdir())}
    return hashlib.sha256(json.dumps([report, tables_], sort_keys=True).encode()).hexdigest()


# The digests of build's output on generated_prepared for each STREAM_CFGS entry, made by the code before
# build streamed its rows (commit 2f665f1, every row and candidate held): the streamed build must give
# exactly those examples and reports.
BEFORE_STREAMING = {
    "defaults": "4b3798c3e719fe1aa409baa5638360d4182e917fd0b60178b03605b8bf568966",
    "pool_hard": "ce3b21d3a1dcc9516fdd7b2109eac9feda729eb0df5e02afb73a1949fbf090b7",
    "instances": "8a7300fe516dd1a09f97cc32907609db596a78589dd65dedfdff67295e4e262a",
    "all_on": "012122a685ff42e30aa20f21c6b717dce6c8533209423ea1ba944556eb93e447",
    "easy_only": "ed0a3354e314c3927224962516fd31b71bd576ef4a6301ce342e8f2ddfad6af4",
}


@pytest.mark.parametrize("name", sorted(STREAM_CFGS))
def test_streamed_build_gives_the_output_of_before(tmp_path, name):
    prepared = generated_prepared(tmp_path / "prepared")
    report = negatives.build(prepared, tmp_path / "out", STREAM_CFGS[name], seed=0)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["test.parquet", "train.parquet", "val.parquet"]
    assert output_digest(tmp_path / "out", report) == BEFORE_STREAMING[name]


def test_stored_candidates_answer_as_held_ones(tmp_path):
    from maskgate.data.prepared import read_rows

    prepared = generated_prepared(tmp_path / "prepared")
    held = negatives.HeldCandidates(negatives.candidates_by_image(read_rows(prepared, "train")))
    with negatives.StoredCandidates(prepared / "rows-train.parquet", tmp_path / "flat") as stored:
        assert len(stored) == len(held) == 24 and stored.rows == len(read_rows(prepared, "train"))
        for j in range(len(held)):
            assert stored.count(j) == held.count(j)
            assert [stored.get(j, k) for k in range(stored.count(j))] == [held.get(j, k) for k in range(held.count(j))]
    assert not (tmp_path / "flat").exists()


def test_rows_not_sorted_by_image_fail_naming_the_row(tmp_path):
    from maskgate.data.prepared import ROW_SCHEMA, read_rows

    prepared = generated_prepared(tmp_path / "prepared")
    rows = read_rows(prepared, "val")
    last = rows[-1]["image"]
    moved = [r for r in rows if r["image"] == last][0]
    rows.remove(moved)
    rows.insert(0, moved)  # the last image's first row now comes first: that image has two runs
    tables.write_records(rows, prepared / "rows-val.parquet", ROW_SCHEMA)
    with pytest.raises(ValueError, match=rf"rows-val\.parquet: row {rows[1]['row_id']}: image .* comes after "
                                         rf"{last}: the rows are not sorted by image; re-run prepare"):
        negatives.build(prepared, tmp_path / "out", cfg(), seed=0)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="not sorted by image"):
        negatives.StoredCandidates(prepared / "rows-val.parquet", tmp_path / "flat")
    assert not (tmp_path / "flat").exists()
