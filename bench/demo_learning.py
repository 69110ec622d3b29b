"""Does the tiny verifier really learn on the demo data? Train, then print val AUROC, shortcut AUROC, times.

Builds the demo data with the pipeline's own code (prepare -> negatives -> render; cached in the work
folder per data settings), trains with maskgate.model.train.train exactly as the train stage does,
scores the whole val split with scoring.score as the evaluate stage does, and fits the mask-only
shortcut baseline (maskgate.evaluation.shortcut) on the same split. Settings are params.yaml plus the demo
switches (data.source=demo, model.preset=tiny) plus `-S key=value` overrides, spelled as for
`dvc exp run -S`, applied by DVC's own code (Hydra syntax: `lr=1e-3`, `train.lora.targets=[a,b]`,
`++model.tiny.initializer_range=0.125` for a key params.yaml does not hold yet).

    python bench/demo_learning.py -S train.epochs=3 -S lr=2e-3 --work /tmp/demo-bench

Prints one JSON line at the end: val_auroc, shortcut_auroc, the wall time of each stage, threads, load.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEMO = ["data.source=demo", "model.preset=tiny"]


def apply_overrides(params_file: Path, overrides: list[str]) -> dict:
    """params.yaml with `-S` overrides applied by DVC's own code (Hydra syntax, as `dvc exp run -S`)."""
    import tempfile

    from dvc.utils.hydra import apply_overrides as dvc_apply

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "params.yaml"
        shutil.copy(params_file, copy)
        dvc_apply(str(copy), overrides)
        return yaml.safe_load(copy.read_text())


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def build_data(params: dict, work: Path) -> tuple[Path, float]:
    """Rendered shards for these data settings, made once per settings in work/data-<hash>."""
    from maskgate.data import negatives
    from maskgate.data import prepare
    from maskgate.render import shards
    keys = {k: params[k] for k in ("seed", "data", "prepare", "negatives", "render", "prompt")}
    folder = work / f"data-{digest(keys)}"
    if (folder / "rendered").is_dir():
        return folder / "rendered", 0.0
    started = time.time()
    shutil.rmtree(folder, ignore_errors=True)
    prepare.prepare(params, folder / "prepared")
    negatives.build(folder / "prepared", folder / "negatives", params["negatives"], int(params["seed"]))
    shards.render(folder / "prepared", folder / "negatives", folder / "rendered", params)
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
    ap.add_argument("--work", type=Path, default=Path("/tmp/maskgate-demo-bench"))
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--keep", action="store_true", help="keep this run's checkpoints (default: start afresh)")
    args = ap.parse_args()

    params = apply_overrides(Path(args.params), DEMO + args.set)

    from maskgate.model import train as training
    backend = training.resolve_backend(params)  # before transformers, as the train stage does
    import numpy as np
    import torch
    from sklearn.metrics import roc_auc_score

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    rendered, t_data = build_data(params, args.work)

    run = args.work / f"run-{digest(params)}"
    if not args.keep:
        shutil.rmtree(run, ignore_errors=True)
    started = time.time()
    summary = training.train(params, rendered, run / "model", run / "checkpoints", run / "live", backend=backend)
    t_train = time.time() - started

    from maskgate.model.qwen import load
    from maskgate.prompt import Prompt
    from maskgate.model.scoring import score
    from peft import PeftModel

    started = time.time()
    base, processor = load(summary["base"])
    model = PeftModel.from_pretrained(base, summary["adapter"]).eval()
    val = training.load_split(rendered, "val")
    examples = [training.to_example(r) for r in val]
    p = score(model, processor, Prompt.from_params(params), examples, training.max_length(params), batch_size=32)
    labels = np.asarray(val["label"])
    val_auroc = float(roc_auc_score(labels, p))
    t_eval = time.time() - started

    started = time.time()
    short = shortcut(rendered, int(params["seed"]))
    t_short = time.time() - started

    from maskgate.utils import tables
    kinds = np.asarray([r["kind"] for r in tables.iter_shards(rendered, "val", columns=["kind"])])
    by_kind = {}
    for kind in ("hard", "easy"):
        keep = (kinds == "positive") | (kinds == kind)
        if (kinds == kind).any():
            by_kind[kind] = float(roc_auc_score(labels[keep], p[keep]))

    # Per colour named in the query: a model that learnt some colours and not others shows here.
    from maskgate.data.demo import COLORS

    queries = np.asarray(val["query"])
    by_color = {}
    for color in COLORS:
        keep = np.char.find(queries.astype(str), color) >= 0
        if len(set(labels[keep])) == 2:
            by_color[color] = round(float(roc_auc_score(labels[keep], p[keep])), 4)

    result = {
        "val_auroc": round(val_auroc, 4),
        "val_auroc_by_negative_kind": {k: round(v, 4) for k, v in by_kind.items()},
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
        "overrides": args.set,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
