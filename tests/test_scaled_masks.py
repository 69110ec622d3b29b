"""render.scaled_masks against the plain way: pycocotools' full decode, nearest-neighbour scaling of the
whole mask, then the cut; and overlay.outline against the erosion written out pixel by pixel."""
import numpy as np
import pytest

from maskgate.data import masks
from maskgate.render import overlay, scaled_masks


def random_masks(rng, h, w, n):
    """Masks of every kind the runs can take: blobs, noise, boxes on the image's edges and corners,
    one pixel, the first pixel set (a zero-length first run), every pixel, none."""
    out = []
    for k in range(n):
        kind = k % 8
        if kind == 0:  # smooth blobs: a coarse random field, scaled up
            coarse = rng.random((max(2, h // 8), max(2, w // 8))) > 0.6
            m = masks.resize(coarse, h, w)
        elif kind == 1:
            m = rng.random((h, w)) > rng.uniform(0.2, 0.9)
        elif kind == 2:  # a box on an edge or corner of the image
            m = np.zeros((h, w), bool)
            y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
            m[:y + 1, x:] = True
        elif kind == 3:
            m = np.zeros((h, w), bool)
            m[int(rng.integers(0, h)), int(rng.integers(0, w))] = True
        elif kind == 4:
            m = rng.random((h, w)) > 0.5
            m[0, 0] = True
        elif kind == 5:
            m = np.ones((h, w), bool)
        elif kind == 6:
            m = np.zeros((h, w), bool)
        else:
            m = np.zeros((h, w), bool)
            m[:, int(rng.integers(0, w))] = True  # a whole column
        out.append(m)
    return out


def plain(m, nh, nw):
    """(crop, cut) as Piece defined it before: the whole mask scaled, cut to its box plus one pixel."""
    h, w = m.shape
    rows = ((np.arange(nh) + 0.5) * (h / nh)).astype(np.intp)
    cols = ((np.arange(nw) + 0.5) * (w / nw)).astype(np.intp)
    ys, xs = np.nonzero(m)
    if not ys.size:
        return None
    y, x, y1, x1 = ys.min(), xs.min(), ys.max() + 1, xs.max() + 1
    r0, r1 = max(np.searchsorted(rows, y) - 1, 0), min(np.searchsorted(rows, y1) + 1, nh)
    c0, c1 = max(np.searchsorted(cols, x) - 1, 0), min(np.searchsorted(cols, x1) + 1, nw)
    return (slice(r0, r1), slice(c0, c1)), m[rows][:, cols][r0:r1, c0:c1]


@pytest.mark.parametrize("seed", range(6))
def test_scaled_boxes_match_the_whole_mask_scaled_and_cut(seed):
    rng = np.random.default_rng(seed)
    for _ in range(6):
        h, w = (int(v) for v in rng.integers(1, 90, 2))
        nh, nw = (int(v) for v in rng.integers(1, 140, 2))  # down and up, either axis
        ms = random_masks(rng, h, w, int(rng.integers(1, 17)))
        got = scaled_masks.scaled_boxes([masks.encode(m) for m in ms], h, w, nh, nw)  # all at once
        for m, g in zip(ms, got):
            want = plain(m, nh, nw)
            if want is None:
                assert g is None
                continue
            assert g[0] == want[0] and g[1].dtype == bool and g[1].flags.c_contiguous
            assert np.array_equal(g[1], want[1])


def test_run_lengths_of_many_strings_are_each_strings_runs():
    rng = np.random.default_rng(7)
    ms = random_masks(rng, 37, 53, 24)
    counts = [masks.encode(m).encode() for m in ms]
    runs, first = scaled_masks.run_lengths(counts)
    assert len(first) == len(counts) + 1
    for k, c in enumerate(counts):
        assert runs[first[k]:first[k + 1]].tolist() == masks.run_lengths(c)


def test_run_lengths_read_long_and_negative_deltas():
    # runs of several 5-bit groups, and deltas from the run two back that are negative
    runs = [0, 5000, 3, 70000, 1, 2, 40000]
    m = np.repeat(np.arange(len(runs)) % 2 == 1, runs).reshape(-1, 1)  # one column: the runs as they are
    counts = masks.encode(m).encode()
    got, first = scaled_masks.run_lengths([counts, counts])
    assert got[:first[1]].tolist() == masks.run_lengths(counts) == runs
    assert got[first[1]:].tolist() == runs


def eroded_pixel_by_pixel(m, width):
    """The erosion by the 4-neighbour cross, `width` times, outside the array counting as outside."""
    out = m.copy()
    for _ in range(width):
        prev, out = out, np.zeros_like(out)
        for y in range(m.shape[0]):
            for x in range(m.shape[1]):
                out[y, x] = prev[y, x] and all(
                    0 <= y + dy < m.shape[0] and 0 <= x + dx < m.shape[1] and prev[y + dy, x + dx]
                    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)))
    return out


@pytest.mark.parametrize("width", [0, 1, 2, 3, 5])
def test_outline_is_the_mask_less_its_erosion(width):
    rng = np.random.default_rng(width)
    for m in random_masks(rng, 17, 23, 8) + [np.ones((3, 9), bool), np.ones((1, 1), bool)]:
        ys, xs = overlay.outline(m, width)
        assert np.array_equal(ys * m.shape[1] + xs, np.flatnonzero(m & ~eroded_pixel_by_pixel(m, width)))
