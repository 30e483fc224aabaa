"""Ranking metrics against hand-computed examples and sklearn."""
import itertools
import json
import math

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, precision_score, recall_score, roc_auc_score

from failmap.ranking import (average_precision, correctness_metrics, expected_random_ap, fit_threshold,
                             mean_over_classes, precision_at_k, random_correctness_metrics,
                             random_subpop_recovery, ranking_report, roc_rows, subpop_recovery, to_jsonable)


def test_average_precision_by_hand():
    # hardest first: idx0 (in), idx1 (out), idx2 (in), ... -> (1/1 + 2/3) / 2
    scores = [0.1, 0.2, 0.3, 0.4, 0.5]
    subpop = [1, 0, 1, 0, 0]
    assert average_precision(scores, subpop) == pytest.approx((1 + 2 / 3) / 2)
    # reversed: hardest first is idx4, idx3, idx2 (in), idx1, idx0 (in) -> (1/3 + 2/5) / 2
    assert average_precision(scores[::-1], subpop) == pytest.approx((1 / 3 + 2 / 5) / 2)
    assert math.isnan(average_precision(scores, [0] * 5))


def test_precision_at_k_by_hand_and_with_ties():
    scores = [0.1, 0.2, 0.3, 0.4, 0.5]
    subpop = [1, 0, 1, 0, 0]
    assert precision_at_k(scores, subpop, 1) == 1.0
    assert precision_at_k(scores, subpop, 2) == 0.5
    assert precision_at_k(scores, subpop, 3) == pytest.approx(2 / 3)
    assert math.isnan(precision_at_k(scores, subpop, 6))
    # a tie at the cut counts in expectation, independent of input order
    assert precision_at_k([0, 0, 1, 1], [1, 0, 1, 0], 1) == 0.5
    assert precision_at_k([0, 0, 1, 1], [0, 1, 0, 1], 1) == 0.5
    assert precision_at_k([0, 0, 1, 1], [1, 0, 1, 0], 3) == pytest.approx(1.5 / 3)
    with pytest.raises(ValueError, match="k must be"):
        precision_at_k(scores, subpop, 0)


def test_expected_random_ap_is_exact():
    for n, m in [(6, 2), (7, 3), (5, 1), (4, 4)]:
        aps = []
        for positions in itertools.combinations(range(n), m):
            subpop = np.zeros(n, bool)
            subpop[list(positions)] = True
            aps.append(average_precision(np.arange(n, dtype=float), subpop))
        assert expected_random_ap(n, m) == pytest.approx(np.mean(aps))
    assert expected_random_ap(1, 1) == 1.0
    assert math.isnan(expected_random_ap(5, 0))


def test_random_subpop_recovery():
    subpop = np.array([1] * 20 + [0] * 80)
    out = random_subpop_recovery(subpop, ks=(10, 50, 200))
    assert out["subpop_precision_at_10"] == 0.2 and out["subpop_precision_at_50"] == 0.2
    assert math.isnan(out["subpop_precision_at_200"])
    assert out["subpop_ap"] == pytest.approx(expected_random_ap(100, 20)) and out["subpop_ap"] > 0.2


def test_fit_threshold_maximises_val_balanced_accuracy():
    assert fit_threshold([0.1, 0.2, 0.3, 0.8, 0.9], [0, 0, 1, 1, 1]) == pytest.approx(0.25)
    rng = np.random.default_rng(0)
    correct = rng.random(300) < 0.7
    scores = correct + rng.normal(0, 0.8, 300)
    t = fit_threshold(scores, correct)
    best = balanced_accuracy_score(correct, scores > t)
    for other in np.linspace(scores.min() - 1, scores.max() + 1, 400):
        assert balanced_accuracy_score(correct, scores > other) <= best + 1e-12
    # a useless (reversed) score flags nothing
    assert fit_threshold([0.9, 0.8, 0.1], [0, 0, 1]) < 0.1
    with pytest.raises(ValueError, match="both correct and wrong"):
        fit_threshold([0.1, 0.2], [1, 1])


def test_correctness_metrics_match_sklearn():
    rng = np.random.default_rng(1)
    correct = rng.random(200) < 0.75
    scores = correct + rng.normal(0, 1.0, 200)
    m = correctness_metrics(scores, correct, 0.3)
    flagged = scores <= 0.3
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(correct, ~flagged))
    assert m["auroc"] == pytest.approx(roc_auc_score(correct, scores))
    assert m["failure_precision"] == pytest.approx(precision_score(~correct, flagged))
    assert m["failure_recall"] == pytest.approx(recall_score(~correct, flagged))
    assert m["error_rate"] == pytest.approx(1 - correct.mean()) and m["flag_rate"] == pytest.approx(flagged.mean())


def test_correctness_metrics_by_hand_and_undefined_cases():
    # flagged: the two lowest (one really wrong) -> precision 1/2, recall 1/1
    m = correctness_metrics([-1.0, -0.5, 0.5, 1.0], [0, 1, 1, 1], 0.0)
    assert m["failure_precision"] == 0.5 and m["failure_recall"] == 1.0
    assert m["balanced_accuracy"] == pytest.approx(0.5 * (1 + 2 / 3))
    no_errors = correctness_metrics([0.5, 1.0], [1, 1], 0.0)
    assert math.isnan(no_errors["auroc"]) and math.isnan(no_errors["failure_recall"])
    assert math.isnan(no_errors["failure_precision"])  # nothing flagged
    with pytest.raises(ValueError, match="NaN"):
        correctness_metrics([np.nan, 1.0], [0, 1], 0.0)
    with pytest.raises(ValueError, match="shape"):
        correctness_metrics([0.1, 1.0], [0, 1, 1], 0.0)


def test_random_correctness_metrics():
    r = random_correctness_metrics([0, 1, 1, 1], flag_rate=0.3)
    assert r["balanced_accuracy"] == 0.5 and r["failure_precision"] == 0.25 and r["failure_recall"] == 0.3


def test_ranking_report_compares_methods():
    rng = np.random.default_rng(2)
    subpop = rng.random(400) < 0.2
    correct = np.where(subpop, rng.random(400) < 0.3, rng.random(400) < 0.95)
    svm = -2.0 * subpop + rng.normal(0, 0.5, 400)
    confidence = correct * 0.2 + rng.normal(0.5, 0.3, 400)
    report = ranking_report(svm, confidence, correct, confidence_threshold=0.5, in_subpop=subpop)
    assert set(report) == {"svm", "confidence", "random"}
    assert report["svm"]["subpop_ap"] > report["confidence"]["subpop_ap"] > report["random"]["subpop_ap"]
    assert report["confidence"]["threshold"] == 0.5
    assert report["random"]["flag_rate"] == report["svm"]["flag_rate"]
    assert report["svm"] == {**correctness_metrics(svm, correct, 0.0), **subpop_recovery(svm, subpop),
                             "subpop_rate": subpop.mean()}
    assert "subpop_ap" not in ranking_report(svm, confidence, correct, 0.5)["svm"]


def test_roc_rows_are_finite():
    rng = np.random.default_rng(3)
    hard = rng.random(100) < 0.3
    rows = roc_rows({"svm": -1.0 * hard + rng.normal(0, 0.5, 100), "confidence": rng.normal(size=100)}, hard, 11)
    assert len(rows) == 11 and all(set(r) == {"fpr", "svm", "confidence"} for r in rows)
    json.dumps(rows, allow_nan=False)
    assert rows[10] == {"fpr": 1.0, "svm": 1.0, "confidence": 1.0} and rows[0]["fpr"] == 0.0
    assert all(a["svm"] <= b["svm"] for a, b in zip(rows, rows[1:]))  # a curve: tpr never falls


def test_mean_over_classes_skips_undefined():
    per_class = {"a": {"svm": {"auroc": 0.8, "ap": None}, "name": "x"},
                 "b": {"svm": {"auroc": float("nan"), "ap": 0.4}, "name": "y"},
                 "c": {"svm": {"auroc": 0.6, "ap": 0.6}, "name": "z"}}
    mean = mean_over_classes(per_class)
    assert mean == {"svm": {"auroc": pytest.approx(0.7), "ap": pytest.approx(0.5)}}
    assert math.isnan(mean_over_classes({"a": {"x": None}})["x"])


def test_to_jsonable():
    out = to_jsonable({"C": 1e-6, "auc": np.float32(0.123456), "n": np.int64(3), "ok": np.bool_(True),
                       "missing": float("nan"), "list": np.array([1.0, np.inf]), 2: "s"})
    assert out == {"C": 1e-6, "auc": 0.1235, "n": 3, "ok": True, "missing": None, "list": [1.0, None], "2": "s"}
    json.dumps(out, allow_nan=False)
    with pytest.raises(TypeError, match="set"):
        to_jsonable({1, 2})
