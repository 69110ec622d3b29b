"""Validate MaskGroups rows, split them by image, and store rows and image bytes as parquet
(the folder's layout: maskgate/data/prepared.py)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from tqdm import tqdm

from maskgate.config import Data, Limits, Prepare
from maskgate.data import sources
from maskgate.data.prepared import IMAGE_SCHEMA, IMAGES_PER_SHARD, ROW_SCHEMA, SPLITS
from maskgate.utils import tables
from maskgate.data.split import split_by_image
from maskgate.data.validation import Row, validate_all

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


def prepare(data: Data, cfg: Prepare, seed: int, out_dir: Path, limits: Limits) -> dict:
    """Run validation and the split; write the output folder; return the report.

    `limits`: what one row may ask for (params.yaml's `limits`); a row past one is a counted skip.
    """
    source = sources.load(data, seed, limits.max_line_bytes)
    checked, report_in = {}, {}
    for role, raws in source.rows.items():
        with tqdm(desc=f"prepare: validating {role} rows", unit="row") as bar:
            rows, skipped, stats = validate_all(raws, source.images, cfg.mask_size_mismatch, limits, progress=bar)
        checked[role] = (rows, skipped, stats)
    test_images = {r.image for r in checked["test"][0]} if "test" in checked else set()
    if test_images:
        exclude_images(checked["train"], test_images)
    for role, (rows, skipped, stats) in checked.items():
        check_bad_fraction(stats["rows_in"], skipped, cfg.max_bad_fraction, role)
        report_in[role] = {"rows_in": stats["rows_in"], "kept": len(rows), "skipped": skipped["counts"],
                           "skipped_examples": skipped["examples"], "masks_rescaled": stats["masks_rescaled"],
                           "pool_masks_rescaled": stats["pool_masks_rescaled"],
                           "pool_masks_skipped": stats["pool_masks_skipped"]}
    side = split_by_image({r.image for r in checked["train"][0]}, cfg.val_fraction, seed)
    side.update((image, "test") for image in test_images)
    rows = [r for role_rows, _, _ in checked.values() for r in role_rows]
    with tables.atomic_dir(out_dir) as tmp:
        for split in SPLITS:
            kept = sorted((r for r in rows if side[r.image] == split), key=lambda r: (r.image, r.row_id))
            tables.write_table([row_record(r) for r in kept], tmp / f"rows-{split}.parquet", ROW_SCHEMA)
            names = sorted({r.image for r in kept})
            records = ({"image": n, "bytes": source.images.read(n)}
                       for n in tqdm(names, desc=f"prepare: copying {split} images"))
            tables.write_shards(records, tmp, f"images-{split}", IMAGE_SCHEMA, IMAGES_PER_SHARD)
    skipped_all, examples_all = Counter(), {}
    for r in report_in.values():
        skipped_all.update(r["skipped"])
        for reason, example in r["skipped_examples"].items():
            examples_all.setdefault(reason, example)
    return {
        "source": {"kind": data.source, **source.info},
        "rows_in": sum(r["rows_in"] for r in report_in.values()),
        "kept": {s: sum(side[r.image] == s for r in rows) for s in SPLITS},
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


def exclude_images(checked: tuple, images: set[str]) -> None:
    """Skip (counted as image_in_test) the rows of `checked` that are on one of `images`."""
    rows, skipped, _ = checked
    out = [r for r in rows if r.image not in images]
    dropped = [r for r in rows if r.image in images]
    if dropped:
        skipped["counts"]["image_in_test"] = len(dropped)
        skipped["examples"]["image_in_test"] = f"row {dropped[0].row_id}: image {dropped[0].image} is in the test split"
    rows[:] = out

