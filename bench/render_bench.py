"""Render throughput against the unavoidable floor, on the same images in the same run.

floor  = decode each image once, letterbox-resize it once, encode one JPEG per example
render = the render stage's own per-image job (the floor's work plus mask decode, fill, outline)
encode = the JPEG encode alone of the overlays as render draws them (their pixels drawn beforehand)
Both single-process, so the ratio compares work, not scheduling; the stage's pool throughput
with all workers is printed too.

    python bench/render_bench.py --data samples/coco-groups --size 672
    python bench/render_bench.py --qualities 95,90,85     # JPEG quality: bytes per overlay and PSNR

--qualities: each overlay is drawn once (the render's own pixels, before JPEG), encoded at each quality,
decoded again, and compared with the drawn pixels: mean bytes per overlay (and against the first quality),
PSNR over all overlays' pixels, and the worst single overlay's PSNR. What the verifier sees is the decoded
JPEG, so this is the loss the quality costs it; whether that loss changes AUROC needs training runs.
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
from maskgate.render.overlay import Canvas, Style, encode_jpeg, letterbox, unpacked
from maskgate.render.shards import _job, render_image
from maskgate.utils.images import decode_image

ROOT = Path(__file__).resolve().parents[1]


def jobs_from(data: Path, cfg: config.Negatives, style: Style) -> list[tuple]:
    source = sources.load_local(data)
    store = source.images
    rows, _, _ = validate_all(source.rows["train"], store, "rescale", config.GATE_LIMITS)
    rows = [{"row_id": r.row_id, "image": r.image, "query": r.query, "height": r.height, "width": r.width,
             "groups": r.groups, "pool": r.pool} for r in rows]  # pool: negatives.pool_hard draws from it
    examples, _ = negatives.make_examples(rows, cfg, seed=0)
    by_image = defaultdict(list)
    for e in examples:
        by_image[e["image"]].append(e)
    return [(store.read(img), [e["masks"] for e in exs], exs[0]["height"], exs[0]["width"], style)
            for img, exs in sorted(by_image.items())]


def jobs_from_folders(prepared: Path, negatives: Path, style: Style, max_images: int | None = None) -> list[tuple]:
    """The render stage's per-image jobs for the prepare and negatives stages' output folders (every split,
    the images in the order the stage renders them), the first `max_images` of them."""
    from maskgate.data.prepared import SPLITS
    from maskgate.utils import tables

    jobs = []
    for split in SPLITS:
        by_image = defaultdict(list)
        for e in tables.read_table(Path(negatives) / f"{split}.parquet", columns=["image", "masks", "height", "width"]):
            by_image[e["image"]].append(e)
        for rec in tables.iter_shards(Path(prepared), f"images-{split}"):
            if max_images is not None and len(jobs) == max_images:
                return jobs
            exs = by_image.get(rec["image"])
            if exs:
                jobs.append((rec["bytes"], [e["masks"] for e in exs], exs[0]["height"], exs[0]["width"], style))
    return jobs


def floor(image_bytes, groups, height, width, style):
    canvas, _ = letterbox(decode_image(image_bytes), style.size)
    return [encode_jpeg(canvas, style.jpeg_quality) for _ in groups]


def encode_time(jobs, repeats: int) -> float:
    """Best of `repeats`: seconds to JPEG-encode every overlay of `jobs` as render draws it, each image's
    overlays drawn first and only their encodes timed (one image's pixels held at a time)."""
    best = float("inf")
    for _ in range(repeats):
        total = 0.0
        for image_bytes, groups, height, width, style in jobs:
            canvas = Canvas(decode_image(image_bytes), style)
            pixels = [canvas.draw([canvas.piece(c, height, width) for c in g]) for g in groups]
            t = time.perf_counter()
            for p in pixels:
                encode_jpeg(p, style.jpeg_quality)
            total += time.perf_counter() - t
        best = min(best, total)
    return best


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
    ap.add_argument("--qualities", help="comma-separated JPEG qualities: measure bytes and PSNR instead of speed")
    args = ap.parse_args()
    p = config.load(ROOT / "params.yaml")
    try:  # --size checked as params.yaml's render.size is
        render = config.from_section(config.Render, {**dataclasses.asdict(p.render), "size": args.size}, "--size")
    except config.ParamsError as e:
        ap.error(str(e))
    style = Style.of(render)
    jobs = jobs_from(args.data, p.negatives, style)
    n = sum(len(j[1]) for j in jobs)
    if args.qualities:
        return quality_table(jobs, [int(q) for q in args.qualities.split(",")], args.size)
    t_floor = timed(floor, jobs, args.repeats)
    t_render = timed(render_image, jobs, args.repeats)
    t_encode = encode_time(jobs, args.repeats)
    with Pool(args.workers) as pool:
        t = time.perf_counter()
        pool.map(_job, jobs)
        t_pool = time.perf_counter() - t
    print(f"{len(jobs)} images, {n} overlays at {args.size} px, best of {args.repeats}")
    print(f"floor (decode+resize+encode), 1 process: {n / t_floor:8.1f} overlays/s")
    print(f"render, 1 process:                       {n / t_render:8.1f} overlays/s")
    print(f"render / floor time ratio:               {t_render / t_floor:8.2f}x  (goal <= 1.5)")
    print(f"JPEG encode alone, the drawn overlays:   {n / t_encode:8.1f} overlays/s  "
          f"({t_encode / t_floor:.2f}x the floor's time: the part of render no drawing code can cut)")
    print(f"render, pool of {args.workers} workers:              {n / t_pool:8.1f} overlays/s")


def quality_table(jobs, qualities: list[int], size: int) -> None:
    import io

    import numpy as np
    from PIL import Image

    sums = {q: {"bytes": 0, "sq": 0.0, "worst": float("inf")} for q in qualities}
    n = pixels = 0
    for image_bytes, groups, height, width, style in jobs:
        canvas = Canvas(decode_image(image_bytes), style)
        for g in groups:
            drawn = unpacked(canvas.draw([canvas.piece(c, height, width) for c in g])).convert("RGB")
            ref = np.asarray(drawn, dtype=np.float64)
            n, pixels = n + 1, pixels + ref.size
            for q in qualities:
                jpeg = encode_jpeg(drawn, q)
                err = ((np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.float64) - ref) ** 2).sum()
                s = sums[q]
                s["bytes"] += len(jpeg)
                s["sq"] += err
                s["worst"] = min(s["worst"], 10 * np.log10(255**2 / max(err / ref.size, 1e-12)))
    print(f"{n} overlays of {len(jobs)} images at {size} px, against the drawn pixels before JPEG")
    print(f"{'quality':>8}{'bytes/overlay':>15}{'x first':>9}{'PSNR dB':>9}{'worst dB':>10}")
    first = sums[qualities[0]]["bytes"]
    for q in qualities:
        s = sums[q]
        psnr = 10 * np.log10(255**2 / (s["sq"] / pixels))
        print(f"{q:>8}{s['bytes'] / n:>15.0f}{s['bytes'] / first:>9.3f}{psnr:>9.2f}{s['worst']:>10.2f}")


if __name__ == "__main__":
    main()
