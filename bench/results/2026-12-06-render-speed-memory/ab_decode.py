"""The box decoder written for render (commit 2c245e2's render/scaled_masks.py, numpy over the RLE strings)
against pycocotools' decode (this tree's), in one process, interleaved with bench/render_bench.py's floor,
best of N, after checking every overlay is the same bytes.

    git show 2c245e2:maskgate/render/scaled_masks.py > /tmp/scaled_masks_numpy.py
    PYTHONPATH=. python bench/results/2026-12-06-render-speed-memory/ab_decode.py /tmp/scaled_masks_numpy.py 3
"""
import importlib.util
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "bench"))
import render_bench  # noqa: E402
from maskgate import config  # noqa: E402
from maskgate.render import overlay  # noqa: E402
from maskgate.render.shards import render_image  # noqa: E402

spec = importlib.util.spec_from_file_location("scaled_masks_numpy", sys.argv[1])
numpy_decoder = importlib.util.module_from_spec(spec)
spec.loader.exec_module(numpy_decoder)
decoders = {"numpy": numpy_decoder.scaled_boxes, "pycocotools": overlay.scaled_boxes}
p = config.load(ROOT / "params.yaml")
jobs = render_bench.jobs_from(ROOT / "samples/coco-groups", p.negatives, overlay.Style.of(p.render))
n = sum(len(j[1]) for j in jobs)


def run(which):
    overlay.scaled_boxes = decoders[which]
    return [render_image(*j) for j in jobs]


print("same bytes:", run("numpy") == run("pycocotools"))
best = dict.fromkeys(("floor", "numpy", "pycocotools"), 1e9)
for _ in range(int(sys.argv[2])):
    for k in best:
        t = time.perf_counter()
        if k == "floor":
            for j in jobs:
                render_bench.floor(*j)
        else:
            run(k)
        best[k] = min(best[k], time.perf_counter() - t)
print(f"{n} overlays, best of {sys.argv[2]}: floor {n / best['floor']:.1f}/s; " + "; ".join(
    f"{k} {n / best[k]:.1f}/s ({best[k] / best['floor']:.2f}x floor)" for k in ("numpy", "pycocotools")))
