"""The prepare stage's output folder, which every later stage reads.

    rows-{split}.parquet                     one record per kept row (ROW_SCHEMA)
    images-{split}-00000.parquet, ...        the original encoded bytes of each kept image
The images are copied so later stages need nothing but this folder, whatever the source was.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from maskgate.utils import tables

ROW_SCHEMA = pa.schema([
    ("row_id", pa.string()), ("image", pa.string()), ("query", pa.string()),
    ("height", pa.int32()), ("width", pa.int32()), ("groups", pa.list_(pa.list_(pa.string()))),
    # every annotated object of the image (the row's gt_mask_pool, checked; the groups' masks included):
    # the negatives stage draws hard negatives from the masks outside the right group
    ("pool", pa.list_(pa.string())),
])
IMAGE_SCHEMA = pa.schema([("image", pa.string()), ("bytes", pa.binary())])
IMAGES_PER_SHARD = 500
# train and val are split by image from the source's train rows; test holds the source's own evaluation
# rows (the hub's validation split), never trained on, and is empty when the source has none.
SPLITS = ("train", "val", "test")


def read_rows(prepared: Path, split: str) -> list[dict]:
    return tables.read_table(Path(prepared) / f"rows-{split}.parquet")
