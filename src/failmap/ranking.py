"""How well a per-image score ranks images by hardness, on held-out test data.

Convention throughout: a *score* is an easiness score, higher = more likely
the model is correct (the SVM decision value, the model's confidence in the
true class). Ranking "hardest first" therefore means ascending score.

Two tasks are scored, for the SVM, the confidence baseline and random:
- predicting correctness (balanced accuracy, AUROC, precision and recall of
  the predicted-failure side);
- recovering a planted subpopulation where ground truth exists (average
  precision, precision@k).

These metrics must be computed on data the SVM was not fitted on (test), never
on the val images it was trained on.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from sklearn.metrics import average_precision_score, balanced_accuracy_score, roc_auc_score, roc_curve

SVM_THRESHOLD = 0.0  # the SVM predicts "correct" for a positive decision value


def _scores(scores, name: str) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{name} contains NaN or infinite values (was a skipped class passed in?)")
    return s


def _flags(flags, name: str, n: int) -> np.ndarray:
    f = np.asarray(flags)
    if f.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match the scores, got {f.shape}")
    if not np.all((f == 0) | (f == 1)):
        raise ValueError(f"{name} must hold booleans or 0/1")
    return f.astype(bool)


# ------------------------------------------------------ predicting correctness

def fit_threshold(scores_val, correct_val) -> float:
    """Threshold on an easiness score that maximises balanced accuracy on val.

    Why this rule for the confidence baseline: the SVM's threshold (0) was
    fitted on the val split with balanced class weights, i.e. it aims at
    balanced accuracy on val. The fair counterpart for a one-dimensional score
    is the threshold that maximises balanced accuracy on the same val images;
    both are then judged on test. Candidates are midpoints between consecutive
    distinct val scores (predicted correct = score > threshold); ties go to the
    lowest threshold. A score no better than chance on val gets a threshold
    below every val score (everything predicted correct).
    """
    s = _scores(scores_val, "scores_val")
    correct = _flags(correct_val, "correct_val", len(s))
    n_correct, n_wrong = int(correct.sum()), int((~correct).sum())
    if n_correct == 0 or n_wrong == 0:
        raise ValueError(f"fit_threshold needs both correct and wrong val predictions, got {n_correct} correct "
                         f"and {n_wrong} wrong")
    values = np.unique(s)
    sorted_correct, sorted_wrong = np.sort(s[correct]), np.sort(s[~correct])
    # Threshold just above values[i]: wrong images at or below it are caught,
    # correct images above it are kept.
    wrong_caught = np.searchsorted(sorted_wrong, values, side="right") / n_wrong
    correct_kept = 1.0 - np.searchsorted(sorted_correct, values, side="right") / n_correct
    balanced = 0.5 * (wrong_caught + correct_kept)
    best = int(np.argmax(balanced))  # first maximum = lowest threshold
    if balanced[best] <= 0.5:
        return float(values[0] - 1.0)
    if best == len(values) - 1:
        return float(values[-1])
    return float(0.5 * (values[best] + values[best + 1]))


def correctness_metrics(scores, correct, threshold: float) -> dict:
    """Predicting correctness from a score: predicted correct = score > threshold.

    The "failure" side is score <= threshold: ``failure_precision`` is the
    share of flagged images the model really got wrong, ``failure_recall`` the
    share of its errors that were flagged. Undefined values are NaN.
    """
    s = _scores(scores, "scores")
    correct = _flags(correct, "correct", len(s))
    flagged = s <= threshold
    wrong = ~correct
    both = correct.any() and wrong.any()
    return {
        "n": int(len(s)),
        "error_rate": float(wrong.mean()) if len(s) else math.nan,
        "flag_rate": float(flagged.mean()) if len(s) else math.nan,
        "balanced_accuracy": float(balanced_accuracy_score(correct, ~flagged)) if both else math.nan,
        "auroc": float(roc_auc_score(correct, s)) if both else math.nan,
        "failure_precision": float((wrong & flagged).sum() / flagged.sum()) if flagged.any() else math.nan,
        "failure_recall": float((wrong & flagged).sum() / wrong.sum()) if wrong.any() else math.nan,
    }


def random_correctness_metrics(correct, flag_rate: float) -> dict:
    """Expected metrics of a random flagger that flags ``flag_rate`` of images
    (pass the SVM's test flag rate for a like-for-like comparison): balanced
    accuracy and AUROC 0.5, precision = base error rate, recall = flag rate."""
    correct = np.asarray(correct).astype(bool)
    error_rate = float((~correct).mean()) if len(correct) else math.nan
    return {"n": int(len(correct)), "error_rate": error_rate, "flag_rate": float(flag_rate),
            "balanced_accuracy": 0.5, "auroc": 0.5,
            "failure_precision": error_rate, "failure_recall": float(flag_rate)}


# --------------------------------------------------- subpopulation recovery

def average_precision(scores, in_subpop) -> float:
    """AP of the subpopulation with images ranked hardest first (ascending score).
    Tied scores are one threshold (sklearn's convention). NaN if the subpopulation is empty."""
    s = _scores(scores, "scores")
    pos = _flags(in_subpop, "in_subpop", len(s))
    if not pos.any():
        return math.nan
    return float(average_precision_score(pos, -s))


def precision_at_k(scores, in_subpop, k: int) -> float:
    """Share of the subpopulation among the k hardest images (lowest scores).

    Ties at the k-th place are broken in expectation: the tied group
    contributes its subpopulation share for each place it fills, so the result
    does not depend on input order. NaN if fewer than k images.
    """
    s = _scores(scores, "scores")
    pos = _flags(in_subpop, "in_subpop", len(s))
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    if len(s) < k:
        return math.nan
    kth = np.sort(s)[k - 1]
    below, tied = s < kth, s == kth
    places_left = k - int(below.sum())
    hits = pos[below].sum() + places_left * pos[tied].mean()
    return float(hits / k)


def expected_random_ap(n: int, m: int) -> float:
    """Exact expected AP of a uniformly random ranking of n items, m of them positive.

    AP = (1/m) sum_r [item r positive] * P_r / r with P_r the positives in the
    top r. P(item r positive) = m/n and, given that, E[P_r] = 1 + (r-1)(m-1)/(n-1),
    so E[AP] = (1/n) (H_n + (m-1)/(n-1) (n - H_n)), H_n the n-th harmonic number.
    It exceeds the base rate m/n slightly for small n.
    """
    if not (0 <= m <= n):
        raise ValueError(f"need 0 <= m <= n, got n={n}, m={m}")
    if m == 0:
        return math.nan
    if n == 1:
        return 1.0
    harmonic = float(np.sum(1.0 / np.arange(1, n + 1)))
    return (harmonic + (m - 1) / (n - 1) * (n - harmonic)) / n


def subpop_recovery(scores, in_subpop, ks: Sequence[int] = (10, 50)) -> dict:
    """``subpop_ap`` and ``subpop_precision_at_{k}`` for a score (hardest = lowest)."""
    out = {"subpop_ap": average_precision(scores, in_subpop)}
    for k in ks:
        out[f"subpop_precision_at_{k}"] = precision_at_k(scores, in_subpop, k)
    return out


def random_subpop_recovery(in_subpop, ks: Sequence[int] = (10, 50)) -> dict:
    """The same keys for a random ranking, as exact expectations (no sampling):
    AP from ``expected_random_ap``, precision@k = the base rate."""
    pos = np.asarray(in_subpop).astype(bool)
    n, m = len(pos), int(pos.sum())
    out = {"subpop_ap": expected_random_ap(n, m)}
    for k in ks:
        out[f"subpop_precision_at_{k}"] = m / n if n >= k else math.nan
    return out


# ------------------------------------------------------------ one class, all methods

def ranking_report(svm_scores, confidence_scores, correct, confidence_threshold: float,
                   in_subpop=None, ks: Sequence[int] = (10, 50)) -> dict:
    """Every metric for one class's test images, for the SVM, confidence and random.

    ``confidence_threshold`` comes from ``fit_threshold`` on the class's val
    confidences. ``in_subpop`` (ground truth) adds the subpopulation metrics.
    """
    svm = correctness_metrics(svm_scores, correct, SVM_THRESHOLD)
    conf = correctness_metrics(confidence_scores, correct, confidence_threshold)
    conf["threshold"] = float(confidence_threshold)
    rand = random_correctness_metrics(correct, svm["flag_rate"])
    if in_subpop is not None:
        svm.update(subpop_recovery(svm_scores, in_subpop, ks))
        conf.update(subpop_recovery(confidence_scores, in_subpop, ks))
        rand.update(random_subpop_recovery(in_subpop, ks))
        for d in (svm, conf, rand):
            d["subpop_rate"] = float(np.mean(in_subpop)) if len(svm_scores) else math.nan
    return {"svm": svm, "confidence": conf, "random": rand}


def roc_rows(scores_by_method: Mapping[str, np.ndarray], is_hard, n_points: int = 101) -> list[dict]:
    """ROC curves for flagging hard images (wrong, or in the subpopulation) by
    low score, one per method, resampled on a fixed false-positive-rate grid
    so every value is finite (DVC writes sklearn's infinite first threshold as
    non-JSON ``Infinity``). One row per grid point, one column per method:
    {"fpr", "<method>": tpr, ...}, the shape a DVC plot with ``y: [method, ...]``
    draws as one curve per method."""
    grid = np.linspace(0.0, 1.0, n_points)
    rows = [{"fpr": round(float(f), 4)} for f in grid]
    for method, scores in scores_by_method.items():
        if method == "fpr":
            raise ValueError("a method cannot be called 'fpr': that is the x column")
        s = _scores(scores, f"scores of {method}")
        hard = _flags(is_hard, "is_hard", len(s))
        if hard.all() or not hard.any():
            raise ValueError(f"is_hard must contain both hard and easy images for an ROC curve ({method})")
        fpr, tpr, _ = roc_curve(hard, -s)
        for row, t in zip(rows, np.interp(grid, fpr, tpr)):
            row[method] = round(float(t), 4)
    return rows


# ------------------------------------------------------------------ aggregation

def _leaves(d, prefix=()):
    for key, value in d.items():
        if isinstance(value, Mapping):
            yield from _leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def mean_over_classes(per_class: Mapping[str, Mapping]) -> dict:
    """Mean of every numeric leaf of the per-class dicts, with the same nesting.

    A class whose value is None or NaN (undefined, e.g. AUROC of a class with
    no test errors) is left out of that leaf's mean; a leaf defined for no
    class is NaN. Non-numeric leaves (strings, booleans) are dropped.
    """
    values_at: dict[tuple, list[float]] = {}
    for metrics in per_class.values():
        for path, value in _leaves(metrics):
            if value is None or _is_number(value):
                bucket = values_at.setdefault(path, [])
                if value is not None and math.isfinite(float(value)):
                    bucket.append(float(value))
    out: dict = {}
    for path, values in values_at.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = float(np.mean(values)) if values else math.nan
    return out


def to_jsonable(obj, digits: int = 4):
    """Plain JSON types: numpy scalars/arrays converted, floats rounded to
    ``digits`` significant digits (so C = 1e-6 survives), NaN/inf -> None,
    dict keys as strings."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [to_jsonable(v, digits) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        return float(f"{x:.{digits}g}") if math.isfinite(x) else None
    if obj is None or isinstance(obj, str):
        return obj
    raise TypeError(f"to_jsonable cannot convert {type(obj).__name__}")
