"""maskgate.evaluation.metrics on hand-made score sets whose answers are known."""
import csv
import hashlib
import json

import numpy as np
import pytest
from sklearn.calibration import calibration_curve

from maskgate.evaluation import metrics as M
TOP_KEYS = [
    "accuracy",
    "balanced_accuracy",
    "auroc",
    "average_precision",
    "ece",
    "threshold_at_target_precision",
    "recall_at_target_precision",
    "at_threshold",
    "n",
    "n_positive",
    "by_kind",
]


def kinds_for(labels, neg_kind="hard"):
    return ["positive" if y == 1 else neg_kind for y in labels]


def assert_plain(obj):
    """Only types json.dump writes without help (numpy scalars would fail DVC)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert type(k) is str
            assert_plain(v)
    elif isinstance(obj, list):
        for v in obj:
            assert_plain(v)
    else:
        assert obj is None or type(obj) in (float, int, str, bool), (obj, type(obj))


def test_perfect_separation():
    y = [0, 0, 1, 1]
    p = [0.1, 0.2, 0.8, 0.9]
    m = M.compute_metrics(y, p, kinds_for(y), [0.5, 0.9], 0.9)
    assert list(m) == TOP_KEYS
    assert m["auroc"] == 1.0 and m["average_precision"] == 1.0
    assert m["accuracy"] == 1.0 and m["balanced_accuracy"] == 1.0
    # one example per bin: ECE = mean |label - p| = (0.1 + 0.2 + 0.2 + 0.1) / 4
    assert m["ece"] == pytest.approx(0.15)
    assert m["threshold_at_target_precision"] == 0.8
    assert m["recall_at_target_precision"] == 1.0
    assert m["n"] == 4 and m["n_positive"] == 2
    assert_plain(m)
    json.dumps(m, allow_nan=False)


def test_ece_by_hand_with_a_shared_bin():
    # bins of width 0.1: {0.05} -> |0 - 0.05|; {0.22, 0.28} -> |0.5 - 0.25|; {0.95} -> |1 - 0.95|
    y = [0, 0, 1, 1]
    p = [0.05, 0.22, 0.28, 0.95]
    expected = (1 * 0.05 + 2 * 0.25 + 1 * 0.05) / 4
    assert M.expected_calibration_error(y, p) == pytest.approx(expected)
    # 2 bins: [0, 0.5] holds 0.05, 0.22, 0.28 (acc 1/3, conf 0.55/3); (0.5, 1] holds 0.95
    expected2 = 3 / 4 * abs(1 / 3 - 0.55 / 3) + 1 / 4 * 0.05
    assert M.expected_calibration_error(y, p, n_bins=2) == pytest.approx(expected2)


def test_ece_uses_the_reliability_curve_bins():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.round(rng.random(300), 1)  # many scores exactly on bin edges
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10)
    edges = np.linspace(0, 1, 11)
    _, counts = np.unique(np.searchsorted(edges[1:-1], p), return_counts=True)
    assert M.expected_calibration_error(y, p) == pytest.approx(np.sum(counts / 300 * np.abs(prob_true - prob_pred)))


# Sorted by score: precision of ACCEPT at each threshold is
# 0.95: 1/1, 0.9: 2/2, 0.8: 2/3, 0.7: 3/4, 0.6: 4/5, 0.4: 4/6, 0.3: 4/7
KNOWN_P = [0.95, 0.9, 0.8, 0.7, 0.6, 0.4, 0.3]
KNOWN_Y = [1, 1, 0, 1, 1, 0, 0]


@pytest.mark.parametrize(
    "target, threshold, recall",
    [(0.8, 0.6, 1.0), (0.76, 0.6, 1.0), (0.9, 0.9, 0.5), (1.0, 0.9, 0.5), (0.5, 0.3, 1.0)],
)
def test_target_precision_lowest_threshold(target, threshold, recall):
    op = M.operating_point(KNOWN_Y, KNOWN_P, target)
    assert op["reached"] is True
    assert op["threshold"] == threshold and op["recall"] == recall
    assert op["precision"] >= target
    m = M.compute_metrics(KNOWN_Y, KNOWN_P, kinds_for(KNOWN_Y), [0.5], target)
    assert m["threshold_at_target_precision"] == threshold
    assert m["recall_at_target_precision"] == recall


def test_target_precision_unreachable():
    y, p = [0, 1, 1], [1.0, 0.5, 0.4]  # the top score is wrong: precision peaks at 2/3
    m = M.compute_metrics(y, p, kinds_for(y), [0.5], 0.9)
    assert m["threshold_at_target_precision"] is None
    assert m["recall_at_target_precision"] == 0.0
    op = M.operating_point(y, p, 0.9)
    assert op["reached"] is False and op["precision"] is None and op["recall"] == 0.0
    assert op["threshold"] > 1.0
    # the fallback auto-passes nothing, even a score of exactly 1.0
    assert M.at_threshold(y, p, op["threshold"])["n_accepted"] == 0
    json.dumps(op, allow_nan=False)


def test_at_threshold_and_nothing_accepted():
    y = [1, 1, 0, 0, 1]
    p = [0.95, 0.7, 0.92, 0.1, 0.3]
    m = M.compute_metrics(y, p, kinds_for(y), [0.5, 0.9, 0.99], 0.9)
    assert list(m["at_threshold"]) == ["0.5", "0.9", "0.99"]
    assert m["at_threshold"]["0.5"] == {"precision": 2 / 3, "recall": 2 / 3, "auto_pass_rate": 3 / 5, "n_accepted": 3}
    assert m["at_threshold"]["0.9"] == {"precision": 0.5, "recall": 1 / 3, "auto_pass_rate": 2 / 5, "n_accepted": 2}
    # nothing accepted: precision is undefined -> None, not 0 or 1
    assert m["at_threshold"]["0.99"] == {"precision": None, "recall": 0.0, "auto_pass_rate": 0.0, "n_accepted": 0}
    assert m["accuracy"] == 3 / 5


def test_by_kind_subsets():
    y = [1, 1, 0, 0, 0, 0]
    p = [0.9, 0.6, 0.1, 0.2, 0.7, 0.5]
    k = ["positive", "positive", "easy", "easy", "hard", "hard"]
    m = M.compute_metrics(y, p, k, [0.5], 0.9)
    assert list(m["by_kind"]) == ["easy", "hard"]
    assert m["auroc"] == 7 / 8  # 0.6 loses only to the hard 0.7
    easy, hard = m["by_kind"]["easy"], m["by_kind"]["hard"]
    assert easy["n"] == 4 and easy["n_positive"] == 2 and hard["n"] == 4
    assert easy["auroc"] == 1.0
    assert hard["auroc"] == 3 / 4
    assert "by_kind" not in easy and list(easy) == TOP_KEYS[:-1]
    assert hard["at_threshold"]["0.5"]["n_accepted"] == 4  # p >= t accepts the 0.5 exactly on it
    assert_plain(m)


def test_new_negative_kind_and_label_kind_mismatch():
    y = [1, 0, 0]
    m = M.compute_metrics(y, [0.8, 0.3, 0.6], ["positive", "missing_instance", "easy"], [0.5], 0.9)
    assert list(m["by_kind"]) == ["easy", "missing_instance"]
    with pytest.raises(ValueError, match="kind/label"):
        M.compute_metrics(y, [0.8, 0.3, 0.6], ["hard", "hard", "easy"], [0.5], 0.9)
    with pytest.raises(ValueError, match="kind/label"):
        M.compute_metrics(y, [0.8, 0.3, 0.6], ["positive", "positive", "easy"], [0.5], 0.9)


def test_one_class_gives_none_not_nan():
    m = M.compute_metrics([0, 0, 0], [0.1, 0.6, 0.3], ["hard"] * 3, [0.5], 0.9)
    assert m["auroc"] is None and m["average_precision"] is None and m["balanced_accuracy"] is None
    assert m["threshold_at_target_precision"] is None
    assert m["at_threshold"]["0.5"]["recall"] is None  # no positives to recall
    json.dumps(m, allow_nan=False)


def test_bad_input_fails_loudly():
    with pytest.raises(ValueError):
        M.compute_metrics([0, 1], [0.1, 1.2], ["hard", "positive"], [0.5], 0.9)
    with pytest.raises(ValueError):
        M.compute_metrics([0, 2], [0.1, 0.2], ["hard", "positive"], [0.5], 0.9)
    with pytest.raises(ValueError):
        M.compute_metrics([0, 1], [0.1, float("nan")], ["hard", "positive"], [0.5], 0.9)


def test_threshold_sweep_rows():
    rows = M.threshold_sweep(KNOWN_Y, KNOWN_P, n_points=11)
    assert [r["threshold"] for r in rows] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert rows[0] == {"threshold": 0.0, "precision": 4 / 7, "recall": 1.0, "auto_pass_rate": 1.0}
    assert rows[6] == {"threshold": 0.6, "precision": 4 / 5, "recall": 1.0, "auto_pass_rate": 5 / 7}
    assert rows[-1] == {"threshold": 1.0, "precision": None, "recall": 0.0, "auto_pass_rate": 0.0}
    assert len(M.threshold_sweep(KNOWN_Y, KNOWN_P)) == 101
    assert_plain(rows)


def _scores(n=60, seed=1):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 0.99)  # below 1: the sweep ends with nothing accepted
    return y, p


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_write_plots_files_and_columns(tmp_path):
    y, p = _scores()
    written = M.write_plots(y, p, tmp_path / "plots", names=("ACCEPT", "REJECT"))
    names = sorted(written)
    assert names == sorted(list(M.PLOT_CSV.values()) + list(M.PLOT_PNG.values()))
    assert all(path.parent == tmp_path / "plots" and path.stat().st_size > 0 for path in written.values())
    headers = {name: read_csv(tmp_path / "plots" / name)[0] for name in M.PLOT_CSV.values()}
    assert headers == {
        "precision_recall.csv": ["recall", "precision"],
        "roc.csv": ["fpr", "tpr"],
        "threshold_sweep.csv": ["threshold", "precision", "recall", "auto_pass_rate"],
        "calibration.csv": ["prob_pred", "prob_true"],
        "confusion.csv": ["actual", "predicted"],
    }
    confusion = read_csv(tmp_path / "plots" / "confusion.csv")[1:]
    assert len(confusion) == len(y)
    assert confusion[0] == ["ACCEPT" if y[0] else "REJECT", "ACCEPT" if p[0] >= 0.5 else "REJECT"]
    calib = np.array(read_csv(tmp_path / "plots" / "calibration.csv")[1:], dtype=float)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10)
    np.testing.assert_allclose(calib, np.c_[prob_pred, prob_true], rtol=1e-5)
    sweep = read_csv(tmp_path / "plots" / "threshold_sweep.csv")
    assert len(sweep) == 102
    assert sweep[-1] == ["1", "nan", "0", "0"]  # nothing accepted at 1.0: precision undefined, not 0
    for name in M.PLOT_PNG.values():
        data = (tmp_path / "plots" / name).read_bytes()
        assert data.startswith(b"\x89PNG") and b"matplotlib" not in data


def test_write_plots_is_byte_identical(tmp_path):
    y, p = _scores(seed=2)
    digests = []
    for run in ("a", "b"):
        written = M.write_plots(y, p, tmp_path / run, names=("ACCEPT", "REJECT"))
        digests.append({name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in written.items()})
    assert digests[0] == digests[1]


def test_write_plots_needs_both_classes(tmp_path):
    with pytest.raises(ValueError, match="both"):
        M.write_plots([1, 1], [0.4, 0.9], tmp_path, names=("ACCEPT", "REJECT"))


def test_plots_name_the_answers_they_are_given(tmp_path):
    y, p = _scores()
    M.write_plots(y, p, tmp_path, names=("YES", "not YES"))
    confusion = read_csv(tmp_path / "confusion.csv")[1:]
    assert {tuple(r) for r in confusion} <= {(a, b) for a in ("YES", "not YES") for b in ("YES", "not YES")}
    assert [r[0] for r in confusion] == ["YES" if v else "not YES" for v in y]


def test_by_kind_takes_any_kind_name():
    y = [1, 1, 0, 0, 0, 0, 0]
    p = [0.9, 0.8, 0.85, 0.1, 0.2, 0.3, 0.95]
    kinds = ["positive", "positive", "missing_instance", "missing_instance", "extra_instance", "hard", "borderline"]
    m = M.compute_metrics(y, p, kinds, [0.5], 0.9)
    assert list(m["by_kind"]) == ["borderline", "extra_instance", "hard", "missing_instance"]
    assert m["by_kind"]["missing_instance"]["n"] == 4 and m["by_kind"]["missing_instance"]["auroc"] == 0.75
    assert m["by_kind"]["extra_instance"]["auroc"] == 1.0 and m["by_kind"]["borderline"]["auroc"] == 0.0
