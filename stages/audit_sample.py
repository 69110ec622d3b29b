"""Stage audit_sample: the most confident ACCEPT and REJECT cases, wrong ones first, for a person to check."""
import argparse
import sys
from pathlib import Path

from maskgate import config
from maskgate.evaluation.audit import audit_records, write_audit


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--scores", required=True, help="evaluate's val scores (data/scores/val.parquet)")
    ap.add_argument("--rendered", required=True, help="the render stage's shards (data/rendered)")
    ap.add_argument("--out", required=True, help="index.html and audit.csv (reports/audit)")
    args = ap.parse_args()
    try:
        p = config.load(args.params)
        records = audit_records(Path(args.scores), Path(args.rendered), p.audit_sample.n)
    except (OSError, ValueError) as e:  # OSError: scores or shards missing or unreadable
        print(f"audit_sample failed: {e}", file=sys.stderr)
        return 1
    paths = write_audit(records, Path(args.out), prompt=p.prompt)
    print(f"audit_sample: {len(records)} cases -> {paths['index.html']} (open in a browser) and {paths['audit.csv']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
