"""params.yaml's `limits`: each one turns a line past it into a bad line (`over_limit`) whose detail names
the key, found before anything of that size is allocated, while the other lines are still scored; in the
gate, in a segmenter's output (maskgate/interchange.py) and in prepare's rows."""
import dataclasses
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from maskgate import config, gate, interchange
from maskgate.data import masks, sources
from maskgate.data.validation import validate_all
from tests.conftest import ROOT, box_mask, jpeg_bytes, make_row, project_params, rle, write_local
from tests.test_fuzz import png_header
from tests.test_gate import BOX, H, W, good, loaded_gate, png_bytes, small_verifier, write_manifest  # noqa: F401

SMALL = dataclasses.replace(config.GATE_LIMITS, max_line_bytes=5000, max_image_pixels=10_000, max_mask_pixels=10_000,
                            max_masks_per_group=4, max_polygon_vertices=16, max_polygon_perimeter=1000,
                            polygon_margin=0.5)


def test_params_yaml_holds_the_limits_the_gate_uses_without_it():
    assert config.load(ROOT / "params.yaml").limits == config.GATE_LIMITS


@pytest.mark.parametrize("change, says", [
    (lambda s: s.pop("max_line_bytes"), "limits.max_line_bytes: missing"),
    (lambda s: s.update(max_vertices=3), "limits.max_vertices: unknown key"),
    (lambda s: s.update(max_masks_per_group=0), "limits.max_masks_per_group must be a positive integer, got 0"),
    (lambda s: s.update(max_image_pixels="80M"), "limits.max_image_pixels: input should be a valid integer, got '80M'"),
    (lambda s: s.update(polygon_margin=-1), "limits.polygon_margin must be >= 0, got -1.0"),
])
def test_a_bad_limits_key_is_one_line_naming_it(change, says):
    p = project_params()
    change(p["limits"])
    with pytest.raises(config.ParamsError) as e:
        config.from_dict(p, "params.yaml")
    assert str(e.value) == f"params.yaml: {says}"


def zigzag(n: int) -> list[float]:
    """A polygon of n vertices going back and forth across the image: a long perimeter in few vertices."""
    return [float(v) for i in range(n) for v in ((0 if i % 2 else W), i * H / n)]


def png_of_size(h, w) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ones((h, w), np.uint8) * 255).save(buf, format="PNG")
    return buf.getvalue()


# line -> (the key its detail names, or None for a line that breaks no limit but a rule)
PAST = {
    "max_line_bytes": good(1, pad="x" * 6000),
    "max_image_pixels": good(2, image="big.jpg"),          # 100 x 150 px = 15,000 > 10,000
    "max_image_pixels (PIL)": good(3, image="bomb.png"),   # the header says 200,000 x 200,000
    "max_mask_pixels": good(4, masks=[{"size": [4 * H, 4 * W], "counts": masks.encode(masks.resize(BOX, 4 * H, 4 * W))}]),
    "max_mask_pixels (file)": good(5, masks=["big-mask.png"]),
    "max_masks_per_group": good(6, masks=["mask.png"] * 5),
    "max_polygon_vertices": good(7, masks=[zigzag(17)]),
    # 16 vertices from x -30 to 90 and back (within the margin): 16 edges of 120 px
    "max_polygon_perimeter": good(8, masks=[[float(v) for i in range(16) for v in ((-30 if i % 2 else 90), i * 2.5)]]),
    "polygon_margin": good(9, masks=[[0, 0, 100, 0, 100, 20, 0, 20]]),  # x 100 > 60 + 0.5 x 60
}


def test_each_limit_makes_its_line_bad_naming_the_key_and_the_rest_is_scored(tmp_path, loaded_gate):  # noqa: F811
    lines = [good(0)] + list(PAST.values()) + [good(10, masks=[{"size": [H, W], "counts": masks.encode(BOX)}])]
    manifest = write_manifest(tmp_path / "in", lines)
    (tmp_path / "in" / "big.jpg").write_bytes(jpeg_bytes(100, 150))
    (tmp_path / "in" / "bomb.png").write_bytes(png_header(200_000, 200_000))
    (tmp_path / "in" / "big-mask.png").write_bytes(png_of_size(4 * H, 4 * W))
    s = gate.run(manifest, tmp_path / "out", loaded_gate, 0.5, "given", progress=False, limits=SMALL)

    results = [json.loads(t) for t in (tmp_path / "out" / gate.RESULTS).read_text().splitlines()]
    assert [r["line"] for r in results] == list(range(1, len(lines) + 1))
    assert "p_accept" in results[0] and "p_accept" in results[-1]  # the lines around them are scored
    for (name, _), r in zip(PAST.items(), results[1:-1]):
        assert r.get("error") == "over_limit", (name, r)
        assert f"limits.{name.split()[0]}" in r["detail"], (name, r["detail"])
    assert s["errors"] == {"over_limit": len(PAST)}
    # the same lines under the standard limits: none of them is past one but the bomb, past PIL's own limit too
    s = gate.run(manifest, tmp_path / "standard", loaded_gate, 0.5, "given", progress=False)
    assert s["errors"] == {"over_limit": 1}
    standard = [json.loads(t) for t in (tmp_path / "standard" / gate.RESULTS).read_text().splitlines()]
    assert [r["line"] for r in standard if "error" in r] == [4]


@pytest.mark.parametrize("spec, says", [
    ({"size": [H, W], "counts": "0" * 100_000}, "run 2401 is 0"),  # stopped at the first run too many, not read on
    ({"size": [H, W], "counts": "o" * 14}, "more than 13 characters"),  # a run past pycocotools' 64 bits
    ({"size": [H, W], "counts": [0] * (H * W + 2)}, "summing to"),
    ({"size": [H, W], "counts": [H * W - 1, True]}, "summing to"),
    ({"size": [H, W], "counts": "\u00e9"}, "ASCII"),
    ({"size": [10**12, 10**12], "counts": "0"}, "limits.max_mask_pixels"),  # a short string, a huge size: size first
    ([float("nan"), 1, 20, 1, 20, 20], "finite"),
    ([float("inf"), 1, 20, 1, 20, 20], "finite"),
    ([10**400, 1, 20, 1, 20, 20], "finite"),
    ([1e12, 1, 20, 1, 20, 20], "limits.polygon_margin"),
])
def test_what_would_reach_pycocotools_badly_is_refused_first(tmp_path, spec, says):
    with pytest.raises(masks.BadMask, match=says):
        masks.from_spec(spec, H, W, tmp_path, config.GATE_LIMITS)


def test_a_limit_set_in_params_is_the_one_verify_uses(tmp_path, small_verifier, capsys):  # noqa: F811
    from maskgate.cli import main

    manifest = write_manifest(tmp_path / "in", [good(0), good(1, masks=["mask.png", "mask.png"])])
    p = project_params()
    p["limits"]["max_masks_per_group"] = 1
    (tmp_path / "params.yaml").write_text(json.dumps(p))  # JSON is YAML
    common = [str(manifest), "--model", str(small_verifier), "--threshold", "0.5", "--device", "cpu"]
    assert main(["verify", *common, "--out", str(tmp_path / "one"), "--params", str(tmp_path / "params.yaml")]) == 0
    assert f"limits from {tmp_path / 'params.yaml'}" in capsys.readouterr().err
    assert main(["verify", *common, "--out", str(tmp_path / "std"), "--params", str(tmp_path / "none.yaml")]) == 0
    assert "limits from nowhere (no params file): the standard limits" in capsys.readouterr().err
    one, std = ([json.loads(t) for t in (tmp_path / d / gate.RESULTS).read_text().splitlines()] for d in ("one", "std"))
    assert "p_accept" in one[0] and one[1]["error"] == "over_limit"
    assert one[1]["detail"] == "2 masks > limits.max_masks_per_group = 1"
    assert all("p_accept" in r for r in std)
    del p["limits"]["max_line_bytes"]
    (tmp_path / "params.yaml").write_text(json.dumps(p))
    assert main(["verify", *common, "--out", str(tmp_path / "bad"), "--params", str(tmp_path / "params.yaml")]) == 1
    assert capsys.readouterr().err.strip().endswith("limits.max_line_bytes: missing")


def test_segmenter_outputs_are_held_to_the_limits(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(jpeg_bytes(H, W))
    seg = {"size": [H, W], "counts": masks.encode(BOX)}
    doc = {"images": [{"id": 1, "file_name": "a.jpg", "height": H, "width": W},
                      {"id": 2, "file_name": "a.jpg", "height": 10**6, "width": 10**6}],  # declares 10^12 pixels
           "categories": [{"id": 1, "name": "box"}, {"id": 2, "name": "boxes"}, {"id": 3, "name": "far"}]}
    results = ([{"image_id": 1, "category_id": 1, "segmentation": seg, "score": 0.9}]
               + [{"image_id": 1, "category_id": 2, "segmentation": seg, "score": 0.9}] * 5
               + [{"image_id": 2, "category_id": 1, "segmentation": [[0, 0, 10, 0, 10, 10]], "score": 0.9},
                  {"image_id": 1, "category_id": 3, "segmentation": [[0, 0, 1e9, 0, 10, 10]], "score": 0.9}])
    (tmp_path / "results.json").write_text(json.dumps(results))
    (tmp_path / "instances.json").write_text(json.dumps(doc))
    built = interchange.from_coco_results(tmp_path / "results.json", tmp_path / "instances.json", folder, limits=SMALL)
    lines = [json.loads(t) for t in built.lines]
    assert "input_error" not in lines[0] and len(lines[0]["masks"]) == 1
    errors = [line["input_error"] for line in lines[1:]]
    assert [e["reason"] for e in errors] == ["over_limit"] * 3
    assert "limits.max_masks_per_group = 4" in errors[0]["detail"] and "results[1]" in errors[0]["detail"]
    assert "limits.max_image_pixels" in errors[1]["detail"]
    assert "results[7]" in errors[2]["detail"] and "limits.polygon_margin" in errors[2]["detail"]

    masks_dir = tmp_path / "masks"
    masks_dir.mkdir()
    (masks_dir / "m.png").write_bytes(png_bytes(BOX))
    (masks_dir / "index.csv").write_text("image,query,mask\n" + "a.jpg,one box,m.png\n" + "a.jpg,boxes,m.png\n" * 5)
    lines = [json.loads(t) for t in interchange.from_mask_folder(masks_dir, folder, limits=SMALL).lines]
    assert "input_error" not in lines[0]
    assert lines[1]["input_error"]["reason"] == "over_limit"
    assert "5 masks (index.csv lines 3, ...) > limits.max_masks_per_group = 4" == lines[1]["input_error"]["detail"]


def test_prepare_skips_rows_past_a_limit_counted_under_over_limit(tmp_path):
    pool = [rle(box_mask(H, W, 2, 12, 2, 14)), rle(box_mask(H, W, 20, 35, 30, 50))]
    huge = {"size": [H * 1000, W * 1000], "counts": "0"}  # the image's aspect ratio (rescale), 2.4 G pixels
    rows = [make_row("ok", "a.jpg", "the box", pool, [[0]]),
            make_row("many", "a.jpg", "the boxes", pool, [[0, 1, 0, 1, 0]]),
            make_row("huge", "a.jpg", "the box", [huge], [[0]]),
            make_row("big-image", "big.jpg", "the box", pool, [[0]]),
            json.dumps({**make_row("long", "a.jpg", "the box", pool, [[0]]), "pad": "x" * 6000}),
            make_row("ok2", "a.jpg", "the lower box", pool, [[1]])]
    folder = write_local(tmp_path / "d", rows, {"a.jpg": jpeg_bytes(H, W), "big.jpg": jpeg_bytes(100, 150)})
    source = sources.load_local(folder, SMALL.max_line_bytes)
    kept, skipped, stats = validate_all(source.rows["train"], source.images, "rescale", SMALL)
    assert [r.row_id for r in kept] == ["ok", "ok2"] and stats["rows_in"] == 6
    assert skipped["counts"] == {"over_limit": 4}
    assert skipped["examples"]["over_limit"] == "row 1 (id many): over_limit: group 0 has 5 masks > limits.max_masks_per_group = 4"
    # each on its own, for its message
    for row, says in ((rows[2], "mask 0 is 40000x60000 = 2400000000 pixels > limits.max_mask_pixels = 10000"),
                      (rows[3], "big.jpg: 150x100 = 15000 pixels > limits.max_image_pixels = 10000")):
        _, skipped, _ = validate_all([row], source.images, "rescale", SMALL)
        assert skipped["examples"]["over_limit"].endswith(says)
    raws = list(sources.read_rows_file(folder / "rows.jsonl", SMALL.max_line_bytes))
    assert raws[4] == sources.RawError("rows.jsonl:5", "over_limit", f"the line is {len(rows[4])} bytes > "
                                                                     "limits.max_line_bytes = 5000")
