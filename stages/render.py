"""Stage render: every example's overlay (image + candidate group) and prompt, in parquet shards."""
import argparse
import sys

from maskgate import config
from maskgate.render.shards import render
from maskgate.utils.tables import write_json


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--prepared", required=True, help="the prepare stage's output (data/prepared)")
    ap.add_argument("--negatives", required=True, help="the negatives stage's output (data/negatives)")
    ap.add_argument("--out", required=True, help="overlay shards (data/rendered)")
    ap.add_argument("--report", required=True, help="counts and shards (reports/render.json)")
    args = ap.parse_args()
    try:
        p = config.load(args.params)
        report = render(args.prepared, args.negatives, args.out, p.render, p.prompt)
    except (OSError, ValueError) as e:  # OSError: an input folder missing or unreadable
        print(f"render failed: {e}", file=sys.stderr)
        return 1
    write_json(report, args.report)
    print(f"render: {report['examples']} overlays at {report['size']} px in {report['shards']} shards")
    return 0


if __name__ == "__main__":
    sys.exit(main())
