#!/usr/bin/env python3
"""samples/coco-groups written the way segmenters write their output, for `maskgate verify` to read.

    python scripts/segmenter_samples.py OUT [--images N]

writes, from the sample's real photos and masks:

    OUT/instances.json     the COCO images file: images [{id, file_name, height, width}], categories
    OUT/results.json       COCO results: one {image_id, category_id, segmentation (RLE), bbox, score} per object
    OUT/masks/index.csv    a mask folder: image, query, mask, score; one row per mask of each sample query
    OUT/masks/<image>/<k>.png   object k of that image (0 outside, 255 inside)

What is real: photos, masks, and the object classes (read from the sample's queries: "the dog",
"all people", ...). What is made up: the scores, since the sample masks are ground truth; each
object gets a fixed pseudo-random score in [0.3, 1.0) so a score floor has something to drop.
The image files are not copied: pass --images-dir samples/coco-groups/images. Used by the README's
examples (docs/gate.md) and tests/test_segmenter.py.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples" / "coco-groups"
NUMBERS = "two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|\\d+"


def fake_score(image: str, k: int) -> float:
    """A fixed score per object, spread over [0.3, 1.0): the sample has no segmenter scores."""
    h = int.from_bytes(hashlib.sha256(f"{image}/{k}".encode()).digest()[:4], "big")
    return round(0.3 + 0.7 * h / 2**32, 4)


def singular(plural: str) -> str:
    """The COCO class name of a plural in the sample's queries ("benches" -> "bench")."""
    irregular = {"people": "person", "buses": "bus"}
    if plural in irregular:
        return irregular[plural]
    if re.search(r"(ch|sh|x)es$", plural):
        return plural[:-2]
    return plural[:-1] if plural.endswith("s") else plural


def object_class(query: str) -> str | None:
    """The class a single-class sample query names; None for "every X and every Y"."""
    if " and " in query:
        return None
    m = re.fullmatch(rf"(?:all|the (?:{NUMBERS})) (.+)", query)
    if m:
        return singular(m.group(1))
    m = re.fullmatch(r"the (.+)", query)
    return m.group(1) if m else None


def rows(samples: Path) -> list[dict]:
    return [json.loads(t) for t in (samples / "maskgroups.jsonl").read_text().splitlines() if t.strip()]


def write(out: Path, samples: Path = SAMPLES, n_images: int | None = None) -> dict:
    """Write the files above; returns counts (objects, those without a class, rows, groups)."""
    out = Path(out)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    by_image: dict[str, list[dict]] = {}
    for r in rows(samples):
        by_image.setdefault(r["image"], []).append(r)
    names = sorted(by_image)[:n_images]
    categories: dict[str, int] = {}
    images, results, index, unclassed = [], [], [], 0
    for name in names:
        image_rows = by_image[name]
        pool = image_rows[0]["gt_mask_pool"]
        h, w = pool[0]["size"]
        image_id = int(Path(name).stem)  # COCO names files by id
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        classes: dict[int, str] = {}
        for r in image_rows:
            c = object_class(r["conversations"][0]["value"].split("\n")[-1])
            for k in r["gt_mask_group"][0] if c else []:
                classes.setdefault(k, c)
        for k, rle in enumerate(pool):
            if k not in classes:
                unclassed += 1  # an object only a multi-class query names: no class to give it
                continue
            cat = categories.setdefault(classes[k], len(categories) + 1)
            coded = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
            results.append({"image_id": image_id, "category_id": cat, "segmentation": rle,
                            "bbox": [round(float(v), 2) for v in mask_utils.toBbox(coded)],
                            "score": fake_score(name, k)})
        stem = Path(name).stem
        (out / "masks" / stem).mkdir(exist_ok=True)
        written: set[int] = set()
        for r in image_rows:
            query = r["conversations"][0]["value"].split("\n")[-1]
            for k in r["gt_mask_group"][0]:
                if k not in written:
                    m = mask_utils.decode({"size": pool[k]["size"], "counts": pool[k]["counts"].encode("ascii")})
                    Image.fromarray((m > 0).astype(np.uint8) * 255).save(out / "masks" / stem / f"{k}.png")
                    written.add(k)
                index.append({"image": name, "query": query, "mask": f"{stem}/{k}.png", "score": fake_score(name, k)})
    doc = {"images": images, "categories": [{"id": i, "name": n} for n, i in categories.items()]}
    (out / "instances.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / "results.json").write_text(json.dumps(results) + "\n")
    with open(out / "masks" / "index.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "query", "mask", "score"])
        writer.writeheader()
        writer.writerows(index)
    return {"images": len(images), "objects": len(results), "objects_without_class": unclassed,
            "categories": len(categories), "index_rows": len(index),
            "queries": len({(r["image"], r["query"]) for r in index})}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="output folder")
    ap.add_argument("--images", type=int, help="only the first N sample photos (by name)")
    args = ap.parse_args(argv)
    counts = write(args.out, n_images=args.images)
    print(f"segmenter_samples: {counts['objects']} objects in {counts['images']} photos "
          f"({counts['categories']} classes; {counts['objects_without_class']} left out, as no single-class query "
          f"names them) -> {args.out}/results.json, {args.out}/instances.json; "
          f"{counts['index_rows']} mask rows for {counts['queries']} queries -> {args.out}/masks/index.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
