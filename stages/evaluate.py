"""Stage evaluate: score the validation split, write metrics, plots, the gate's operating point."""
import argparse
import sys
from pathlib import Path

from maskgate.params import load_params


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--rendered", default="data/rendered")
    ap.add_argument("--model", default="models/verifier")
    ap.add_argument("--metrics", default="reports/metrics.json")
    ap.add_argument("--plots", default="reports/plots")
    ap.add_argument("--operating-point", default="reports/operating_point.json")
    ap.add_argument("--scores", default="data/scores/val.parquet")
    args = ap.parse_args()
    params = load_params(args.params)

    from maskgate import evaluate, metrics, speedups
    from maskgate.prompt import Prompt, gate_label
    from maskgate.tables import write_json
    from maskgate.training import max_length
    from maskgate.verifier import load_verifier

    cfg = params["evaluate"]
    try:
        prompt = Prompt.from_params(params)
        model, processor = load_verifier(args.model)
        model = speedups.for_scoring(model, cfg, "evaluate")  # evaluate.merge_adapter/fp8/compile: BENCHMARKS.md
        scores = evaluate.score_split(model, processor, prompt, Path(args.rendered), "val",
                                      max_length(params), int(cfg["batch_size"]),
                                      speedups.speed_settings(cfg)["workers"])
        shortcut_auroc = evaluate.shortcut_baseline(Path(args.rendered), int(params["seed"]))
    except (OSError, ValueError) as e:  # OSError: no trained verifier, or shards missing or unreadable
        print(f"evaluate failed: {e}", file=sys.stderr)
        return 1
    result, point = evaluate.measure(scores, cfg)
    result["shortcut_auroc"] = shortcut_auroc
    evaluate.write_scores(scores, Path(args.scores))
    metrics.write_plots([gate_label(s["label"]) for s in scores], [s["p_accept"] for s in scores], Path(args.plots),
                        names=prompt.decision_names)
    write_json(result, args.metrics)
    write_json(point, args.operating_point)
    print(f"evaluate: accuracy {result['accuracy']:.3f}, AUROC {result['auroc']}, "
          f"shortcut AUROC {result['shortcut_auroc']:.3f}; gate threshold {point['threshold']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
