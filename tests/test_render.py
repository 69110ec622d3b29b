import dataclasses
import hashlib

import pytest

from maskgate.data import negatives
from maskgate.data import prepare
from maskgate.render import shards
from maskgate.utils import tables
from tests.conftest import settings


@pytest.fixture
def rendered(tmp_path, boxes_dataset, params):
    params["data"].update(source="local", path=str(boxes_dataset))
    params["render"].update(size=64, workers=1, shard_size=7)
    params["negatives"]["per_positive"] = 3
    s = settings(params)
    prepare.prepare(s.data, s.prepare, s.seed, tmp_path / "prepared", s.limits)
    negatives.build(tmp_path / "prepared", tmp_path / "negatives", s.negatives, 0)
    report = shards.render(tmp_path / "prepared", tmp_path / "negatives", tmp_path / "rendered", s.render, s.prompt)
    return tmp_path / "rendered", report


def test_shards_hold_every_example_with_prompt_and_label(rendered, params):
    folder, report = rendered
    recs = list(tables.iter_shards(folder, "train"))
    assert len(recs) == report["examples"]["train"] and report["shards"]["train"] == -(-len(recs) // 7)
    for r in recs:
        assert r["overlay"][:2] == b"\xff\xd8"
        assert r["system"] == params["prompt"]["system"]
        assert r["user"].startswith(f"Query: {r['query']}. Does the highlighted")
        assert r["label_text"] == params["prompt"]["answers"][0 if r["label"] == 1 else 1]  # 1 -> ACCEPT, 0 -> REJECT


def test_same_candidate_same_pixels_whatever_the_label(rendered):
    folder, _ = rendered
    seen = {}
    pairs = 0
    for r in tables.iter_shards(folder, "train"):
        key = (r["image"], tuple(sorted(r["masks"])))
        if key in seen and seen[key]["label"] != r["label"]:
            assert seen[key]["overlay"] == r["overlay"]
            pairs += 1
        seen.setdefault(key, r)
    assert pairs > 0  # the fixture has such pairs: one query's right group is another's hard negative


def test_rendering_is_byte_reproducible_with_workers(rendered, tmp_path, params):
    folder, _ = rendered
    params["render"].update(size=64, workers=2, shard_size=7)
    s = settings(params)
    shards.render(tmp_path / "prepared", tmp_path / "negatives", tmp_path / "again", s.render, s.prompt)
    digest = lambda d: {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}
    assert digest(folder) == digest(tmp_path / "again")


@pytest.mark.parametrize("view", [{"style": "keep_colours"}, {"zoom": True}, {"style": "keep_colours", "zoom": True}])
def test_every_view_is_label_blind_and_byte_reproducible(tmp_path, rendered, params, view):
    params["render"].update(size=64, workers=1, shard_size=7, **view)
    s = settings(params)
    for out, workers in (("a", 1), ("b", 2)):
        shards.render(tmp_path / "prepared", tmp_path / "negatives", tmp_path / out,
                      dataclasses.replace(s.render, workers=workers), s.prompt)
    digest = lambda d: {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(rendered[0])  # the view changed the pictures
    seen, pairs = {}, 0
    for r in tables.iter_shards(tmp_path / "a", "train"):
        key = (r["image"], tuple(sorted(r["masks"])))
        if key in seen and seen[key]["label"] != r["label"]:
            assert seen[key]["overlay"] == r["overlay"]
            pairs += 1
        seen.setdefault(key, r)
    assert pairs > 0


def test_negatives_in_any_image_order_give_the_same_shards(rendered, tmp_path, params):
    """Render reads each image's examples from the negatives file as the images come (tables.RecordsByKey):
    the shards follow the prepared images' order and each image's examples' order in the file, not the
    file's order of images, so rows interleaved by image give the same bytes."""
    import random

    import pyarrow.parquet as pq

    folder, _ = rendered
    for split in ("train", "val"):  # negatives come sorted by image, as prepare's images: the same order
        assert ([r["example_id"] for r in tables.iter_shards(folder, split)]
                == [r["example_id"] for r in tables.read_table(tmp_path / "negatives" / f"{split}.parquet")])
    (tmp_path / "shuffled").mkdir()
    mixed_splits = 0
    for path in sorted((tmp_path / "negatives").glob("*.parquet")):
        table = pq.read_table(path)
        rows = table.to_pylist()
        images = [r["image"] for r in rows]
        # interleave the images: a random order of the rows' images, each image's rows kept in order
        order = sorted(range(len(rows)), key=lambda i: (random.Random(i).random(), images[i]))
        by_image = {}
        for i in range(len(rows)):
            by_image.setdefault(images[i], []).append(rows[i])
        mixed = [by_image[images[i]].pop(0) for i in order]
        mixed_splits += [r["image"] for r in mixed] != images
        tables.write_records(mixed, tmp_path / "shuffled" / path.name, table.schema, row_group=5)
    assert mixed_splits  # the train split (several images) was interleaved
    s = settings({**params, "render": {**params["render"], "size": 64, "workers": 1, "shard_size": 7}})
    shards.render(tmp_path / "prepared", tmp_path / "shuffled", tmp_path / "again", s.render, s.prompt)
    digest = lambda d: {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}
    assert digest(folder) == digest(tmp_path / "again")
