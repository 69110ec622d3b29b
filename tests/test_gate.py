"""The gate (`maskgate verify`): manifest forms, bad lines, routing, resume, and render-identical overlays."""
import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from maskgate import gate
from maskgate.config import GATE_LIMITS
from maskgate.data import masks
from maskgate.model.speedups import Scoring
from maskgate.render.overlay import Style
from maskgate.utils import tables
from tests.conftest import ROOT, box_mask, jpeg_bytes, project_params, save_tiny_verifier, settings
from tests.test_render import rendered  # noqa: F401  (fixture)

H, W = 40, 60
BOX = box_mask(H, W, 5, 20, 10, 40)


@pytest.fixture(scope="module")
def small_verifier(tmp_path_factory, tiny_qwen3vl_dir):
    """An untrained tiny verifier whose recorded render size is 32 px (one image token): cheap to score."""
    params = project_params()
    params["render"]["size"] = 32
    out, _ = save_tiny_verifier(tmp_path_factory.mktemp("gate") / "verifier", tiny_qwen3vl_dir, params, max_length=256)
    return out


@pytest.fixture(scope="module")
def loaded_gate(small_verifier):
    return gate.Gate(small_verifier, device="cpu")


def png_bytes(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buf, format="PNG")
    return buf.getvalue()


def write_manifest(folder, lines: list) -> "os.PathLike":
    """A manifest beside photo.jpg / mask.png; str lines are written as they are, others as JSON."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "photo.jpg").write_bytes(jpeg_bytes(H, W))
    (folder / "mask.png").write_bytes(png_bytes(BOX))
    with open(folder / "manifest.jsonl", "wb") as f:
        for line in lines:
            f.write(line if isinstance(line, bytes) else (line if isinstance(line, str) else json.dumps(line)).encode())
            f.write(b"\n")
    return folder / "manifest.jsonl"


def good(i, **kw):
    return {"id": f"c{i}", "image": "photo.jpg", "query": "the box", "masks": ["mask.png"], **kw}


def test_every_mask_form_gives_the_same_rle(tmp_path):
    (tmp_path / "m.png").write_bytes(png_bytes(BOX))
    want = masks.encode(BOX)
    runs, flat, value, count = [], BOX.flatten(order="F"), False, 0
    for v in flat:  # COCO's uncompressed RLE: run lengths in column-major order, starting with 0s
        if v != value:
            runs.append(count)
            value, count = v, 0
        count += 1
    runs.append(count)
    forms = [
        {"size": [H, W], "counts": want},
        {"size": [H, W], "counts": runs},
        [10, 5, 40, 5, 40, 20, 10, 20],  # the box's corners in pixels
        [[10, 5, 40, 5, 40, 20, 10, 20]],
        "m.png",
        {"size": [2 * H, 2 * W], "counts": masks.encode(masks.resize(BOX, 2 * H, 2 * W))},  # same aspect: rescaled
    ]
    for form in forms:
        assert masks.from_spec(form, H, W, tmp_path, GATE_LIMITS) == want, form


@pytest.mark.parametrize("form, message", [
    ({"size": [H, W]}, "needs size"),
    ({"size": [0, 0], "counts": ""}, "positive integers"),
    ({"size": [H, W], "counts": [1, 2, 3]}, "summing to"),
    ({"size": [H, W + 7], "counts": masks.encode(np.zeros((H, W + 7), bool))}, "another aspect ratio"),
    ([1, 2, 3], "at least 3"),
    ("nope.png", "not found"),
    (7, "a mask is"),
])
def test_bad_masks_say_why(tmp_path, form, message):
    with pytest.raises(masks.BadMask, match=message):
        masks.from_spec(form, H, W, tmp_path, GATE_LIMITS)


def test_gate_overlay_is_the_render_stage_overlay(rendered, boxes_dataset, params):  # noqa: F811
    """Same image + query + masks through the gate's parsing and drawing: the very bytes render wrote."""
    folder, _ = rendered
    style = Style.of(settings(params).render)  # the fixture's params: render.size 64
    rows = list(tables.iter_shards(folder, "train"))
    assert rows
    for r in rows[:12]:
        line = {"image": f"images/{r['image']}", "query": r["query"],
                "masks": [{"size": [r["height"], r["width"]], "counts": c} for c in r["masks"]]}
        c = gate.parse_line(1, json.dumps(line), boxes_dataset)
        assert gate.overlay(c, style) == r["overlay"], r["example_id"]


BAD_LINES = {
    "bad_json": '{"image": "photo.jpg", "query": ',
    "bad_line": '["not", "an", "object"]',
    "missing_image": {"image": "gone.jpg", "query": "a box", "masks": ["mask.png"]},
    "undecodable_image": {"image": "mask.png.txt", "query": "a box", "masks": ["mask.png"]},
    "empty_query": {"image": "photo.jpg", "query": "   ", "masks": ["mask.png"]},
    "bad_mask": {"image": "photo.jpg", "query": "a box", "masks": [{"size": [H, W], "counts": "!!"}]},
    "empty_group": {"image": "photo.jpg", "query": "a box", "masks": []},
    "not_utf8": b'{"image": "photo.jpg", "query": "caf\xe9", "masks": ["mask.png"]}',
    "query_too_long": {"image": "photo.jpg", "query": " ".join(["box"] * 240), "masks": ["mask.png"]},
}


def test_bad_lines_are_reported_and_routed_to_review(tmp_path, loaded_gate):
    lines = [good(0), BAD_LINES["bad_json"], good(1, masks=[[10, 5, 40, 5, 40, 20, 10, 20]])]
    lines += [v for k, v in BAD_LINES.items() if k != "bad_json"] + [good(2, masks=[masks.encode(BOX)])]
    lines[-1]["masks"] = [{"size": [H, W], "counts": masks.encode(BOX)}]
    manifest = write_manifest(tmp_path / "in", lines)
    (tmp_path / "in" / "mask.png.txt").write_bytes(b"not an image")
    s = gate.run(manifest, tmp_path / "out", loaded_gate, 0.5, "given", batch_size=2, progress=False)

    assert s["errors"] == {k: 1 for k in BAD_LINES} and s["bad_lines"] == len(BAD_LINES)
    assert s["lines"] == len(lines) and s["auto_pass"] + s["needs_review"] == len(lines)
    results = [json.loads(t) for t in (tmp_path / "out" / gate.RESULTS).read_text().splitlines()]
    assert [r["line"] for r in results] == list(range(1, len(lines) + 1))
    scored = [r for r in results if "p_accept" in r]
    assert [r["id"] for r in scored] == ["c0", "c1", "c2"]
    for r in scored:
        assert 0.0 <= r["p_accept"] <= 1.0
        assert r["decision"] == ("ACCEPT" if r["p_accept"] >= 0.5 else "REJECT")
        assert r["route"] == ("auto_pass" if r["decision"] == "ACCEPT" else "needs_review")
    # the same group in three forms is the same candidate: the same score
    assert scored[0]["p_accept"] == pytest.approx(scored[1]["p_accept"], abs=1e-6)
    assert scored[0]["p_accept"] == pytest.approx(scored[2]["p_accept"], abs=1e-6)
    passed = [json.loads(t) for t in (tmp_path / "out" / gate.AUTO_PASS).read_text().splitlines()]
    review = [json.loads(t) for t in (tmp_path / "out" / gate.NEEDS_REVIEW).read_text().splitlines()]
    assert len(passed) == s["auto_pass"] and len(review) == s["needs_review"]
    assert {r["line"] for r in passed} | {r["line"] for r in review} == set(range(1, len(lines) + 1))
    by_error = {r["error"]: r for r in review if "error" in r}
    assert by_error["missing_image"]["image"] == "gone.jpg"  # the manifest line itself comes through
    assert by_error["not_utf8"]["query"].startswith("caf")


def test_threshold_from_operating_point(tmp_path):
    point = tmp_path / "op.json"
    point.write_text(json.dumps({"threshold": 1.000001, "reached": False, "target_precision": 0.95}))
    t, source = gate.threshold_from(point, None)
    assert t > 1 and "nothing auto-passes" in source
    assert gate.threshold_from(point, 0.3) == (0.3, "given")
    with pytest.raises(FileNotFoundError, match="dvc repro evaluate"):
        gate.threshold_from(tmp_path / "none.json", None)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        gate.threshold_from(point, 1.5)


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes_scoring_each_line_once(tmp_path, loaded_gate, monkeypatch):
    lines = [good(i) if i % 5 else BAD_LINES["missing_image"] for i in range(23)]
    manifest = write_manifest(tmp_path / "in", lines)
    whole = gate.run(manifest, tmp_path / "whole", loaded_gate, 0.5, "given", batch_size=4, progress=False)

    real, calls = gate.Gate.launch, Counter()

    def dying(self, batch):  # run scores each batch through Gate.launch
        calls["n"] += 1
        if calls["n"] == 3:
            raise Interrupt
        return real(self, batch)

    monkeypatch.setattr(gate.Gate, "launch", dying)
    with pytest.raises(Interrupt):
        gate.run(manifest, tmp_path / "cut", loaded_gate, 0.5, "given", batch_size=4, progress=False)
    logged = (tmp_path / "cut" / gate.SCORES).read_text().splitlines()
    assert 0 < len(logged) < len(lines) and not (tmp_path / "cut" / gate.RESULTS).exists()
    with open(tmp_path / "cut" / gate.SCORES, "a") as f:
        f.write('{"line": 99, "key": "torn')  # a record cut off by the kill
    monkeypatch.setattr(gate.Gate, "launch", real)
    again = gate.run(manifest, tmp_path / "cut", loaded_gate, 0.5, "given", batch_size=4, progress=False)

    assert again == whole
    log = [json.loads(t) for t in (tmp_path / "cut" / gate.SCORES).read_text().splitlines()]
    assert sorted(r["line"] for r in log) == list(range(1, len(lines) + 1))  # each line exactly once
    got = {r["line"]: r.get("p_accept") for r in log}
    want = {json.loads(t)["line"]: json.loads(t).get("p_accept")
            for t in (tmp_path / "whole" / gate.SCORES).read_text().splitlines()}
    assert got.keys() == want.keys()
    for k in got:
        assert (got[k] is None) == (want[k] is None)
        if got[k] is not None:
            assert got[k] == pytest.approx(want[k], abs=1e-5)


def test_an_edited_manifest_is_not_mixed_with_old_scores(tmp_path, loaded_gate):
    manifest = write_manifest(tmp_path / "in", [good(0), good(1)])
    gate.run(manifest, tmp_path / "out", loaded_gate, 0.5, "given", progress=False)
    write_manifest(tmp_path / "in", [good(0), good(7)])
    with pytest.raises(ValueError, match="line 2 changed"):
        gate.run(manifest, tmp_path / "out", loaded_gate, 0.5, "given", progress=False)
    s = gate.run(manifest, tmp_path / "out", loaded_gate, 0.5, "given", fresh=True, progress=False)
    assert s["lines"] == 2 and s["bad_lines"] == 0


def test_cli_scores_one_candidate_and_a_manifest(tmp_path, small_verifier, capsys):
    from maskgate.cli import main

    manifest = write_manifest(tmp_path / "in", [good(0), BAD_LINES["empty_group"]])
    os.chdir(tmp_path / "in")
    try:
        assert main(["verify", "--image", "photo.jpg", "--query", "the box", "--mask", "mask.png",
                     "--model", str(small_verifier), "--threshold", "0", "--device", "cpu"]) == 0
        one = json.loads(capsys.readouterr().out)
        assert one["decision"] == "ACCEPT" and one["route"] == "auto_pass" and 0 <= one["p_accept"] <= 1
        assert main(["verify", str(manifest), "--model", str(small_verifier), "--threshold", "1",
                     "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
        shown = capsys.readouterr()
        assert "2 lines: 0 auto-pass, 2 need review (1 bad: empty_group 1)" in shown.err and shown.out == ""
        assert (tmp_path / "out" / "review.html").is_file()
        assert main(["verify", str(manifest), "--model", str(small_verifier), "--out", str(tmp_path / "o2"),
                     "--operating-point", str(tmp_path / "missing.json")]) == 1
        assert "run `dvc repro evaluate`, or pass --threshold" in capsys.readouterr().err
    finally:
        os.chdir(ROOT)


@pytest.mark.slow
def test_killed_on_a_large_manifest_loses_nothing(tmp_path, small_verifier):
    """10,000 lines, 1% bad, the process SIGKILLed half-way, then re-run: each good line scored once."""
    n = 10_000
    lines = [BAD_LINES["missing_image"] if i % 100 == 7 else good(i) for i in range(n)]
    manifest = write_manifest(tmp_path / "in", lines)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "maskgate", "verify", str(manifest), "--model", str(small_verifier),
           "--threshold", "0.5", "--out", str(out), "--batch-size", "64", "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / gate.SCORES
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and log.stat().st_size > 0 and log.read_bytes().count(b"\n") >= n // 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed half-way"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    cut = log.read_bytes().count(b"\n")
    assert n // 2 <= cut < n and not (out / gate.RESULTS).exists()

    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    records = [json.loads(t) for t in log.read_text().splitlines()]
    assert Counter(r["line"] for r in records) == Counter(range(1, n + 1))  # every line exactly once
    summary = json.loads((out / gate.SUMMARY).read_text())
    assert summary["errors"] == {"missing_image": n // 100} and summary["lines"] == n
    assert summary["auto_pass"] + summary["needs_review"] == n
    # the review queue: one kept overlay per scored needs-review line, no torn temporary file left
    assert len(list((out / "review").glob("*.jpg"))) == summary["needs_review"] - summary["bad_lines"]
    assert not list((out / "review").glob(".*.tmp")) and (out / "review.html").is_file()


def test_demo_manifest_routes_through_the_gate(tmp_path, loaded_gate):
    from maskgate.data.demo import gate_manifest

    manifest = gate_manifest(tmp_path / "demo", n_images=3, seed=0)
    lines = [json.loads(t) for t in manifest.read_text().splitlines()]
    assert {line["expected"] for line in lines} == {"ACCEPT", "REJECT"}
    assert any(isinstance(m, str) for line in lines for m in line["masks"])  # the mask-file form is used
    s = gate.run(manifest, tmp_path / "out", loaded_gate, 0.5, "given", progress=False)
    assert s["lines"] == len(lines) and s["bad_lines"] == 0
    routed = [json.loads(t) for name in (gate.AUTO_PASS, gate.NEEDS_REVIEW)
              for t in (tmp_path / "out" / name).read_text().splitlines()]
    assert sorted(r["id"] for r in routed) == sorted(line["id"] for line in lines)
    assert all(r["expected"] in ("ACCEPT", "REJECT") for r in routed)  # extra keys come through


def test_gate_scores_as_evaluate_does_with_the_speed_settings(tmp_path, small_verifier, loaded_gate):
    """evaluate's merge_adapter folds LoRA into the base: the same P(ACCEPT) within fp32 rounding."""
    manifest = write_manifest(tmp_path / "in", [good(0), good(1, query="the lower box")])
    plain = gate.run(manifest, tmp_path / "plain", loaded_gate, 0.5, "given", progress=False)
    merged = gate.Gate(small_verifier, device="cpu",
                       scoring=Scoring(batch_size=16, workers=0, prefetch=False, merge_adapter=True, compile=False, batched_vision=True, compile_vision=False))
    assert not hasattr(merged.model, "merge_and_unload")  # no peft wrapper left
    fast = gate.run(manifest, tmp_path / "fast", merged, 0.5, "given", progress=False)
    assert plain == fast
    a, b = ([json.loads(t)["p_accept"] for t in (tmp_path / d / gate.RESULTS).read_text().splitlines()]
            for d in ("plain", "fast"))
    assert a == pytest.approx(b, abs=1e-5)


def test_overlap_draws_ahead_and_logs_the_same_scores_in_order(tmp_path, small_verifier, loaded_gate):
    """evaluate.overlap in the gate: each batch is scored while the next is drawn; the log and outputs are the same."""
    lines = [good(i, query="the box" + " big" * i) for i in range(7)] + ["{not json"]
    manifest = write_manifest(tmp_path / "in", lines)
    plain = gate.run(manifest, tmp_path / "plain", loaded_gate, 0.5, "given", batch_size=3, progress=False)
    ahead = gate.Gate(small_verifier, device="cpu", scoring=dataclasses.replace(gate.PLAIN, overlap=True))
    assert ahead.overlap is not None and loaded_gate.overlap is None
    fast = gate.run(manifest, tmp_path / "fast", ahead, 0.5, "given", batch_size=3, progress=False)
    assert plain == fast
    for name in (gate.SCORES, gate.RESULTS):  # every score to the bit, in line order
        assert (tmp_path / "fast" / name).read_text() == (tmp_path / "plain" / name).read_text()
    scores = [json.loads(t) for t in (tmp_path / "fast" / gate.SCORES).read_text().splitlines()]
    assert sorted(r["line"] for r in scores) == list(range(1, 9)) and len({r.get("p_accept") for r in scores}) == 8
