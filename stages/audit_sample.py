"""Stage audit_sample: the most confident ACCEPT and REJECT cases, wrong ones first, for a person to check."""
import argparse
import sys
from pathlib import Path

from maskgate.evaluation.audit import write_audit
from maskgate.evaluation.audit_sample import audit_records
from maskgate.config import load_params
from maskgate.prompt import Prompt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--scores", default="data/scores/val.parquet")
    ap.add_argument("--rendered", default="data/rendered")
    ap.add_argument("--out", default="reports/audit")
    args = ap.parse_args()
    params = load_params(args.params)
    try:
        records = audit_records(Path(args.scores), Path(args.rendered), int(params["audit_sample"]["n"]))
    except (OSError, ValueError) as e:  # OSError: scores or shards missing or unreadable
        print(f"audit_sample failed: {e}", file=sys.stderr)
        return 1
    paths = write_audit(records, Path(args.out), prompt=Prompt.from_params(params))
    print(f"audit_sample: {len(records)} cases -> {paths['index.html']} (open in a browser) and {paths['audit.csv']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
