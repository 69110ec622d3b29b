"""Mask groups as COCO RLE, decoded and encoded by pycocotools.

Rows carry masks as compressed RLE strings; every mask inside the pipeline is at the size of its
own image. A group is a list of masks; comparisons between groups use the union of their masks.
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils


class BadMask(ValueError):
    """An RLE that pycocotools cannot decode, or one of the wrong size."""


def run_lengths(counts: bytes) -> list[int]:
    """The run lengths a compressed COCO RLE string holds (the inverse of pycocotools' rleToString).

    Why here and not pycocotools: its decoder trusts the string. Runs that add up to less than the
    mask leave the rest of the array uninitialised (garbage that differs from call to call), runs
    that add up to more write past its end, and its IoU can loop forever on such a mask. So a
    string is measured here first, and only one whose runs exactly fill the mask reaches it.
    Each run is 5-bit groups (48 + bits, 0x20 = more follows, 0x10 = sign), deltas from the
    run two back after the first three runs.
    """
    runs, p, n = [], 0, len(counts)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise BadMask("RLE counts string ends inside a run")
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
        runs = run_lengths(counts)
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


def decode_group(group: list[str], height: int, width: int) -> list[np.ndarray]:
    return [decode(c, height, width) for c in group]


def rle_size(size: object) -> tuple[int, int]:
    """(height, width) of an RLE's `size`; BadMask unless it is two positive integers."""
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise BadMask(f"size {size!r} is not [height, width] in positive integers")
    return int(size[0]), int(size[1])


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


def from_spec(spec, height: int, width: int, base_dir) -> str:
    """A mask given in any of the gate's forms, as a compressed RLE string at (height, width).

    Forms: a COCO RLE dict ``{"size": [h, w], "counts": str | [int, ...]}``; a polygon in image
    pixels (``[x1, y1, x2, y2, ...]`` or a list of such rings, one mask); or the path of a mask
    image (non-zero pixels inside), relative to `base_dir`. A mask of another resolution with the
    same aspect ratio is rescaled, as prepare does; anything else is a BadMask saying why.
    """
    if isinstance(spec, dict):
        if "size" not in spec or "counts" not in spec:
            raise BadMask("an RLE needs size [h, w] and counts")
        h, w = rle_size(spec["size"])
        counts = spec["counts"]
        if isinstance(counts, list):  # uncompressed RLE: pycocotools compresses it
            if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != h * w:
                raise BadMask(f"uncompressed RLE counts must be non-negative integers summing to {h}x{w}")
            counts = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)["counts"]
        if not isinstance(counts, (str, bytes)):
            raise BadMask("RLE counts must be a string (compressed) or a list of integers")
        return encode(rescaled(decode(counts, h, w), height, width, "RLE mask"))
    if isinstance(spec, str):
        from pathlib import Path

        path = Path(base_dir) / spec
        if not path.is_file():
            raise BadMask(f"mask image {spec} not found")
        try:
            with Image.open(path) as img:
                m = np.asarray(img.convert("L")) > 0
        except Exception as e:  # PIL raises many types for broken files
            raise BadMask(f"mask image {spec} does not decode: {type(e).__name__}: {e}") from None
        return encode(rescaled(m, height, width, f"mask image {spec}"))
    if isinstance(spec, list) and spec:
        rings = spec if isinstance(spec[0], list) else [spec]
        for ring in rings:
            if (not isinstance(ring, list) or len(ring) < 6 or len(ring) % 2
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in ring)):
                raise BadMask("a polygon is a list of at least 3 x, y pairs in image pixels")
        rle = mask_utils.merge(mask_utils.frPyObjects([[float(v) for v in r] for r in rings], height, width))
        return rle["counts"].decode("ascii")
    raise BadMask("a mask is an RLE dict, a polygon (list of numbers) or a mask image path")
