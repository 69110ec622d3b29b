"""The `maskgate` command: tools around the pipeline (the pipeline itself runs through `dvc repro`).

Every status line goes to stderr; stdout is kept for results a script reads (verify's JSON)."""
from __future__ import annotations

import argparse
import dataclasses
import sys

# `verify --exit-code` (one candidate), for a shell script that gates on it; grep's convention.
EXIT_ACCEPT, EXIT_REVIEW, EXIT_ERROR = 0, 1, 2
EXIT_CODES = ("exit status: 0 done; 1 failed, or the one candidate could not be read; 2 usage error. "
              "With --exit-code (one candidate): 0 ACCEPT (auto-pass), 1 REJECT or unreadable (needs review), "
              "2 usage error or any failure.")


def version() -> str:
    """The installed package's version; in a source tree that was never installed, pyproject.toml's."""
    from importlib import metadata

    try:
        return metadata.version("maskgate")
    except metadata.PackageNotFoundError:
        import tomllib
        from pathlib import Path

        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        return tomllib.loads(pyproject.read_text())["project"]["version"]


def quiet_libraries() -> None:
    """verify --quiet: transformers' own progress bar (loading weights) and its warnings off; errors stay."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def cmd_export(args) -> int:
    from maskgate.data.export import export

    if not (args.rendered.is_dir() and any(args.rendered.glob("*.parquet"))):
        print(f"export: no rendered shards in {args.rendered}; run `dvc repro render` first", file=sys.stderr)
        return 1
    counts = export(args.rendered, args.out)
    print(f"export: wrote {counts} rows to {args.out}", file=sys.stderr)
    return 0


def cmd_report(args) -> int:
    from pathlib import Path

    from maskgate.report import ReportError, write_report

    try:
        path = write_report(Path.cwd(), args.base, args.rev, args.out, args.artifact_url)
    except ReportError as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 1
    print(f"report: wrote {path}", file=sys.stderr)
    return 0


def cmd_demo_manifest(args) -> int:
    from maskgate.data.demo import gate_manifest

    path = gate_manifest(args.out, args.images, args.seed)
    print(f"demo-manifest: wrote {len(path.read_text().splitlines())} candidates to {path}; "
          f"next: maskgate verify {path} --out {args.out / 'gate'}", file=sys.stderr)
    return 0


def cmd_verify(args) -> int:
    """Status lines go to stderr (stdout is one candidate's JSON, nothing else); --quiet drops them
    and the progress bars, never an error."""
    from maskgate import gate, interchange
    from maskgate.review import PAGE

    given = [name for name, on in (("a MANIFEST", args.manifest is not None), ("--image", args.image is not None),
                                   ("--coco-results", args.coco_results is not None),
                                   ("--mask-folder", args.mask_folder is not None)) if on]
    if len(given) != 1:
        print(f"verify: give one input: a MANIFEST, --coco-results, --mask-folder, or --image with --query and --mask"
              f"{' (not ' + ' and '.join(given) + ')' if given else ''}", file=sys.stderr)
        return EXIT_ERROR
    single = args.image is not None
    if single and (args.query is None or not args.mask):
        print("verify: --image needs --query and at least one --mask", file=sys.stderr)
        return EXIT_ERROR
    if args.exit_code and not single:
        print("verify: --exit-code is for one candidate (--image); a manifest's routes are in --out", file=sys.stderr)
        return EXIT_ERROR
    coco, either = "--coco-results", "--coco-results or --mask-folder"
    misplaced = [f"{flag} goes with {where}" for flag, value, where, allowed in (
        ("--coco-images", args.coco_images, coco, args.coco_results),
        ("--queries", args.queries, coco, args.coco_results),
        ("--query-per", args.query_per, coco, args.coco_results),
        ("--images-dir", args.images_dir, either, args.coco_results or args.mask_folder),
        ("--score-floor", args.score_floor, either, args.coco_results or args.mask_folder)
    ) if value is not None and allowed is None]
    if misplaced:
        print(f"verify: {'; '.join(misplaced)}", file=sys.stderr)
        return EXIT_ERROR
    if args.coco_results is not None and args.images_dir is None:
        print("verify: --coco-results needs --images-dir, the folder the images' file_name values are relative to",
              file=sys.stderr)
        return EXIT_ERROR

    def status(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr)

    try:
        limits, limits_from = limits_of(args.params)
        built = None
        if args.coco_results is not None:
            built = interchange.from_coco_results(args.coco_results, args.coco_images, args.images_dir, args.queries,
                                                  args.query_per, args.score_floor, limits)
        elif args.mask_folder is not None:
            built = interchange.from_mask_folder(args.mask_folder, args.images_dir, args.score_floor, limits)
        if built is not None:
            status(f"verify: {describe_input(built.info)}")
        scoring, settings_from = scoring_settings(args.params, args.operating_point)
        if args.batch_size:
            scoring = dataclasses.replace(scoring, batch_size=args.batch_size)
        status(f"verify: scoring settings from {settings_from}; limits from {limits_from}")
        threshold, source = gate.threshold_from(args.operating_point, args.threshold)
        if args.quiet:
            quiet_libraries()
        g = gate.Gate(args.model, args.device, scoring, print_fn=status)
        if single:
            return verify_one(g, args, threshold, limits)
        manifest = args.manifest if built is None else args.out / gate.CANDIDATES
        s = gate.run(manifest, args.out, g, threshold, source, g.batch_size, args.fresh, progress=not args.quiet,
                     built=built, limits=limits)
    except (OSError, ValueError) as e:  # OSError: no model, manifest or operating point; unsafe weights
        print(f"verify: {e}", file=sys.stderr)  # ValueError includes interchange.InputError
        return EXIT_ERROR if args.exit_code else 1  # with --exit-code, 1 means "needs review" only
    reasons = ", ".join(f"{k} {v}" for k, v in s["errors"].items())
    status(f"verify: {s['lines']} lines: {s['auto_pass']} auto-pass, {s['needs_review']} need review "
           f"({s['bad_lines']} bad{': ' + reasons if reasons else ''}); threshold {s['threshold']:.4f} from "
           f"{s['threshold_source']}; outputs in {args.out}, the review queue in {args.out / PAGE}, needs review "
           f"also as {gate.NEEDS_REVIEW_COCO} ({s['needs_review_coco']['annotations']} masks)")
    return 0


def describe_input(info: dict) -> str:
    """One line on what a segmenter's output gave: instances read, under the floor, groups."""
    if info["format"] == "coco-results":
        what = f"{info['results']}: {info['entries']} results, queries per {info['query_per']}"
    else:
        what = f"{info['index']}: {info['rows']} rows"
    if info["score_floor"] is not None:
        what += (f"; {info['under_score_floor']} under the score floor {info['score_floor']:g} "
                 f"({info['groups_only_under_score_floor']} groups had only those)")
    if info.get("queries_unused"):
        what += f"; --queries keys no result used: {', '.join(info['queries_unused'][:5])}"
    return what + f"; {info['lines']} candidate groups"


def scoring_settings(params_path, operating_point):
    """(speedups.Scoring, where from): the params file's evaluate section when the file exists, else the
    settings evaluate recorded in its operating point, else speedups.PLAIN."""
    import json

    from maskgate import config
    from maskgate.model.speedups import PLAIN, Scoring

    if params_path.is_file():
        return Scoring.of(config.load(params_path).evaluate), str(params_path)
    if operating_point is not None and operating_point.is_file():
        recorded = json.loads(operating_point.read_text()).get("scoring")
        if recorded:
            return Scoring.from_dict(recorded, str(operating_point)), f"{operating_point} (as evaluate scored)"
    return PLAIN, "nowhere (no params file, no operating point): the plain forward pass"


def limits_of(params_path):
    """(config.Limits, where from): the params file's `limits` section when the file exists, else
    config.GATE_LIMITS (the same values as the project's params.yaml)."""
    from maskgate import config

    if params_path.is_file():
        return config.load(params_path).limits, str(params_path)
    return config.GATE_LIMITS, "nowhere (no params file): the standard limits, those of the project's params.yaml"


def verify_one(g, args, threshold: float, limits) -> int:
    """One image + query + masks from the command line: print the result as one JSON line on stdout.

    Returns 0 once scored, 1 for a candidate that cannot be read; with --exit-code 0 for ACCEPT and
    1 for anything routed to needs_review (REJECT or unreadable), so `if maskgate verify ...` gates.
    """
    import json
    from pathlib import Path

    from maskgate import gate
    specs = [json.loads(m) if m.lstrip().startswith(("{", "[")) else m for m in args.mask]
    text = json.dumps({"image": str(args.image), "query": args.query, "masks": specs})
    try:
        ex = g.example(gate.parse_line(1, text, Path.cwd(), limits))
    except gate.BadLine as e:
        print(json.dumps({"error": e.reason, "detail": e.detail, "route": "needs_review"}))
        return EXIT_REVIEW
    p = g.score([ex], 1)[0]
    accept = gate.decide(p, threshold)
    print(json.dumps({"p_accept": p, "decision": g.prompt.decision_names[0 if accept else 1],
                      "route": "auto_pass" if accept else "needs_review", "threshold": threshold}))
    if args.exit_code:
        return EXIT_ACCEPT if accept else EXIT_REVIEW
    return 0


def main(argv: list[str] | None = None) -> int:
    from pathlib import Path

    ap = argparse.ArgumentParser(prog="maskgate", description=__doc__)
    ap.add_argument("--version", action="version", version=f"maskgate {version()}")
    sub = ap.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="write rendered shards as overlay JPEGs + JSONL rows (one row per example: overlay path, prompt, label)",
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
    vf = sub.add_parser(
        "verify", help="the quality gate: score candidate mask groups and route them (auto-pass / needs review)",
        description="Score candidate mask groups with the trained verifier and route them: P(ACCEPT) >= the "
                    "threshold auto-passes, the rest (and any bad line) goes to a person. Input, one of: a JSONL "
                    'manifest, one candidate per line {"id", "image", "query", "masks": [RLE dict | polygon | mask '
                    "image path, ...]}; a segmenter's COCO results (--coco-results); a folder of mask PNGs with an "
                    "index.csv (--mask-folder); or one --image/--query/--mask on the command line. All instances of "
                    "one (image, query) form one candidate group. Overlays are drawn exactly as the render stage "
                    "draws them. A re-run with the same --out scores only lines not yet scored.",
        epilog="examples: maskgate verify candidates.jsonl --out gate/ | maskgate verify --coco-results "
               "results.json --coco-images instances.json --images-dir images/ --score-floor 0.5 --out gate/ | "
               "maskgate verify --mask-folder masks/ --out gate/   (outputs: results.jsonl, auto_pass.jsonl, "
               "needs_review.jsonl, needs_review.coco.json, summary.json, scores.jsonl, and review.html with "
               "review/, the needs-review lines with their overlays, to open in a browser; candidates.jsonl for a "
               "segmenter's output). One candidate prints one JSON line on stdout; status lines go to stderr. "
               + EXIT_CODES)
    vf.add_argument("manifest", nargs="?", type=Path, help="JSONL manifest, one candidate group per line")
    vf.add_argument("--image", type=Path, help="one image (instead of a manifest)")
    vf.add_argument("--query", help="the query for --image")
    vf.add_argument("--mask", action="append", default=[],
                    help="a mask of the group for --image: a mask image path, or an RLE/polygon as JSON; repeat per mask")
    sg = vf.add_argument_group("a segmenter's output (instead of a MANIFEST)")
    sg.add_argument("--coco-results", type=Path, metavar="FILE",
                    help="COCO results JSON (SAM 3, Detectron2, mmdetection): a list of {image_id, category_id, "
                         "segmentation (RLE or polygons), score}; or a COCO file with annotations and images")
    sg.add_argument("--coco-images", type=Path, metavar="FILE",
                    help="the COCO file whose images [{id, file_name, height, width}] and categories the results "
                         "refer to (e.g. instances_val2017.json)")
    sg.add_argument("--images-dir", type=Path, metavar="DIR",
                    help="where the image files are: file_name is relative to it (needed with --coco-results; "
                         "for --mask-folder the index's image paths, default the folder itself)")
    sg.add_argument("--queries", type=Path, metavar="FILE",
                    help="JSON map to queries: category id -> query (default: the category's name), or with "
                         "--query-per image, image id or file_name -> query (default: the image's text_input)")
    sg.add_argument("--query-per", choices=["category", "image"],
                    help="one candidate group per (image, category query) or per image entry (SA-Co / SAM 3 "
                         "evaluation files, whose image entries carry a text_input); default: image when every "
                         "image entry has a text_input, else category")
    sg.add_argument("--mask-folder", type=Path, metavar="DIR",
                    help="a folder with index.csv (columns image, query, mask, optional score; one row per mask "
                         "PNG, paths relative to the folder)")
    sg.add_argument("--score-floor", type=float, metavar="S",
                    help="drop the segmenter's instances scored below S before grouping (counted in summary.json)")
    vf.add_argument("--model", type=Path, default=Path("models/verifier"), help="trained verifier (default: %(default)s)")
    vf.add_argument("--operating-point", type=Path, default=Path("reports/operating_point.json"),
                    help="evaluate's threshold file (default: %(default)s)")
    vf.add_argument("--threshold", type=float, help="auto-pass at P(ACCEPT) >= this, instead of the operating point")
    vf.add_argument("--out", type=Path, default=Path("gate"), help="output folder (default: %(default)s)")
    vf.add_argument("--batch-size", type=int, help="candidates per forward pass (default: evaluate.batch_size, else 16)")
    vf.add_argument("--params", type=Path, default=Path("params.yaml"),
                    help="its evaluate section sets the batch size and the speed settings (merge_adapter, "
                         "compile), so the gate scores as evaluate does, and its limits section what one line may "
                         "ask for (pixels, masks, vertices, bytes); if missing, the settings evaluate recorded "
                         "in --operating-point and the standard limits are used (default: %(default)s)")
    vf.add_argument("--fresh", action="store_true", help="discard earlier scores in --out and start over")
    vf.add_argument("--device", help="cuda, cuda:1, cpu ... (default: cuda when available)")
    vf.add_argument("-q", "--quiet", action="store_true", help="no status lines, no progress bars (errors still on stderr)")
    vf.add_argument("--exit-code", action="store_true",
                    help="one candidate: exit 0 for ACCEPT (auto-pass), 1 for REJECT or unreadable (needs review), "
                         "2 for a usage error or failure")
    vf.set_defaults(func=cmd_verify)
    dm = sub.add_parser("demo-manifest", help="a gate manifest of unseen demo scenes, to try `verify` on the demo model",
                        description="Write demo scenes the demo model never saw (images/ + manifest.jsonl): per "
                                    "query its right group (expected ACCEPT) and another colour's group (expected "
                                    "REJECT), as RLE dicts and, on every fourth line, as mask image files.")
    dm.add_argument("--out", type=Path, default=Path("demo_gate"), help="output folder (default: %(default)s)")
    dm.add_argument("--images", type=int, default=20, help="scenes to draw (default: %(default)s)")
    dm.add_argument("--seed", type=int, default=0, help="scene seed (default: %(default)s)")
    dm.set_defaults(func=cmd_demo_manifest)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
