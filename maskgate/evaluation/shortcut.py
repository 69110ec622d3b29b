"""Shortcut baseline: how well can mask statistics alone, without image or query, be scored?

If a classifier that sees only the candidate mask group (its size, count, shape, position) reaches a
high AUROC at telling correct groups from wrong ones, the negatives are separable by a shortcut and
the verifier's own AUROC overstates what it learnt about images and queries. Report both side by side.

The classifier is gradient boosting on a dozen cheap features (``FEATURE_NAMES``). Trees rather than a
linear model, because a shortcut need not be monotone (e.g. wrong groups both smaller and larger than
right ones), and this baseline should find as much shortcut as is there.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from pycocotools import mask as mask_utils
from scipy import ndimage  # a hard dependency of scikit-learn, so always installed with it
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits  # installed with scikit-learn

# Column order of mask_features' output. Areas and box coordinates are fractions of the image, so
# features compare across image sizes.
FEATURE_NAMES = (
    "union_area",  # area of the union of the group's masks / (height * width)
    "n_masks",  # masks in the group
    "n_components",  # 8-connected components of the union
    "x0",  # bounding box of the union: left, top, right, bottom, normalised by width/height
    "y0",
    "x1",
    "y1",
    "box_width",  # (x1 - x0)
    "box_height",  # (y1 - y0)
    "mask_area_mean",  # per-mask area fractions: mean, min, max
    "mask_area_min",
    "mask_area_max",
)

# The data are a few thousand rows of a dozen features: OpenMP threads cost more than they save,
# and on a busy machine their spin-waiting made one fit 5-20x slower (measured on 2 cores).
_ONE_THREAD = {"limits": 1, "user_api": "openmp"}

# 8-connectivity: pixels touching at a corner are one object, as they look on screen.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _rles(counts_list: Sequence[str | bytes], height: int, width: int) -> list[dict]:
    size = [int(height), int(width)]
    return [{"size": size, "counts": c.encode("ascii") if isinstance(c, str) else c} for c in counts_list]


def mask_features(counts_list: Sequence[str | bytes], height: int, width: int) -> np.ndarray:
    """Feature vector (float64, ``len(FEATURE_NAMES)``) of one candidate mask group.

    ``counts_list`` holds compressed COCO RLE strings as ``pycocotools.mask.encode`` writes them,
    all of size ``(height, width)``. Areas and the union's bounding box come from
    ``pycocotools.mask`` on the RLEs directly; only the union is decoded, to count its connected
    components with ``scipy.ndimage.label`` (a few ms even for a megapixel image).

    An empty group, or one whose union is empty, gives zeros for every area/box feature.
    Raises ValueError when the union's decoded pixel count disagrees with its RLE area, the sign of
    counts that do not fit ``height x width``.
    """
    n = len(counts_list)
    f = dict.fromkeys(FEATURE_NAMES, 0.0)
    f["n_masks"] = float(n)
    if n == 0:
        return np.array([f[k] for k in FEATURE_NAMES])
    pixels = float(height) * float(width)
    rles = _rles(counts_list, height, width)
    areas = mask_utils.area(rles).astype(float) / pixels
    union = mask_utils.merge(rles, intersect=False)
    union_area = int(mask_utils.area(union))
    with warnings.catch_warnings():
        # pycocotools 2.0.11 under numpy 2 warns about __array__'s copy keyword on every decode;
        # harmless, and thousands of them bury real warnings.
        warnings.filterwarnings("ignore", message=".*copy keyword", category=DeprecationWarning)
        decoded = mask_utils.decode(union)
    if decoded.shape != (height, width) or int(decoded.sum()) != union_area:
        raise ValueError(f"mask group does not decode to a {height}x{width} mask")
    f["union_area"] = union_area / pixels
    f["n_components"] = float(ndimage.label(decoded, structure=_EIGHT_CONNECTED)[1])
    if union_area:
        x, y, w, h = (float(v) for v in mask_utils.toBbox(union))
        f.update(x0=x / width, y0=y / height, x1=(x + w) / width, y1=(y + h) / height)
        f.update(box_width=w / width, box_height=h / height)
    f.update(mask_area_mean=float(areas.mean()), mask_area_min=float(areas.min()), mask_area_max=float(areas.max()))
    return np.array([f[k] for k in FEATURE_NAMES])


def fit_shortcut(features: np.ndarray, labels: Sequence[int], seed: int) -> HistGradientBoostingClassifier:
    """Fit the shortcut classifier on a ``(n, len(FEATURE_NAMES))`` matrix; label 1 = correct group.

    Deterministic for a given seed (it fixes the early-stopping split used above 10,000 rows).
    No feature scaling: trees split on thresholds and do not care about scale.
    """
    x = np.asarray(features, dtype=float)
    y = np.asarray(labels).astype(int)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"features must be (n, d) with n = len(labels), got {x.shape} and {len(y)} labels")
    if set(np.unique(y).tolist()) != {0, 1}:
        raise ValueError("labels must contain both 0 and 1")
    # Shallow trees, some regularisation: the features are few and the point is a stable estimate.
    model = HistGradientBoostingClassifier(
        max_iter=200, learning_rate=0.05, max_leaf_nodes=15, l2_regularization=1.0, random_state=seed
    )
    with threadpool_limits(**_ONE_THREAD):
        return model.fit(x, y)


def shortcut_auroc(
    train_features: np.ndarray,
    train_labels: Sequence[int],
    val_features: np.ndarray,
    val_labels: Sequence[int],
    seed: int,
) -> float:
    """AUROC on the validation set of the shortcut classifier fitted on the training set.

    About 0.5 means mask statistics say nothing about correctness; near 1 means the negatives can be
    told apart without looking at the image.
    """
    model = fit_shortcut(train_features, train_labels, seed)
    with threadpool_limits(**_ONE_THREAD):
        p = model.predict_proba(np.asarray(val_features, dtype=float))[:, 1]
    return float(roc_auc_score(np.asarray(val_labels).astype(int), p))
