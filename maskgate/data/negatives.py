"""Wrong mask groups for each positive (query, correct group): the verifier's REJECT examples.

hard: another ground-truth group of the same image (same statistics, wrong objects).
easy: a ground-truth group of another image of the same split, scaled to this image's size.
`per_positive` of these, a share `hard_fraction` hard. Rows short of hard candidates are filled
with easy ones, and counted.

With `pool_hard`, the hard slots other rows' groups leave empty are filled from the row's own
`pool` (every annotated object of the image, prepare's copy of gt_mask_pool) before any easy one:
pool_other: as many pool masks outside the right group as the group has distinct masks (fewer when
  the pool has fewer), a wrong set of objects of the same image with the group's instance count;
pool_swap: the right group with one of its masks swapped for a pool mask outside it (groups of 2+
  distinct masks only: for a group of one, a swap is a pool_other).
Both obey max_iou (counted per kind) and have source_row_id = the row itself, source_group = -1
(a pool draw, not a ground-truth group). With one or two queries per image (MaskGroups, the demo),
other rows give few hard candidates and most hard slots would otherwise turn easy.

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
(per kind), `filled_with_easy`, `hard_slots` (hard negatives wanted), `easy_fill_share`
(filled_with_easy / hard_slots; the stage warns above `max_easy_fill_share`), `short` (hard/easy
negatives wanted but not made); for each instance
kind that is on, `{kind: {split: {single_mask_group | no_other_mask: rows, short: n}}}`, where
`short` counts candidates wanted but not made in rows that could make the kind (refused by IoU, the
same masks as another candidate, or fewer options than wanted). Kinds that are off add no key.

Deterministic: each row draws hard and easy from its own generator seeded by (seed, row id), and
each instance kind from a generator of its own seeded by (seed, row id, kind), so turning an
instance kind on leaves the hard and easy negatives (and the other instance kind) unchanged. The
pool draws have a stream of their own too: turning pool_hard on keeps every other-row hard negative
and changes only the slots that were filled with easy ones.
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
_STREAM = {"missing_instance": 1, "extra_instance": 2, "pool": 3}
# The kinds that fill hard slots: another row's group, then (pool_hard) draws from the image's own pool.
HARD_KINDS = ("hard", "pool_other", "pool_swap")
POOL_KINDS = HARD_KINDS[1:]
POOL_GROUP = -1  # source_group of a pool draw: it is no ground-truth group


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


def hard_slots(cfg: Negatives) -> int:
    """Hard negatives each positive wants; the ones no hard candidate fills go to easy."""
    return round(cfg.per_positive * cfg.hard_fraction)


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
    if cfg.pool_hard and row.get("pool") is None:  # checked on every row, needed or not: a stale folder fails loudly
        raise ValueError(f"row {row['row_id']}: no mask pool in the prepared rows; negatives.pool_hard needs "
                         "the pool that prepare keeps: re-run prepare")
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

    want_hard = hard_slots(cfg)
    same_image = [c for c in pool[row["image"]] if (c.row_id, c.group) != (right.row_id, 0)]
    for i in rng.permutation(len(same_image)):
        if sum(kind == "hard" for _, kind in chosen) == want_hard:
            break
        accept(same_image[i], "hard")
    if cfg.pool_hard and len(chosen) < want_hard:
        for c, kind in pool_options(row, right, want_hard - len(chosen), row_rng(seed, row["row_id"], "pool")):
            if len(chosen) == want_hard:
                break
            accept(c, kind)
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


def pool_options(row: dict, right: Candidate, want: int, rng: np.random.Generator):
    """Random pool_other and pool_swap candidates for `want` hard slots (see the module docstring), at most
    EASY_TRIES per slot; the caller keeps the ones max_iou and the seen-set accept."""
    inside = set(right.counts)
    outside = [m for m in dict.fromkeys(row["pool"]) if m not in inside]
    distinct = list(dict.fromkeys(right.counts))
    if not outside:
        return
    for _ in range(want * EASY_TRIES):
        if len(distinct) >= 2 and rng.random() < 0.5:
            drop, add = distinct[int(rng.integers(len(distinct)))], outside[int(rng.integers(len(outside)))]
            group, kind = tuple(dict.fromkeys(add if m == drop else m for m in right.counts)), "pool_swap"
        else:
            pick = rng.choice(len(outside), size=min(len(distinct), len(outside)), replace=False)
            group, kind = tuple(outside[j] for j in sorted(pick.tolist())), "pool_other"
        yield Candidate(right.row_id, POOL_GROUP, right.image, right.height, right.width, group), kind


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


def iter_examples(rows: list[dict], cfg: Negatives, seed: int, counts: Counter, progress=None):
    """The examples of one split, row by row in row order (each row's list); `counts` filled as they go.

    The rows and their candidate groups stay in memory (an easy negative may come from any image), but
    the examples, several per row with their masks, are handed on as they are made and never held."""
    pool = candidates_by_image(rows)
    images = sorted(pool)
    position = {img: i for i, img in enumerate(images)}
    for row in rows:
        yield negatives_for_row(row, pool, images, cfg, seed, counts, position)
        if progress is not None:
            progress.update(1)


def make_examples(rows: list[dict], cfg: Negatives, seed: int, progress=None) -> tuple[list[dict], Counter]:
    """All examples of one split, in row order, and the counts for the report."""
    counts: Counter = Counter()
    return [e for made in iter_examples(rows, cfg, seed, counts, progress) for e in made], counts


EXAMPLE_SCHEMA = pa.schema([
    ("example_id", pa.string()), ("row_id", pa.string()), ("image", pa.string()), ("query", pa.string()),
    ("height", pa.int32()), ("width", pa.int32()), ("kind", pa.string()), ("label", pa.int8()),
    ("source_row_id", pa.string()), ("source_group", pa.int32()), ("masks", pa.list_(pa.string())),
])


def build(prepared: Path, out_dir: Path, cfg: Negatives, seed: int) -> dict:
    """Examples for every split of the prepare output, written as `{split}.parquet`; the report."""
    from maskgate.data.prepared import SPLITS, read_rows

    report: dict = {"examples": {}, "kinds": {}, "refused_iou": {}, "filled_with_easy": {}, "hard_slots": {},
                    "easy_fill_share": {}, "short": {}}
    with tables.atomic_dir(out_dir) as tmp:
        for split in SPLITS:
            rows = read_rows(prepared, split)
            counts, kinds = Counter(), Counter()

            def streamed():
                for made in iter_examples(rows, cfg, seed, counts, progress=bar):
                    kinds.update(e["kind"] for e in made)
                    yield from made

            with tqdm(total=len(rows), desc=f"negatives: {split}", unit="row") as bar:
                n = tables.write_records(streamed(), tmp / f"{split}.parquet", EXAMPLE_SCHEMA)
            report["examples"][split] = n
            report["kinds"][split] = dict(sorted(kinds.items()))
            report["refused_iou"][split] = {k: counts[f"refused_iou_{k}"] for k in ("hard", "easy")}
            if cfg.pool_hard:
                report["refused_iou"][split].update((k, counts[f"refused_iou_{k}"]) for k in POOL_KINDS)
            report["filled_with_easy"][split] = counts["filled_with_easy"]
            report["hard_slots"][split] = slots = len(rows) * hard_slots(cfg)
            report["easy_fill_share"][split] = round(counts["filled_with_easy"] / slots, 4) if slots else None
            report["short"][split] = counts["short"]
            # Instance kinds only when on, so the default report is the same as before they existed.
            for kind, want in instance_counts(cfg).items():
                if want:
                    report["refused_iou"][split][kind] = counts[f"refused_iou_{kind}"]
                    report.setdefault(kind, {})[split] = {INSTANCE_KINDS[kind]: counts[INSTANCE_KINDS[kind]],
                                                          "short": counts[f"short_{kind}"]}
    return report


def fill_warnings(report: dict, cfg: Negatives) -> list[str]:
    """One line per split whose share of hard slots filled with easy negatives is above max_easy_fill_share."""
    out = []
    for split, share in report["easy_fill_share"].items():
        if share is not None and share > cfg.max_easy_fill_share:
            hint = "" if cfg.pool_hard else "; negatives.pool_hard: true fills them from the image's own mask pool"
            out.append(f"negatives: warning: {split}: {report['filled_with_easy'][split]} of "
                       f"{report['hard_slots'][split]} hard slots ({share:.1%}) were filled with easy negatives, above "
                       f"negatives.max_easy_fill_share = {cfg.max_easy_fill_share:.1%}{hint}")
    return out
