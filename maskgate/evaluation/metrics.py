"""Scores of the verifier as a quality gate, and the plot files DVC shows for them.

Conventions used throughout:

* ``labels``: 1 when the candidate mask group is correct (ACCEPT is the right answer), 0 otherwise:
  the gate's binary view, ``Prompt.gate_label``, whatever the answer vocabulary (a BORDERLINE
  example is a 0: the gate must not auto-pass it).
* ``p_accept``: the verifier's P(ACCEPT), a float in [0, 1].
* Answer words (ACCEPT, REJECT) come from params.yaml's ``prompt.answers``: ``write_plots`` takes
  them as ``names`` (``Prompt.decision_names``); this module hard-codes none.
* Decision rule: an example is accepted (auto-passed by the gate) iff ``p_accept >= threshold``.
  The 0.5 decision (``accuracy``, the confusion matrix) is the same rule with threshold 0.5.
* Precision of ACCEPT when nothing is accepted is undefined: it is ``None`` (JSON ``null``), never 0
  or 1, so an empty operating point cannot pass for a perfect or a useless one. Recall when there are
  no positives is ``None`` for the same reason.
* Every value returned is a plain Python ``float``/``int``/``str``/``None``, because numpy scalars
  break ``json.dump`` and so DVC's metrics files.

All curves, AUROC, AP and reliability bins come from scikit-learn; this module only chooses
operating points and formats results.
"""
from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.calibration import CalibrationDisplay, calibration_curve
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    PrecisionRecallDisplay,
    RocCurveDisplay,
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

POSITIVE_KIND = "positive"

# A threshold above every possible P(ACCEPT): with it the gate auto-passes nothing. It is a finite
# float, so it survives strict JSON, and it is the fallback when a precision target is unreachable.
NO_AUTO_PASS = math.nextafter(1.0, 2.0)

# File names written by write_plots, relative to its out_dir; dvc.yaml declares these.
PLOT_CSV = {
    "precision_recall": "precision_recall.csv",  # recall,precision
    "roc": "roc.csv",  # fpr,tpr
    "threshold_sweep": "threshold_sweep.csv",  # threshold,precision,recall,auto_pass_rate
    "calibration": "calibration.csv",  # prob_pred,prob_true
    "confusion": "confusion.csv",  # actual,predicted (one row per example)
}
PLOT_PNG = {name: f"{name}.png" for name in PLOT_CSV}

# ----------------------------------------------------------------------------- input checks


def _check(labels, p_accept) -> tuple[np.ndarray, np.ndarray]:
    """Return labels as int array and p_accept as float array, or raise on malformed input."""
    y = np.asarray(labels)
    p = np.asarray(p_accept, dtype=float)
    if y.ndim != 1 or p.ndim != 1 or len(y) != len(p):
        raise ValueError(f"labels and p_accept must be 1-D of equal length, got {y.shape}, {p.shape}")
    if len(y) == 0:
        raise ValueError("no examples")
    if not np.isin(y, [0, 1]).all():
        raise ValueError(f"labels must be 0 or 1, got {sorted(set(y.tolist()))}")
    if not np.isfinite(p).all() or p.min() < 0.0 or p.max() > 1.0:
        raise ValueError("p_accept must be finite and inside [0, 1]")
    return y.astype(int), p


def _check_kinds(y: np.ndarray, kinds) -> np.ndarray:
    """Kinds as a str array; positives must be POSITIVE_KIND and negatives anything else.

    A mismatch means rows were joined wrongly upstream, which would make ``by_kind`` lie, so it
    fails loudly instead.
    """
    k = np.asarray([str(x) for x in kinds], dtype=object)
    if len(k) != len(y):
        raise ValueError(f"kinds has {len(k)} entries for {len(y)} labels")
    bad_pos = (y == 1) & (k != POSITIVE_KIND)
    bad_neg = (y == 0) & (k == POSITIVE_KIND)
    if bad_pos.any() or bad_neg.any():
        raise ValueError(
            f"kind/label mismatch: {int(bad_pos.sum())} label-1 rows not {POSITIVE_KIND!r}, "
            f"{int(bad_neg.sum())} label-0 rows marked {POSITIVE_KIND!r}"
        )
    return k


def _none_if_nan(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def threshold_key(t: float) -> str:
    """The key of a threshold in ``at_threshold``: ``0.9 -> "0.9"``, ``1 -> "1.0"``."""
    return str(float(t))


# ----------------------------------------------------------------------------- scores


def at_threshold(labels, p_accept, threshold: float) -> dict:
    """Gate figures when everything with ``p_accept >= threshold`` is auto-passed.

    Returns ``precision`` (of ACCEPT; None when nothing is accepted), ``recall`` (of ACCEPT; None
    when there are no positives), ``auto_pass_rate`` (accepted / all examples) and ``n_accepted``.
    """
    y, p = _check(labels, p_accept)
    pred = (p >= threshold).astype(int)
    return {
        "precision": _none_if_nan(precision_score(y, pred, zero_division=np.nan)),
        "recall": _none_if_nan(recall_score(y, pred, zero_division=np.nan)),
        "auto_pass_rate": float(pred.mean()),
        "n_accepted": int(pred.sum()),
    }


def expected_calibration_error(labels, p_accept, n_bins: int = 10) -> float:
    """Expected calibration error of P(ACCEPT) over ``n_bins`` equal-width bins of [0, 1].

    ECE = sum over non-empty bins b of (n_b / N) * |mean(labels in b) - mean(p_accept in b)|.

    Bins are assigned exactly as ``sklearn.calibration.calibration_curve(strategy="uniform")``
    does (a score on an inner edge falls in the lower bin, e.g. 0.5 is in (0.4, 0.5] with 10 bins),
    so the ECE is the weighted gap of the very reliability curve that ``write_plots`` draws.
    scikit-learn has no ECE function, hence this one.
    """
    y, p = _check(labels, p_accept)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], p), minlength=n_bins)
    counts = counts[counts > 0]  # calibration_curve drops empty bins; keep the two aligned
    return float(np.sum(counts / len(p) * np.abs(prob_true - prob_pred)))


def operating_point(labels, p_accept, target_precision: float) -> dict:
    """The gate's threshold: the lowest one whose precision of ACCEPT reaches the target.

    Candidate thresholds are the observed scores (``sklearn.metrics.precision_recall_curve``).
    Recall only falls as the threshold rises, so the lowest threshold meeting the target is the one
    with the most auto-passes at that precision.

    Returns ``{threshold, precision, recall, auto_pass_rate, target_precision, reached}``.
    If no threshold reaches the target (or there are no positives), the fallback is the safe one:
    ``threshold = NO_AUTO_PASS`` (just above 1.0), so the gate auto-passes nothing and sends every
    case to a human; then ``precision`` is None, ``recall`` and ``auto_pass_rate`` are 0.0 and
    ``reached`` is False.
    """
    y, p = _check(labels, p_accept)
    if y.sum() > 0:
        precision, _, thresholds = precision_recall_curve(y, p)
        # precision[i] belongs to thresholds[i]; the final (1.0 at recall 0) point has no threshold.
        ok = np.flatnonzero(precision[:-1] >= target_precision)
        if ok.size:
            t = float(thresholds[ok[0]])  # thresholds increase, so the first hit is the lowest
            point = at_threshold(y, p, t)
            return {
                "threshold": t,
                "precision": point["precision"],
                "recall": point["recall"],
                "auto_pass_rate": point["auto_pass_rate"],
                "target_precision": float(target_precision),
                "reached": True,
            }
    return {
        "threshold": NO_AUTO_PASS,
        "precision": None,
        "recall": 0.0,
        "auto_pass_rate": 0.0,
        "target_precision": float(target_precision),
        "reached": False,
    }


def bootstrap_at_threshold(labels, p_accept, groups, threshold: float, n_resamples: int, confidence: float,
                           seed: int) -> dict:
    """Percentile intervals of precision and recall of ACCEPT at ``threshold``, resampling ``groups``
    (image names: the examples of one image are not independent) with replacement ``n_resamples`` times.

    numpy's Generator seeded by ``seed``: the same inputs give the same interval, byte for byte.
    Resamples where nothing is accepted (precision undefined) or with no positive (recall undefined)
    are left out of that interval and counted (``undefined``). Returns
    ``{confidence, resamples, precision: [lo, hi] | None, recall: [lo, hi] | None, undefined: {...}}``.
    """
    y, p = _check(labels, p_accept)
    names, index = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    accepted = p >= threshold
    tp = np.bincount(index, weights=(accepted & (y == 1)), minlength=len(names))
    acc = np.bincount(index, weights=accepted, minlength=len(names))
    pos = np.bincount(index, weights=(y == 1), minlength=len(names))
    draw = np.random.default_rng(seed).integers(0, len(names), size=(n_resamples, len(names)))
    tp_b, acc_b, pos_b = tp[draw].sum(axis=1), acc[draw].sum(axis=1), pos[draw].sum(axis=1)
    tail = (1.0 - confidence) / 2 * 100

    def interval(num, den):
        ok = den > 0
        if not ok.any():
            return None, int(n_resamples)
        lo, hi = np.percentile(num[ok] / den[ok], [tail, 100 - tail])
        return [float(lo), float(hi)], int((~ok).sum())

    precision, p_undefined = interval(tp_b, acc_b)
    recall, r_undefined = interval(tp_b, pos_b)
    return {"confidence": float(confidence), "resamples": int(n_resamples), "precision": precision, "recall": recall,
            "undefined": {"precision": p_undefined, "recall": r_undefined}}


def _scores(y: np.ndarray, p: np.ndarray, thresholds, target_precision, n_bins) -> dict:
    """Every metric of compute_metrics except ``by_kind``, on one set of examples."""
    both = 0 < y.sum() < len(y)
    # AUROC, AP and balanced accuracy need both classes; with one they are None, not a warning+nan.
    op = operating_point(y, p, target_precision)
    return {
        "accuracy": float(accuracy_score(y, (p >= 0.5).astype(int))),
        "balanced_accuracy": float(balanced_accuracy_score(y, (p >= 0.5).astype(int))) if both else None,
        "auroc": float(roc_auc_score(y, p)) if both else None,
        "average_precision": float(average_precision_score(y, p)) if both else None,
        "ece": expected_calibration_error(y, p, n_bins),
        "threshold_at_target_precision": op["threshold"] if op["reached"] else None,
        "recall_at_target_precision": op["recall"] if op["reached"] else 0.0,
        "at_threshold": {threshold_key(t): at_threshold(y, p, t) for t in thresholds},
        "n": int(len(y)),
        "n_positive": int(y.sum()),
    }


def compute_metrics(
    labels,
    p_accept,
    kinds,
    thresholds: Iterable[float],
    target_precision: float,
    n_bins: int = 10,
) -> dict:
    """All gate metrics as a JSON-ready dict (plain Python types only).

    Keys: ``accuracy`` (decision at 0.5), ``balanced_accuracy``, ``auroc``, ``average_precision``
    (None when only one class is present), ``ece`` (see ``expected_calibration_error``, ``n_bins``
    equal-width bins), ``threshold_at_target_precision`` (lowest threshold with precision of ACCEPT
    >= target, None if none), ``recall_at_target_precision`` (recall there, 0.0 if none),
    ``at_threshold`` (``{"0.9": {precision, recall, auto_pass_rate, n_accepted}, ...}``, see
    ``at_threshold``), ``n``, ``n_positive`` and ``by_kind``.

    ``by_kind[k]`` holds the same keys (without ``by_kind``) computed on all positives plus the
    negatives of kind ``k``, for each negative kind present, in sorted order, whatever its name
    (``hard``, ``easy``, ``missing_instance``, ``extra_instance``, ...); so "hard" vs "easy"
    negatives show how much of the score comes from the easy ones.
    """
    y, p = _check(labels, p_accept)
    k = _check_kinds(y, kinds)
    thresholds = list(thresholds)
    out = _scores(y, p, thresholds, target_precision, n_bins)
    out["by_kind"] = {}
    for kind in sorted(set(k[y == 0].tolist())):
        keep = (y == 1) | (k == kind)
        out["by_kind"][kind] = _scores(y[keep], p[keep], thresholds, target_precision, n_bins)
    return out


def sweep_thresholds(n_points: int = 101) -> list[float]:
    """``n_points`` evenly spaced thresholds on [0, 1], rounded so they print as 0.01, not 0.010000000000000002."""
    return [round(i / (n_points - 1), 10) for i in range(n_points)]


def threshold_sweep(labels, p_accept, n_points: int = 101) -> list[dict]:
    """Rows ``{threshold, precision, recall, auto_pass_rate}`` for thresholds 0, 1/(n-1), ..., 1.

    ``precision`` is None where nothing is accepted ("nan" in the CSV, a gap in the plot).
    """
    y, p = _check(labels, p_accept)
    rows = []
    for t in sweep_thresholds(n_points):
        point = at_threshold(y, p, t)
        rows.append(
            {
                "threshold": t,
                "precision": point["precision"],
                "recall": point["recall"],
                "auto_pass_rate": point["auto_pass_rate"],
            }
        )
    return rows


# ----------------------------------------------------------------------------- plot files


def _cell(x) -> str:
    """CSV text of a value: floats to 6 significant digits (stable and diff-friendly), None -> "nan".

    Undefined values are written "nan", not left empty: DVC hands CSV cells to Vega as strings, and
    Vega reads "" as 0 (a false drop to precision 0) but "nan" as NaN, which it leaves out of the line.
    """
    if x is None:
        return "nan"
    if isinstance(x, str):
        return x
    return format(float(x), ".6g")


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    # "\n" line ends on every platform, so the files hash the same everywhere.
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        for row in rows:
            w.writerow([_cell(x) for x in row])


def save_png(fig: Figure, path: Path) -> None:
    # Without "Software" the PNG carries no matplotlib version string; Agg adds no date to PNGs.
    # So the bytes depend on the data only (and the installed fonts/freetype).
    fig.savefig(path, format="png", dpi=100, metadata={"Software": None})


def write_plots(labels, p_accept, out_dir, *, names: Sequence[str], n_bins: int = 10,
                n_points: int = 101) -> dict[str, Path]:
    """Write DVC plot data files and the same plots as PNG images into ``out_dir``.

    Data files (CSV, header row, for ``plots:`` in dvc.yaml):

    * ``precision_recall.csv``: ``recall,precision`` (``sklearn.metrics.precision_recall_curve``)
    * ``roc.csv``: ``fpr,tpr`` (``sklearn.metrics.roc_curve``)
    * ``threshold_sweep.csv``: ``threshold,precision,recall,auto_pass_rate``
      (``threshold_sweep``; precision ``nan`` where nothing is accepted)
    * ``calibration.csv``: ``prob_pred,prob_true``, one row per non-empty bin
      (``sklearn.calibration.calibration_curve``, ``n_bins`` uniform bins)
    * ``confusion.csv``: ``actual,predicted``, one row per example in input order, values
      ``names[0]`` (label 1 / auto-passed) or ``names[1]`` (label 0 / not), decision at 0.5
      (DVC's confusion template counts the rows); ``names`` is ``Prompt.decision_names``,
      ``("ACCEPT", "REJECT")`` with the default answers

    Images: ``precision_recall.png``, ``roc.png``, ``threshold_sweep.png``, ``calibration.png``,
    ``confusion.png``. The same input gives byte-identical files.

    Both labels must be present (ROC and PR curves are undefined otherwise). Returns
    ``{name: path}`` for every file written, names like ``"roc.csv"``.
    """
    y, p = _check(labels, p_accept)
    accept, rest = names
    if not 0 < y.sum() < len(y):
        raise ValueError(f"write_plots needs both {accept} (1) and {rest} (0) labels")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    def csv_file(name: str, header, rows) -> None:
        path = out / PLOT_CSV[name]
        _write_csv(path, header, rows)
        written[path.name] = path

    def png_file(name: str, fig: Figure) -> None:
        path = out / PLOT_PNG[name]
        save_png(fig, path)
        written[path.name] = path

    precision, recall, _ = precision_recall_curve(y, p)
    csv_file("precision_recall", ["recall", "precision"], zip(recall, precision))
    fig = Figure(figsize=(5, 4.5), layout="constrained")
    PrecisionRecallDisplay.from_predictions(y, p, ax=fig.subplots(), name="verifier", plot_chance_level=True)
    fig.axes[0].set_title(f"Precision-recall of {accept} (label 1)")
    png_file("precision_recall", fig)

    fpr, tpr, _ = roc_curve(y, p)
    csv_file("roc", ["fpr", "tpr"], zip(fpr, tpr))
    fig = Figure(figsize=(5, 4.5), layout="constrained")
    RocCurveDisplay.from_predictions(y, p, ax=fig.subplots(), name="verifier", plot_chance_level=True)
    fig.axes[0].set_title(f"ROC of {accept} (label 1)")
    png_file("roc", fig)

    sweep = threshold_sweep(y, p, n_points)
    keys = ["threshold", "precision", "recall", "auto_pass_rate"]
    csv_file("threshold_sweep", keys, ([r[k] for k in keys] for r in sweep))
    fig = Figure(figsize=(5, 4.5), layout="constrained")
    ax = fig.subplots()
    t = [r["threshold"] for r in sweep]
    for k in keys[1:]:
        ax.plot(t, [np.nan if r[k] is None else r[k] for r in sweep], label=k)
    ax.set(xlabel=f"threshold on P({accept})", ylabel="value", xlim=(0, 1), ylim=(0, 1.02), title="Threshold sweep")
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    png_file("threshold_sweep", fig)

    prob_true, prob_pred = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
    csv_file("calibration", ["prob_pred", "prob_true"], zip(prob_pred, prob_true))
    fig = Figure(figsize=(5, 4.5), layout="constrained")
    CalibrationDisplay.from_predictions(y, p, n_bins=n_bins, strategy="uniform", ax=fig.subplots(), name="verifier")
    fig.axes[0].set_title(f"Reliability of P({accept}), {n_bins} bins")
    png_file("calibration", fig)

    actual = [accept if v else rest for v in y.tolist()]
    predicted = [accept if v else rest for v in (p >= 0.5).tolist()]
    csv_file("confusion", ["actual", "predicted"], zip(actual, predicted))
    fig = Figure(figsize=(5, 4.5), layout="constrained")
    ConfusionMatrixDisplay.from_predictions(actual, predicted, labels=[accept, rest], ax=fig.subplots(), colorbar=False)
    fig.axes[0].set_title(f"Decision at P({accept}) >= 0.5")
    png_file("confusion", fig)

    return written
