"""Issue 15's comparison of render views on the demo: the same recipe, seeds and training steps for each.

Runs bench/demo_learning.py once per (variant, seed) in turn (one at a time: the cores are shared), each with
the demo recipe (configs/demo.yaml) and `-S data.demo_images=N`, and prints each run's JSON line, then a
Markdown table: val AUROC overall, by query type (colour, count) and by negative kind, and the wall time.
A variant is a name for a list of `-S` overrides (and whether the shapes are small). VIEWS: fill and
keep_colours on the demo's own scenes; fill without and with zoom on small shapes (`--small-shapes`).
QUALITIES (issue 16): fill at render.jpeg_quality 95, 90 and 85. `--variants` picks among both (VIEWS by
default). Every run trains the same number of steps (same data size, epochs and batch), so
"the same time budget" is the same compute, whatever the machine's load.

    python bench/overlay_compare.py --scenes 200 --seeds 0 1 --work /tmp/overlay-compare
    python bench/overlay_compare.py --scenes 800 --epochs 4 --variants "fill, jpeg 95" "fill, jpeg 90" "fill, jpeg 85"
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VIEWS = {  # name -> (overrides, small shapes)
    "fill": (["render.style=fill"], False),
    "keep_colours": (["render.style=keep_colours"], False),
    "fill, small shapes": (["render.style=fill", "render.zoom=false"], True),
    "fill + zoom, small shapes": (["render.style=fill", "render.zoom=true"], True),
}
QUALITIES = {f"fill, jpeg {q}": (["render.style=fill", f"render.jpeg_quality={q}"], False) for q in (95, 90, 85)}
VARIANTS = {**VIEWS, **QUALITIES}


def table(rows: list[tuple[str, int, dict]]) -> None:
    """The Markdown table of (variant, seed, demo_learning's JSON result) rows."""
    print("\n| variant | seed | val AUROC | colour queries | count queries | hard | pool_other | pool_swap | easy | train s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, seed, r in rows:
        t, k = r["val_auroc_by_query_type"], r["val_auroc_by_negative_kind"]
        cell = lambda d, key: f"{d[key]['auroc']:.3f} ({d[key]['n']})" if key in d else "-"
        kind = lambda key: f"{k[key]:.3f}" if key in k else "-"
        print(f"| {name} | {seed} | {r['val_auroc']:.3f} | {cell(t, 'colour')} | {cell(t, 'count')} | {kind('hard')} | "
              f"{kind('pool_other')} | {kind('pool_swap')} | {kind('easy')} | {r['wall_s']['train']:.0f} |")


def logged(paths: list[Path]) -> list[tuple[str, int, dict]]:
    """The rows of this script's logs: its JSON lines, in order ("view" was the name's key before "variant")."""
    rows = []
    for path in paths:
        for line in path.read_text().splitlines():
            if line.startswith("{"):
                r = json.loads(line)
                rows.append((r.get("variant", r.get("view")), r["seed"], r))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=2, help="train.epochs of every run (the recipe has 4)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--zoom-seeds", type=int, nargs="+", default=[0], help="seeds of the small-shape runs")
    ap.add_argument("--variants", "--views", dest="variants", nargs="+", default=list(VIEWS), choices=list(VARIANTS),
                    help="which variants to run (default: the views; QUALITIES: \"fill, jpeg 95\" ...)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/maskgate-overlay-compare"))
    ap.add_argument("--table", type=Path, nargs="+", metavar="LOG",
                    help="run nothing: print the table of the JSON lines of these logs of this script")
    args = ap.parse_args()
    if args.table:
        table(logged(args.table))
        return 0
    rows = []
    # seeds outer, variants inner: each seed's set of variants finishes before the next seed starts
    order = [(seed, name) for seed in dict.fromkeys(args.seeds + args.zoom_seeds) for name in args.variants
             if seed in (args.zoom_seeds if VARIANTS[name][1] else args.seeds)]
    for seed, name in order:
        overrides, small = VARIANTS[name]
        cmd = [sys.executable, str(ROOT / "bench" / "demo_learning.py"), "--work", str(args.work),
               "-S", f"data.demo_images={args.scenes}", "-S", f"seed={seed}", "-S", f"train.epochs={args.epochs}"]
        cmd += [a for o in overrides for a in ("-S", o)] + (["--small-shapes"] if small else [])
        print("$", " ".join(cmd), flush=True)
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            print(done.stderr[-3000:], file=sys.stderr)
            return done.returncode
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps({"variant": name, "seed": seed, **result}), flush=True)
        rows.append((name, seed, result))
    table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
