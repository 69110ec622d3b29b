"""Masks decoded straight from their compressed RLE at the letterboxed size, their bounding boxes only.

Why not pycocotools' decode: it writes every pixel of the full-size mask (0.2 ms for a 640x480 one,
a byte at a time), while render needs only the mask's bounding box, nearest-neighbour scaled, and
the samples' boxes average an eighth of the image. Measured side by side (pycocotools decoding all of
an image's masks in one call, then the box cut), two runs: render at 1.34x and 1.41x its floor with this
decoder against 1.49x and 1.52x with pycocotools', the goal being 1.5x (`ab_decode.py` in
bench/results/2026-12-06-render-speed-memory/). pycocotools has no box decode, so this is the one place
the project reads RLE runs itself for speed; `tests/test_scaled_masks.py` checks it against whole masks
scaled and cut, and the rest of the project decodes with pycocotools. Here the runs of all the masks of one image are
read at once with a few numpy calls (one call per mask cost more in call overhead than the decode
saved), and each box is written run by run (`np.repeat`) at the scaled size.

Nearest-neighbour scaling as `overlay.Piece` defines it: output row i shows source row
rows[i] = int((i + 0.5) * height / nh), output column j source column cols[j] likewise. A COCO RLE
runs down the columns (column-major), alternating 0 and 1 from 0; the value at source pixel p
(= column * height + row) is the parity of the number of run ends at or before p. The box's pixels,
taken column by column over every source column of the box and down its sampled rows, come in
non-decreasing p, so each run end toggles the value from the first box pixel at or after it on:
one toggle per run end, whatever the box's size. Sampled columns may repeat (upscaling), which would
break that order, so the box is decoded over its source columns and its sampled columns taken after.
"""
from __future__ import annotations

import numpy as np
from pycocotools import mask as coco_mask


def sample_points(source: int, size: int) -> np.ndarray:
    """The source pixel each of `size` output pixels shows: its centre, scaled (nearest neighbour)."""
    return ((np.arange(size) + 0.5) * (source / size)).astype(np.intp)


def run_lengths(counts: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """(runs, first): the run lengths of several compressed RLE strings read at once, mask k's being
    runs[first[k]:first[k + 1]] (first has one more entry, the total). The strings must be well
    formed (prepare checks every mask: masks.run_lengths); this reads, it does not check.

    The format (pycocotools' rleFrString): each run is 5-bit groups, low first, as chr(48 + bits),
    0x20 set while more groups follow, 0x10 in the last group the sign; from the fourth run on, a
    run is stored as its difference from the run two before it."""
    a = np.frombuffer(b"".join(counts), np.uint8).astype(np.int64) - 48
    ends = np.flatnonzero(a < 0x20)  # the last group of each run: no 0x20 bit
    starts = np.empty_like(ends)
    starts[0], starts[1:] = 0, ends[:-1] + 1
    place = np.arange(a.size) - np.repeat(starts, ends - starts + 1)  # a group's place in its run
    x = np.add.reduceat((a & 0x1F) << (5 * place), starts)
    negative = (a[ends] & 0x10) != 0
    x[negative] -= np.int64(1) << (5 * (place[ends[negative]] + 1))
    # the runs each mask begins with: the runs ending before the mask's first byte
    first = np.searchsorted(ends, np.cumsum([0] + [len(c) for c in counts]))
    index = np.arange(x.size) - np.repeat(first[:-1], np.diff(first))  # a run's place in its mask
    # run i (i > 2) = x[i] + run i-2: sums of x over the odd places (from 1) and the even ones (from 2),
    # each within its mask
    for chain in ((index % 2 == 1), (index % 2 == 0) & (index > 0)):
        x[chain] = running_sums(x[chain], np.searchsorted(np.flatnonzero(chain), first))
    return x, first


def running_sums(x: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Running sums of x that start again at each segment, segment k being x[first[k]:first[k + 1]]:
    one prefix sum over all, less the sum before each segment's start."""
    total = np.cumsum(x)
    if not len(x):
        return total
    start = np.minimum(first[:-1], len(x) - 1)  # an empty segment's may be any: it is repeated 0 times
    return total - np.repeat(total[start] - x[start], np.diff(first))


def scaled_boxes(counts: list[str], height: int, width: int, nh: int, nw: int) -> list[tuple | None]:
    """Each mask (compressed RLE at height x width) scaled to nh x nw, cut to its bounding box plus
    one pixel: ((row slice, column slice) in the nh x nw frame, (h, w) bool array), or None for a mask
    with no pixel. The same as nearest-neighbour scaling the whole decoded mask and cutting it."""
    encoded = [c.encode() for c in counts]
    boxes = coco_mask.toBbox([{"size": [height, width], "counts": c} for c in encoded]).astype(np.int64)
    boxes = boxes.reshape(-1, 4)
    rows, cols = sample_points(height, nh), sample_points(width, nw)
    x, y, w, h = boxes.T
    # the output rows and columns whose source pixel lies in the box, and one more each side
    r0 = np.maximum(np.searchsorted(rows, y) - 1, 0)
    r1 = np.minimum(np.searchsorted(rows, y + h) + 1, nh)
    c0 = np.maximum(np.searchsorted(cols, x) - 1, 0)
    c1 = np.minimum(np.searchsorted(cols, x + w) + 1, nw)
    live = np.flatnonzero((w > 0) & (h > 0))
    out: list[tuple | None] = [None] * len(counts)
    if not live.size:
        return out
    r0, r1, c0, c1 = r0[live], r1[live], c0[live], c1[live]
    x0, x1 = cols[c0], cols[c1 - 1] + 1  # the box's source columns, every one of them
    tall = r1 - r0  # sampled rows per column
    size = (x1 - x0) * tall
    offset = np.concatenate([[0], np.cumsum(size)])
    runs, first = run_lengths([encoded[k] for k in live])
    mask = np.repeat(np.arange(live.size), np.diff(first))
    ends = running_sums(runs, first)  # where each run ends: the next run's first pixel
    column, row = np.divmod(ends, height)
    # the box pixels before a run end: whole columns left of it, and in its own column the sampled rows above it
    above = np.clip(np.searchsorted(rows, row) - r0[mask], 0, tall[mask])
    before = np.clip((column - x0[mask]) * tall[mask] + above, 0, size[mask])
    # the box values in one flat array, run by run: each mask starts at 0 at its offset, and each run end
    # flips the value from `before` on; a run end past the box is a zero-length run at the box's end
    at = np.insert(offset[mask] + before, first[:-1], offset[:-1])
    value = np.insert((np.arange(runs.size) - first[mask] + 1) & 1, first[:-1], 0).astype(np.uint8)
    flat = np.repeat(value, np.diff(np.append(at, offset[-1])))
    for i, k in enumerate(live):
        box = flat[offset[i]:offset[i + 1]].reshape(x1[i] - x0[i], tall[i])  # source columns x sampled rows
        m = np.ascontiguousarray(box[cols[c0[i]:c1[i]] - x0[i]].T).view(bool)
        out[k] = ((slice(int(r0[i]), int(r1[i])), slice(int(c0[i]), int(c1[i]))), m)
    return out
