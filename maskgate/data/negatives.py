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

Memory (build): a split's rows file is read twice, never held. The first pass writes every candidate
(row, group) as one record of a flat file in the output's temporary folder (StoredCandidates) and keeps
only where each record and each image's candidates start; the second streams the rows image by image
(prepare writes them sorted by image), so one image's rows, with their groups and pools, are in memory
at a time: hard, pool and instance candidates come from the same image, and an easy one drawn from
another image is read back from the flat file. make_examples, for rows given as a list, holds their
candidates instead (HeldCandidates); both draw the same negatives.

Deterministic: each row draws hard and easy from its own generator seeded by (seed, row id), and
each instance kind from a generator of its own seeded by (seed, row id, kind), so turning an
instance kind on leaves the hard and easy negatives (and the other instance kind) unchanged. The
pool draws have a stream of their own too: turning pool_hard on keeps every other-row hard negative
and changes only the slots that were filled with easy ones.
"""
from __future__ import annotations

import hashlib
import json
import os
from array import array
from collections import Counter, defaultdict
from dataclasses import dataclass
from itertools import groupby
from operator import itemgetter
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
    """Every ground-truth group of each image, one candidate per (row, group), in row then group order."""
    out: dict[str, list[Candidate]] = defaultdict(list)
    for r in rows:
        for gi, g in enumerate(r["groups"]):
            out[r["image"]].append(Candidate(r["row_id"], gi, r["image"], r["height"], r["width"], tuple(g)))
    return dict(out)


# Where easy negatives are drawn from: a split's images in sorted order, image j's candidates in row then
# group order; `count(j)` of them, `get(j, k)` the k-th. Two kinds, the same answers: HeldCandidates
# (make_examples) and StoredCandidates (build).

class HeldCandidates:
    """The candidates of rows held in memory, by image."""

    def __init__(self, by_image: dict[str, list[Candidate]]):
        self.by_image, self.images = by_image, sorted(by_image)

    def __len__(self) -> int:
        return len(self.images)

    def count(self, j: int) -> int:
        return len(self.by_image[self.images[j]])

    def get(self, j: int, k: int) -> Candidate:
        return self.by_image[self.images[j]][k]


class StoredCandidates:
    """The candidates of a split's rows file, written to a flat file at `path` (one JSON record each, in
    file order) by one pass over the rows; in memory only where each record and each image's candidates
    start (numpy offsets, 8 bytes a candidate and an image). `get` reads one record back with os.pread:
    not an mmap, whose pages would count in the process's RSS as the draws touch them.

    The rows must be sorted by image, as prepare writes them (by image, then row id): then the j-th run
    of rows of one image in the file is the j-th image in sorted order, the order easy draws index, and
    the second pass (iter_stored_examples) needs nothing but the run's number. ValueError naming the row
    otherwise. `rows`: how many the file holds. A context manager: the flat file is removed at the end.
    """

    COLUMNS = ["row_id", "image", "height", "width", "groups"]  # the pool and query are not candidates'

    def __init__(self, rows_path: Path, path: Path):
        self.path = Path(path)
        ends, image_ends = array("q"), array("q")  # compact while they grow (a list holds an object per int)
        previous, at, self.rows = None, 0, 0
        try:
            with self.path.open("wb") as f:
                for r in tables.iter_records(rows_path, self.COLUMNS):
                    if previous is not None and r["image"] != previous:
                        if r["image"] < previous:
                            raise ValueError(f"{rows_path}: row {r['row_id']}: image {r['image']} comes after "
                                             f"{previous}: the rows are not sorted by image; re-run prepare")
                        image_ends.append(len(ends))
                    if not r["groups"]:  # every image then has a candidate: its run's number is its index
                        raise ValueError(f"{rows_path}: row {r['row_id']}: no ground-truth group; re-run prepare")
                    for gi, g in enumerate(r["groups"]):
                        record = json.dumps([r["row_id"], gi, r["image"], r["height"], r["width"], g]).encode()
                        f.write(record)
                        at += len(record)
                        ends.append(at)
                    previous = r["image"]
                    self.rows += 1
        except BaseException:
            self.path.unlink(missing_ok=True)
            raise
        if previous is not None:
            image_ends.append(len(ends))
        self.starts = np.concatenate([[0], np.asarray(ends, np.int64)])  # record i: bytes starts[i]..starts[i+1]
        self.image_starts = np.concatenate([[0], np.asarray(image_ends, np.int64)])  # image j: these records
        self.fd = os.open(self.path, os.O_RDONLY)

    def __enter__(self) -> StoredCandidates:
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)
        self.path.unlink()

    def __len__(self) -> int:
        return len(self.image_starts) - 1

    def count(self, j: int) -> int:
        return int(self.image_starts[j + 1] - self.image_starts[j])

    def get(self, j: int, k: int) -> Candidate:
        i = self.image_starts[j] + k
        start, end = int(self.starts[i]), int(self.starts[i + 1])
        row_id, group, image, height, width, counts = json.loads(os.pread(self.fd, end - start, start))
        return Candidate(row_id, group, image, height, width, tuple(counts))


def example(row: dict, c: Candidate, kind: str, index: int) -> dict:
    return {
        "example_id": f"{row['row_id']}/{index}", "row_id": row["row_id"], "image": row["image"],
        "query": row["query"], "height": row["height"], "width": row["width"], "kind": kind,
        "label": int(kind == "positive"), "source_row_id": c.row_id, "source_group": c.group,
        "masks": list(c.counts),
    }


def negatives_for_row(row: dict, same_image: list[Candidate], candidates: HeldCandidates | StoredCandidates,
                      own: int, cfg: Negatives, seed: int, counts: Counter) -> list[dict]:
    """The positive example of `row` followed by its negatives: hard, easy, then the instance kinds.

    `same_image`: the candidates of the row's image (its own groups included); `candidates`: the split's,
    for easy draws, where the row's image is the `own`-th."""
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
    others = [c for c in same_image if (c.row_id, c.group) != (right.row_id, 0)]
    for i in rng.permutation(len(others)):
        if sum(kind == "hard" for _, kind in chosen) == want_hard:
            break
        accept(others[i], "hard")
    if cfg.pool_hard and len(chosen) < want_hard:
        for c, kind in pool_options(row, right, want_hard - len(chosen), row_rng(seed, row["row_id"], "pool")):
            if len(chosen) == want_hard:
                break
            accept(c, kind)
    counts["filled_with_easy"] += want_hard - len(chosen)

    # The j-th of the other images, without building their list per row (that made a split quadratic in
    # its images: 22k images x 100k rows at MaskGroups-HQ scale); the same draws as indexing that list.
    n_others = len(candidates) - 1
    used: set[tuple[str, int]] = set()
    for _ in range((k - len(chosen)) * EASY_TRIES):
        if len(chosen) == k or not n_others:
            break
        j = int(rng.integers(n_others))
        j += j >= own
        c = candidates.get(j, int(rng.integers(candidates.count(j))))
        if (c.row_id, c.group) in used:
            continue
        used.add((c.row_id, c.group))
        accept(scaled_to(c, row["height"], row["width"]), "easy")
    counts["short"] += k - len(chosen)

    for kind, want in instance_counts(cfg).items():
        if not want:
            continue
        options = instance_options(row, right, same_image, kind)
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


def instance_options(row: dict, right: Candidate, same_image: list[Candidate], kind: str) -> list[Candidate]:
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
    for c in sorted(same_image, key=lambda c: (c.row_id, c.group)):
        for m in scaled_to(c, right.height, right.width).counts:
            if m not in inside and m not in sources:
                sources[m] = c
    return [Candidate(c.row_id, c.group, right.image, right.height, right.width, right.counts + (m,))
            for m, c in sources.items()]


def iter_examples(rows: list[dict], cfg: Negatives, seed: int, counts: Counter, progress=None):
    """The examples of rows given as a list (in any order), row by row in that order (each row's list);
    `counts` filled as they go. The rows' candidates are held (HeldCandidates); build streams instead."""
    by_image = candidates_by_image(rows)
    candidates = HeldCandidates(by_image)
    position = {img: i for i, img in enumerate(candidates.images)}
    for row in rows:
        yield negatives_for_row(row, by_image[row["image"]], candidates, position[row["image"]], cfg, seed, counts)
        if progress is not None:
            progress.update(1)


def make_examples(rows: list[dict], cfg: Negatives, seed: int, progress=None) -> tuple[list[dict], Counter]:
    """All examples of one split, in row order, and the counts for the report."""
    counts: Counter = Counter()
    return [e for made in iter_examples(rows, cfg, seed, counts, progress) for e in made], counts


def iter_stored_examples(rows_path: Path, candidates: StoredCandidates, cfg: Negatives, seed: int, counts: Counter,
                         progress=None):
    """The examples of a split's rows file, row by row in file order, as iter_examples gives them for its
    rows: read image by image, one image's rows in memory at a time; easy draws from `candidates`, made
    from the same file (which checked that its rows are sorted by image, so the j-th run is image j)."""
    for own, (image, rows) in enumerate(groupby(tables.iter_records(rows_path), key=itemgetter("image"))):
        rows = list(rows)
        same_image = candidates_by_image(rows)[image]
        for row in rows:
            yield negatives_for_row(row, same_image, candidates, own, cfg, seed, counts)
            if progress is not None:
                progress.update(1)


EXAMPLE_SCHEMA = pa.schema([
    ("example_id", pa.string()), ("row_id", pa.string()), ("image", pa.string()), ("query", pa.string()),
    ("height", pa.int32()), ("width", pa.int32()), ("kind", pa.string()), ("label", pa.int8()),
    ("source_row_id", pa.string()), ("source_group", pa.int32()), ("masks", pa.list_(pa.string())),
])


def build(prepared: Path, out_dir: Path, cfg: Negatives, seed: int) -> dict:
    """Examples for every split of the prepare output, written as `{split}.parquet`; the report."""
    from maskgate.data.prepared import SPLITS

    report: dict = {"examples": {}, "kinds": {}, "refused_iou": {}, "filled_with_easy": {}, "hard_slots": {},
                    "easy_fill_share": {}, "short": {}}
    with tables.atomic_dir(out_dir) as tmp:
        for split in SPLITS:
            rows_path = Path(prepared) / f"rows-{split}.parquet"
            counts, kinds = Counter(), Counter()
            with StoredCandidates(rows_path, tmp / f".candidates-{split}") as candidates:

                def streamed():
                    for made in iter_stored_examples(rows_path, candidates, cfg, seed, counts, progress=bar):
                        kinds.update(e["kind"] for e in made)
                        yield from made

                with tqdm(total=candidates.rows, desc=f"negatives: {split}", unit="row") as bar:
                    n = tables.write_records(streamed(), tmp / f"{split}.parquet", EXAMPLE_SCHEMA)
            report["examples"][split] = n
            report["kinds"][split] = dict(sorted(kinds.items()))
            report["refused_iou"][split] = {k: counts[f"refused_iou_{k}"] for k in ("hard", "easy")}
            if cfg.pool_hard:
                report["refused_iou"][split].update((k, counts[f"refused_iou_{k}"]) for k in POOL_KINDS)
            report["filled_with_easy"][split] = counts["filled_with_easy"]
            report["hard_slots"][split] = slots = candidates.rows * hard_slots(cfg)
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
