"""Validate MaskGroups rows, split them by image, and store rows and image bytes as parquet
(the folder's layout: maskgate/data/prepared.py)."""
from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from maskgate.config import Data, Limits, Prepare
from maskgate.data import sources
from maskgate.data.prepared import IMAGE_SCHEMA, IMAGES_PER_SHARD, ROW_SCHEMA, SPLITS
from maskgate.utils import tables
from maskgate.data.split import split_by_image
from maskgate.data.validation import Row, Validation

# Deliberate skips, not broken input: they are reported but do not count towards prepare.max_bad_fraction.
# mask_ref_query: a kind of row the verifier does not handle yet; image_in_test: a training row on an image
# of the test split, kept out so no test image is seen in training.
NOT_BAD = {"mask_ref_query", "image_in_test"}


class TooManyBadRows(RuntimeError):
    pass


def check_bad_fraction(rows_in: int, skipped: dict, limit: float, role: str = "train") -> None:
    bad = sum(n for reason, n in skipped["counts"].items() if reason not in NOT_BAD)
    if rows_in == 0:
        raise TooManyBadRows(f"the source gave no {role} rows at all")
    if bad / rows_in > limit:
        lines = "\n".join(f"  {r}: {n}  e.g. {skipped['examples'][r]}" for r, n in skipped["counts"].items())
        raise TooManyBadRows(f"{bad} of {rows_in} {role} rows are bad ({bad / rows_in:.1%} > prepare.max_bad_fraction "
                             f"= {limit:.1%}):\n{lines}")


def row_record(row: Row) -> dict:
    return {"row_id": row.row_id, "image": row.image, "query": row.query,
            "height": row.height, "width": row.width, "groups": row.groups, "pool": row.pool}


def row_key(record: dict) -> tuple[str, str]:
    """The order of a split's rows in rows-{split}.parquet (and so of every later stage's)."""
    return record["image"], record["row_id"]


def prepare(data: Data, cfg: Prepare, seed: int, out_dir: Path, limits: Limits, run_rows: int = 2048) -> dict:
    """Run validation and the split; write the output folder; return the report.

    `limits`: what one row may ask for (params.yaml's `limits`); a row past one is a counted skip.

    The rows are streamed, not held: each valid row goes to an external sort by (image, row id) as it
    is checked (`run_rows` at a time in memory, sorted runs spilled beside the output), and each split's
    rows are written from the merged runs. What stays in memory is per image (its size, its rows' count
    and first row) and per id (to find duplicates), not per row's masks. The split needs every train
    image before any row can be placed, hence the sort; the output is that of sorting all rows at once.
    """
    source = sources.load(data, seed, limits.max_line_bytes)
    report_in, runs, first = {}, {}, {}
    with tables.atomic_dir(out_dir) as tmp:
        spill = tmp / ".runs"
        for role, raws in source.rows.items():
            check = Validation(source.images, cfg.mask_size_mismatch, limits)
            runs[role] = tables.ExternalSort(spill / role, ROW_SCHEMA, row_key, run=run_rows)
            first[role] = {}  # image -> [rows kept on it, index of its first kept row, that row's id]
            with tqdm(desc=f"prepare: validating {role} rows", unit="row") as bar:
                for n, row in enumerate(check.rows(raws, progress=bar)):
                    first[role].setdefault(row.image, [0, n, row.row_id])[0] += 1
                    runs[role].add(row_record(row))
            skipped, stats = check.skipped(), check.stats()
            report_in[role] = {"rows_in": stats["rows_in"], "kept": sum(v[0] for v in first[role].values()),
                               "skipped": skipped["counts"], "skipped_examples": skipped["examples"],
                               "masks_rescaled": stats["masks_rescaled"],
                               "pool_masks_rescaled": stats["pool_masks_rescaled"],
                               "pool_masks_skipped": stats["pool_masks_skipped"]}
        test_images = set(first.get("test", {}))
        if test_images:
            exclude_images(report_in["train"], first["train"], test_images)
        for role, r in report_in.items():
            check_bad_fraction(r["rows_in"], {"counts": r["skipped"], "examples": r["skipped_examples"]},
                               cfg.max_bad_fraction, role)
        side = split_by_image(set(first["train"]) - test_images, cfg.val_fraction, seed)
        side.update((image, "test") for image in test_images)
        kept = {}
        for split in SPLITS:
            # train and val come from the train rows (one on a test image has side "test": left out), test from the test rows
            role = "test" if split == "test" else "train"
            merged = runs[role].sorted() if role in runs else iter(())
            kept[split] = tables.write_records((r for r in merged if side[r["image"]] == split),
                                               tmp / f"rows-{split}.parquet", ROW_SCHEMA)
            names = sorted(n for n, s in side.items() if s == split)  # each has a kept row in the split
            records = ({"image": n, "bytes": source.images.read(n)}
                       for n in tqdm(names, desc=f"prepare: copying {split} images"))
            tables.write_shards(records, tmp, f"images-{split}", IMAGE_SCHEMA, IMAGES_PER_SHARD)
        shutil.rmtree(spill)
    skipped_all, examples_all = Counter(), {}
    for r in report_in.values():
        skipped_all.update(r["skipped"])
        for reason, example in r["skipped_examples"].items():
            examples_all.setdefault(reason, example)
    return {
        "source": {"kind": data.source, **source.info},
        "rows_in": sum(r["rows_in"] for r in report_in.values()),
        "kept": kept,
        "images": {s: sum(v == s for v in side.values()) for s in SPLITS},
        "skipped": dict(sorted(skipped_all.items())),
        "skipped_examples": dict(sorted(examples_all.items())),
        "masks_rescaled": sum(r["masks_rescaled"] for r in report_in.values()),
        # the pool masks outside the groups (kept for the negatives stage): rescaled, or dropped by reason
        "pool_masks_rescaled": sum(r["pool_masks_rescaled"] for r in report_in.values()),
        "pool_masks_skipped": dict(sorted(sum((Counter(r["pool_masks_skipped"]["counts"]) for r in report_in.values()),
                                              Counter()).items())),
        "by_source_split": report_in,
    }


def exclude_images(report: dict, first: dict, images: set[str]) -> None:
    """Skip (counted as image_in_test) the kept rows on one of `images`: `report` is the role's section of
    the report, `first` its image -> [rows kept, index of the first kept row, its id]."""
    dropped = sorted((first[i][1], first[i][2], i, first[i][0]) for i in images if i in first)
    if dropped:
        n = sum(d[3] for d in dropped)
        _, row_id, image, _ = dropped[0]
        report["skipped"]["image_in_test"] = n
        report["skipped_examples"]["image_in_test"] = f"row {row_id}: image {image} is in the test split"
        report["kept"] -= n
