"""Stage prepare: MaskGroups rows (hub, local or demo) -> validated rows, train/val split by image, test kept apart."""
import argparse
import sys

from maskgate import config
from maskgate.data.prepare import TooManyBadRows, prepare
from maskgate.utils.hub import HubError
from maskgate.utils.tables import write_json


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", required=True, help="prepared rows and images (data/prepared)")
    ap.add_argument("--report", required=True, help="counts, skips and the source's commit (reports/prepare.json)")
    args = ap.parse_args()
    try:
        p = config.load(args.params)
        report = prepare(p.data, p.prepare, p.seed, args.out, p.limits)
    except (TooManyBadRows, HubError, OSError, ValueError) as e:  # OSError: missing or unreadable files
        print(f"prepare failed: {e}", file=sys.stderr)
        return 1
    write_json(report, args.report)
    source = report["source"]
    if "commit" in source:
        print(f"prepare: {source['repo']} at commit {source['commit']} (revision {source['revision']}), "
              f"hub splits {source['hub_splits']}")
    if "note" in source:
        print(f"prepare: note: {source['note']}")
    print(f"prepare: {report['rows_in']} rows in, kept {report['kept']}, skipped {report['skipped']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
