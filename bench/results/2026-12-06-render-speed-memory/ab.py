"""Old against new renderer in one process: `render_image` of this tree and of an older tree's overlay.py
(loaded beside it), interleaved with bench/render_bench.py's floor, best of N; --bytes first compares every
overlay of the bench's jobs in fill, keep_colours, zoom and 96 px.

    git show 5d6d9e5:maskgate/render/overlay.py > /tmp/overlay_old.py
    PYTHONPATH=. python bench/results/2026-12-06-render-speed-memory/ab.py /tmp/overlay_old.py 3 [--bytes]
"""
import dataclasses
import importlib.util
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "bench"))
import render_bench  # noqa: E402
from maskgate import config  # noqa: E402
from maskgate.render import overlay as new  # noqa: E402
from maskgate.render.shards import render_image  # noqa: E402
from maskgate.utils.images import decode_image  # noqa: E402

spec = importlib.util.spec_from_file_location("overlay_old", sys.argv[1])
old = importlib.util.module_from_spec(spec)
sys.modules["overlay_old"] = old
spec.loader.exec_module(old)
p = config.load(ROOT / "params.yaml")
style = new.Style.of(p.render)
jobs = render_bench.jobs_from(ROOT / "samples/coco-groups", p.negatives, style)
n = sum(len(j[1]) for j in jobs)


def old_image(b, groups, h, w, st):
    c = old.Canvas(decode_image(b), old.Style(**dataclasses.asdict(st)))
    return [c.render(g, h, w) for g in groups]


if "--bytes" in sys.argv:
    for view in ({}, {"style": "keep_colours"}, {"zoom": True}, {"size": 96}):
        st = dataclasses.replace(style, **view)
        same = sum(a == b for j in jobs for a, b in zip(old_image(j[0], j[1], j[2], j[3], st), render_image(j[0], j[1], j[2], j[3], st)))
        print(view or "fill", f"same bytes: {same} of {n}")
reps = int(sys.argv[2])
best = {"floor": 1e9, "old": 1e9, "new": 1e9}
fns = {"floor": render_bench.floor, "old": old_image, "new": render_image}
for r in range(reps):
    for k, f in fns.items():
        t = time.perf_counter()
        for j in jobs:
            f(*j)
        best[k] = min(best[k], time.perf_counter() - t)
print(f"{n} overlays, best of {reps}: floor {n/best['floor']:.1f}/s, old {n/best['old']:.1f}/s ({best['old']/best['floor']:.2f}x floor), "
      f"new {n/best['new']:.1f}/s ({best['new']/best['floor']:.2f}x floor)")
