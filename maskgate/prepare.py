"""Validate MaskGroups rows, split them by image, and store rows and image bytes as parquet.

Output folder layout:
    rows-train.parquet, rows-val.parquet     one record per kept row (see ROW_SCHEMA)
    images-train-00000.parquet, ...          the original encoded bytes of each kept image
The images are copied so later stages need nothing but this folder, whatever the source was.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from maskgate import sources, tables
from maskgate.split import split_by_image
from maskgate.validation import Row, validate_all

ROW_SCHEMA = pa.schema([
    ("row_id", pa.string()), ("image", pa.string()), ("query", pa.string()),
    ("height", pa.int32()), ("width", pa.int32()), ("groups", pa.list_(pa.list_(pa.string()))),
])
IMAGE_SCHEMA = pa.schema([("image", pa.string()), ("bytes", pa.binary())])
IMAGES_PER_SHARD = 500
SPLITS = ("train", "val")
# Deliberate skips of a kind of row the verifier does not handle yet, not broken input:
# they are reported but do not count towards prepare.max_bad_fraction.
NOT_BAD = {"mask_ref_query"}


class TooManyBadRows(RuntimeError):
    pass


def check_bad_fraction(rows_in: int, skipped: dict, limit: float) -> None:
    bad = sum(n for reason, n in skipped["counts"].items() if reason not in NOT_BAD)
    if rows_in == 0:
        raise TooManyBadRows("the source gave no rows at all")
    if bad / rows_in > limit:
        lines = "\n".join(f"  {r}: {n}  e.g. {skipped['examples'][r]}" for r, n in skipped["counts"].items())
        raise TooManyBadRows(f"{bad} of {rows_in} rows are bad ({bad / rows_in:.1%} > prepare.max_bad_fraction "
                             f"= {limit:.1%}):\n{lines}")


def row_record(row: Row) -> dict:
    return {"row_id": row.row_id, "image": row.image, "query": row.query,
            "height": row.height, "width": row.width, "groups": row.groups}


def prepare(params: dict, out_dir: Path) -> dict:
    """Run validation and the split; write the output folder; return the report."""
    cfg = params["prepare"]
    raws, store = sources.load(params)
    with tqdm(desc="prepare: validating rows", unit="row") as bar:
        rows, skipped, stats = validate_all(raws, store, cfg["mask_size_mismatch"], progress=bar)
    check_bad_fraction(stats["rows_in"], skipped, float(cfg["max_bad_fraction"]))
    side = split_by_image({r.image for r in rows}, float(cfg["val_fraction"]), int(params["seed"]))
    with tables.atomic_dir(out_dir) as tmp:
        for split in SPLITS:
            kept = sorted((r for r in rows if side[r.image] == split), key=lambda r: (r.image, r.row_id))
            tables.write_table([row_record(r) for r in kept], tmp / f"rows-{split}.parquet", ROW_SCHEMA)
            names = sorted({r.image for r in kept})
            records = ({"image": n, "bytes": store.read(n)} for n in tqdm(names, desc=f"prepare: copying {split} images"))
            tables.write_shards(records, tmp, f"images-{split}", IMAGE_SCHEMA, IMAGES_PER_SHARD)
    kept = {s: sum(side[r.image] == s for r in rows) for s in SPLITS}
    return {
        "rows_in": stats["rows_in"],
        "kept": kept,
        "images": {s: sum(v == s for v in side.values()) for s in SPLITS},
        "skipped": skipped["counts"],
        "skipped_examples": skipped["examples"],
        "masks_rescaled": stats["masks_rescaled"],
    }


def read_rows(prepared: Path, split: str) -> list[dict]:
    return tables.read_table(Path(prepared) / f"rows-{split}.parquet")
