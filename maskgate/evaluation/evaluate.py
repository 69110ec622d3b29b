"""Score the validation split with the trained verifier and measure it as a quality gate.

Outputs (paths passed in by the stage): the headline metrics (DVC metrics: what `dvc exp show` puts
beside the params), every metric by negative kind and threshold (the breakdown), plot data + PNGs, the
gate's operating point, per-example scores (for audit_sample), and the mask-only shortcut baseline's
AUROC, which says how much of the score a model could get from mask statistics alone.

The operating point is chosen on a calibration part of val (`evaluate.calibration_fraction` of its
images, split by image as prepare splits) and measured on the rest of val and on test, with a
bootstrap interval (by image) for its precision: a threshold chosen and measured on the same examples
reports the precision it was tuned to reach, so the measure would be optimistic by construction.
"""
from __future__ import annotations

import hashlib
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
# maskgate.data.negatives.HARD_KINDS, the kinds that fill hard slots (evaluation may not import data:
# tests/test_layout.py; tests/test_evaluate.py checks the two agree)
SAME_IMAGE_KINDS = ("hard", "pool_other", "pool_swap")
CHUNK = 512  # examples decoded at a time; bounds memory on a large validation split


def score_split(model, processor, prompt: Prompt, rendered: Path, split: str, max_length: int,
                batch_size: int, workers: int = 0, prefetch: bool = False, overlap: bool = False) -> list[dict]:
    """P(ACCEPT) of every example of a split, with its id, kind and label, in shard order."""
    if not tables.shard_paths(rendered, split):
        raise FileNotFoundError(f"no {split}-*.parquet shards in {rendered}; run the render stage first")
    out, chunk = [], []

    def flush():
        examples = [to_example(r) for r in chunk]  # the train stage's decoding; scoring ignores the answer
        p = score(model, processor, prompt, examples, max_length, batch_size, desc=f"evaluate: scoring {split}",
                  workers=workers, prefetch=prefetch, overlap=overlap)
        out.extend({"example_id": r["example_id"], "image": r["image"], "kind": r["kind"], "label": r["label"],
                    "p_accept": float(s)} for r, s in zip(chunk, p))
        chunk.clear()

    # image: the calibration part of val is split by image (kept in memory; the scores file has SCORE_SCHEMA)
    for r in tables.iter_shards(rendered, split, ["example_id", "image", "query", "kind", "label", "label_text",
                                                  "overlay"]):
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


def _arrays(scores: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    labels = np.array([gate_label(s["label"]) for s in scores])  # a BORDERLINE (label 2) is a 0 to the gate
    return labels, np.array([s["p_accept"] for s in scores])


def measure(scores: list[dict], cfg: Evaluate, seed: int) -> tuple[dict, dict]:
    """The metrics dict and the operating point from per-example scores of val."""
    labels, p = _arrays(scores)
    kinds = [s["kind"] for s in scores]
    m = metrics.compute_metrics(labels, p, kinds, cfg.thresholds, cfg.target_precision)
    if set(SAME_IMAGE_KINDS[1:]) & set(kinds):  # every same-image negative together: hard_auroc's set
        keep = [s["kind"] in ("positive", *SAME_IMAGE_KINDS) for s in scores]
        same = [s for s, k in zip(scores, keep) if k]
        m["same_image"] = {k: v for k, v in metrics.compute_metrics(
            *_arrays(same), [s["kind"] for s in same], cfg.thresholds, cfg.target_precision).items() if k != "by_kind"}
    return m, operating_point(scores, cfg, seed)


def calibration_split(scores: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(calibration part, the rest) of val's scores, split by image: `fraction` of the images choose the
    threshold, the others measure it. fraction 0: both are all of val (the threshold measured where it was
    chosen). ValueError when val has a single image (no split by image is possible)."""
    if fraction == 0:
        return scores, scores
    # ranked by a hash of (seed, name), prepare's rule (maskgate.data.split), salted so the part is not the
    # images that happened to rank first for the train/val split
    names = sorted({s["image"] for s in scores},
                   key=lambda n: hashlib.sha256(f"{seed}:calibration:{n}".encode()).hexdigest())
    calibration = set(names[:min(max(round(len(names) * fraction), 1), len(names) - 1)])
    calib = [s for s in scores if s["image"] in calibration]
    rest = [s for s in scores if s["image"] not in calibration]
    if not calib or not rest:
        raise ValueError(f"val has {len(names)} image(s): too few to split into a calibration part and a rest; "
                         "set evaluate.calibration_fraction: 0 to choose and measure the threshold on all of val")
    return calib, rest


def measured_at(scores: list[dict], threshold: float, cfg: Evaluate, seed: int) -> dict:
    """Precision, recall and auto-pass rate at `threshold` on these examples, how many, and the bootstrap interval."""
    labels, p = _arrays(scores)
    out = {"images": len({s["image"] for s in scores}), "examples": len(scores), "positives": int(labels.sum()),
           **metrics.at_threshold(labels, p, threshold)}
    if cfg.bootstrap:
        out["bootstrap"] = metrics.bootstrap_at_threshold(labels, p, [s["image"] for s in scores], threshold,
                                                          cfg.bootstrap, cfg.confidence, seed)
    return out


def operating_point(scores: list[dict], cfg: Evaluate, seed: int) -> dict:
    """The gate's threshold, chosen on val's calibration part, with what chose it (`chosen_on`) and what
    measured it (`measured_on`: the rest of val; evaluate.run adds test). The top-level precision, recall
    and auto-pass rate are the rest of val's (with calibration_fraction 0, all of val's, as chosen)."""
    note = None
    try:
        calib, rest = calibration_split(scores, cfg.calibration_fraction, seed)
    except ValueError as e:  # a val of one image (a toy source): chosen on all of it, and the file says so
        calib = rest = scores
        note = f"{e}; chosen and measured on all of val instead"
    chosen = metrics.operating_point(*_arrays(calib), cfg.target_precision)
    held = measured_at(rest, chosen["threshold"], cfg, seed)
    part = "calibration" if cfg.calibration_fraction and note is None else "all"
    point = {
        "threshold": chosen["threshold"], "target_precision": chosen["target_precision"], "reached": chosen["reached"],
        "precision": held["precision"], "recall": held["recall"], "auto_pass_rate": held["auto_pass_rate"],
        "chosen_on": {"split": "val", "part": part, "calibration_fraction": float(cfg.calibration_fraction),
                      "images": len({s["image"] for s in calib}), "examples": len(calib),
                      "precision": chosen["precision"], "recall": chosen["recall"],
                      "auto_pass_rate": chosen["auto_pass_rate"]},
        "measured_on": {"val_rest" if part == "calibration" else "val": held},
    }
    if note:
        point["chosen_on"]["note"] = note
    return point


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
        # the positives against every same-image negative (hard, and pool_other / pool_swap when on)
        "hard_auroc": (breakdown.get("same_image") or breakdown["by_kind"].get("hard") or {}).get("auroc"),
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
                                 cfg.prefetch, cfg.overlap)
              for split in ("val", "test") if split == "val" or tables.shard_paths(rendered, split)}
    breakdown, point = measure(scores["val"], cfg, seed)
    if "note" in point["chosen_on"]:
        print_fn(f"evaluate: warning: {point['chosen_on']['note']}")
    point["scoring"] = scoring.record()  # the gate's defaults
    breakdown["shortcut_auroc"] = shortcut_baseline(rendered, seed)
    if "test" in scores:  # the source's own evaluation rows, measured at the threshold val chose
        breakdown["test"] = measure_at(scores["test"], cfg, point["threshold"])
        point["measured_on"]["test"] = measured_at(scores["test"], point["threshold"], cfg, seed)
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
             f"shortcut AUROC {top['shortcut_auroc']:.3f}; gate threshold {top['threshold']:.3f} "
             f"(chosen on {point['chosen_on']['examples']} val examples, {point['chosen_on']['part']}); "
             f"measured on {'the other' if point['chosen_on']['part'] == 'calibration' else 'the same'} "
             f"{next(iter(point['measured_on'].values()))['examples']}: precision "
             f"{point['precision']}, recall {point['recall']}, auto-pass rate {point['auto_pass_rate']}")
    if "test" in breakdown:
        test = breakdown["test"]
        print_fn(f"evaluate: test ({test['n']} examples): AUROC {test['auroc']}, at the gate's threshold precision "
                 f"{test['at_operating_point']['precision']}, auto-pass rate {test['at_operating_point']['auto_pass_rate']}")
    return top
