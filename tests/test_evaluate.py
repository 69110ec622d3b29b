import dataclasses
import json

import numpy as np
import pytest

from maskgate.config import Evaluate
from maskgate.evaluation import evaluate, metrics
from maskgate.evaluation.audit import audit_records
from maskgate.model import verifier
from maskgate.utils import tables
from tests.test_render import rendered  # noqa: F401  (fixture)

CFG = Evaluate(batch_size=4, workers=0, prefetch=False, overlap=False, merge_adapter=False, compile=False, batched_vision=True,
               compile_vision=False, patch_matmul=False, last_layer_at_answer=False, target_precision=0.9, thresholds=[0.5, 0.9], calibration_fraction=0.0,
               bootstrap=0, confidence=0.95)


def test_measure_from_hand_made_scores():
    scores = [{"example_id": str(i), "image": f"img{i}", "kind": k, "label": y, "p_accept": p} for i, (k, y, p) in
              enumerate([("positive", 1, 0.95), ("positive", 1, 0.7), ("hard", 0, 0.6), ("easy", 0, 0.1),
                         ("hard", 0, 0.2)])]
    m, point = evaluate.measure(scores, CFG, seed=0)
    assert m["auroc"] == 1.0 and m["accuracy"] == pytest.approx(0.8)
    assert set(m["by_kind"]) == {"hard", "easy"}
    assert point["reached"] and point["threshold"] == pytest.approx(0.7)
    m["shortcut_auroc"] = 0.5
    top = evaluate.headline(m, point)
    assert len(top) == 10 and top["hard_auroc"] == m["by_kind"]["hard"]["auroc"] and top["test_auroc"] is None
    assert top["threshold"] == point["threshold"] and top["auto_pass_rate_at_target_precision"] == point["auto_pass_rate"]


def test_manifest_keeps_a_local_base_relative(tiny_verifier):
    out, _ = tiny_verifier
    manifest = verifier.read_manifest(out)
    assert {k: manifest[k] for k in ("adapter", "backend", "preset")} == {"adapter": "adapter", "backend": "hf",
                                                                          "preset": "tiny"}
    assert manifest["base"] == {"repo": "base", "revision": None, "load_in_4bit": False, "prequantized": False}
    assert set(manifest) == {"adapter", "backend", "base", "preset", "prompt", "prompt_tokens", "render", "max_length"}
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_missing_verifier_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="dvc repro train"):
        verifier.read_manifest(tmp_path)


def test_scores_of_the_loaded_verifier_match_the_trained_one(tiny_verifier, rendered, verifier_prompt):  # noqa: F811
    import io

    from PIL import Image

    from maskgate.model.batching import Example
    from maskgate.model.scoring import score

    out, trained = tiny_verifier
    folder, _ = rendered
    model, processor = verifier.load_verifier(out, device="cpu")
    got = evaluate.score_split(model, processor, verifier_prompt, folder, "val", 4096, batch_size=4)
    rows = list(tables.iter_shards(folder, "val"))
    assert [g["example_id"] for g in got] == [r["example_id"] for r in rows]
    direct = score(trained.eval(), processor, verifier_prompt,
                   [Example(Image.open(io.BytesIO(r["overlay"])).convert("RGB"), r["query"]) for r in rows], 4096)
    np.testing.assert_allclose([g["p_accept"] for g in got], direct, atol=1e-6)
    assert len({round(g["p_accept"], 6) for g in got}) > 1  # the adapter is not a no-op on these inputs


def test_audit_records_join_overlays_and_queries(rendered, tmp_path):  # noqa: F811
    folder, _ = rendered
    rows = list(tables.iter_shards(folder, "val"))
    scores = [{"example_id": r["example_id"], "kind": r["kind"], "label": r["label"], "p_accept": i / len(rows)}
              for i, r in enumerate(rows)]
    evaluate.write_scores(scores, tmp_path / "scores.parquet")
    chosen = audit_records(tmp_path / "scores.parquet", folder, n=4)
    by_id = {r["example_id"]: r for r in rows}
    assert len(chosen) == 4
    for c in chosen:
        assert c["image"] == by_id[c["example_id"]]["overlay"] and c["query"] == by_id[c["example_id"]]["query"]


def test_a_base_whose_tokenizer_differs_from_training_is_refused(tiny_verifier):
    out, _ = tiny_verifier
    manifest = json.loads((out / verifier.MANIFEST).read_text())
    manifest["prompt_tokens"]["prompt"][3] += 1  # as if the base's tokenizer had changed since training
    (out / verifier.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="gives another prompt than the one"):
        verifier.load_verifier(out, "cpu")


# ----------------------------------------------------------------------------- the operating point, measured apart

def val_scores(n_images=40, seed=0):
    """Three examples per image (one positive, two negatives) with overlapping, noisy scores."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_images):
        for j, (kind, label) in enumerate((("positive", 1), ("hard", 0), ("easy", 0))):
            p = float(np.clip(rng.normal(0.7 if label else 0.35, 0.2), 0, 1))
            out.append({"example_id": f"{i}/{j}", "image": f"img{i:03d}", "kind": kind, "label": label, "p_accept": p})
    return out


SPLIT = dataclasses.replace(CFG, calibration_fraction=0.5, bootstrap=200)


def test_threshold_is_chosen_on_calibration_images_and_measured_on_the_others():
    scores = val_scores()
    point = evaluate.operating_point(scores, SPLIT, seed=0)
    calib, rest = evaluate.calibration_split(scores, 0.5, seed=0)
    assert not {s["image"] for s in calib} & {s["image"] for s in rest}  # split by image
    assert len({s["image"] for s in calib}) == len({s["image"] for s in rest}) == 20
    assert point["chosen_on"]["part"] == "calibration" and point["chosen_on"]["examples"] == len(calib)
    # the threshold is the calibration part's own operating point ...
    assert point["threshold"] == metrics.operating_point(*evaluate._arrays(calib), 0.9)["threshold"]
    # ... and the reported figures are the other images' at that threshold
    held = point["measured_on"]["val_rest"]
    assert (held["images"], held["examples"]) == (20, len(rest))
    assert held["precision"] == point["precision"] == metrics.at_threshold(*evaluate._arrays(rest), point["threshold"])["precision"]
    lo, hi = held["bootstrap"]["precision"]
    assert lo <= held["precision"] <= hi and lo < hi


def test_calibration_fraction_zero_is_the_old_operating_point():
    scores = val_scores()
    point = evaluate.operating_point(scores, CFG, seed=0)
    old = metrics.operating_point(*evaluate._arrays(scores), 0.9)
    assert {k: point[k] for k in old} == old and point["chosen_on"]["part"] == "all"
    assert set(point["measured_on"]) == {"val"} and "bootstrap" not in point["measured_on"]["val"]


def test_operating_point_and_bootstrap_are_reproducible_and_seeded():
    scores = val_scores()
    a = json.dumps(evaluate.operating_point(scores, SPLIT, seed=0), sort_keys=True)
    assert a == json.dumps(evaluate.operating_point(scores, SPLIT, seed=0), sort_keys=True)
    assert a != json.dumps(evaluate.operating_point(scores, SPLIT, seed=1), sort_keys=True)


def test_bootstrap_resamples_whole_images():
    # one image holds every accepted negative: resampling images, some resamples lose it (precision 1),
    # others take it twice; resampling examples independently would never see precision exactly 1 that often
    labels = [1] * 10 + [0] * 5
    p = [0.9] * 15
    images = [f"a{i}" for i in range(10)] + ["bad"] * 5
    b = metrics.bootstrap_at_threshold(labels, p, images, 0.5, 500, 0.95, seed=0)
    assert b["precision"][1] == 1.0 and b["precision"][0] < 10 / 15
    assert b["undefined"] == {"precision": 0, "recall": 0}


def test_a_val_of_one_image_is_chosen_on_whole_and_says_so():
    with pytest.raises(ValueError, match="calibration_fraction: 0"):
        evaluate.calibration_split(val_scores(n_images=1), 0.5, seed=0)
    point = evaluate.operating_point(val_scores(n_images=1), SPLIT, seed=0)
    assert point["chosen_on"]["part"] == "all" and "1 image" in point["chosen_on"]["note"]
    assert set(point["measured_on"]) == {"val"}


def test_same_image_kinds_are_the_negatives_stage_hard_kinds():
    from maskgate.data import negatives

    assert evaluate.SAME_IMAGE_KINDS == negatives.HARD_KINDS


def test_pool_kinds_count_towards_hard_auroc():
    scores = val_scores()
    for s in scores[1::3][:10]:
        s["kind"] = "pool_swap"
    m, point = evaluate.measure(scores, CFG, seed=0)
    assert set(m["by_kind"]) == {"hard", "pool_swap", "easy"} and "same_image" in m
    m["shortcut_auroc"] = 0.5
    top = evaluate.headline(m, point)
    assert top["hard_auroc"] == m["same_image"]["auroc"] != m["by_kind"]["hard"]["auroc"]
    assert len(top) == 10
