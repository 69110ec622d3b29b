"""Render every example's overlay into a few large parquet shards, using all cores.

Each worker gets one image with the candidate groups of all its examples, decodes and
letterboxes the image once, and returns one JPEG per candidate. Workers never see labels,
kinds or queries: the parent joins those back on by position.

Shard records (SHARD_SCHEMA): the example's provenance (example_id, row_id, image,
source_row_id, source_group, kind), the query, the prompt as the model reads it (system, user),
label and label_text, the candidate masks with the source image size (for mask-only baselines),
and `overlay`, the JPEG bytes of the rendered picture.
"""
from __future__ import annotations

from collections import defaultdict
from multiprocessing import Pool
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from maskgate.config import Render
from maskgate.utils import tables
from maskgate.data.negatives import EXAMPLE_SCHEMA
from maskgate.render.overlay import Canvas, Style
from maskgate.utils.images import decode_image
from maskgate.data.prepared import SPLITS
from maskgate.prompt import Prompt

SHARD_SCHEMA = pa.schema(list(EXAMPLE_SCHEMA) + [
    pa.field("system", pa.string()), pa.field("user", pa.string()), pa.field("label_text", pa.string()),
    pa.field("overlay", pa.binary()),
])
IMAGES_PER_BATCH = 64  # images handed to the pool at once; bounds memory on large splits


def render_image(image_bytes: bytes, groups: list[list[str]], height: int, width: int, style: Style) -> list[bytes]:
    """JPEG overlays of several candidate groups on one image, decoding the image once."""
    canvas = Canvas(decode_image(image_bytes), style)
    return [canvas.render(g, height, width) for g in groups]


def _job(args):
    return render_image(*args)


def image_batches(prepared: Path, split: str):
    batch = []
    for rec in tables.iter_shards(prepared, f"images-{split}"):
        batch.append(rec)
        if len(batch) == IMAGES_PER_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def render_split(prepared: Path, examples: list[dict], split: str, out: Path, style: Style, prompt: Prompt,
                 shard_size: int, pool) -> list[Path]:
    by_image: dict[str, list[dict]] = defaultdict(list)
    for e in examples:
        by_image[e["image"]].append(e)
    writer = tables.ShardWriter(out, split, SHARD_SCHEMA, shard_size)
    done = set()
    with tqdm(total=len(examples), desc=f"render: {split}", unit="overlay") as bar:
        for batch in image_batches(prepared, split):
            batch = [b for b in batch if b["image"] in by_image]
            done.update(b["image"] for b in batch)
            jobs = [(b["bytes"], [e["masks"] for e in by_image[b["image"]]],
                     by_image[b["image"]][0]["height"], by_image[b["image"]][0]["width"], style) for b in batch]
            results = pool.map(_job, jobs) if pool is not None else [_job(j) for j in jobs]
            for b, overlays in zip(batch, results):
                for e, jpeg in zip(by_image[b["image"]], overlays):
                    writer.add({**e, "system": prompt.system, "user": prompt.user_text(e["query"]),
                                "label_text": prompt.label_text(e["label"]), "overlay": jpeg})
                # One row group per image: the same picture recurs among an image's examples (one row's
                # right group is another's hard negative), and parquet's dictionary encoding stores it once
                # per row group; a small row group is also what train reads to fetch one overlay.
                writer.end_group()
                bar.update(len(overlays))
    missing = sorted(set(by_image) - done)
    if missing:  # an example without its image would silently drop out of the shards
        raise ValueError(f"{len(missing)} {split} images named in the negatives are not in {prepared} "
                         f"(e.g. {missing[0]!r}): the two folders come from different runs; re-run prepare and negatives")
    return writer.close()


def render(prepared: Path, negatives: Path, out_dir: Path, cfg: Render, prompt: Prompt) -> dict:
    """Render all splits into `{split}-00000.parquet`, ...; return the report."""
    style = Style.of(cfg)
    workers = cfg.workers
    report = {"size": style.size, "examples": {}, "shards": {}}
    pool = Pool(workers) if workers > 1 else None
    try:
        with tables.atomic_dir(out_dir) as tmp:
            for split in SPLITS:
                examples = tables.read_table(Path(negatives) / f"{split}.parquet")
                paths = render_split(Path(prepared), examples, split, tmp, style, prompt, cfg.shard_size, pool)
                report["examples"][split] = len(examples)
                report["shards"][split] = len(paths)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return report
