import numpy as np
import pytest

from maskgate.data import masks
from tests.conftest import box_mask


def test_round_trip():
    m = box_mask(30, 40, 3, 9, 5, 22)
    assert (masks.decode(masks.encode(m), 30, 40) == m).all()


@pytest.mark.parametrize("counts", ["zzzz", "!!!!", "", "0"])
def test_bad_counts_raise(counts):
    with pytest.raises(masks.BadMask):
        masks.decode(counts, 30, 40)


def test_wrong_size_raises():
    with pytest.raises(masks.BadMask):
        masks.decode(masks.encode(box_mask(30, 40, 0, 5, 0, 5)), 31, 40)


def test_resize_stays_binary_and_scales():
    m = box_mask(20, 20, 0, 10, 0, 10)
    r = masks.resize(m, 40, 40)
    assert r.dtype == bool and r.shape == (40, 40) and r.sum() == 400


def test_iou():
    a, b = box_mask(10, 10, 0, 10, 0, 5), box_mask(10, 10, 0, 10, 0, 10)
    assert masks.iou(a, b) == pytest.approx(0.5)
    assert masks.iou(a, a) == 1.0
