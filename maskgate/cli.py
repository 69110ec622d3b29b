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
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
