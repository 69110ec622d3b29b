"""Does the tiny verifier really learn on the demo data? Train, then print val AUROC, shortcut AUROC, times.

Builds the demo data with the pipeline's own code (prepare -> negatives -> render; cached in the work
folder per data settings), trains with maskgate.model.train.train exactly as the train stage does,
scores the whole val split with scoring.score as the evaluate stage does, and fits the mask-only
shortcut baseline (maskgate.evaluation.shortcut) on the same split. Settings are params.yaml, then the
demo switches (data.source=demo, model.preset=tiny), then the changes of `--changes` (configs/demo.yaml
by default: the demo's recipe, as scripts/demo.sh runs it; `--changes none` for the switches alone),
then `-S key=value` overrides, spelled as for `dvc exp run -S`, applied by DVC's own code (Hydra syntax:
`lr=1e-3`, `train.lora.targets=[a,b]`). The result is checked as a stage checks params.yaml
(maskgate.config): a key params.yaml does not hold is an error, except inside `model.tiny`, whose keys
are TinySize fields (`++model.tiny.hidden_size=96`).

    python bench/demo_learning.py -S train.epochs=3 -S lr=2e-3 --work /tmp/demo-bench

`--small-shapes` draws the demo's shapes at SMALL_RADIUS instead of demo.SHAPE_RADIUS (a few patches at
96 px: the case render.zoom is for).

Prints one JSON line at the end: val_auroc, by negative kind, by query type (colour: "all red shapes";
count: "the two red shapes"; the demo has no shape queries) and by colour, shortcut_auroc, the wall time
of each stage, threads, load.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from maskgate import config  # noqa: E402  (pydantic and yaml only: nothing that imports transformers)

DEMO = ["data.source=demo", "model.preset=tiny"]
SMALL_RADIUS = (1 / 24, 1 / 14)  # --small-shapes: radius 4 to 7 px in a 96 px render, about one 16 px patch
RECIPE = ROOT / "configs" / "demo.yaml"


def apply_overrides(params_file: Path, overrides: list[str]) -> dict:
    """params.yaml with `-S` overrides applied by DVC's own code (Hydra syntax, as `dvc exp run -S`)."""
    import tempfile

    from dvc.utils.hydra import apply_overrides as dvc_apply

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "params.yaml"
        shutil.copy(params_file, copy)
        dvc_apply(str(copy), overrides)
        return config.read_yaml(copy)


def recipe_overrides(changes: str) -> list[str]:
    """A settings file's keys (configs/demo.yaml) as `key=value` overrides, as scripts/demo.sh passes them to DVC."""
    if changes.lower() == "none":
        return []
    flags = config.flags(config.read_yaml(changes))
    return flags[1::2]  # ["-S", "key=value", ...] -> ["key=value", ...]


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def query_type(query: str) -> str:
    """count when the query names a number of objects ("the two red shapes"), else colour ("all red shapes")."""
    from maskgate.data.demo import NUMBER_WORDS

    return "count" if any(f" {w} " in f" {query} " for w in NUMBER_WORDS.values()) else "colour"


def build_data(p: config.Params, work: Path, small_shapes: bool = False) -> tuple[Path, float]:
    """Rendered shards for these data settings, made once per settings in work/data-<hash>."""
    from maskgate.data import demo, negatives
    from maskgate.data import prepare
    from maskgate.render import shards
    if small_shapes:
        demo.SHAPE_RADIUS = SMALL_RADIUS
    keys = {"seed": p.seed, "small_shapes": small_shapes,
            **{k: dataclasses.asdict(getattr(p, k)) for k in ("data", "prepare", "negatives", "render", "prompt")}}
    folder = work / f"data-{digest(keys)}"
    if (folder / "rendered").is_dir():
        return folder / "rendered", 0.0
    started = time.time()
    shutil.rmtree(folder, ignore_errors=True)
    prepare.prepare(p.data, p.prepare, p.seed, folder / "prepared", p.limits)
    negatives.build(folder / "prepared", folder / "negatives", p.negatives, p.seed)
    shards.render(folder / "prepared", folder / "negatives", folder / "rendered", p.render, p.prompt)
    return folder / "rendered", time.time() - started


def shortcut(rendered: Path, seed: int) -> float:
    from maskgate.utils import tables
    from maskgate.evaluation.shortcut import mask_features, shortcut_auroc
    import numpy as np

    def split(name):
        recs = list(tables.iter_shards(rendered, name, columns=["masks", "height", "width", "label"]))
        x = np.stack([mask_features(r["masks"], r["height"], r["width"]) for r in recs])
        return x, [r["label"] for r in recs]

    return shortcut_auroc(*split("train"), *split("val"), seed=seed)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-S", "--set-param", dest="set", action="append", default=[],
                    help="override, as for dvc exp run: key=value (Hydra syntax)")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--changes", default=str(RECIPE),
                    help="a settings file applied before -S (default: configs/demo.yaml, the demo's recipe; none = no file)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/maskgate-demo-bench"))
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--keep", action="store_true", help="keep this run's checkpoints (default: start afresh)")
    ap.add_argument("--small-shapes", action="store_true", help="demo shapes at SMALL_RADIUS (for render.zoom)")
    args = ap.parse_args()

    try:
        overrides = DEMO + recipe_overrides(args.changes) + args.set
        p = config.from_dict(apply_overrides(Path(args.params), overrides), f"{args.params} with {args.changes} and -S")
    except config.ParamsError as e:
        print(e, file=sys.stderr)
        return 1

    from maskgate.model.backend import resolve_backend
    backend = resolve_backend(p.train, p.model.preset)  # before transformers, as the train stage does
    import numpy as np
    import torch
    from sklearn.metrics import roc_auc_score

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    rendered, t_data = build_data(p, args.work, args.small_shapes)

    from maskgate.model import train as training

    run = args.work / f"run-{digest([dataclasses.asdict(p), args.small_shapes])}"
    if not args.keep:
        shutil.rmtree(run, ignore_errors=True)
    started = time.time()
    summary = training.train(training.TrainJob.of(p), rendered, run / "model", run / "checkpoints", run / "live",
                             backend=backend)
    t_train = time.time() - started

    from peft import PeftModel

    from maskgate.model.batching import to_example
    from maskgate.model.qwen import load
    from maskgate.model.scoring import score

    started = time.time()
    base, processor = load(summary["base"])
    model = PeftModel.from_pretrained(base, summary["adapter"]).eval()
    val = training.load_split(rendered, "val")
    examples = [to_example(r) for r in val]
    # summary["max_length"]: the budget training used, which evaluate reads back from verifier.json
    p_accept = score(model, processor, p.prompt, examples, summary["max_length"], batch_size=32)
    labels = np.asarray(val["label"])
    val_auroc = float(roc_auc_score(labels, p_accept))
    t_eval = time.time() - started

    started = time.time()
    short = shortcut(rendered, p.seed)
    t_short = time.time() - started

    from maskgate.utils import tables
    kinds = np.asarray([r["kind"] for r in tables.iter_shards(rendered, "val", columns=["kind"])])
    by_kind = {}
    for kind in sorted(set(kinds.tolist()) - {"positive"}):
        keep = (kinds == "positive") | (kinds == kind)
        by_kind[kind] = float(roc_auc_score(labels[keep], p_accept[keep]))

    # Per colour named in the query: a model that learnt some colours and not others shows here.
    from maskgate.data.demo import COLORS

    queries = np.asarray(val["query"])
    by_color = {}
    for color in COLORS:
        keep = np.char.find(queries.astype(str), color) >= 0
        if len(set(labels[keep])) == 2:
            by_color[color] = round(float(roc_auc_score(labels[keep], p_accept[keep])), 4)

    types = np.asarray([query_type(q) for q in val["query"]])
    by_type = {}
    for t in sorted(set(types.tolist())):
        keep = types == t
        if len(set(labels[keep])) == 2:
            by_type[t] = {"auroc": round(float(roc_auc_score(labels[keep], p_accept[keep])), 4), "n": int(keep.sum())}

    result = {
        "val_auroc": round(val_auroc, 4),
        "val_auroc_by_negative_kind": {k: round(v, 4) for k, v in by_kind.items()},
        "val_auroc_by_query_type": by_type,
        "val_auroc_by_query_color": by_color,
        "shortcut_auroc": round(short, 4),
        "examples": summary["examples"],
        "steps": summary["global_step"],
        "train_loss": round(summary["train_loss"], 4),
        "trainable_params": summary["params"]["trainable"],
        "total_params": summary["params"]["total"],
        "wall_s": {"data": round(t_data, 1), "train": round(t_train, 1), "score_val": round(t_eval, 1),
                   "shortcut": round(t_short, 1)},
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "load_avg_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "changes": args.changes,
        "overrides": args.set,
        "small_shapes": args.small_shapes,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
