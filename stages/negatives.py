"""Stage negatives: each positive (query, correct group) plus 3-6 wrong groups (hard and easy), and the
opt-in instance kinds (missing_instance, extra_instance) when params.yaml's negatives section turns them on."""
import argparse
import sys

from maskgate import config
from maskgate.data.negatives import build, fill_warnings
from maskgate.utils.tables import write_json


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--prepared", required=True, help="the prepare stage's output (data/prepared)")
    ap.add_argument("--out", required=True, help="examples per split (data/negatives)")
    ap.add_argument("--report", required=True, help="counts per kind (reports/negatives.json)")
    args = ap.parse_args()
    try:
        p = config.load(args.params)
        report = build(args.prepared, args.out, p.negatives, p.seed)
    except (OSError, ValueError) as e:  # OSError: data/prepared missing or unreadable
        print(f"negatives failed: {e}", file=sys.stderr)
        return 1
    write_json(report, args.report)
    for line in fill_warnings(report, p.negatives):
        print(line, file=sys.stderr)
    print(f"negatives: {report['examples']} examples, kinds {report['kinds']}, refused by IoU {report['refused_iou']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
