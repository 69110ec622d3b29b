"""Stage evaluate: score the validation split (and the test split, when the source has one), write metrics,
plots and the gate's operating point (chosen on val)."""
import argparse
import sys
from pathlib import Path

from maskgate import config


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--rendered", required=True, help="the render stage's shards (data/rendered)")
    ap.add_argument("--model", required=True, help="the trained verifier (models/verifier)")
    ap.add_argument("--scores", required=True, help="per-example scores, one file per split (data/scores)")
    ap.add_argument("--metrics", required=True, help="the headline metrics, DVC metrics (reports/metrics.json)")
    ap.add_argument("--breakdown", required=True, help="every metric, by kind and threshold (reports/metrics_breakdown.json)")
    ap.add_argument("--plots", required=True, help="curve data and PNGs (reports/plots)")
    ap.add_argument("--operating-point", required=True, help="the gate's threshold (reports/operating_point.json)")
    args = ap.parse_args()

    from maskgate.evaluation import evaluate

    try:
        p = config.load(args.params)
        evaluate.run(p.evaluate, p.prompt, p.seed, Path(args.rendered), Path(args.model), Path(args.scores),
                     Path(args.metrics), Path(args.breakdown), Path(args.plots), Path(args.operating_point))
    except (OSError, ValueError) as e:  # OSError: no trained verifier, or shards missing or unreadable
        print(f"evaluate failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
