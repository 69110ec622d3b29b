"""Wrong mask groups for each positive (query, correct group): the verifier's REJECT examples.

hard: another ground-truth group of the same image (same statistics, wrong objects).
easy: a ground-truth group of another image of the same split, scaled to this image's size.
`per_positive` of these, a share `hard_fraction` hard. Rows short of hard candidates are filled
with easy ones, and counted.

Two opt-in instance kinds (off by default; `missing_instance` / `extra_instance` candidates per
positive, on top of `per_positive`) teach the verifier to count instances, not only to find the
right objects:
missing_instance: the correct group minus one of its masks (every copy of it). Only for groups of
  2+ distinct masks; a row whose group has one mask cannot make it and is counted
  (`single_mask_group`).
extra_instance: the correct group plus one mask of another ground-truth group of the same image
  that is not in it; a row whose image has no such mask is counted (`no_other_mask`).

A candidate whose union overlaps the correct group's union with IoU >= max_iou is refused and
counted, whatever its kind: different queries often name the same group, and such a "negative"
would be a false negative. The instance kinds obey the rule too, deliberately: another row's pool
may hold the same object under different RLE (adding it changes no pixel), a group may list one
object twice, and an instance covering under about (1 - max_iou) of the group's area is hard to
see in the overlay, so the picture barely differs from the right one. Such candidates are refused
and counted (`refused_iou`), never kept as doubtful negatives; raise max_iou to keep more of them.

Report (reports/negatives.json): per split, `examples`, `kinds` (examples per kind), `refused_iou`
(per kind), `filled_with_easy`, `short` (hard/easy negatives wanted but not made); for each instance
kind that is on, `{kind: {split: {single_mask_group | no_other_mask: rows, short: n}}}`, where
`short` counts candidates wanted but not made in rows that could make the kind (refused by IoU, the
same masks as another candidate, or fewer options than wanted). Kinds that are off add no key.

Deterministic: each row draws hard and easy from its own generator seeded by (seed, row id), and
each instance kind from a generator of its own seeded by (seed, row id, kind), so turning an
instance kind on leaves the hard and easy negatives (and the other instance kind) unchanged.
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

from maskgate.config import Negatives
from maskgate.data import masks
from maskgate.utils import tables
EASY_TRIES = 20  # random draws per wanted easy negative before the row is counted as short
# The opt-in instance kinds, each with its own random stream (see row_rng) and the counter of rows
# that cannot make it at all.
INSTANCE_KINDS = {"missing_instance": "single_mask_group", "extra_instance": "no_other_mask"}
_STREAM = {"missing_instance": 1, "extra_instance": 2}


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


def row_rng(seed: int, row_id: str, kind: str | None = None) -> np.random.Generator:
    """The row's generator for hard and easy (kind None), or an independent one for an instance kind."""
    entropy = [seed, int(hashlib.sha256(row_id.encode()).hexdigest()[:16], 16)]
    return np.random.default_rng(entropy if kind is None else entropy + [_STREAM[kind]])


def instance_counts(cfg: Negatives) -> dict[str, int]:
    """How many candidates of each instance kind a positive gets (0 = off)."""
    return {kind: getattr(cfg, kind) for kind in INSTANCE_KINDS}


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


def negatives_for_row(row: dict, pool: dict[str, list[Candidate]], images: list[str], cfg: Negatives,
                      seed: int, counts: Counter, position: dict[str, int] | None = None) -> list[dict]:
    """The positive example of `row` followed by its negatives: hard, easy, then the instance kinds."""
    rng = row_rng(seed, row["row_id"])
    k, max_iou = cfg.per_positive, cfg.max_iou
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

    want_hard = round(k * cfg.hard_fraction)
    same_image = [c for c in pool[row["image"]] if (c.row_id, c.group) != (right.row_id, 0)]
    for i in rng.permutation(len(same_image)):
        if sum(kind == "hard" for _, kind in chosen) == want_hard:
            break
        accept(same_image[i], "hard")
    counts["filled_with_easy"] += want_hard - len(chosen)

    # The j-th of the other images, without building their list per row (that made a split quadratic in
    # its images: 22k images x 100k rows at MaskGroups-HQ scale); the same draws as indexing that list.
    own = (position or {img: i for i, img in enumerate(images)}).get(row["image"])
    n_others = len(images) - (own is not None)
    used: set[tuple[str, int]] = set()
    for _ in range((k - len(chosen)) * EASY_TRIES):
        if len(chosen) == k or not n_others:
            break
        j = int(rng.integers(n_others))
        img = images[j + 1 if own is not None and j >= own else j]
        c = pool[img][int(rng.integers(len(pool[img])))]
        if (c.row_id, c.group) in used:
            continue
        used.add((c.row_id, c.group))
        accept(scaled_to(c, row["height"], row["width"]), "easy")
    counts["short"] += k - len(chosen)

    for kind, want in instance_counts(cfg).items():
        if not want:
            continue
        options = instance_options(row, right, pool, kind)
        if not options:  # a counted skip: the report says how many rows could not make this kind
            counts[INSTANCE_KINDS[kind]] += 1
            continue
        made = 0
        for i in row_rng(seed, row["row_id"], kind).permutation(len(options)):
            if made == want:
                break
            made += accept(options[i], kind)
        counts[f"short_{kind}"] += want - made
    return [example(row, right, "positive", 0)] + [example(row, c, kind, i + 1) for i, (c, kind) in enumerate(chosen)]


def instance_options(row: dict, right: Candidate, pool: dict[str, list[Candidate]], kind: str) -> list[Candidate]:
    """Every candidate of an instance kind for this row; empty when the row cannot make the kind.

    missing_instance: the right group without one of its distinct masks (a group may list one mask
    twice; that is one instance, removed with all its copies), so always a strict subset.
    extra_instance: the right group plus one mask of another ground-truth group of the same image
    that is not in it, so always a strict superset; its provenance (source_row_id, source_group)
    is the group the added mask comes from.
    """
    distinct = list(dict.fromkeys(right.counts))
    if kind == "missing_instance":
        if len(distinct) < 2:
            return []
        return [Candidate(right.row_id, 0, right.image, right.height, right.width,
                          tuple(c for c in right.counts if c != drop)) for drop in distinct]
    inside, sources = set(distinct), {}
    # sorted by (row id, group): the options and their provenance do not depend on the order of rows
    for c in sorted(pool[row["image"]], key=lambda c: (c.row_id, c.group)):
        for m in scaled_to(c, right.height, right.width).counts:
            if m not in inside and m not in sources:
                sources[m] = c
    return [Candidate(c.row_id, c.group, right.image, right.height, right.width, right.counts + (m,))
            for m, c in sources.items()]


def make_examples(rows: list[dict], cfg: Negatives, seed: int, progress=None) -> tuple[list[dict], Counter]:
    """All examples of one split, in row order, and the counts for the report."""
    pool = candidates_by_image(rows)
    images = sorted(pool)
    counts: Counter = Counter()
    out = []
    position = {img: i for i, img in enumerate(images)}
    for row in rows:
        out += negatives_for_row(row, pool, images, cfg, seed, counts, position)
        if progress is not None:
            progress.update(1)
    return out, counts


EXAMPLE_SCHEMA = pa.schema([
    ("example_id", pa.string()), ("row_id", pa.string()), ("image", pa.string()), ("query", pa.string()),
    ("height", pa.int32()), ("width", pa.int32()), ("kind", pa.string()), ("label", pa.int8()),
    ("source_row_id", pa.string()), ("source_group", pa.int32()), ("masks", pa.list_(pa.string())),
])


def build(prepared: Path, out_dir: Path, cfg: Negatives, seed: int) -> dict:
    """Examples for every split of the prepare output, written as `{split}.parquet`; the report."""
    from maskgate.data.prepared import SPLITS, read_rows

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
            # Instance kinds only when on, so the default report is the same as before they existed.
            for kind, want in instance_counts(cfg).items():
                if want:
                    report["refused_iou"][split][kind] = counts[f"refused_iou_{kind}"]
                    report.setdefault(kind, {})[split] = {INSTANCE_KINDS[kind]: counts[INSTANCE_KINDS[kind]],
                                                          "short": counts[f"short_{kind}"]}
    return report
