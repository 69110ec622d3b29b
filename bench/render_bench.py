"""Render throughput against the unavoidable floor, on the same images in the same run.

floor  = decode each image once, letterbox-resize it once, encode one JPEG per example
render = the render stage's own per-image job (the floor's work plus mask decode, fill, outline)
Both single-process, so the ratio compares work, not scheduling; the stage's pool throughput
with all workers is printed too.

    python bench/render_bench.py --data samples/coco-groups --size 672
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from collections import defaultdict
from multiprocessing import Pool
from pathlib import Path

from maskgate import config
from maskgate.data import negatives
from maskgate.data import sources
from maskgate.data.validation import validate_all
from maskgate.render.overlay import Style, encode_jpeg, letterbox
from maskgate.render.shards import _job, render_image
from maskgate.utils.images import decode_image

ROOT = Path(__file__).resolve().parents[1]


def jobs_from(data: Path, cfg: config.Negatives, style: Style) -> list[tuple]:
    source = sources.load_local(data)
    store = source.images
    rows, _, _ = validate_all(source.rows["train"], store, "rescale", config.GATE_LIMITS)
    rows = [{"row_id": r.row_id, "image": r.image, "query": r.query, "height": r.height, "width": r.width,
             "groups": r.groups} for r in rows]
    examples, _ = negatives.make_examples(rows, cfg, seed=0)
    by_image = defaultdict(list)
    for e in examples:
        by_image[e["image"]].append(e)
    return [(store.read(img), [e["masks"] for e in exs], exs[0]["height"], exs[0]["width"], style)
            for img, exs in sorted(by_image.items())]


def floor(image_bytes, groups, height, width, style):
    canvas, _ = letterbox(decode_image(image_bytes), style.size)
    return [encode_jpeg(canvas, style.jpeg_quality) for _ in groups]


def timed(fn, jobs, repeats):
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for j in jobs:
            fn(*j)
        best = min(best, time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT / "samples/coco-groups")
    ap.add_argument("--size", type=int, default=672)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    p = config.load(ROOT / "params.yaml")
    try:  # --size checked as params.yaml's render.size is
        render = config.from_section(config.Render, {**dataclasses.asdict(p.render), "size": args.size}, "--size")
    except config.ParamsError as e:
        ap.error(str(e))
    style = Style.of(render)
    jobs = jobs_from(args.data, p.negatives, style)
    n = sum(len(j[1]) for j in jobs)
    t_floor = timed(floor, jobs, args.repeats)
    t_render = timed(render_image, jobs, args.repeats)
    with Pool(args.workers) as pool:
        t = time.perf_counter()
        pool.map(_job, jobs)
        t_pool = time.perf_counter() - t
    print(f"{len(jobs)} images, {n} overlays at {args.size} px, best of {args.repeats}")
    print(f"floor (decode+resize+encode), 1 process: {n / t_floor:8.1f} overlays/s")
    print(f"render, 1 process:                       {n / t_render:8.1f} overlays/s")
    print(f"render / floor time ratio:               {t_render / t_floor:8.2f}x  (goal <= 1.5)")
    print(f"render, pool of {args.workers} workers:              {n / t_pool:8.1f} overlays/s")


if __name__ == "__main__":
    main()
