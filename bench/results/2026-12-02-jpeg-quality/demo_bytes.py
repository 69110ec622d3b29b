# Mean overlay bytes of the demo data each quality variant trained on: demo_learning.build_data returns the
# folder it cached for these settings (and builds it only if missing).
import sys
from pathlib import Path
sys.path.insert(0, "/work/wt-jpeg/bench"); sys.path.insert(0, "/work/wt-jpeg")
import demo_learning as d, overlay_compare as c
from maskgate import config
from maskgate.utils import tables
work, scenes, epochs = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
for seed in map(int, sys.argv[4:]):
    for name, (overrides, small) in c.QUALITIES.items():
        sets = d.DEMO + d.recipe_overrides(str(d.RECIPE)) + [f"data.demo_images={scenes}", f"seed={seed}", f"train.epochs={epochs}"] + overrides
        p = config.from_dict(d.apply_overrides(d.ROOT / "params.yaml", sets), name)
        rendered, built_s = d.build_data(p, work, small)
        sizes = [len(r["overlay"]) for s in ("train", "val") for r in tables.iter_shards(rendered, s, columns=["overlay"])]
        print(f"{name} | seed {seed} | {rendered.parent.name} (built now: {built_s > 0}) | {len(sizes)} overlays | "
              f"{sum(sizes) / len(sizes):.0f} bytes per overlay, {p.render.size} px")
