"""Where render's time goes, per stage of its per-image job, best of 3 over the bench's 62 sample images:
image decode, canvas (letterbox, tint, packing), mask preparation, draw, JPEG encode, put back.

    PYTHONPATH=. python bench/results/2026-12-06-render-speed-memory/stage_timers.py [old overlay.py]
"""
import importlib.util
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "bench"))
import render_bench  # noqa: E402
from maskgate import config  # noqa: E402
from maskgate.render import overlay as mod  # noqa: E402
from maskgate.utils.images import decode_image  # noqa: E402

if len(sys.argv) > 1:
    spec = importlib.util.spec_from_file_location("overlay_old", sys.argv[1])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["overlay_old"] = mod
    spec.loader.exec_module(mod)
p = config.load(ROOT / "params.yaml")
style = mod.Style.of(p.render)
jobs = render_bench.jobs_from(ROOT / "samples/coco-groups", p.negatives, style)
tt = time.perf_counter
best = {}
for rep in range(3):
    T = dict.fromkeys(["decode", "canvas", "pieces", "draw", "encode", "undraw"], 0.0)
    for ib, groups, h, w, st in jobs:
        s = tt(); img = decode_image(ib); T["decode"] += tt() - s
        s = tt(); c = mod.Canvas(img, st); T["canvas"] += tt() - s
        s = tt()
        if hasattr(c, "prepare"):
            c.prepare([x for g in groups for x in g], h, w)
        pcs = [[c.piece(x, h, w) for x in g] for g in groups]
        T["pieces"] += tt() - s
        scratch = c.base.copy()
        for pc in pcs:
            s = tt(); out = c.draw(pc, scratch); T["draw"] += tt() - s
            s = tt(); mod.encode_jpeg(out, st.jpeg_quality); T["encode"] += tt() - s
            s = tt(); c.undraw(scratch, pc); T["undraw"] += tt() - s
    for k, v in T.items():
        best[k] = min(best.get(k, 1e9), v)
s = tt()
for ib, groups, h, w, st in jobs:
    mod.letterbox(decode_image(ib), st.size)
print({k: round(v, 3) for k, v in best.items()}, "total", round(sum(best.values()), 3),
      "| decode + letterbox alone", round(tt() - s, 3))
