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

from collections import deque
from multiprocessing import Pool
from pathlib import Path
from typing import Iterable, Iterator

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
IMAGES_IN_FLIGHT = 64  # images in the pool at once (their bytes and overlays); bounds memory on large splits


def render_image(image_bytes: bytes, groups: list[list[str]], height: int, width: int, style: Style) -> list[bytes]:
    """JPEG overlays of several candidate groups on one image, decoding the image once."""
    canvas = Canvas(decode_image(image_bytes), style)
    if not style.zoom:  # every mask of the image prepared in one pass (zoom prepares its panels' own)
        canvas.prepare([c for g in groups for c in g], height, width)
    return [canvas.render(g, height, width) for g in groups]


def _job(args):
    return render_image(*args)


def in_order(jobs: Iterable[tuple[object, tuple]], pool, window: int) -> Iterator[tuple[object, list[bytes]]]:
    """(name, overlays) of each (name, job), in the jobs' order (a name is whatever the caller carries along),
    at most `window` jobs in the pool at once: the parent writes one image's overlays while the workers render
    the next ones (a pool.map over a batch of images left every worker idle while the parent wrote the batch),
    and memory stays bounded."""
    if pool is None:
        yield from ((name, _job(job)) for name, job in jobs)
        return
    pending: deque = deque()
    for name, job in jobs:
        pending.append((name, pool.apply_async(_job, (job,))))
        if len(pending) >= window:
            name, result = pending.popleft()
            yield name, result.get()
    while pending:
        name, result = pending.popleft()
        yield name, result.get()


def render_split(prepared: Path, examples: tables.RecordsByKey, split: str, out: Path, style: Style, prompt: Prompt,
                 shard_size: int, pool) -> list[Path]:
    """`examples`: the split's negatives by image, read as each image comes (not the whole table at once)."""
    writer = tables.ShardWriter(out, split, SHARD_SCHEMA, shard_size)
    done = set()

    def jobs():
        for b in tables.iter_shards(prepared, f"images-{split}"):
            exs = examples.get(b["image"])
            if exs:  # the examples ride with the job's name: held only while their image is in the pool
                done.add(b["image"])
                yield exs, (b["bytes"], [e["masks"] for e in exs], exs[0]["height"], exs[0]["width"], style)

    with tqdm(total=len(examples), desc=f"render: {split}", unit="overlay") as bar:
        for exs, overlays in in_order(jobs(), pool, IMAGES_IN_FLIGHT):
            for e, jpeg in zip(exs, overlays):
                writer.add({**e, "system": prompt.system, "user": prompt.user_text(e["query"]),
                            "label_text": prompt.label_text(e["label"]), "overlay": jpeg})
            # One row group per image: the same picture recurs among an image's examples (one row's
            # right group is another's hard negative), and parquet's dictionary encoding stores it once
            # per row group; a small row group is also what train reads to fetch one overlay.
            writer.end_group()
            bar.update(len(overlays))
    missing = sorted(set(examples.keys()) - done)
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
                examples = tables.RecordsByKey(Path(negatives) / f"{split}.parquet", "image")
                paths = render_split(Path(prepared), examples, split, tmp, style, prompt, cfg.shard_size, pool)
                report["examples"][split] = len(examples)
                report["shards"][split] = len(paths)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return report
