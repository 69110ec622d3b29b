"""Stage evaluate: score the validation split (and the test split, when the source has one), write metrics,
plots and the gate's operating point (chosen on val)."""
import argparse
import sys
from pathlib import Path

from maskgate.config import load_params


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--rendered", default="data/rendered")
    ap.add_argument("--model", default="models/verifier")
    ap.add_argument("--metrics", default="reports/metrics.json")
    ap.add_argument("--plots", default="reports/plots")
    ap.add_argument("--operating-point", default="reports/operating_point.json")
    ap.add_argument("--scores", default="data/scores/val.parquet", help="test scores go beside it (test.parquet)")
    args = ap.parse_args()
    params = load_params(args.params)

    from maskgate.evaluation import evaluate
    from maskgate.evaluation import metrics
    from maskgate.model import speedups
    from maskgate.utils import tables
    from maskgate.prompt import Prompt, gate_label
    from maskgate.utils.tables import write_json
    from maskgate.model.train import max_length
    from maskgate.model.verifier import load_verifier

    cfg = params["evaluate"]
    try:
        prompt = Prompt.from_params(params)
        model, processor = load_verifier(args.model)
        model = speedups.for_scoring(model, cfg, "evaluate")  # evaluate.merge_adapter/fp8/compile: BENCHMARKS.md
        scores = {split: evaluate.score_split(model, processor, prompt, Path(args.rendered), split,
                                              max_length(params), int(cfg["batch_size"]),
                                              speedups.speed_settings(cfg)["workers"])
                  for split in ("val", "test") if split == "val" or tables.shard_paths(Path(args.rendered), split)}
        shortcut_auroc = evaluate.shortcut_baseline(Path(args.rendered), int(params["seed"]))
    except (OSError, ValueError) as e:  # OSError: no trained verifier, or shards missing or unreadable
        print(f"evaluate failed: {e}", file=sys.stderr)
        return 1
    result, point = evaluate.measure(scores["val"], cfg)
    point["scoring"] = {"batch_size": int(cfg["batch_size"]), **speedups.speed_settings(cfg)}  # the gate's defaults
    result["shortcut_auroc"] = shortcut_auroc
    if "test" in scores:  # the source's own evaluation rows, measured at the threshold val chose
        result["test"] = evaluate.measure_at(scores["test"], cfg, point["threshold"])
    for split, split_scores in scores.items():
        evaluate.write_scores(split_scores, Path(args.scores).with_name(f"{split}.parquet"))
    val = scores["val"]
    metrics.write_plots([gate_label(s["label"]) for s in val], [s["p_accept"] for s in val], Path(args.plots),
                        names=prompt.decision_names)
    write_json(result, args.metrics)
    write_json(point, args.operating_point)
    print(f"evaluate: accuracy {result['accuracy']:.3f}, AUROC {result['auroc']}, "
          f"shortcut AUROC {result['shortcut_auroc']:.3f}; gate threshold {point['threshold']:.3f}")
    if "test" in result:
        test = result["test"]
        print(f"evaluate: test ({test['n']} examples): AUROC {test['auroc']}, at the gate's threshold precision "
              f"{test['at_operating_point']['precision']}, auto-pass rate {test['at_operating_point']['auto_pass_rate']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
