import json

import numpy as np
import pytest

from maskgate.config import Evaluate
from maskgate.evaluation import evaluate
from maskgate.evaluation.audit import audit_records
from maskgate.model import verifier
from maskgate.utils import tables
from tests.test_render import rendered  # noqa: F401  (fixture)

CFG = Evaluate(batch_size=4, workers=0, prefetch=False, merge_adapter=False, compile=False, batched_vision=True, compile_vision=False, target_precision=0.9, thresholds=[0.5, 0.9])


def test_measure_from_hand_made_scores():
    scores = [{"example_id": str(i), "kind": k, "label": y, "p_accept": p} for i, (k, y, p) in enumerate(
        [("positive", 1, 0.95), ("positive", 1, 0.7), ("hard", 0, 0.6), ("easy", 0, 0.1), ("hard", 0, 0.2)])]
    m, point = evaluate.measure(scores, CFG)
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
