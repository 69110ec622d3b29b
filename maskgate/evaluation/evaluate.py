"""Score the validation split with the trained verifier and measure it as a quality gate.

Outputs (paths passed in by the stage): metrics JSON (DVC metrics), plot data + PNGs, the gate's
operating point, per-example scores (for audit_sample), and the mask-only shortcut baseline's
AUROC, which says how much of the score a model could get from mask statistics alone.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from maskgate.evaluation import metrics
from maskgate.evaluation import shortcut
from maskgate.utils import tables
from maskgate.prompt import Prompt, gate_label
from maskgate.model.scoring import score
from maskgate.model.train import to_example

SCORE_SCHEMA = pa.schema([("example_id", pa.string()), ("kind", pa.string()), ("label", pa.int8()),
                          ("p_accept", pa.float64())])
CHUNK = 512  # examples decoded at a time; bounds memory on a large validation split


def score_split(model, processor, prompt: Prompt, rendered: Path, split: str, max_length: int,
                batch_size: int, workers: int = 0) -> list[dict]:
    """P(ACCEPT) of every example of a split, with its id, kind and label, in shard order."""
    if not tables.shard_paths(rendered, split):
        raise FileNotFoundError(f"no {split}-*.parquet shards in {rendered}; run the render stage first")
    out, chunk = [], []

    def flush():
        examples = [to_example(r) for r in chunk]  # the train stage's decoding; scoring ignores the answer
        p = score(model, processor, prompt, examples, max_length, batch_size, desc=f"evaluate: scoring {split}",
                  workers=workers)
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


def measure(scores: list[dict], cfg: dict) -> tuple[dict, dict]:
    """The metrics dict and the operating point from per-example scores."""
    labels = np.array([gate_label(s["label"]) for s in scores])  # a BORDERLINE (label 2) is a 0 to the gate
    p = np.array([s["p_accept"] for s in scores])
    kinds = [s["kind"] for s in scores]
    m = metrics.compute_metrics(labels, p, kinds, [float(t) for t in cfg["thresholds"]],
                                float(cfg["target_precision"]))
    point = metrics.operating_point(labels, p, float(cfg["target_precision"]))
    return m, point


def measure_at(scores: list[dict], cfg: dict, threshold: float) -> dict:
    """The metrics of another split, and its precision, recall and auto-pass rate at `threshold`."""
    labels = np.array([gate_label(s["label"]) for s in scores])
    p = np.array([s["p_accept"] for s in scores])
    m = metrics.compute_metrics(labels, p, [s["kind"] for s in scores], [float(t) for t in cfg["thresholds"]],
                                float(cfg["target_precision"]))
    m["at_operating_point"] = {"threshold": float(threshold), **metrics.at_threshold(labels, p, threshold)}
    return m


def write_scores(scores: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tables.write_table(scores, tmp, SCORE_SCHEMA)
    tmp.replace(path)
