"""The quality gate: score candidate mask groups with the trained verifier and route them.

A manifest is a JSONL file, one candidate group per line::

    {"id": "cat-17", "image": "photos/17.jpg", "query": "the two cats", "masks": [MASK, ...]}

where MASK is a COCO RLE dict (``{"size": [h, w], "counts": "..." or [ints]}``), a polygon in
image pixels (``[x1, y1, x2, y2, ...]`` or a list of such rings) or the path of a mask image
(non-zero = inside). Relative paths are relative to the manifest's folder; `id` is optional (the
line number stands in). Other keys are kept and copied to the outputs.

Each good line is drawn exactly as the render stage draws an example (`overlay.Canvas`, the
style the adapter was trained with, from `verifier.json`), scored in batches (`scoring.score`:
one forward pass, P(ACCEPT)), and decided at the threshold evaluate chose
(`reports/operating_point.json`) or one given. A bad line is reported with its reason and routed
to a person; it never stops the run.

Outputs in the out folder:

* ``scores.jsonl``: the progress log, appended and flushed batch by batch. A re-run reads it and
  scores only the lines not in it, so an interrupted run loses at most the batch in flight.
* ``results.jsonl``: every manifest line in order: line, id, p_accept, decision, or error + detail.
* ``auto_pass.jsonl`` / ``needs_review.jsonl``: the manifest lines themselves (with p_accept,
  decision or error added), split by route; bad lines go to needs_review.
* ``needs_review.coco.json``: the needs-review groups as COCO annotations for review tools
  (maskgate.interchange.ReviewCoco): one RLE annotation per mask, p_accept among its attributes.
* ``summary.json``: counts per route and per error reason, the threshold and where it came from.
* ``review.html`` + ``review/``: the needs-review lines as a page for a person, with the overlay
  each was scored on (maskgate/review.py).

A segmenter's output (COCO results, a mask folder) is turned into manifest lines by
maskgate.interchange and scored by this same path (`run(..., built=...)`); a line that carries
``input_error`` is one the conversion found bad, reported here with its reason.

All but the log are rewritten whole (temporary name, then rename) at the end of every run, from
``scores.jsonl`` and the current threshold.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from PIL import Image

from maskgate import interchange, review
from maskgate.config import GATE_LIMITS, Limits
from maskgate.data import masks
from maskgate.data.validation import BadRow, clean_query
from maskgate.model import speedups
from maskgate.model.speedups import PLAIN, Scoring
from maskgate.render.overlay import Style, render_overlay
from maskgate.utils import tables
from maskgate.utils.images import ImageTooLarge, decode_image

SCORES, RESULTS, AUTO_PASS, NEEDS_REVIEW, SUMMARY = (
    "scores.jsonl", "results.jsonl", "auto_pass.jsonl", "needs_review.jsonl", "summary.json")
NEEDS_REVIEW_COCO = "needs_review.coco.json"
CANDIDATES = "candidates.jsonl"  # the lines built from a segmenter's output, in the out folder


class BadLine(ValueError):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class Candidate:
    """A checked manifest line, ready to draw: the decoded image and the group as RLE at its size."""
    line: int
    key: str
    id: str
    query: str
    image: Image.Image
    group: list[str]


class Overlong(str):
    """A line past limits.max_line_bytes, as read_lines gives it: its first LINE_SHOWN characters only
    (what the outputs show of it), with the whole line's `size` in bytes and content `key`."""
    size: int
    key: str


def line_key(text: str) -> str:
    """Names a line's content, so a resumed run notices a manifest edited in between."""
    if isinstance(text, Overlong):
        return text.key
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def read_lines(path: Path, max_bytes: int | None = None) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of every non-blank line; undecodable bytes are kept as escapes.

    A line longer than `max_bytes` (limits.max_line_bytes) is never read whole: it comes as an
    Overlong, its head and its size, and parse_line reports it.
    """
    from maskgate.utils.lines import read_lines as bounded

    for line in bounded(path, max_bytes):
        if not line.overlong:
            text = line.body.decode("utf-8", "surrogateescape")
            if text.strip():
                yield line.number, text
            continue
        over = Overlong(line.body[:4 * review.LINE_SHOWN].decode("utf-8", "surrogateescape")[:review.LINE_SHOWN])
        over.size, over.key = line.size, line.digest
        yield line.number, over


def _text(v, fallback: str) -> str:
    """str(v), or `fallback` where Python will not (an int past its 4300-digit limit, a list nested too deep)."""
    try:
        return str(v)
    except (ValueError, RecursionError):
        return fallback


def parse_line(number: int, text: str, base_dir: Path, limits: Limits = GATE_LIMITS) -> Candidate:
    """A Candidate, or BadLine naming the first thing wrong with the line.

    Nothing the line declares is allocated or handed to PIL or pycocotools before it is checked
    against `limits` (reason `over_limit`, the detail naming the key): the line's bytes before it is
    parsed, the image's header size before it is decoded, each mask's size, runs and coordinates
    before it is made (masks.from_spec).
    """
    if isinstance(text, Overlong):
        raise BadLine("over_limit", f"the line is {text.size} bytes > limits.max_line_bytes = {limits.max_line_bytes}")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadLine("not_utf8", "the line holds bytes that are not UTF-8") from None
    if size > limits.max_line_bytes:  # a built line, or one given whole from Python
        raise BadLine("over_limit", f"the line is {size} bytes > limits.max_line_bytes = {limits.max_line_bytes}")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as e:  # ValueError: JSONDecodeError, an int of over 4300 digits
        raise BadLine("bad_json", str(e) or type(e).__name__) from None
    if not isinstance(obj, dict):
        raise BadLine("bad_line", "a line must be a JSON object")
    found = obj.get("input_error")
    if isinstance(found, dict):  # what maskgate.interchange found wrong with the segmenter's entry
        raise BadLine(_text(found.get("reason", "bad_entry"), "bad_entry"), _text(found.get("detail", ""), ""))
    missing = [k for k in ("image", "query", "masks") if k not in obj]
    if missing:
        raise BadLine("bad_line", f"missing {', '.join(missing)}")
    try:
        query = clean_query(obj["query"])
    except BadRow as e:
        raise BadLine(e.reason, e.detail) from None
    try:
        query.encode("utf-8")
    except UnicodeEncodeError:  # a JSON escape such as \ud800: no text the tokenizer can take
        raise BadLine("bad_line", "the query holds an unpaired surrogate escape, not text") from None
    if not isinstance(obj["image"], str) or not obj["image"]:
        raise BadLine("bad_line", "image must be a path")
    path = base_dir / obj["image"]
    try:
        found = path.is_file()
    except (OSError, ValueError) as e:  # a name too long for the file system, a NUL, a lone surrogate
        raise BadLine("missing_image", f"{obj['image'][:200]}: {type(e).__name__}: {e}"[:500]) from None
    if not found:
        raise BadLine("missing_image", obj["image"] if len(obj["image"]) <= 300 else obj["image"][:300] + "...")
    try:
        img = decode_image(path, limits.max_image_pixels)  # from the file: only what decoding needs is read
    except ImageTooLarge as e:
        raise BadLine("over_limit", f"{obj['image']}: {e}") from None
    except Exception as e:  # PIL raises many types for broken files; all mean "not an image"
        raise BadLine("undecodable_image", f"{obj['image']}: {type(e).__name__}: {e}") from None
    if img.width == 0 or img.height == 0:
        raise BadLine("undecodable_image", f"{obj['image']}: zero size")
    if not isinstance(obj["masks"], list) or not obj["masks"]:
        raise BadLine("empty_group", "masks must be a non-empty list")
    if len(obj["masks"]) > limits.max_masks_per_group:
        raise BadLine("over_limit", f"{len(obj['masks'])} masks > limits.max_masks_per_group = "
                                    f"{limits.max_masks_per_group}")
    group = []
    for i, spec in enumerate(obj["masks"]):
        try:
            group.append(masks.from_spec(spec, img.height, img.width, base_dir, limits))
        except masks.OverLimit as e:
            raise BadLine("over_limit", f"mask {i}: {e}") from None
        except masks.BadMask as e:
            raise BadLine("bad_mask", f"mask {i}: {e}") from None
    if not masks.covers_any(group, img.height, img.width):
        raise BadLine("empty_group", "the masks cover no pixel")
    return Candidate(number, line_key(text), _text(obj.get("id", number), str(number)), query, img, group)


def overlay(c: Candidate, style: Style) -> bytes:
    """The candidate drawn by the render stage's own code (overlay.Canvas): byte-identical to a rendered example."""
    return render_overlay(c.image, c.group, style)


def decide(p_accept: float, threshold: float) -> bool:
    """Auto-pass iff P(ACCEPT) >= threshold, the rule evaluate's operating point was chosen by."""
    return p_accept >= threshold


def threshold_from(operating_point: Path | None, threshold: float | None) -> tuple[float, str]:
    """(threshold, where it came from): the one given, else evaluate's operating point."""
    if threshold is not None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"--threshold must be in [0, 1], got {threshold}")
        return float(threshold), "given"
    if operating_point is None or not Path(operating_point).is_file():
        raise FileNotFoundError(
            f"no operating point at {operating_point}: run `dvc repro evaluate`, or pass --threshold")
    point = json.loads(Path(operating_point).read_text())
    source = f"{operating_point} (target precision {point.get('target_precision')}"
    source += ")" if point.get("reached") else ", not reached: nothing auto-passes)"
    return float(point["threshold"]), source


class Gate:
    """A loaded verifier with the input contract it was trained on (verifier.json)."""

    def __init__(self, model_dir: Path, device: str | None = None, scoring: Scoring = PLAIN, print_fn=print):
        """`scoring`: evaluate's settings (speedups.Scoring), so the gate scores as evaluate does;
        `print_fn` takes what applying them says (the command line sends it to stderr)."""
        from maskgate.model.verifier import load_verifier, read_manifest

        manifest = read_manifest(model_dir)
        self.style, self.prompt = Style.of(manifest["render"]), manifest["prompt"]
        self.max_length = int(manifest["max_length"])
        self.model, self.processor = load_verifier(model_dir, device)
        self.model = speedups.for_scoring(self.model, scoring, "gate", print_fn)
        self.batch_size = speedups.batch_size(self.model, self.processor, self.prompt, manifest["render"].size,
                                              self.max_length, scoring, "gate", print_fn)
        # overlap: run draws the next batch's lines while the GPU scores this one (scoring.Overlap)
        self.overlap = None
        if scoring.overlap:
            from maskgate.model.scoring import Overlap

            self.overlap = Overlap(self.model)

    def example(self, c: Candidate, picture: bytes | None = None):
        """The model's input for a candidate: its overlay decoded as train and evaluate decode theirs.

        `picture`: the overlay when the caller drew it already (run keeps it for the review page).
        BadLine if the query would not fit the token budget, so one line never fails a whole batch.
        """
        from maskgate.model.batching import check_lengths
        from maskgate.model.batching import to_example

        picture = overlay(c, self.style) if picture is None else picture
        ex = to_example({"overlay": picture, "query": c.query, "label_text": None, "example_id": c.id})
        try:
            check_lengths(self.processor, self.prompt, [ex], self.max_length, train=False)
        except ValueError as e:
            raise BadLine("query_too_long", str(e)) from None
        return ex

    def score(self, examples: list, batch_size: int) -> list[float]:
        """P(ACCEPT) of each example (Gate.example's output), in order.

        scoring.score_batch per batch, the very computation of scoring.score, without its per-batch
        progress bar: run's bar counts lines, and one candidate from the command line is one batch.
        (The model is in eval mode from load_verifier and never leaves it here.)
        """
        return [float(v) for start in range(0, len(examples), batch_size)
                for v in self.launch(examples[start:start + batch_size]).get()]

    def launch(self, examples: list):
        """One batch of examples queued on the model: scoring.Scores, whose get() waits for them."""
        from maskgate.model.scoring import launch_batch

        return launch_batch(self.model, self.processor, self.prompt, examples, self.max_length, self.overlap)


def read_log(path: Path) -> dict[int, str]:
    """Records of scores.jsonl by line, as their JSON text (a long log's records are parsed only
    when used); a torn last record (killed mid-write) is cut off."""
    done: dict[int, str] = {}
    if not path.exists():
        return done
    raw = path.read_bytes()
    end = raw.rfind(b"\n") + 1
    if end < len(raw):  # the tail was being written when the run died: score that line again
        with open(path, "r+b") as f:
            f.truncate(end)
    for text in raw[:end].decode("utf-8").splitlines():
        done[json.loads(text)["line"]] = text
    return done


def error_record(number: int, text: str, e: BadLine) -> dict:
    ident = None
    try:
        obj = json.loads(text)
        ident = obj.get("id") if isinstance(obj, dict) else None
    except (ValueError, RecursionError):
        pass
    return {"line": number, "key": line_key(text), "id": _text(ident, str(number)) if ident is not None else str(number),
            "error": e.reason, "detail": e.detail}


def append(log, records: list[dict]) -> None:
    for r in records:
        log.write(json.dumps(r, sort_keys=True) + "\n")
    log.flush()
    os.fsync(log.fileno())


def run(manifest: Path, out_dir: Path, gate: Gate, threshold: float, threshold_source: str,
        batch_size: int = 16, fresh: bool = False, progress: bool = True,
        built: interchange.Built | None = None, limits: Limits = GATE_LIMITS) -> dict:
    """Score every line of `manifest` not yet in `out_dir/scores.jsonl`, then write the routing.

    `built`: lines made from a segmenter's output (maskgate.interchange). They are written to
    `manifest` only after the resume check passes, so a refused rerun leaves the scored lines in
    place; `built.info` goes into summary.json as `input`. `limits`: what one line may ask for
    (params.yaml's `limits`; parse_line).

    The manifest is read line by line, three times (the resume check, scoring, routing), never held
    whole: memory does not grow with its length beyond one small record per line.
    """
    from tqdm.auto import tqdm

    manifest, out_dir = Path(manifest), Path(out_dir)
    if built is None and not manifest.is_file():
        raise FileNotFoundError(f"manifest not found: {manifest}")
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / SCORES
    if fresh:
        if log_path.exists():
            log_path.unlink()
        review.clear(out_dir)  # kept overlays may be another model's drawing
    done = read_log(log_path)

    def lines() -> Iterator[tuple[int, str]]:
        return read_lines(manifest, limits.max_line_bytes)

    total = todo = 0
    for n, text in (lines() if built is None else enumerate(built.lines, start=1)):
        total += 1
        if n not in done:
            todo += 1
        elif json.loads(done[n])["key"] != line_key(text):
            what = "another manifest" if built is None else "other candidates (another input or score floor?)"
            raise ValueError(f"{log_path} holds scores of {what} (line {n} changed since): "
                             "use another --out, or --fresh to start over")
    if built is not None:
        write_jsonl_text(built.lines, manifest)
    base_dir = manifest.parent
    # (the line's log record so far, its Example, its overlay JPEG): one batch of pictures at most
    pending: list[tuple[dict, object, bytes]] = []
    # with gate.overlap, the batch the GPU is scoring while the next one is drawn: (its pending, its Scores)
    queued: list[tuple[list, object]] = []
    with open(log_path, "a", encoding="utf-8") as log, tqdm(
        total=total, initial=total - todo, desc="gate", unit="line", disable=not progress
    ) as bar:
        def write(items, scores):
            p = [float(v) for v in scores.get()]
            for (record, _, picture), v in zip(items, p):
                if not decide(v, threshold):  # keep the very picture scored, for review.html
                    review.write_overlay(out_dir, record["line"], record["key"], picture)
            append(log, [{**record, "p_accept": v} for (record, _, _), v in zip(items, p)])
            bar.update(len(items))

        def flush():  # pending holds one batch at most
            launched = (list(pending), gate.launch([ex for _, ex, _ in pending]))
            pending.clear()
            if queued:  # the batch before: done, or nearly, now that this one is queued behind it
                write(*queued.pop())
            queued.append(launched)
            if gate.overlap is None:
                write(*queued.pop())

        for number, text in lines():
            if number in done:
                continue
            try:
                c = parse_line(number, text, base_dir, limits)
                picture = overlay(c, gate.style)
                ex = gate.example(c, picture)
            except BadLine as e:
                if queued:  # the log keeps line order whatever the overlap: the batch before goes first
                    write(*queued.pop())
                append(log, [error_record(number, text, e)])
                bar.update(1)
                continue
            pending.append(({"line": c.line, "key": c.key, "id": c.id}, ex, picture))
            if len(pending) == batch_size:
                flush()
        if pending:
            flush()
        if queued:
            write(*queued.pop())
    del done

    def redraw(number: int, text: str) -> bytes:
        """A line scored earlier that needs review only now: drawn again by the same code, the same bytes."""
        return overlay(parse_line(number, text, base_dir, limits), gate.style)

    return route(lines(), read_log(log_path), out_dir, threshold, threshold_source, gate.prompt.decision_names,
                 redraw, base_dir, built.info if built is not None else None, limits)


def original_line(text: str) -> dict:
    """The manifest line as an object, to copy through; `line_text` for one that is not a JSON object."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        obj = None
    return obj if isinstance(obj, dict) else {"line_text": str(text)}


def dumps_line(record: dict, text: str) -> str:
    """A routed line as JSON; a line that parsed but cannot be written back (nested past the recursion
    limit, an int of over 4300 digits) is copied as its text."""
    try:
        return json.dumps(record, sort_keys=True, default=str)
    except (ValueError, RecursionError):
        kept = {k: v for k, v in record.items() if k in ("line", "id", "p_accept", "decision", "route", "error", "detail")}
        return json.dumps({**kept, "line_text": str(text)}, sort_keys=True, default=str)


def route(lines, done: dict[int, str], out_dir: Path, threshold: float,
          threshold_source: str, decision_names: tuple[str, str], redraw, base_dir: Path,
          input_info: dict | None = None, limits: Limits = GATE_LIMITS) -> dict:
    """Write results, auto_pass, needs_review (also as COCO), review.html and summary from the scores;
    return the summary.

    lines: (number, text) of the manifest, in order, streamed: each output is written as the lines
    pass, so a long manifest is never held in memory (the review page keeps a short entry per case).
    done: read_log's records by line. decision_names: Prompt.decision_names, the `decision` of an
    auto-passed line and of the rest (ACCEPT / REJECT; "not ACCEPT" for the rest when the prompt has
    more than two answers). redraw(line, text): the overlay of a line, for the review page.
    base_dir: what the lines' paths are relative to (the manifest's folder), for the COCO file.
    input_info: what maskgate.interchange counted building the lines, for summary.json's `input`.
    """
    counts, errors = Counter(), Counter()
    with ExitStack() as stack:
        out = {}
        for name in (RESULTS, AUTO_PASS, NEEDS_REVIEW):
            tmp = stack.enter_context(tables.atomic_file(out_dir / name))
            out[name] = stack.enter_context(open(tmp, "w", encoding="utf-8"))
        coco = stack.enter_context(interchange.review_coco_file(out_dir / NEEDS_REVIEW_COCO, base_dir, threshold, limits))

        def cases():
            for number, text in lines:
                r = json.loads(done[number])
                key = r.pop("key")
                if "error" in r:
                    errors[r["error"]] += 1
                    r["route"] = "needs_review"
                else:
                    accept = decide(r["p_accept"], threshold)
                    r["decision"] = decision_names[0] if accept else decision_names[1]
                    r["route"] = "auto_pass" if accept else "needs_review"
                counts["lines"] += 1
                counts[r["route"]] += 1
                out[RESULTS].write(json.dumps(r, sort_keys=True, default=str) + "\n")
                original = original_line(text)
                extra = {k: v for k, v in r.items() if k not in ("line", "id")}
                routed = {**original, "line": number, **extra}
                out[AUTO_PASS if r["route"] == "auto_pass" else NEEDS_REVIEW].write(dumps_line(routed, text) + "\n")
                if r["route"] == "needs_review":
                    coco.add(routed)
                    query = original.get("query")
                    yield {**r, "key": key, "query": query if isinstance(query, str) else None, "text": text}

        shown, wanted = review.collect(out_dir, cases(), redraw)
        exported = coco.counts()
    summary = {"lines": counts["lines"], "auto_pass": counts["auto_pass"], "needs_review": counts["needs_review"],
               "bad_lines": sum(errors.values()), "errors": dict(sorted(errors.items())),
               "threshold": threshold, "threshold_source": threshold_source, "needs_review_coco": exported}
    if input_info is not None:
        summary["input"] = input_info
    review.publish(out_dir, shown, wanted, summary, decision_names)
    tables.write_json(summary, out_dir / SUMMARY)
    return summary


def write_jsonl_text(lines: list[str], path: Path) -> None:
    with tables.atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.writelines(text + "\n" for text in lines)


def verify(manifest: Path, model_dir: Path = Path("models/verifier"), out_dir: Path = Path("gate"),
           operating_point: Path | None = Path("reports/operating_point.json"), threshold: float | None = None,
           scoring: Scoring = PLAIN, fresh: bool = False, device: str | None = None, progress: bool = True,
           built: interchange.Built | None = None, limits: Limits = GATE_LIMITS) -> dict:
    """The gate from Python: score and route a manifest; returns the summary (see module doc).

    `built`: a segmenter's output as lines (interchange.from_coco_results / from_mask_folder); they are
    written to `manifest` (e.g. out_dir / CANDIDATES) and scored. `limits`: what one line may ask for;
    `config.load("params.yaml").limits` gives the project's (the default, config.GATE_LIMITS, holds
    the same values).
    """
    t, source = threshold_from(operating_point, threshold)
    g = Gate(model_dir, device, scoring)
    return run(manifest, out_dir, g, t, source, g.batch_size, fresh, progress, built, limits)
