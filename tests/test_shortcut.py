"""maskgate.evaluation.shortcut: mask features by hand, and the classifier on sets with and without a size shortcut."""
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from maskgate.evaluation.shortcut import FEATURE_NAMES, fit_shortcut, mask_features, shortcut_auroc


def enc(m: np.ndarray) -> str:
    return mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))["counts"].decode("ascii")


def rect(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def named(vec):
    assert vec.shape == (len(FEATURE_NAMES),) and vec.dtype == np.float64
    return dict(zip(FEATURE_NAMES, vec.tolist()))


def test_two_separate_rectangles():
    a = rect(10, 20, 2, 5, 3, 8)  # 15 px
    b = rect(10, 20, 6, 8, 10, 14)  # 8 px
    f = named(mask_features([enc(a), enc(b)], 10, 20))
    assert f == pytest.approx(
        {
            "union_area": 23 / 200,
            "n_masks": 2,
            "n_components": 2,
            "x0": 3 / 20,
            "y0": 2 / 10,
            "x1": 14 / 20,
            "y1": 8 / 10,
            "box_width": 11 / 20,
            "box_height": 6 / 10,
            "mask_area_mean": 11.5 / 200,
            "mask_area_min": 8 / 200,
            "mask_area_max": 15 / 200,
        }
    )


def test_overlap_and_diagonal_contact_make_one_component():
    a = rect(10, 10, 0, 4, 0, 4)  # 16 px
    b = rect(10, 10, 2, 6, 2, 6)  # 16 px, 4 shared with a
    f = named(mask_features([enc(a), enc(b)], 10, 10))
    assert f["n_components"] == 1 and f["union_area"] == pytest.approx(28 / 100)
    c = rect(10, 10, 6, 8, 6, 8)  # touches b only at the corner (5,5)-(6,6)
    assert named(mask_features([enc(b), enc(c)], 10, 10))["n_components"] == 1
    # bytes counts are accepted as well as str
    assert mask_features([enc(a).encode()], 10, 10)[0] == pytest.approx(0.16)


def test_empty_group_and_empty_mask():
    assert named(mask_features([], 8, 8)) == dict.fromkeys(FEATURE_NAMES, 0.0)
    f = named(mask_features([enc(np.zeros((8, 8), bool))], 8, 8))
    assert f["n_masks"] == 1 and all(v == 0 for k, v in f.items() if k != "n_masks")


def test_wrong_size_fails_loudly():
    with pytest.raises(ValueError):
        mask_features([enc(rect(10, 20, 2, 5, 3, 8))], 10, 21)


def synthetic(n, seed, size_shortcut):
    """Groups of 1-3 rectangles on 48x48 images; with size_shortcut, positives are big and negatives small."""
    rng = np.random.default_rng(seed)
    feats, labels = [], []
    for i in range(n):
        label = i % 2
        big = bool(label) if size_shortcut else bool(rng.integers(2))
        masks = []
        for _ in range(int(rng.integers(1, 4))):
            side = int(rng.integers(18, 30) if big else rng.integers(3, 9))
            y0, x0 = (int(v) for v in rng.integers(0, 48 - side, 2))
            masks.append(enc(rect(48, 48, y0, y0 + side, x0, x0 + side)))
        feats.append(mask_features(masks, 48, 48))
        labels.append(label)
    return np.array(feats), np.array(labels)


def test_size_shortcut_is_found():
    xt, yt = synthetic(200, 0, size_shortcut=True)
    xv, yv = synthetic(200, 1, size_shortcut=True)
    assert shortcut_auroc(xt, yt, xv, yv, seed=0) > 0.99


def test_no_shortcut_scores_chance():
    xt, yt = synthetic(300, 2, size_shortcut=False)
    xv, yv = synthetic(300, 3, size_shortcut=False)
    assert abs(shortcut_auroc(xt, yt, xv, yv, seed=0) - 0.5) < 0.1


def test_fit_is_deterministic_and_checks_input():
    x, y = synthetic(120, 4, size_shortcut=False)
    p1 = fit_shortcut(x, y, seed=7).predict_proba(x)
    p2 = fit_shortcut(x, y, seed=7).predict_proba(x)
    np.testing.assert_array_equal(p1, p2)
    with pytest.raises(ValueError):
        fit_shortcut(x, np.zeros(len(x), int), seed=0)
