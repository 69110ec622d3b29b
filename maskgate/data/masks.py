"""Mask groups as COCO RLE, decoded and encoded by pycocotools.

Rows carry masks as compressed RLE strings; every mask inside the pipeline is at the size of its
own image. A group is a list of masks; comparisons between groups use the union of their masks.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from maskgate.utils.images import ImageTooLarge, open_bounded

if TYPE_CHECKING:
    from maskgate.config import Limits


class BadMask(ValueError):
    """An RLE that pycocotools cannot decode, or one of the wrong size."""


class OverLimit(BadMask):
    """A mask that asks for more than a `limits` key allows; the message names the key."""


# 13 five-bit groups hold 64 bits, all pycocotools' decoder keeps of a run (its `long`); a longer run is
# not an RLE it can read, and an unbounded one would cost Python's big-int loop quadratic time here.
MAX_RUN_CHARS = 13


def run_lengths(counts: bytes, total: int | None = None) -> list[int]:
    """The run lengths a compressed COCO RLE string holds (the inverse of pycocotools' rleToString).

    Why here and not pycocotools: its decoder trusts the string. Runs that add up to less than the
    mask leave the rest of the array uninitialised (garbage that differs from call to call), runs
    that add up to more write past its end, and its IoU can loop forever on such a mask. So a
    string is measured here first, and only one whose runs exactly fill the mask reaches it.
    Each run is 5-bit groups (48 + bits, 0x20 = more follows, 0x10 = sign), deltas from the
    run two back after the first three runs.

    `total`: the mask's pixel count. A string is then refused as soon as a run is negative, the runs
    pass `total` or there are more runs than a mask of `total` pixels can have, so a long string
    that cannot be this mask costs no more than its first wrong run.
    """
    runs, p, n, summed = [], 0, len(counts), 0
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise BadMask("RLE counts string ends inside a run")
            if k == MAX_RUN_CHARS:
                raise BadMask(f"RLE counts hold a run of more than {MAX_RUN_CHARS} characters (over 64 bits)")
            c = counts[p] - 48
            if not 0 <= c < 64:
                raise BadMask(f"RLE counts hold {chr(counts[p])!r}, outside the RLE alphabet")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
        if total is not None:
            summed += x
            if x < 0 or summed > total or len(runs) > total + 1:
                raise BadMask(f"RLE counts do not add up to the mask's {total} pixels (run {len(runs) - 1} is {x}, "
                              f"{summed} pixels so far)")
    return runs


def decode(counts: str | bytes, height: int, width: int, check: bool = True) -> np.ndarray:
    """Decode one compressed RLE into a (height, width) bool array.

    With `check`, first verify that the runs are non-negative and add up to exactly the mask size
    (`run_lengths` says why pycocotools must not see a string that fails); rows that passed
    prepare need not pay for it again.
    """
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    if check:
        runs = run_lengths(counts, height * width)
        if any(r < 0 for r in runs) or sum(runs) != height * width:
            raise BadMask(f"RLE counts add up to {sum(runs)} pixels (with {sum(r < 0 for r in runs)} negative runs), "
                          f"the mask has {height}x{width} = {height * width}")
    rle = {"size": [int(height), int(width)], "counts": counts}
    try:
        m = mask_utils.decode(rle)
    except Exception as e:  # pycocotools raises bare Exceptions
        raise BadMask(f"RLE does not decode: {e}") from None
    if m.shape != (height, width):
        raise BadMask(f"RLE decodes to {m.shape}, expected {(height, width)}")
    return m.view(bool)


def encode(mask: np.ndarray) -> str:
    """Encode a bool (h, w) array as a compressed RLE string."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return rle["counts"].decode("ascii")


def resize(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize, so a mask stays binary."""
    if mask.shape == (height, width):
        return mask
    src = mask.view(np.uint8) if mask.dtype == bool else (mask > 0).view(np.uint8)
    if src.flags.f_contiguous and not src.flags.c_contiguous:
        # pycocotools decodes column-major; resizing the transpose avoids a slow strided copy,
        # and nearest-neighbour sampling is the same along either axis.
        return np.asarray(Image.fromarray(src.T).resize((height, width), Image.Resampling.NEAREST)).T.astype(bool)
    return np.asarray(Image.fromarray(src).resize((width, height), Image.Resampling.NEAREST)).astype(bool)


def union(masks: list[np.ndarray]) -> np.ndarray:
    return np.logical_or.reduce(masks)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.logical_and(a, b).sum()
    uni = np.logical_or(a, b).sum()
    return float(inter / uni) if uni else 1.0


def covers_any(group: list[str], height: int, width: int) -> bool:
    """Whether any mask of the group has a pixel, read off the runs: no mask is decoded (a group
    of many large masks would be a large allocation for a yes or no)."""
    return any(int(mask_utils.area({"size": [height, width], "counts": c.encode("ascii")})) > 0 for c in group)


def decode_group(group: list[str], height: int, width: int) -> list[np.ndarray]:
    return [decode(c, height, width) for c in group]


def rle_size(size: object) -> tuple[int, int]:
    """(height, width) of an RLE's `size`; BadMask unless it is two positive integers."""
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise BadMask(f"size {short(size)} is not [height, width] in positive integers")
    return int(size[0]), int(size[1])


def check_pixels(h: int, w: int, limit: int, key: str, what: str) -> None:
    """OverLimit when h x w passes `limit` (the value of limits.`key`): checked before anything of that size exists."""
    if h * w > limit:
        raise OverLimit(f"{what} is {h}x{w} = {h * w} pixels > limits.{key} = {limit}")


def short(v: object, n: int = 60) -> str:
    """repr cut short: a detail names a bad value without copying a huge one into every output."""
    try:
        text = repr(v)
    except (ValueError, RecursionError):  # an int past Python's 4300-digit str limit, a deep list
        text = f"<{type(v).__name__}>"
    return text if len(text) <= n else text[:n] + "..."


def same_aspect(h: int, w: int, height: int, width: int) -> bool:
    """Whether an h x w mask is the height x width image at another resolution (within 1%)."""
    return abs(h / w - height / width) < 0.01 * (height / width)


def rescaled(mask: np.ndarray, height: int, width: int, what: str) -> np.ndarray:
    """`mask` at (height, width): as is, or scaled when only the resolution differs; BadMask otherwise."""
    h, w = mask.shape
    if (h, w) == (height, width):
        return mask
    if not same_aspect(h, w, height, width):
        raise BadMask(f"{what} is {h}x{w}, the image is {height}x{width} (another aspect ratio)")
    return resize(mask, height, width)


def from_spec(spec, height: int, width: int, base_dir, limits: "Limits") -> str:
    """A mask given in any of the gate's forms, as a compressed RLE string at (height, width).

    Forms: a COCO RLE dict ``{"size": [h, w], "counts": str | [int, ...]}``; a polygon in image
    pixels (``[x1, y1, x2, y2, ...]`` or a list of such rings, one mask); or the path of a mask
    image (non-zero pixels inside), relative to `base_dir`. A mask of another resolution with the
    same aspect ratio is rescaled, as prepare does; anything else is a BadMask saying why.

    Every size, count and coordinate is checked against `limits` before pycocotools or PIL sees it:
    their C code trusts what it is given (a declared size is allocated as it is, a coordinate is
    cast to int), so a wrong one is a crash or an allocation without bound, not an exception.
    The caller has checked height x width against limits.max_image_pixels.
    """
    if isinstance(spec, dict):
        if "size" not in spec or "counts" not in spec:
            raise BadMask("an RLE needs size [h, w] and counts")
        h, w = rle_size(spec["size"])
        check_pixels(h, w, limits.max_mask_pixels, "max_mask_pixels", "the RLE's size")
        if (h, w) != (height, width) and not same_aspect(h, w, height, width):
            raise BadMask(f"RLE mask is {h}x{w}, the image is {height}x{width} (another aspect ratio)")
        counts = spec["counts"]
        if isinstance(counts, list):  # uncompressed RLE: pycocotools compresses it
            # length first: the runs are at most one more than the pixels (a run may be 0 only where it starts)
            if (len(counts) > h * w + 1 or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0
                                                   for c in counts) or sum(counts) != h * w):
                raise BadMask(f"uncompressed RLE counts must be non-negative integers summing to {h}x{w}")
            counts = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)["counts"]
        if isinstance(counts, str) and not counts.isascii():
            raise BadMask("RLE counts must be ASCII (the compressed RLE alphabet)")
        if not isinstance(counts, (str, bytes)):
            raise BadMask("RLE counts must be a string (compressed) or a list of integers")
        return encode(rescaled(decode(counts, h, w), height, width, "RLE mask"))
    if isinstance(spec, str):
        path = Path(base_dir) / spec
        try:
            found = path.is_file()
        except (OSError, ValueError) as e:  # a name too long for the file system, a NUL, a lone surrogate
            raise BadMask(f"mask image {short(spec)} cannot be looked up: {type(e).__name__}: {e}") from None
        if not found:
            raise BadMask(f"mask image {short(spec)} not found")
        m = read_mask_image(path, spec, limits)
        return encode(rescaled(m, height, width, f"mask image {spec}"))
    if isinstance(spec, list) and spec:
        return polygon(spec, height, width, limits)
    raise BadMask("a mask is an RLE dict, a polygon (list of numbers) or a mask image path")


def read_mask_image(path, name: str, limits: "Limits") -> np.ndarray:
    """A mask image as a bool array (non-zero = inside), its header size checked before it is decoded."""
    try:
        with open_bounded(path, limits.max_mask_pixels, "max_mask_pixels") as img:
            return np.asarray(img.convert("L")) > 0
    except ImageTooLarge as e:
        raise OverLimit(f"mask image {name}: {e}") from None
    except Exception as e:  # PIL raises many types for broken files
        raise BadMask(f"mask image {name} does not decode: {type(e).__name__}: {e}") from None


def polygon(spec: list, height: int, width: int, limits: "Limits") -> str:
    """A polygon (a flat list of x, y or a list of such rings) as a compressed RLE string.

    pycocotools' rleFrPoly casts each coordinate x 5 to int (NaN, inf and anything past 2^31 / 5 are
    undefined there) and allocates an int per 1/5 px along every edge: the coordinates are kept
    finite and within limits.polygon_margin of the image, the vertices and the perimeter bounded.
    """
    rings = spec if isinstance(spec[0], list) else [spec]
    vertices = sum(len(r) // 2 if isinstance(r, list) else 0 for r in rings)
    if vertices > limits.max_polygon_vertices:
        raise OverLimit(f"the polygon has {vertices} vertices > limits.max_polygon_vertices = {limits.max_polygon_vertices}")
    mx, my = limits.polygon_margin * width, limits.polygon_margin * height
    perimeter = 0.0
    for ring in rings:
        if (not isinstance(ring, list) or len(ring) < 6 or len(ring) % 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in ring)):
            raise BadMask("a polygon is a list of at least 3 x, y pairs in image pixels")
        try:
            xs, ys = [float(v) for v in ring[0::2]], [float(v) for v in ring[1::2]]
        except OverflowError:  # an int too large for a float
            raise BadMask("polygon coordinates must be finite numbers") from None
        if not all(math.isfinite(v) for v in xs + ys):
            raise BadMask("polygon coordinates must be finite numbers (no NaN or infinity)")
        if min(xs) < -mx or max(xs) > width + mx or min(ys) < -my or max(ys) > height + my:
            raise OverLimit(f"polygon coordinates reach x {min(xs):g}..{max(xs):g}, y {min(ys):g}..{max(ys):g}, more than "
                            f"limits.polygon_margin = {limits.polygon_margin:g} image sides outside the {width}x{height} image")
        perimeter += sum(max(abs(xs[i] - xs[i - 1]), abs(ys[i] - ys[i - 1])) for i in range(len(xs)))
        if perimeter > limits.max_polygon_perimeter:
            raise OverLimit(f"the polygon's edges run over {perimeter:.0f} px > limits.max_polygon_perimeter = "
                            f"{limits.max_polygon_perimeter}")
    rle = mask_utils.merge(mask_utils.frPyObjects([[float(v) for v in r] for r in rings], height, width))
    return rle["counts"].decode("ascii")
