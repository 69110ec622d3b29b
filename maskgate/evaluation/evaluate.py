"""Score the validation split with the trained verifier and measure it as a quality gate.

Outputs (paths passed in by the stage): the headline metrics (DVC metrics: what `dvc exp show` puts
beside the params), every metric by negative kind and threshold (the breakdown), plot data + PNGs, the
gate's operating point, per-example scores (for audit_sample), and the mask-only shortcut baseline's
AUROC, which says how much of the score a model could get from mask statistics alone.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from maskgate.config import Evaluate
from maskgate.evaluation import metrics, shortcut
from maskgate.model.batching import to_example
from maskgate.model.scoring import score
from maskgate.model.speedups import Scoring
from maskgate.prompt import Prompt, gate_label
from maskgate.utils import tables

SCORE_SCHEMA = pa.schema([("example_id", pa.string()), ("kind", pa.string()), ("label", pa.int8()),
                          ("p_accept", pa.float64())])
CHUNK = 512  # examples decoded at a time; bounds memory on a large validation split


def score_split(model, processor, prompt: Prompt, rendered: Path, split: str, max_length: int,
                batch_size: int, workers: int = 0, prefetch: bool = False) -> list[dict]:
    """P(ACCEPT) of every example of a split, with its id, kind and label, in shard order."""
    if not tables.shard_paths(rendered, split):
        raise FileNotFoundError(f"no {split}-*.parquet shards in {rendered}; run the render stage first")
    out, chunk = [], []

    def flush():
        examples = [to_example(r) for r in chunk]  # the train stage's decoding; scoring ignores the answer
        p = score(model, processor, prompt, examples, max_length, batch_size, desc=f"evaluate: scoring {split}",
                  workers=workers, prefetch=prefetch)
        out.extend({"example_id": r["example_id"], "kind": r["kind"], "label": r["label"], "p_accept": float(s)}
                   for r, s in zip(chunk, p))
        chunk.clear()

    for r in tables.iter_shards(rendered, split, ["example_id", "query", "kind", "label", "label_text", "overlay"]):
        chunk.append(r)
        if len(chunk) == CHUNK:
            flush()
    if chunk:
        flush()
    return out


def mask_features(rendered: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    rows = list(tables.iter_shards(rendered, split, ["masks", "height", "width", "label"]))
    x = np.stack([shortcut.mask_features(r["masks"], r["height"], r["width"]) for r in rows])
    return x, np.array([gate_label(r["label"]) for r in rows])


def shortcut_baseline(rendered: Path, seed: int) -> float:
    """Validation AUROC of a classifier trained on the train split's candidate masks alone."""
    xt, yt = mask_features(rendered, "train")
    xv, yv = mask_features(rendered, "val")
    return float(shortcut.shortcut_auroc(xt, yt, xv, yv, seed))


def measure(scores: list[dict], cfg: Evaluate) -> tuple[dict, dict]:
    """The metrics dict and the operating point from per-example scores."""
    labels = np.array([gate_label(s["label"]) for s in scores])  # a BORDERLINE (label 2) is a 0 to the gate
    p = np.array([s["p_accept"] for s in scores])
    kinds = [s["kind"] for s in scores]
    m = metrics.compute_metrics(labels, p, kinds, cfg.thresholds, cfg.target_precision)
    point = metrics.operating_point(labels, p, cfg.target_precision)
    return m, point


def measure_at(scores: list[dict], cfg: Evaluate, threshold: float) -> dict:
    """The metrics of another split, and its precision, recall and auto-pass rate at `threshold`."""
    labels = np.array([gate_label(s["label"]) for s in scores])
    p = np.array([s["p_accept"] for s in scores])
    m = metrics.compute_metrics(labels, p, [s["kind"] for s in scores], cfg.thresholds, cfg.target_precision)
    m["at_operating_point"] = {"threshold": float(threshold), **metrics.at_threshold(labels, p, threshold)}
    return m


def write_scores(scores: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tables.atomic_file(path) as tmp:
        tables.write_table(scores, tmp, SCORE_SCHEMA)


def headline(breakdown: dict, point: dict) -> dict:
    """The ten numbers a run is compared by (reports/metrics.json); the breakdown holds the rest."""
    test = breakdown.get("test") or {}
    return {
        "auroc": breakdown["auroc"],
        "average_precision": breakdown["average_precision"],
        "accuracy": breakdown["accuracy"],
        "ece": breakdown["ece"],
        "threshold": point["threshold"],  # the gate's operating point, chosen on val
        "recall_at_target_precision": point["recall"],
        "auto_pass_rate_at_target_precision": point["auto_pass_rate"],
        "hard_auroc": (breakdown["by_kind"].get("hard") or {}).get("auroc"),
        "shortcut_auroc": breakdown["shortcut_auroc"],
        "test_auroc": test.get("auroc"),
    }


def run(cfg: Evaluate, prompt: Prompt, seed: int, rendered: Path, model_dir: Path, scores_dir: Path,
        metrics_path: Path, breakdown_path: Path, plots: Path, operating_point: Path, print_fn=print) -> dict:
    """The evaluate stage: score val (and test), measure, write every output; returns the headline metrics."""
    from maskgate.model import speedups
    from maskgate.model.verifier import load_verifier, read_manifest

    scoring = Scoring.of(cfg)
    model, processor = load_verifier(model_dir)
    model = speedups.for_scoring(model, scoring, "evaluate")
    manifest = read_manifest(model_dir)
    max_length = int(manifest["max_length"])  # the budget training used
    batch_size = speedups.batch_size(model, processor, prompt, manifest["render"].size, max_length, scoring,
                                     "evaluate", print_fn)
    scores = {split: score_split(model, processor, prompt, rendered, split, max_length, batch_size, cfg.workers,
                                 cfg.prefetch)
              for split in ("val", "test") if split == "val" or tables.shard_paths(rendered, split)}
    breakdown, point = measure(scores["val"], cfg)
    point["scoring"] = scoring.record()  # the gate's defaults
    breakdown["shortcut_auroc"] = shortcut_baseline(rendered, seed)
    if "test" in scores:  # the source's own evaluation rows, measured at the threshold val chose
        breakdown["test"] = measure_at(scores["test"], cfg, point["threshold"])
    for split, split_scores in scores.items():
        write_scores(split_scores, scores_dir / f"{split}.parquet")
    val = scores["val"]
    metrics.write_plots([gate_label(s["label"]) for s in val], [s["p_accept"] for s in val], plots,
                        names=prompt.decision_names)
    top = headline(breakdown, point)
    tables.write_json(breakdown, breakdown_path)
    tables.write_json(top, metrics_path)
    tables.write_json(point, operating_point)
    print_fn(f"evaluate: accuracy {top['accuracy']:.3f}, AUROC {top['auroc']}, "
             f"shortcut AUROC {top['shortcut_auroc']:.3f}; gate threshold {top['threshold']:.3f}")
    if "test" in breakdown:
        test = breakdown["test"]
        print_fn(f"evaluate: test ({test['n']} examples): AUROC {test['auroc']}, at the gate's threshold precision "
                 f"{test['at_operating_point']['precision']}, auto-pass rate {test['at_operating_point']['auto_pass_rate']}")
    return top
