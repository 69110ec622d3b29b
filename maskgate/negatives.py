"""Wrong mask groups for each positive (query, correct group): the verifier's REJECT examples.

hard: another ground-truth group of the same image (same statistics, wrong objects).
easy: a ground-truth group of another image of the same split, scaled to this image's size.
A candidate whose union overlaps the correct group's union with IoU >= max_iou is refused and
counted: different queries often name the same group, and such a "negative" would be a
false negative. Rows short of hard candidates are filled with easy ones, and counted.
Deterministic: each row draws from its own generator seeded by (seed, row id).
"""
from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from pycocotools import mask as coco
from tqdm import tqdm

from maskgate import masks, tables

EASY_TRIES = 20  # random draws per wanted easy negative before the row is counted as short


@dataclass(frozen=True)
class Candidate:
    row_id: str
    group: int
    image: str
    height: int
    width: int
    counts: tuple[str, ...]

    def rles(self) -> list[dict]:
        return [{"size": [self.height, self.width], "counts": c.encode()} for c in self.counts]


def union_rle(c: Candidate) -> dict:
    return coco.merge(c.rles(), intersect=False)


def group_iou(a: dict, b: dict) -> float:
    return float(coco.iou([a], [b], [0])[0][0])


def scaled_to(c: Candidate, height: int, width: int) -> Candidate:
    """The candidate's masks resized to another image's size (nearest neighbour)."""
    if (c.height, c.width) == (height, width):
        return c
    counts = tuple(masks.encode(masks.resize(masks.decode(s, c.height, c.width), height, width)) for s in c.counts)
    return Candidate(c.row_id, c.group, c.image, height, width, counts)


def row_rng(seed: int, row_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, int(hashlib.sha256(row_id.encode()).hexdigest()[:16], 16)])


def candidates_by_image(rows: list[dict]) -> dict[str, list[Candidate]]:
    """Every ground-truth group of each image, one candidate per (row, group)."""
    out: dict[str, list[Candidate]] = defaultdict(list)
    for r in rows:
        for gi, g in enumerate(r["groups"]):
            out[r["image"]].append(Candidate(r["row_id"], gi, r["image"], r["height"], r["width"], tuple(g)))
    return dict(out)


def example(row: dict, c: Candidate, kind: str, index: int) -> dict:
    return {
        "example_id": f"{row['row_id']}/{index}", "row_id": row["row_id"], "image": row["image"],
        "query": row["query"], "height": row["height"], "width": row["width"], "kind": kind,
        "label": int(kind == "positive"), "source_row_id": c.row_id, "source_group": c.group,
        "masks": list(c.counts),
    }


def negatives_for_row(row: dict, pool: dict[str, list[Candidate]], images: list[str], cfg: dict,
                      seed: int, counts: Counter) -> list[dict]:
    """The positive example of `row` followed by its negatives."""
    rng = row_rng(seed, row["row_id"])
    k, max_iou = int(cfg["per_positive"]), float(cfg["max_iou"])
    right = Candidate(row["row_id"], 0, row["image"], row["height"], row["width"], tuple(row["groups"][0]))
    right_union = union_rle(right)
    chosen: list[tuple[Candidate, str]] = []
    seen = {tuple(sorted(right.counts))}  # the same masks named by two rows are one candidate

    def accept(c: Candidate, kind: str) -> bool:
        if group_iou(union_rle(c), right_union) >= max_iou:
            counts[f"refused_iou_{kind}"] += 1
            return False
        if tuple(sorted(c.counts)) in seen:
            return False
        seen.add(tuple(sorted(c.counts)))
        chosen.append((c, kind))
        return True

    want_hard = round(k * float(cfg["hard_fraction"]))
    same_image = [c for c in pool[row["image"]] if (c.row_id, c.group) != (right.row_id, 0)]
    for i in rng.permutation(len(same_image)):
        if sum(kind == "hard" for _, kind in chosen) == want_hard:
            break
        accept(same_image[i], "hard")
    counts["filled_with_easy"] += want_hard - len(chosen)

    others = [img for img in images if img != row["image"]]
    used: set[tuple[str, int]] = set()
    for _ in range((k - len(chosen)) * EASY_TRIES):
        if len(chosen) == k or not others:
            break
        img = others[int(rng.integers(len(others)))]
        c = pool[img][int(rng.integers(len(pool[img])))]
        if (c.row_id, c.group) in used:
            continue
        used.add((c.row_id, c.group))
        accept(scaled_to(c, row["height"], row["width"]), "easy")
    counts["short"] += k - len(chosen)
    return [example(row, right, "positive", 0)] + [example(row, c, kind, i + 1) for i, (c, kind) in enumerate(chosen)]


def make_examples(rows: list[dict], cfg: dict, seed: int, progress=None) -> tuple[list[dict], Counter]:
    """All examples of one split, in row order, and the counts for the report."""
    k = int(cfg["per_positive"])
    if not 3 <= k <= 6:
        raise ValueError(f"negatives.per_positive must be between 3 and 6, got {k}")
    if not 0.0 <= float(cfg["hard_fraction"]) <= 1.0:
        raise ValueError(f"negatives.hard_fraction must be in [0, 1], got {cfg['hard_fraction']}")
    pool = candidates_by_image(rows)
    images = sorted(pool)
    counts: Counter = Counter()
    out = []
    for row in rows:
        out += negatives_for_row(row, pool, images, cfg, seed, counts)
        if progress is not None:
            progress.update(1)
    return out, counts


EXAMPLE_SCHEMA = pa.schema([
    ("example_id", pa.string()), ("row_id", pa.string()), ("image", pa.string()), ("query", pa.string()),
    ("height", pa.int32()), ("width", pa.int32()), ("kind", pa.string()), ("label", pa.int8()),
    ("source_row_id", pa.string()), ("source_group", pa.int32()), ("masks", pa.list_(pa.string())),
])


def build(prepared: Path, out_dir: Path, cfg: dict, seed: int) -> dict:
    """Examples for every split of the prepare output, written as `{split}.parquet`; the report."""
    from maskgate.prepare import SPLITS, read_rows

    report: dict = {"examples": {}, "kinds": {}, "refused_iou": {}, "filled_with_easy": {}, "short": {}}
    with tables.atomic_dir(out_dir) as tmp:
        for split in SPLITS:
            rows = read_rows(prepared, split)
            with tqdm(total=len(rows), desc=f"negatives: {split}", unit="row") as bar:
                examples, counts = make_examples(rows, cfg, seed, progress=bar)
            tables.write_table(examples, tmp / f"{split}.parquet", EXAMPLE_SCHEMA)
            report["examples"][split] = len(examples)
            report["kinds"][split] = dict(sorted(Counter(e["kind"] for e in examples).items()))
            report["refused_iou"][split] = {k: counts[f"refused_iou_{k}"] for k in ("hard", "easy")}
            report["filled_with_easy"][split] = counts["filled_with_easy"]
            report["short"][split] = counts["short"]
    return report
