"""Segmenter outputs through the gate (maskgate/interchange.py): COCO results and a mask folder made from
the real sample photos and masks (scripts/segmenter_samples.py), bad entries, the score floor, and the
needs-review COCO file loaded back with pycocotools."""
import importlib.util
import json
import shutil
from collections import Counter

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from maskgate import gate, interchange
from maskgate.config import GATE_LIMITS
from maskgate.data import masks
from tests.conftest import REALDATA, ROOT
from tests.test_gate import loaded_gate, small_verifier  # noqa: F401  (fixtures)

IMAGES = REALDATA / "images"
FLOOR = 0.5


def load_script():
    spec = importlib.util.spec_from_file_location("segmenter_samples", ROOT / "scripts" / "segmenter_samples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """The first 12 sample photos as a segmenter's COCO results + images file, and as a mask folder."""
    out = tmp_path_factory.mktemp("segmenter")
    counts = load_script().write(out, n_images=12)
    assert counts["images"] == 12 and counts["objects"] > 50
    return out


def read_jsonl(path):
    return [json.loads(t) for t in path.read_text().splitlines()]


def decoded(rle_string, h, w):
    return masks.decode(rle_string, h, w)


def uncompressed(m: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE: run lengths in column-major order, starting with a run of 0s."""
    runs, value, count = [], False, 0
    for v in m.flatten(order="F"):
        if v != value:
            runs.append(count)
            value, count = v, 0
        count += 1
    return runs + [count]


def test_coco_results_every_group_once_floor_counted_and_exported(samples, loaded_gate, tmp_path):  # noqa: F811
    results = json.loads((samples / "results.json").read_text())
    doc = json.loads((samples / "instances.json").read_text())
    names = {c["id"]: c["name"] for c in doc["categories"]}
    sizes = {im["id"]: (im["height"], im["width"]) for im in doc["images"]}
    # what the groups must be, worked out here from the files themselves
    want, seen = {}, Counter()
    for i, e in enumerate(results):
        key = f"{e['image_id']}:{names[e['category_id']]}"
        seen[key] += 1
        if e["score"] >= FLOOR:
            want.setdefault(key, []).append(i)
    under = sum(e["score"] < FLOOR for e in results)
    assert 0 < under < len(results) and len(want) < len(seen)  # the floor drops instances, and whole groups

    built = interchange.from_coco_results(samples / "results.json", samples / "instances.json", IMAGES,
                                          score_floor=FLOOR)
    out = tmp_path / "gate"
    s = gate.run(out / gate.CANDIDATES, out, loaded_gate, 1.0, "given", batch_size=8, progress=False, built=built)

    rows = read_jsonl(out / gate.RESULTS)
    assert sorted(r["id"] for r in rows) == sorted(want)  # every group, each exactly once
    assert s["bad_lines"] == 0 and all(0 <= r["p_accept"] <= 1 for r in rows)
    assert s["input"]["under_score_floor"] == under
    assert s["input"]["groups_only_under_score_floor"] == len(seen) - len(want)
    assert s["input"]["query_per"] == "category" and s["input"]["entries"] == len(results)
    lines = {line["id"]: line for line in read_jsonl(out / gate.CANDIDATES)}
    for key, entries in want.items():  # each group holds exactly its instances above the floor
        line = lines[key]
        assert line["source"]["entries"] == entries
        h, w = sizes[line["source"]["image_id"]]
        assert [m["counts"] for m in line["masks"]] == [results[i]["segmentation"]["counts"] for i in entries]
        assert all(m["size"] == [h, w] for m in line["masks"])

    # the needs-review COCO file (threshold 1: everything) loads in pycocotools and holds every mask
    coco = COCO(str(out / gate.NEEDS_REVIEW_COCO))
    p = {r["id"]: r["p_accept"] for r in rows}
    assert len(coco.getAnnIds()) == sum(len(v) for v in want.values()) == s["needs_review_coco"]["annotations"]
    assert {c["name"] for c in coco.loadCats(coco.getCatIds())} == {k.split(":", 1)[1] for k in want}
    for image_id in coco.getImgIds():
        img = coco.loadImgs(image_id)[0]
        assert (img["height"], img["width"]) == sizes[image_id]  # the images file's ids and sizes
        assert (IMAGES / img["file_name"]).is_file()
    groups = {}
    for ann in coco.loadAnns(coco.getAnnIds()):
        a = ann["attributes"]
        assert a["p_accept"] == pytest.approx(p[a["group"]]) and a["decision"] == "REJECT"
        assert coco.loadCats(ann["category_id"])[0]["name"] == a["query"]
        groups.setdefault(a["group"], []).append(ann)
    assert sorted(groups) == sorted(want)
    for key, anns in groups.items():  # the masks come back exactly, in the group's order
        entries = want[key]
        assert [a["attributes"]["mask"] for a in anns] == list(range(len(entries)))
        for a, i in zip(anns, entries):
            seg = results[i]["segmentation"]
            original = mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()})
            assert np.array_equal(coco.annToMask(a), original)
            assert a["score"] == results[i]["score"] and a["bbox"] == pytest.approx(results[i]["bbox"], abs=0.01)

    # a rerun at another threshold resumes (nothing rescored) and the COCO file follows the routing
    logged = (out / gate.SCORES).read_bytes()
    cut = sorted(p.values())[len(p) // 2]
    again = gate.run(out / gate.CANDIDATES, out, loaded_gate, cut, "given", progress=False, built=built)
    assert (out / gate.SCORES).read_bytes() == logged
    review = {r["id"] for r in read_jsonl(out / gate.NEEDS_REVIEW)}
    assert review == {k for k, v in p.items() if v < cut} and 0 < len(review) < len(p)
    coco = COCO(str(out / gate.NEEDS_REVIEW_COCO))
    assert {a["attributes"]["group"] for a in coco.loadAnns(coco.getAnnIds())} == review
    assert again["needs_review_coco"]["groups"] == len(review)


def test_a_rerun_with_another_floor_is_refused_and_leaves_the_candidates(samples, loaded_gate, tmp_path):  # noqa: F811
    def build(floor):
        return interchange.from_coco_results(samples / "results.json", samples / "instances.json", IMAGES,
                                             score_floor=floor)

    out = tmp_path / "gate"
    gate.run(out / gate.CANDIDATES, out, loaded_gate, 0.5, "given", progress=False, built=build(0.9))
    before = (out / gate.CANDIDATES).read_bytes()
    with pytest.raises(ValueError, match="changed since"):
        gate.run(out / gate.CANDIDATES, out, loaded_gate, 0.5, "given", progress=False, built=build(0.3))
    assert (out / gate.CANDIDATES).read_bytes() == before
    s = gate.run(out / gate.CANDIDATES, out, loaded_gate, 0.5, "given", fresh=True, progress=False, built=build(0.3))
    assert s["input"]["score_floor"] == 0.3 and s["lines"] == len(build(0.3).lines)


def test_coco_mask_forms_and_bad_entries_are_bad_lines_naming_the_entry(samples, loaded_gate, tmp_path):  # noqa: F811
    results = json.loads((samples / "results.json").read_text())
    doc = json.loads((samples / "instances.json").read_text())
    images = {im["id"]: im for im in doc["images"]}
    ids = sorted(images)
    a, b, c, d = ids[:4]
    keep = [e for e in results if e["image_id"] in (a, b)]
    # image a's instances in the three segmentation forms: compressed, uncompressed list, polygon
    forms = []
    for k, e in enumerate(r for r in keep if r["image_id"] == a):
        seg = dict(e["segmentation"])
        h, w = seg["size"]
        if k % 3 == 1:
            seg = {"size": [h, w], "counts": uncompressed(decoded(seg["counts"], h, w))}
        elif k % 3 == 2:
            x, y, bw, bh = e["bbox"]
            seg = [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]
        e["segmentation"] = seg
        forms.append(seg)
    assert any(isinstance(f, list) for f in forms) and any(isinstance(f.get("counts"), list)
                                                           for f in forms if isinstance(f, dict))
    image_b = [e for e in keep if e["image_id"] == b]
    entries = keep + [
        "not an object",                                                            # bad_entry
        {"category_id": 1, "segmentation": image_b[0]["segmentation"], "score": 1},  # bad_entry: no image_id
        {"image_id": 999999, "category_id": 1, "segmentation": image_b[0]["segmentation"], "score": 1},
        {"image_id": b, "category_id": 777, "segmentation": image_b[0]["segmentation"], "score": 1},
        {"image_id": c, "category_id": results[0]["category_id"], "score": 0.9,
         "segmentation": {"size": [images[c]["height"], images[c]["width"]], "counts": "!!"}},  # bad_mask
        {"image_id": c, "category_id": 9999, "score": "high", "segmentation": image_b[0]["segmentation"]},
        {"image_id": d, "category_id": results[0]["category_id"], "score": 0.9,
         "segmentation": {"size": [images[d]["height"] + 1, images[d]["width"]], "counts": [1]}},  # bad_mask: size
    ]
    doc["categories"].append({"id": 9999, "name": "thing"})
    shifted = dict(images[ids[4]], height=images[ids[4]]["height"] + 10)  # the images file says another size
    doc["images"] = [shifted if im["id"] == ids[4] else im for im in doc["images"]]
    doc["images"].append({"id": 424242, "file_name": "gone.jpg", "height": 10, "width": 10})
    entries += [{"image_id": ids[4], "category_id": 1, "score": 1, "segmentation": image_b[0]["segmentation"]},
                {"image_id": 424242, "category_id": 1, "score": 1,
                 "segmentation": {"size": [10, 10], "counts": [100]}}]
    (tmp_path / "results.json").write_text(json.dumps(entries))
    (tmp_path / "instances.json").write_text(json.dumps(doc))

    built = interchange.from_coco_results(tmp_path / "results.json", tmp_path / "instances.json", IMAGES)
    s = gate.run(tmp_path / "out" / gate.CANDIDATES, tmp_path / "out", loaded_gate, 0.5, "given", progress=False,
                 built=built)
    n = len(keep)
    assert s["errors"] == {"bad_entry": 3, "unknown_image": 1, "unknown_category": 1, "bad_mask": 2,
                           "size_mismatch": 1, "missing_image": 1}
    by_id = {r["id"]: r for r in read_jsonl(tmp_path / "out" / gate.RESULTS)}
    assert by_id[f"results[{n}]"]["detail"] == f"results[{n}] is not an object"
    assert "has no image_id" in by_id[f"results[{n + 1}]"]["detail"]
    assert by_id["999999"]["error"] == "unknown_image" and f"results[{n + 2}]" in by_id["999999"]["detail"]
    assert by_id[f"{b}:category 777"]["error"] == "unknown_category"
    bad_c = [r for k, r in by_id.items() if k.startswith(f"{c}:")]
    assert sorted((r["error"], r["detail"].split(":")[0]) for r in bad_c) == sorted(
        [("bad_mask", f"results[{n + 4}] (image {c})"), ("bad_entry", f"results[{n + 5}]")])
    assert "RLE size" in next(r for k, r in by_id.items() if k.startswith(f"{d}:"))["detail"]
    assert "says" in next(r["detail"] for r in by_id.values() if r.get("error") == "size_mismatch")
    # image a's groups, whatever the form of their masks, scored like the compressed originals
    lines = {json.loads(t)["id"]: json.loads(t) for t in built.lines}
    a_lines = [line for k, line in lines.items() if k.startswith(f"{a}:")]
    assert a_lines and all("input_error" not in line for line in a_lines)
    for line in a_lines:
        h, w = images[a]["height"], images[a]["width"]
        for m, i in zip(line["masks"], line["source"]["entries"]):
            assert m["counts"] == masks.from_spec(entries[i]["segmentation"], h, w, None, GATE_LIMITS)
    # the bad lines went to review with their reasons; none is in the COCO file
    review = read_jsonl(tmp_path / "out" / gate.NEEDS_REVIEW)
    assert sum("error" in r for r in review) == s["bad_lines"] == 9
    coco = json.loads((tmp_path / "out" / gate.NEEDS_REVIEW_COCO).read_text())
    assert coco["info"]["bad_lines_not_here"] == 9
    assert not {a["attributes"]["group"] for a in coco["annotations"]} & {r["id"] for r in review if "error" in r}


def test_query_per_image_from_text_input_as_sam3_writes_it(samples, loaded_gate, tmp_path):  # noqa: F811
    """SA-Co / SAM 3 evaluation files: each image entry is one (image, noun phrase) pair with a text_input."""
    script = load_script()
    rows = [r for r in script.rows(REALDATA) if r["image"] in {"000000000009.jpg", "000000000049.jpg"}]
    pairs, results = [], []
    for pair_id, r in enumerate(rows, start=1):
        pool = r["gt_mask_pool"]
        h, w = pool[0]["size"]
        pairs.append({"id": pair_id, "file_name": r["image"], "height": h, "width": w,
                      "text_input": r["conversations"][0]["value"].split("\n")[-1]})
        results += [{"image_id": pair_id, "category_id": 1, "segmentation": pool[k], "score": 0.9}
                    for k in r["gt_mask_group"][0]]
    pairs[1]["text_input"] = " "  # no phrase: a bad line, not a guess
    (tmp_path / "images.json").write_text(json.dumps({"images": pairs, "categories": [{"id": 1, "name": "object"}]}))
    (tmp_path / "results.json").write_text(json.dumps(results))
    (tmp_path / "queries.json").write_text(json.dumps({"3": "the broccoli, please"}))

    built = interchange.from_coco_results(tmp_path / "results.json", tmp_path / "images.json", IMAGES,
                                          queries=tmp_path / "queries.json")
    assert built.info["query_per"] == "image"  # every image entry has a text_input
    s = gate.run(tmp_path / "out" / gate.CANDIDATES, tmp_path / "out", loaded_gate, 0.5, "given", progress=False,
                 built=built)
    got = {r["id"]: r for r in read_jsonl(tmp_path / "out" / gate.RESULTS)}
    want = {f"{p['id']}:{p['text_input']}" for p in pairs if p["id"] not in (2, 3)} | {"3:the broccoli, please"}
    assert {k for k, r in got.items() if "p_accept" in r} == want
    assert got["2"]["error"] == "empty_query" and s["errors"] == {"empty_query": 1}
    lines = {json.loads(t)["id"]: json.loads(t) for t in built.lines}
    for p, r in zip(pairs, rows):
        if p["id"] == 2:
            continue
        key = next(k for k in lines if k.split(":")[0] == str(p["id"]))
        assert len(lines[key]["masks"]) == len(r["gt_mask_group"][0])  # all the pair's instances, one group


def test_mask_folder_groups_rows_drops_under_the_floor_and_names_bad_rows(samples, loaded_gate, tmp_path):  # noqa: F811
    folder = tmp_path / "masks"
    shutil.copytree(samples / "masks", folder)
    index = (folder / "index.csv").read_text().splitlines()
    header, body = index[0], index[1:]
    rows = [dict(zip(header.split(","), line.split(","))) for line in body]
    want, seen = {}, set()
    for r in rows:
        key = f"{r['image']}:{r['query']}"
        seen.add(key)
        if float(r["score"]) >= FLOOR:
            want.setdefault(key, []).append(r["mask"])
    under = sum(float(r["score"]) < FLOOR for r in rows)
    assert under and len(want) < len(seen)
    (folder / "broken.png").write_bytes(b"not a png")
    first = rows[0]["image"]
    extra = [f"{first},,{rows[0]['mask']},0.9",                      # bad_entry: no query
             f"{first},a lost group,{rows[0]['mask']},0.9",
             f"{first},a lost group,nowhere/7.png,0.9",              # bad_mask: the whole group is bad
             f"{first},a scoreless group,{rows[0]['mask']},",        # bad_entry: the floor needs a score
             f"{first},a high group,{rows[0]['mask']},high",         # bad_entry: not a number
             f"{first},a broken group,broken.png,0.9"]               # bad_mask, found by the gate
    (folder / "index.csv").write_text("\n".join([header] + body + extra) + "\n")

    built = interchange.from_mask_folder(folder, IMAGES, score_floor=FLOOR)
    s = gate.run(tmp_path / "out" / gate.CANDIDATES, tmp_path / "out", loaded_gate, 0.5, "given", batch_size=8,
                 progress=False, built=built)
    got = {r["id"]: r for r in read_jsonl(tmp_path / "out" / gate.RESULTS)}
    assert {k for k, r in got.items() if "p_accept" in r} == set(want)  # every group, once
    assert s["input"]["under_score_floor"] == under and s["input"]["rows"] == len(rows) + len(extra)
    assert s["input"]["groups_only_under_score_floor"] == len(seen) - len(want)
    assert s["errors"] == {"bad_entry": 3, "bad_mask": 2}
    n = len(body) + 2  # the file line of the first extra row (the header is line 1)
    assert got[f"index.csv line {n}"]["detail"] == f"index.csv line {n} has no query"
    assert got[f"{first}:a lost group"]["detail"].startswith(f"index.csv line {n + 2}: mask image nowhere/7.png")
    assert "the score floor needs one" in got[f"{first}:a scoreless group"]["detail"]
    assert "'high' is not a number" in got[f"{first}:a high group"]["detail"]
    assert "broken.png does not decode" in got[f"{first}:a broken group"]["detail"]
    lines = {json.loads(t)["id"]: json.loads(t) for t in built.lines}
    for key, ms in want.items():
        assert lines[key]["masks"] == [str(folder / m) for m in ms]
        assert lines[key]["source"]["file_name"] == key.split(":")[0]


def test_a_plain_manifest_gets_the_coco_file_too(tmp_path, loaded_gate):  # noqa: F811
    from tests.test_gate import BOX, H, W, good, write_manifest

    manifest = write_manifest(tmp_path / "in", [good(0), good(1, query="the lower box"), {"image": "gone.jpg"}])
    s = gate.run(manifest, tmp_path / "out", loaded_gate, 1.0, "given", progress=False)
    coco = COCO(str(tmp_path / "out" / gate.NEEDS_REVIEW_COCO))
    assert s["needs_review"] == 3 and "input" not in s
    assert [coco.loadImgs(i)[0]["file_name"] for i in coco.getImgIds()] == ["photo.jpg"]  # relative, as written
    anns = coco.loadAnns(coco.getAnnIds())
    assert [a["attributes"]["group"] for a in anns] == ["c0", "c1"]
    assert all(np.array_equal(coco.annToMask(a), BOX) for a in anns) and BOX.shape == (H, W)
    assert coco.dataset["info"]["bad_lines_not_here"] == 1


def test_cli_reads_each_format_and_says_what_is_wrong_in_one_line(samples, small_verifier, tmp_path, capsys):  # noqa: F811
    from maskgate.cli import main

    common = ["--model", str(small_verifier), "--threshold", "0.5", "--device", "cpu"]
    assert main(["verify", "--coco-results", str(samples / "results.json"), "--coco-images",
                 str(samples / "instances.json"), "--images-dir", str(IMAGES), "--score-floor", "0.5",
                 "--out", str(tmp_path / "coco"), *common]) == 0
    out, err = capsys.readouterr()
    s = json.loads((tmp_path / "coco" / gate.SUMMARY).read_text())
    assert f"{s['input']['under_score_floor']} under the score floor 0.5" in err
    assert f"verify: {s['lines']} lines:" in err and "needs_review.coco.json" in err
    assert main(["verify", "--mask-folder", str(samples / "masks"), "--images-dir", str(IMAGES),
                 "--out", str(tmp_path / "png"), *common]) == 0
    assert json.loads((tmp_path / "png" / gate.SUMMARY).read_text())["input"]["format"] == "mask-folder"
    capsys.readouterr()

    (tmp_path / "broken.json").write_text("[{")
    refused = [
        (["verify", "m.jsonl", "--coco-results", "r.json", "--images-dir", "."], 2, "give one input"),
        (["verify", "m.jsonl", "--coco-images", "i.json"], 2, "--coco-images goes with --coco-results"),
        (["verify", "--mask-folder", str(samples / "masks"), "--queries", "q.json"], 2,
         "--queries goes with --coco-results"),
        (["verify", "--coco-results", str(samples / "results.json")], 2, "needs --images-dir"),
        (["verify", "--coco-results", str(tmp_path / "broken.json"), "--images-dir", "."], 1, "is not JSON"),
        (["verify", "--coco-results", str(samples / "results.json"), "--images-dir", "."], 1,
         "give the COCO images file"),
        (["verify", "--mask-folder", str(tmp_path), "--out", str(tmp_path / "x")], 1, "no index.csv in"),
    ]
    for argv, code, message in refused:
        assert main(argv + common) == code, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
