"""The `maskgate` command: tools around the pipeline (the pipeline itself runs through `dvc repro`)."""
from __future__ import annotations

import argparse
import sys


def cmd_export(args) -> int:
    from maskgate.export import export

    if not (args.rendered.is_dir() and any(args.rendered.glob("*.parquet"))):
        print(f"export: no rendered shards in {args.rendered}; run `dvc repro render` first", file=sys.stderr)
        return 1
    counts = export(args.rendered, args.out)
    print(f"export: wrote {counts} rows to {args.out}")
    return 0


def cmd_report(args) -> int:
    from pathlib import Path

    from maskgate.report import ReportError, write_report

    try:
        path = write_report(Path.cwd(), args.base, args.rev, args.out, args.artifact_url)
    except ReportError as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 1
    print(f"report: wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from pathlib import Path

    ap = argparse.ArgumentParser(prog="maskgate", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="write rendered shards as overlay JPEGs + JSONL rows (plan's row schema)",
                        description="Write the render stage's shards as overlay image files and JSONL rows "
                                    "{path_to_overlay_image, prompt_text, label_text, ...}, one file per split.")
    ex.add_argument("--rendered", type=Path, default=Path("data/rendered"), help="render stage output (default: %(default)s)")
    ex.add_argument("--out", type=Path, default=Path("export"), help="output folder (default: %(default)s)")
    ex.set_defaults(func=cmd_export)
    rp = sub.add_parser("report", help="Markdown report of params, metrics and curves against a base revision (for PRs)",
                        description="Compare the workspace, a commit or a DVC experiment with a base revision: "
                                    "`dvc params diff` and `dvc metrics diff` tables and the precision-recall and "
                                    "threshold-sweep curves of both, overlaid, as PNGs. Offline: metrics and plot "
                                    "data are read from git. Run it in the repository root.",
                        epilog="example: maskgate report --base main --rev my-experiment --out reports/pr")
    rp.add_argument("--base", required=True, help="the revision to compare against: branch, tag, commit or experiment name")
    rp.add_argument("--rev", default="workspace",
                    help="what to report on: 'workspace' (default), a branch, tag, commit or experiment name")
    rp.add_argument("--out", type=Path, default=Path("reports/pr"),
                    help="output folder, replaced as a whole: report.md and the PNGs (default: %(default)s)")
    rp.add_argument("--artifact-url", metavar="URL",
                    help="also write comment.md, which links to URL (where the folder is uploaded) instead of embedding images")
    rp.set_defaults(func=cmd_report)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
