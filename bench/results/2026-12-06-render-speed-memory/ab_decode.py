"""render's box decoder (maskgate/render/scaled_masks.py: numpy over the RLE strings, each box only)
against pycocotools' decode of all of an image's masks in one call and the same box cut (`coco_boxes`
below), in one process, interleaved with bench/render_bench.py's floor, best of N, after checking every
overlay is the same bytes.

    PYTHONPATH=. python bench/results/2026-12-06-render-speed-memory/ab_decode.py 3
"""
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "bench"))
import render_bench  # noqa: E402
from maskgate import config  # noqa: E402
from maskgate.render import overlay  # noqa: E402
from maskgate.render.scaled_masks import sample_points  # noqa: E402
from maskgate.render.shards import render_image  # noqa: E402
import numpy as np  # noqa: E402
from pycocotools import mask as coco_mask  # noqa: E402


def coco_boxes(counts, height, width, nh, nw):
    """scaled_boxes through pycocotools: every mask decoded whole (one call), its scaled box cut out."""
    rles = [{"size": [height, width], "counts": c.encode()} for c in counts]
    x, y, w, h = coco_mask.toBbox(rles).astype(np.int64).reshape(-1, 4).T
    rows, cols = sample_points(height, nh), sample_points(width, nw)
    r0, r1 = np.maximum(np.searchsorted(rows, y) - 1, 0), np.minimum(np.searchsorted(rows, y + h) + 1, nh)
    c0, c1 = np.maximum(np.searchsorted(cols, x) - 1, 0), np.minimum(np.searchsorted(cols, x + w) + 1, nw)
    live = np.flatnonzero((w > 0) & (h > 0))
    out = [None] * len(counts)
    if not live.size:
        return out
    decoded = coco_mask.decode([rles[k] for k in live]).transpose(2, 1, 0)  # masks x columns x rows
    for i, k in enumerate(live):
        box = decoded[i, cols[c0[k]:c1[k]]][:, rows[r0[k]:r1[k]]]
        out[k] = ((slice(int(r0[k]), int(r1[k])), slice(int(c0[k]), int(c1[k]))), np.ascontiguousarray(box.T).view(bool))
    return out


decoders = {"numpy": overlay.scaled_boxes, "pycocotools": coco_boxes}
p = config.load(ROOT / "params.yaml")
jobs = render_bench.jobs_from(ROOT / "samples/coco-groups", p.negatives, overlay.Style.of(p.render))
n = sum(len(j[1]) for j in jobs)


def run(which):
    overlay.scaled_boxes = decoders[which]
    return [render_image(*j) for j in jobs]


print("same bytes:", run("numpy") == run("pycocotools"))
best = dict.fromkeys(("floor", "numpy", "pycocotools"), 1e9)
for _ in range(int(sys.argv[1])):
    for k in best:
        t = time.perf_counter()
        if k == "floor":
            for j in jobs:
                render_bench.floor(*j)
        else:
            run(k)
        best[k] = min(best[k], time.perf_counter() - t)
print(f"{n} overlays, best of {sys.argv[1]}: floor {n / best['floor']:.1f}/s; " + "; ".join(
    f"{k} {n / best[k]:.1f}/s ({best[k] / best['floor']:.2f}x floor)" for k in ("numpy", "pycocotools")))
