"""Check raw MaskGroups rows one by one; a row that fails is skipped with a named reason.

A valid row becomes a `Row`: its query, its image name and size, its ground-truth groups as
compressed RLE strings at the image's own size (group 0 is the one the query names), and its whole
`gt_mask_pool` (every annotated object of the image), which the negatives stage draws hard negatives
from. A pool mask outside the groups that is broken or covers no pixel cannot spoil the row's query
and group, so it is dropped from the pool and counted (`pool_masks_skipped`, by reason, with one
example naming the row); a broken mask inside a group still skips the whole row, as before.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from maskgate.config import Limits
from maskgate.data import masks
from maskgate.utils.images import ImageTooLarge, decode_image
from maskgate.data.sources import ImageMissing, RawError, safe_name

MAX_QUERY_CHARS = 1000  # far past any real query; longer text is broken input, not a query


@dataclass(frozen=True)
class Row:
    row_id: str
    image: str
    query: str
    height: int
    width: int
    groups: list[list[str]]  # groups[0] answers the query
    pool: list[str]  # the valid, non-empty masks of gt_mask_pool in pool order, the groups' own included


class BadRow(ValueError):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def query_of(row: dict) -> str:
    """The query: the first human turn's text after the `<mask_pool>` placeholder."""
    conv = row.get("conversations")
    if not isinstance(conv, list):
        raise BadRow("bad_row", "conversations is missing or not a list")
    human = next((t for t in conv if isinstance(t, dict) and t.get("from") == "human"), None)
    if human is None or not isinstance(human.get("value"), str):
        raise BadRow("bad_row", "no human turn with a text value")
    text = human["value"]
    text = text.split("<mask_pool>", 1)[1] if "<mask_pool>" in text else text.replace("<image>", "")
    if "<mask-ref>" in text:
        raise BadRow("mask_ref_query", "queries with a reference mask are not handled yet")
    return clean_query(text)


def clean_query(text: object) -> str:
    """The query with runs of whitespace made one space; BadRow if empty or too long."""
    if not isinstance(text, str):
        raise BadRow("empty_query", "the query is not a string")
    text = text.strip()
    if not text:
        raise BadRow("empty_query")
    if len(text) > MAX_QUERY_CHARS:
        raise BadRow("query_too_long", f"{len(text)} characters")
    return re.sub(r"\s+", " ", text)


@dataclass
class ImageChecker:
    """Decodes each image once, however many rows name it, and remembers the outcome.

    `max_pixels` (limits.max_image_pixels): the header's size is checked before the pixels are decoded."""
    store: object
    max_pixels: int
    seen: dict = field(default_factory=dict)

    def size(self, name: str) -> tuple[int, int]:
        if name not in self.seen:
            self.seen[name] = self._check(name)
        result = self.seen[name]
        if isinstance(result, BadRow):
            raise result
        return result

    def _check(self, name: str):
        try:
            data = self.store.read(name)
        except ImageMissing:
            return BadRow("missing_image", name if len(name) <= 300 else name[:300] + "...")
        if not data:
            return BadRow("undecodable_image", f"{name}: empty file (0 bytes)")
        try:
            img = decode_image(data, self.max_pixels)
        except ImageTooLarge as e:
            return BadRow("over_limit", f"{name}: {e}")
        except Exception as e:  # PIL raises many types for broken files; all mean "not an image"
            return BadRow("undecodable_image", f"{name}: {type(e).__name__}: {e}")
        if img.width == 0 or img.height == 0:
            return BadRow("undecodable_image", f"{name}: zero size")
        return img.height, img.width


def _rle_of(pool: list, index: object, height: int, width: int, policy: str, stats: Counter, limits: Limits) -> str:
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(pool):
        raise BadRow("index_out_of_range", f"index {masks.short(index)} into a pool of {len(pool)}")
    rle = pool[index]
    if not isinstance(rle, dict) or "counts" not in rle or "size" not in rle:
        raise BadRow("bad_rle", f"mask {index} is not a {{size, counts}} dict")
    try:
        h, w = masks.rle_size(rle["size"])
    except masks.BadMask as e:
        raise BadRow("bad_rle", f"mask {index}: {e}") from None
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii", errors="replace")
    if not isinstance(counts, str) or not counts.isascii():
        raise BadRow("bad_rle", f"mask {index}: counts must be a compressed RLE string (ASCII)")
    # The size is checked before decoding, so a mask claiming a huge size is never allocated.
    try:
        masks.check_pixels(h, w, limits.max_mask_pixels, "max_mask_pixels", f"mask {index}")
    except masks.OverLimit as e:
        raise BadRow("over_limit", str(e)) from None
    if (h, w) != (height, width):
        if policy != "rescale" or not masks.same_aspect(h, w, height, width):
            raise BadRow("mask_size_mismatch", f"mask {index} is {h}x{w}, image is {height}x{width}")
    try:
        m = masks.decode(counts, h, w)
    except masks.BadMask as e:
        raise BadRow("bad_rle", f"mask {index}: {e}") from None
    if (h, w) == (height, width):
        return counts
    stats["masks_rescaled"] += 1
    return masks.encode(masks.resize(m, height, width))


def validate(raw: dict, images: ImageChecker, policy: str, stats: Counter, limits: Limits,
             pool_skips: dict | None = None) -> Row:
    """A `Row`, or BadRow naming the first thing wrong with it."""
    if pool_skips is None:
        pool_skips = {"counts": Counter(), "examples": {}}
    if not isinstance(raw, dict):
        raise BadRow("bad_row", "not an object")
    row_id = raw.get("id")
    try:
        row_id = None if row_id is None else str(row_id)
    except (ValueError, RecursionError):  # an int past Python's 4300-digit limit, a list nested too deep
        raise BadRow("bad_row", f"id {masks.short(raw.get('id'))} cannot be read as text") from None
    if row_id is None or row_id.strip() == "":
        raise BadRow("bad_row", "no id")
    query = query_of(raw)
    name = safe_name(raw.get("image"))
    if name is None:
        raise BadRow("unsafe_image_name", masks.short(raw.get("image"), 300))
    height, width = images.size(name)
    pool, groups = raw.get("gt_mask_pool"), raw.get("gt_mask_group")
    if not isinstance(pool, list) or not isinstance(groups, list) or not groups:
        raise BadRow("no_group", "gt_mask_pool / gt_mask_group missing or empty")
    checked = []
    for g in groups:
        if not isinstance(g, list) or not g:
            raise BadRow("empty_group", f"group {len(checked)} is {masks.short(g)}: not a non-empty list of mask indices")
        if len(g) > limits.max_masks_per_group:
            raise BadRow("over_limit", f"group {len(checked)} has {len(g)} masks > limits.max_masks_per_group = "
                                       f"{limits.max_masks_per_group}")
        checked.append([_rle_of(pool, i, height, width, policy, stats, limits) for i in g])
    if not masks.covers_any(checked[0], height, width):
        raise BadRow("empty_group", "the named group covers no pixel")
    in_groups = {i: c for g, cs in zip(groups, checked) for i, c in zip(g, cs)}
    return Row(str(row_id), name, query, height, width, checked,
               pool_of(pool, in_groups, height, width, policy, stats, pool_skips, str(row_id), limits))


def pool_of(pool: list, in_groups: dict, height: int, width: int, policy: str, stats: Counter,
            pool_skips: dict, row_id: str, limits: Limits) -> list[str]:
    """Every mask of the pool as a checked RLE string (the groups' masks as they were checked). A broken
    or empty mask outside the groups is dropped, counted in pool_skips["counts"] under its reason, with
    one example naming the row in pool_skips["examples"]; rescaled pool masks count as pool_masks_rescaled."""
    out = []
    for i in range(len(pool)):
        if i in in_groups:
            out.append(in_groups[i])
            continue
        try:
            own = Counter()
            counts = _rle_of(pool, i, height, width, policy, own, limits)
            if not masks.covers_any([counts], height, width):
                raise BadRow("empty_mask", f"mask {i} covers no pixel")
        except BadRow as e:
            pool_skips["counts"][e.reason] += 1
            pool_skips["examples"].setdefault(e.reason, f"row {row_id}: {e}")
            continue
        stats["pool_masks_rescaled"] += own["masks_rescaled"]
        out.append(counts)
    return out


def _id_text(raw) -> str:
    """A row's id as the report names it: cut short, '?' where there is none Python can write."""
    try:
        text = str(raw.get("id")) if isinstance(raw, dict) else "?"
    except (ValueError, RecursionError):  # an int past the 4300-digit limit, a list nested too deep
        text = "?"
    return text if len(text) <= 60 else text[:60] + "..."


class Validation:
    """The checks of `validate_all`, one row at a time: `rows(raws)` yields each valid Row as soon as it
    is checked, so a caller can write rows as they come instead of holding them (prepare does). The
    counts, `skipped()` and `stats()`, are complete once `rows` is exhausted. What it holds grows with
    the distinct ids (duplicates are found by id) and images (each is decoded once), not the rows' masks.
    """

    def __init__(self, store, policy: str, limits: Limits):
        self.images = ImageChecker(store, limits.max_image_pixels)
        self.policy, self.limits = policy, limits
        self.skips, self.counts, self.ids = Counter(), Counter(), set()
        self.examples: dict[str, str] = {}
        self.pool_skips: dict = {"counts": Counter(), "examples": {}}

    def rows(self, raws: Iterable[dict | RawError], progress=None) -> Iterator[Row]:
        for i, raw in enumerate(raws):
            self.counts["rows_in"] += 1
            if progress is not None:
                progress.update(1)
            try:
                if isinstance(raw, RawError):
                    raise BadRow(raw.reason, f"{raw.where}: {raw.detail}")
                row = validate(raw, self.images, self.policy, self.counts, self.limits, self.pool_skips)
                if row.row_id in self.ids:
                    raise BadRow("duplicate_id", row.row_id)
                self.ids.add(row.row_id)
            except BadRow as e:
                self.skips[e.reason] += 1
                where = raw.where if isinstance(raw, RawError) else f"row {i} (id {_id_text(raw)})"
                self.examples.setdefault(e.reason, f"{where}: {e}")
                continue
            yield row

    def skipped(self) -> dict:
        """{"counts": {reason: n}, "examples": {reason: text}} of the skipped rows."""
        return {"counts": dict(sorted(self.skips.items())), "examples": dict(sorted(self.examples.items()))}

    def stats(self) -> Counter:
        """rows_in, masks_rescaled, pool_masks_rescaled, and pool_masks_skipped ({"counts", "examples"})."""
        stats = Counter(self.counts)
        stats["pool_masks_skipped"] = {"counts": dict(sorted(self.pool_skips["counts"].items())),
                                       "examples": dict(sorted(self.pool_skips["examples"].items()))}
        return stats


def validate_all(raws: Iterable[dict | RawError], store, policy: str, limits: Limits,
                 progress=None) -> tuple[list[Row], dict, Counter]:
    """Valid rows, skipped counts by reason, and other counts (rows_in, masks_rescaled, pool_masks_rescaled,
    and pool_masks_skipped: {"counts": {reason: n}, "examples": {reason: text}}, the pool masks dropped).

    `limits`: what one row may ask for (image and mask pixels, masks per group); a row past one is
    skipped as `over_limit`, its detail naming the key.

    Duplicate ids: the first row keeps the id, later ones are skipped as `duplicate_id`.
    Every valid row is held; `Validation` gives them one at a time.
    """
    check = Validation(store, policy, limits)
    rows = list(check.rows(raws, progress))
    return rows, check.skipped(), check.stats()
