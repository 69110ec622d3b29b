"""What segmenters write, in; what review tools read, out.

In: a segmenter's output becomes the gate's manifest lines (the JSON objects `gate.parse_line` reads),
so drawing, scoring, resume and bad lines are the gate's own path, nothing parallel to it.

* COCO results, as SAM 3, Detectron2, mmdetection and SAM 2 tools write them: a JSON list of
  ``{image_id, category_id, segmentation, score}`` (segmentation: RLE with string or list counts, or
  polygons), with the COCO images file (``images: [{id, file_name, height, width}]``, ``categories``).
  The query is the category's name (or a ``queries`` map), or one per image: the image entry's
  ``text_input`` (SA-Co, SAM 3's format, where each image entry is one image-phrase pair) or a map.
* A mask folder: ``index.csv`` with columns ``image, query, mask`` and optionally ``score``, one row
  per instance mask (a PNG, non-zero = inside).

All instances of one (image, query) form one candidate group. A score floor drops the segmenter's own
low-confidence instances first; they are counted in the build's `info` (summary.json's `input`), never
dropped silently. An entry that is wrong makes a line carrying ``input_error`` (reason, and a detail
naming the entry), which the gate reports as a bad line and routes to review; a whole file that cannot
be read is an InputError, one line.

Out: the needs-review candidates as a COCO annotations file (images, categories from the queries, one
RLE annotation per mask, `p_accept` and the group among each annotation's `attributes`), the layout
CVAT's COCO importer and FiftyOne read extra attributes from.
"""
from __future__ import annotations

import csv
import json
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from PIL import Image
from pycocotools import mask as mask_utils

from maskgate.config import GATE_LIMITS, Limits
from maskgate.data import masks
from maskgate.utils import tables

QUERY_PER = ("category", "image")


class InputError(ValueError):
    """A segmenter file that cannot be used at all (one bad entry in it is a bad line instead)."""


@dataclass
class Built:
    """Candidate groups as manifest lines (JSON text, in order), and what building them counted."""
    lines: list[str]
    info: dict


def load_json(path: Path, what: str):
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except FileNotFoundError:
        raise InputError(f"{what} not found: {path}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{what} {path} is not JSON: {e}") from None
    except OSError as e:
        raise InputError(f"{what} {path} cannot be read: {e}") from None


def is_id(v) -> bool:
    """COCO ids are integers; some tools write strings. A bool or float is neither."""
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, str) and v != "")


def number(v) -> float | None:
    """A score as a float, or None when it is not a finite number."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the file's header, or None when it cannot be opened (parse_line then says why)."""
    try:
        with Image.open(path) as im:
            return im.size
    except Exception:  # PIL raises many types; the gate's own reading of the file reports it
        return None


def bad(ident: str, reason: str, detail: str, **fields) -> dict:
    """A manifest line the gate reports as bad with this reason (gate.parse_line reads `input_error`)."""
    return {"id": ident, **fields, "input_error": {"reason": reason, "detail": detail}}


def load_queries(queries) -> dict[str, str]:
    """The --queries map (a path or a dict): key (a category or image id, or a file name) -> query."""
    if queries is None:
        return {}
    doc = load_json(Path(queries), "--queries file") if not isinstance(queries, dict) else queries
    if not isinstance(doc, dict):
        raise InputError(f"--queries {queries}: a JSON object mapping ids to queries")
    for k, v in doc.items():
        if not isinstance(v, str) or not v.strip():
            raise InputError(f"--queries {queries}: the query for {k!r} is not a non-empty string")
    return {str(k): v for k, v in doc.items()}


def image_table(doc, name: str) -> tuple[dict, dict, int]:
    """({id: entry} of good image entries, {id: why} of bad ones, entries without a usable id).

    A broken entry only spoils the groups on that image (they become bad lines), not the run.
    """
    good, why, first, unkeyed = {}, {}, {}, 0
    for i, im in enumerate(doc["images"]):
        if not isinstance(im, dict) or not is_id(im.get("id")):
            unkeyed += 1
            continue
        ident, where = im["id"], f"{name} images[{i}]"
        if ident in first:
            why[ident] = f"image id {ident!r} appears twice in {name} (images[{first[ident]}] and images[{i}])"
            good.pop(ident, None)
            continue
        first[ident] = i
        if not isinstance(im.get("file_name"), str) or not im["file_name"]:
            why[ident] = f"{where} (id {ident!r}) has no file_name"
        elif not (positive_int(im.get("height")) and positive_int(im.get("width"))):
            why[ident] = f"{where} (id {ident!r}) has no positive integer height and width"
        else:
            good[ident] = im
    return good, why, unkeyed


def from_coco_results(results: Path, images: Path | None, images_dir: Path, queries=None,
                      query_per: str | None = None, score_floor: float | None = None,
                      limits: Limits = GATE_LIMITS) -> Built:
    """Manifest lines from COCO results: one per (image, query), in the order groups first appear.

    `images`: the COCO images file; None when `results` is itself a COCO file with `annotations` and
    `images`. `query_per`: "category" (the category's name, or `queries[category_id]`) or "image"
    (`queries[image_id or file_name]`, else the image entry's `text_input`); None picks "image" when
    every image entry has a `text_input` (SA-Co), else "category". `limits`: the gate's (a group past
    one is a bad line here, before any mask of it is decoded).
    """
    results = Path(results)
    doc = load_json(results, "COCO results")
    if isinstance(doc, dict) and isinstance(doc.get("annotations"), list):
        entries, images_doc, images_name = doc["annotations"], doc, results
    elif isinstance(doc, list):
        entries, images_doc, images_name = doc, None, images
    else:
        raise InputError(f"{results}: COCO results are a JSON list of {{image_id, category_id, segmentation, score}}")
    if images is not None:
        images_doc, images_name = load_json(Path(images), "COCO images file"), Path(images)
    if images_doc is None:
        raise InputError(f"{results} holds only results: give the COCO images file that names the images (--coco-images)")
    if not isinstance(images_doc, dict) or not isinstance(images_doc.get("images"), list):
        raise InputError(f"{images_name}: a COCO images file is an object with an `images` list")
    name = Path(images_name).name
    table, bad_images, unkeyed = image_table(images_doc, name)
    qmap = load_queries(queries)
    if query_per is None:
        ims = images_doc["images"]
        query_per = "image" if ims and all(isinstance(im, dict) and "text_input" in im for im in ims) else "category"
    if query_per not in QUERY_PER:
        raise InputError(f"query per {query_per!r}: one of {', '.join(QUERY_PER)}")

    # category mode: str(category id) -> query, the category's name unless the map names another
    cat_query: dict[str, str] = {}
    if query_per == "category":
        cats = images_doc.get("categories")
        if not isinstance(cats, list) and not qmap:
            raise InputError(f"{name} has no categories: give --queries (category id -> query), or query per image")
        for c in cats if isinstance(cats, list) else []:
            if isinstance(c, dict) and is_id(c.get("id")) and isinstance(c.get("name"), str) and c["name"].strip():
                cat_query[str(c["id"])] = c["name"]
        cat_query.update(qmap)
    used: set[str] = set()  # the map's keys some group took its query from

    # key -> its instances [(index, entry, score)], its problems, the entries seen (kept or not)
    groups: dict[tuple, dict] = {}
    order: list = []  # group keys and lone bad lines, in first-appearance order
    under = 0
    for i, e in enumerate(entries):
        where = f"results[{i}]"
        if not isinstance(e, dict):
            order.append(bad(where, "bad_entry", f"{where} is not an object"))
            continue
        image_id = e.get("image_id")
        if not is_id(image_id):
            order.append(bad(where, "bad_entry", f"{where} has no image_id (an integer or string)"))
            continue
        if query_per == "category":
            cat = e.get("category_id")
            if not is_id(cat):
                order.append(bad(where, "bad_entry", f"{where} (image {image_id!r}) has no category_id"))
                continue
            if str(cat) in qmap:
                used.add(str(cat))
            key = (image_id, cat_query[str(cat)]) if str(cat) in cat_query else (image_id, None, cat)
        else:
            key = (image_id,)
        if key not in groups:
            groups[key] = {"kept": [], "errors": [], "seen": []}
            order.append(key)
        g = groups[key]
        g["seen"].append(i)
        score = None
        if "score" in e:
            score = number(e["score"])
            if score is None:
                g["errors"].append(("bad_entry", f"{where}: score {e['score']!r} is not a number"))
                continue
        elif score_floor is not None:
            g["errors"].append(("bad_entry", f"{where} has no score, and the score floor needs one"))
            continue
        if score_floor is not None and score < score_floor:
            under += 1
            continue
        g["kept"].append((i, e, score))

    checked_sizes = {}
    lines, only_under = group_lines(order, groups, lambda item, g: coco_line(
        item, g, table, bad_images, qmap, used, query_per, name, Path(images_dir), checked_sizes, limits))
    info = {"format": "coco-results", "results": str(results), "images": str(images_name),
            "images_dir": str(images_dir), "query_per": query_per, "entries": len(entries),
            "score_floor": score_floor, "under_score_floor": under, "groups_only_under_score_floor": only_under,
            "lines": len(lines), "image_entries_without_id": unkeyed,
            "queries_unused": sorted(k for k in qmap if k not in used)}
    return Built([json.dumps(x, sort_keys=True) for x in lines], info)


def coco_line(key: tuple, g: dict, table: dict, bad_images: dict, qmap: dict, used: set, query_per: str, name: str,
              images_dir: Path, checked_sizes: dict, limits: Limits) -> dict:
    """The manifest line of one group, or a bad line saying the first thing wrong with it."""
    image_id = key[0]
    named = ", ".join(f"results[{i}]" for i in g["seen"][:5]) + (", ..." if len(g["seen"]) > 5 else "")
    if query_per == "category" and key[1] is None:
        return bad(f"{image_id}:category {key[2]}", "unknown_category",
                   f"category_id {key[2]!r} ({named}) is not in {name}'s categories nor in --queries")
    if image_id in bad_images:
        return bad(f"{image_id}", "bad_image_entry", f"{bad_images[image_id]} ({named})")
    if image_id not in table:
        return bad(f"{image_id}", "unknown_image", f"image_id {image_id!r} ({named}) is not in {name}")
    im = table[image_id]
    h, w = im["height"], im["width"]
    if query_per == "category":
        query = key[1]
    else:
        hit = next((k for k in (str(image_id), im["file_name"]) if k in qmap), None)
        if hit is not None:
            used.add(hit)
        query = qmap[hit] if hit is not None else im.get("text_input")
    ident = f"{image_id}:{query}"
    source = {"format": "coco-results", "image_id": image_id, "file_name": im["file_name"],
              "entries": [i for i, _, _ in g["kept"]], "scores": [s for _, _, s in g["kept"]]}
    if query_per == "category":
        source["category_ids"] = sorted({e["category_id"] for _, e, _ in g["kept"]}, key=str)
    path = os.path.abspath(images_dir / im["file_name"])
    fields = {"image": path, "query": query if isinstance(query, str) else "", "masks": [], "source": source}
    if g["errors"]:
        return bad(ident, *g["errors"][0], **fields)
    if not isinstance(query, str) or not query.strip():
        return bad(str(image_id), "empty_query",
                   f"image {image_id!r} ({im['file_name']}) has no query: no text_input in {name}, not in --queries",
                   **fields)
    # The images file's sizes are what each mask is built at: checked before the file is opened or a mask made.
    if h * w > limits.max_image_pixels:
        return bad(ident, "over_limit", f"{im['file_name']}: {name} says {w}x{h} = {h * w} pixels "
                                        f"> limits.max_image_pixels = {limits.max_image_pixels}", **fields)
    if len(g["kept"]) > limits.max_masks_per_group:
        return bad(ident, "over_limit", f"{len(g['kept'])} instances ({named}) > limits.max_masks_per_group = "
                                        f"{limits.max_masks_per_group}", **fields)
    if image_id not in checked_sizes:
        checked_sizes[image_id] = image_size(Path(path))
    size = checked_sizes[image_id]
    if size is not None and size != (w, h):
        # The masks are at the images file's size; a file of another size is not the image they were made on.
        return bad(ident, "size_mismatch", f"{im['file_name']} is {size[0]}x{size[1]} (width x height), "
                                          f"{name} says {w}x{h}", **fields)
    rles = []
    for i, e, _ in g["kept"]:
        seg = e.get("segmentation")
        where = f"results[{i}] (image {image_id!r})"
        if not isinstance(seg, (dict, list)):
            return bad(ident, "bad_mask", f"{where}: segmentation is neither an RLE dict nor polygons", **fields)
        if isinstance(seg, dict) and "size" in seg:
            try:
                if masks.rle_size(seg["size"]) != (h, w):
                    return bad(ident, "bad_mask", f"{where}: RLE size {seg['size']}, the image is {h}x{w} in {name}",
                               **fields)
            except masks.BadMask as err:
                return bad(ident, "bad_mask", f"{where}: {err}", **fields)
        try:
            rles.append(masks.from_spec(seg, h, w, images_dir, limits))
        except masks.OverLimit as err:
            return bad(ident, "over_limit", f"{where}: {err}", **fields)
        except masks.BadMask as err:
            return bad(ident, "bad_mask", f"{where}: {err}", **fields)
    fields["masks"] = [{"size": [h, w], "counts": c} for c in rles]
    return {"id": ident, **fields}


INDEX = "index.csv"


def from_mask_folder(folder: Path, images_dir: Path | None = None, score_floor: float | None = None,
                     limits: Limits = GATE_LIMITS) -> Built:
    """Manifest lines from a mask folder: `index.csv` (image, query, mask[, score]), one row per mask.

    Mask paths are relative to the folder, image paths to `images_dir` (default: the folder).
    """
    folder = Path(folder)
    images_dir = folder if images_dir is None else Path(images_dir)
    index = folder / INDEX
    groups: dict[tuple, dict] = {}
    order: list = []
    under = rows = 0
    try:
        # utf-8-sig: a spreadsheet's CSV export starts with a byte-order mark
        with open(index, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in ("image", "query", "mask") if c not in header]
            if missing:
                raise InputError(f"{index} needs the columns image, query, mask (and optionally score); "
                                 f"its header has {', '.join(header) or 'nothing'}")
            for row in reader:
                rows += 1
                where = f"{INDEX} line {reader.line_num}"
                image, query = (row.get("image") or "").strip(), (row.get("query") or "").strip()
                if not image or not query:
                    order.append(bad(where, "bad_entry", f"{where} has no {'image' if not image else 'query'}"))
                    continue
                key = (image, query)
                if key not in groups:
                    groups[key] = {"kept": [], "errors": [], "seen": []}
                    order.append(key)
                g = groups[key]
                g["seen"].append(reader.line_num)
                mask = (row.get("mask") or "").strip()
                raw = (row.get("score") or "").strip()
                try:
                    score = number(float(raw)) if raw else None
                except ValueError:
                    score = None
                if not mask:
                    g["errors"].append(("bad_entry", f"{where} has no mask"))
                elif raw and score is None:
                    g["errors"].append(("bad_entry", f"{where}: score {raw!r} is not a number"))
                elif score_floor is not None and score is None:
                    g["errors"].append(("bad_entry", f"{where} has no score, and the score floor needs one"))
                elif score_floor is not None and score < score_floor:
                    under += 1
                elif not (folder / mask).is_file():
                    g["errors"].append(("bad_mask", f"{where}: mask image {mask} not found in {folder}"))
                else:
                    g["kept"].append((reader.line_num, os.path.abspath(folder / mask), score))
    except FileNotFoundError:
        raise InputError(f"no {INDEX} in {folder} (a mask folder holds index.csv: image, query, mask[, score])") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{index} is not UTF-8 text: {e}") from None
    except csv.Error as e:
        raise InputError(f"{index} is not CSV: {e}") from None
    def folder_line(item, g):
        image, query = item
        source = {"format": "mask-folder", "file_name": image, "index_lines": [n for n, _, _ in g["kept"]],
                  "scores": [s for _, _, s in g["kept"]]}
        line = {"id": f"{image}:{query}", "image": os.path.abspath(images_dir / image), "query": query,
                "masks": [p for _, p, _ in g["kept"]], "source": source}
        if g["errors"]:
            return bad(line.pop("id"), *g["errors"][0], **line)
        if len(g["kept"]) > limits.max_masks_per_group:
            return bad(line.pop("id"), "over_limit", f"{len(g['kept'])} masks (index.csv lines {g['seen'][0]}, ...) "
                                                     f"> limits.max_masks_per_group = {limits.max_masks_per_group}", **line)
        return line

    lines, only_under = group_lines(order, groups, folder_line)
    info = {"format": "mask-folder", "index": str(index), "images_dir": str(images_dir), "rows": rows,
            "score_floor": score_floor, "under_score_floor": under, "groups_only_under_score_floor": only_under,
            "lines": len(lines)}
    return Built([json.dumps(x, sort_keys=True) for x in lines], info)


def group_lines(order: list, groups: dict, make_line) -> tuple[list[dict], int]:
    """(manifest lines in input order, groups dropped): `order` holds ready lines (dicts) and group keys;
    a group whose every instance fell under the score floor is no candidate (the segmenter trusts none)."""
    lines, only_under = [], 0
    for item in order:
        if isinstance(item, dict):
            lines.append(item)
            continue
        g = groups[item]
        if not g["kept"] and not g["errors"]:
            only_under += 1
            continue
        lines.append(make_line(item, g))
    return lines, only_under


class ReviewCoco:
    """The needs-review records (the manifest line + p_accept, decision, or error) as COCO annotations,
    written to the file as they come (`review_coco_file`): a long manifest's review queue is never
    held whole in memory, only its images and categories.

    One annotation per mask, so a tool shows each instance as it would a segmenter's; its
    `attributes` carry p_accept, decision, the group (the line's id) and the query, so the masks of
    one candidate can be found together. Bad lines have no masks to show: they are counted in `info`
    and stay in needs_review.jsonl.
    """

    def __init__(self, f, base_dir: Path, threshold: float, limits):
        self.f, self.base_dir, self.threshold, self.limits = f, Path(base_dir), threshold, limits
        self.images, self.categories, self.left_out, self.sizes = {}, {}, [], {}
        self.used_ids: set = set()
        self.records = self.bad_lines = self.annotations = 0

    def add(self, r: dict) -> None:
        self.records += 1
        if "error" in r:
            self.bad_lines += 1
            return
        src = r.get("source") if isinstance(r.get("source"), dict) else {}
        path = self.base_dir / r["image"]
        if path not in self.sizes:
            self.sizes[path] = image_size(path)
        if self.sizes[path] is None:
            self.left_out.append({"line": r["line"], "why": f"image {r['image']} no longer opens"})
            return
        w, h = self.sizes[path]
        try:
            if w * h > self.limits.max_image_pixels:  # scored earlier; the file was replaced since
                raise masks.OverLimit(f"image {r['image']} is {w}x{h} now, past limits.max_image_pixels")
            rles = [masks.from_spec(m, h, w, self.base_dir, self.limits) for m in r["masks"]]
        except masks.BadMask as e:  # scored earlier; a mask file changed since
            self.left_out.append({"line": r["line"], "why": str(e)})
            return
        # `source` is what the conversion recorded; a hand-written manifest may carry anything there
        given = src.get("image_id") if is_id(src.get("image_id")) else None
        file_name = src["file_name"] if isinstance(src.get("file_name"), str) and src["file_name"] else r["image"]
        key = (given, file_name)
        if key not in self.images:
            ident = given if isinstance(given, int) and given not in self.used_ids else max(self.used_ids, default=0) + 1
            self.used_ids.add(ident)
            self.images[key] = {"id": ident, "file_name": file_name, "height": h, "width": w}
        query = r["query"]
        if query not in self.categories:
            self.categories[query] = {"id": len(self.categories) + 1, "name": query, "supercategory": "query"}
        scores = [number(v) for v in src["scores"]] if isinstance(src.get("scores"), list) else []
        group = str(r.get("id", r["line"]))
        for k, counts in enumerate(rles):
            rle = {"size": [h, w], "counts": counts.encode("ascii")}
            self.annotations += 1
            ann = {"id": self.annotations, "image_id": self.images[key]["id"],
                   "category_id": self.categories[query]["id"], "segmentation": {"size": [h, w], "counts": counts},
                   "area": int(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                   "iscrowd": 0,  # each annotation is one instance; RLE here is only the encoding
                   "attributes": {"p_accept": r["p_accept"], "decision": r["decision"], "group": group,
                                  "query": query, "line": r["line"], "mask": k, "group_size": len(rles)}}
            if k < len(scores) and scores[k] is not None:
                ann["score"] = scores[k]  # the segmenter's own confidence, where it gave one
            self.f.write(("" if self.annotations == 1 else ", ") + json.dumps(ann))

    @property
    def groups(self) -> int:
        """Needs-review groups written as annotations: the records less the bad lines and the left out."""
        return self.records - self.bad_lines - len(self.left_out)

    def rest(self) -> dict:
        """Everything but the annotations, written after them."""
        info = {"description": "maskgate needs_review: candidate groups under the gate's threshold, "
                               "one annotation per mask (attributes: p_accept, decision, group, query)",
                "threshold": self.threshold, "groups": self.groups,
                "bad_lines_not_here": self.bad_lines, "left_out": self.left_out}
        return {"info": info, "licenses": [], "images": list(self.images.values()),
                "categories": list(self.categories.values())}

    def counts(self) -> dict:
        return {"groups": self.groups, "annotations": self.annotations,
                "images": len(self.images), "bad_lines_not_here": self.bad_lines, "left_out": len(self.left_out)}


@contextmanager
def review_coco_file(path: Path, base_dir: Path, threshold: float, limits) -> Iterator[ReviewCoco]:
    """A ReviewCoco writing `path` (temporary name, then rename when the block ends without an error)."""
    with tables.atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        coco = ReviewCoco(f, base_dir, threshold, limits)
        f.write('{"annotations": [')
        yield coco
        f.write("], " + json.dumps(coco.rest())[1:])  # the object's other keys, its closing brace
