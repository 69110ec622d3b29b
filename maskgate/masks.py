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


def decode(counts: str | bytes, height: int, width: int, check: bool = True) -> np.ndarray:
    """Decode one compressed RLE into a (height, width) bool array.

    With `check`, also verify that the counts add up to the mask size (pycocotools decodes some
    broken strings without complaint); rows that passed prepare need not pay for it again.
    """
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    rle = {"size": [int(height), int(width)], "counts": counts}
    try:
        m = mask_utils.decode(rle)
    except Exception as e:  # pycocotools raises bare Exceptions or segfault-free garbage checks
        raise BadMask(f"RLE does not decode: {e}") from None
    if m.shape != (height, width):
        raise BadMask(f"RLE decodes to {m.shape}, expected {(height, width)}")
    if check and int(mask_utils.area(rle)) != int(m.sum()):
        raise BadMask("RLE counts do not add up to the mask size")
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
