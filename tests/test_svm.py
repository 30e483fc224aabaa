"""SVM fitting on synthetic embeddings where the failure direction is known."""
import json

import numpy as np
import pytest

from failmap.ranking import average_precision
from failmap.svm import (ClassSVM, Preprocessor, Skip, decision_values, fit_all, fit_class_svm, load_svms,
                         save_svms)

GRID = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
D = 32


def make_world(seed=0, n_train=2000, n_eval=600, shift=3.0, subpop_rate=0.2):
    """Gaussian embeddings with per-dimension scales; a planted subpopulation
    is shifted by `shift` (in std units along u) and the model fails mostly there."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(0.0, 1.0, D)
    scale = rng.uniform(0.5, 2.0, D)
    u = rng.normal(size=D)
    u /= np.linalg.norm(u)

    def sample(n):
        subpop = rng.random(n) < subpop_rate
        X = mean + scale * rng.normal(size=(n, D))
        X[subpop] += shift * scale * u  # shift of `shift` stds along u in whitened units
        wrong = np.where(subpop, rng.random(n) < 0.8, rng.random(n) < 0.05)
        return X, ~wrong, subpop

    X_train = mean + scale * rng.normal(size=(n_train, D))
    return dict(mean=mean, scale=scale, u=u, X_train=X_train, val=sample(n_eval), test=sample(n_eval), rng=rng)


def cosine(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def world():
    return make_world()


@pytest.fixture(scope="module")
def fitted(world):
    pre = Preprocessor.fit(world["X_train"])
    X, correct, _ = world["val"]
    return pre, fit_class_svm(X, correct, pre, GRID, folds=2, seed=0, max_iter=5000)


def test_preprocessor_standardises_then_normalises():
    rng = np.random.default_rng(1)
    X = rng.normal(3.0, 2.0, size=(200, 5))
    X[:, 2] = 7.0  # a constant dimension must not produce inf/NaN
    pre = Preprocessor.fit(X)
    assert pre.std[2] == 1.0
    Z = pre.transform(X)
    assert np.all(np.isfinite(Z))
    np.testing.assert_allclose(np.linalg.norm(Z, axis=1), 1.0)
    # the direction of each row is that of (x - mean) / std
    expected = (X[0] - X.mean(0)) / np.where(X.std(0) == 0, 1, X.std(0))
    np.testing.assert_allclose(Z[0], expected / np.linalg.norm(expected))
    # zero rows stay zero instead of dividing by zero
    assert np.all(pre.transform(np.zeros((1, 5)), subtract_mean=False) == 0)
    again = Preprocessor.from_dict(pre.to_dict())
    np.testing.assert_array_equal(again.transform(X), Z)


def test_preprocessor_rejects_bad_input():
    pre = Preprocessor.fit(np.random.default_rng(0).normal(size=(10, 4)))
    with pytest.raises(ValueError, match="dimension 3, expected 4"):
        pre.transform(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="2-D"):
        pre.transform(np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        Preprocessor.fit(np.full((3, 4), np.nan))


def test_direction_recovers_planted_shift(world, fitted):
    pre, svm = fitted
    assert isinstance(svm, ClassSVM)
    # In the standardised space the shift is u (in std units); target 1 = correct,
    # so the SVM direction points away from the shifted, failing group.
    assert cosine(svm.direction, -world["u"]) > 0.85
    # Mapped back to raw space the hyperplane normal is w / std, i.e. u / scale.
    assert cosine(svm.direction_raw, -world["u"] / world["scale"]) > 0.85
    np.testing.assert_allclose(np.linalg.norm(svm.direction), 1.0)
    np.testing.assert_allclose(np.linalg.norm(svm.direction_raw), 1.0)
    assert svm.converged


def test_cv_picks_best_c_from_grid(fitted):
    _, svm = fitted
    assert svm.C in GRID
    assert sorted(svm.cv_scores) == GRID
    best = max(svm.cv_scores.values())
    assert svm.cv_score == best
    assert svm.C == min(C for C, s in svm.cv_scores.items() if s == best)  # ties -> most regularised
    assert 0.7 < svm.cv_score <= 1.0


def test_single_value_grid_is_used():
    w = make_world(seed=3, n_eval=300)
    pre = Preprocessor.fit(w["X_train"])
    X, correct, _ = w["val"]
    svm = fit_class_svm(X, correct, pre, [0.05], folds=3, seed=0, max_iter=5000)
    assert svm.C == 0.05 and list(svm.cv_scores) == [0.05]


def test_svm_ranks_planted_group_above_noisy_confidence(world, fitted):
    _, svm = fitted
    X, correct, subpop = world["test"]
    decision = svm.decision_function(X)
    # a confidence that knows correctness only weakly
    confidence = 0.5 + 0.15 * correct + world["rng"].normal(0, 0.3, len(correct))
    ap_svm, ap_conf = average_precision(decision, subpop), average_precision(confidence, subpop)
    assert ap_svm > 0.8
    assert ap_svm > ap_conf + 0.2
    # the decision function is the SVM on the preprocessed embedding
    np.testing.assert_allclose(decision, svm.decision_function_preprocessed(svm.preprocessor.transform(X)))


def test_fit_is_deterministic(world):
    pre = Preprocessor.fit(world["X_train"])
    X, correct, _ = world["val"]
    a = fit_class_svm(X, correct, pre, GRID, 2, 7, 5000)
    b = fit_class_svm(X, correct, pre, GRID, 2, 7, 5000)
    np.testing.assert_array_equal(a.weight, b.weight)
    assert a.intercept == b.intercept and a.cv_scores == b.cv_scores


def test_class_without_enough_errors_is_skipped(world):
    pre = Preprocessor.fit(world["X_train"])
    X = world["val"][0][:50]
    no_errors = fit_class_svm(X, np.ones(50, bool), pre, GRID, 2, 0, 1000)
    assert isinstance(no_errors, Skip)
    assert "0 wrong" in no_errors.reason and "2-fold" in no_errors.reason
    one_error = np.ones(50, bool)
    one_error[3] = False
    assert isinstance(fit_class_svm(X, one_error, pre, GRID, 2, 0, 1000), Skip)
    all_wrong = fit_class_svm(X, np.zeros(50, bool), pre, GRID, 2, 0, 1000)
    assert isinstance(all_wrong, Skip) and "0 correct" in all_wrong.reason


def test_class_with_fewer_errors_than_min_errors_is_skipped(world):
    pre = Preprocessor.fit(world["X_train"])
    X = world["val"][0][:60]
    five_errors = np.ones(60, bool)
    five_errors[[1, 9, 17, 33, 50]] = False
    gated = fit_class_svm(X, five_errors, pre, GRID, 2, 0, 1000, min_errors=6)
    assert isinstance(gated, Skip) and gated.n_errors == 5
    assert "only 5 wrong" in gated.reason and "svm.min_errors=6" in gated.reason
    # at the threshold the class is fitted: the gate counts errors, nothing else
    assert isinstance(fit_class_svm(X, five_errors, pre, GRID, 2, 0, 1000, min_errors=5), ClassSVM)
    with pytest.raises(ValueError, match="min_errors must be a positive integer"):
        fit_class_svm(X, five_errors, pre, GRID, 2, 0, 1000, min_errors=0)
    X3, labels, correct = _three_class_problem(world)
    errors_per_class = [int((~correct[labels == k]).sum()) for k in range(2)]
    _, results = fit_all(X3, labels, correct, world["X_train"], ["a", "b", "c"], GRID, 2, 0, 5000,
                         min_errors=min(errors_per_class) + 1, progress=False)
    fitted = [isinstance(results[k], ClassSVM) for k in range(2)]
    assert fitted == [n > min(errors_per_class) for n in errors_per_class]

def test_bad_arguments_raise(world):
    pre = Preprocessor.fit(world["X_train"])
    X, correct, _ = world["val"]
    with pytest.raises(ValueError, match="correct_val must have shape"):
        fit_class_svm(X, correct[:-1], pre, GRID, 2, 0, 100)
    with pytest.raises(ValueError, match="c_grid"):
        fit_class_svm(X, correct, pre, [], 2, 0, 100)
    with pytest.raises(ValueError, match="folds"):
        fit_class_svm(X, correct, pre, GRID, 1, 0, 100)
    with pytest.raises(ValueError, match="expected 32"):
        fit_class_svm(X[:, :5], correct, pre, GRID, 2, 0, 100)


def _three_class_problem(world):
    X, correct, _ = world["val"]
    labels = np.arange(len(X)) % 3
    correct = correct.copy()
    correct[labels == 2] = True  # class 2: no errors
    return X, labels, correct


def test_fit_all_handles_skipped_classes(world):
    X, labels, correct = _three_class_problem(world)
    pre, results = fit_all(X, labels, correct, world["X_train"], ["a", "b", "c"], GRID, 2, 0, 5000,
                           progress=False)
    assert isinstance(results[0], ClassSVM) and isinstance(results[1], ClassSVM)
    assert isinstance(results[2], Skip)
    values = decision_values(results, X, labels)
    assert np.all(np.isnan(values[labels == 2])) and np.all(np.isfinite(values[labels != 2]))
    np.testing.assert_allclose(values[labels == 0], results[0].decision_function(X[labels == 0]))
    with pytest.raises(ValueError, match="labels_val must lie"):
        fit_all(X, labels + 1, correct, world["X_train"], ["a", "b", "c"], GRID, 2, 0, 100, progress=False)


def test_save_load_roundtrip_is_deterministic(world, tmp_path):
    X, labels, correct = _three_class_problem(world)
    names = ["a", "b", "c"]
    pre, results = fit_all(X, labels, correct, world["X_train"], names, GRID, 2, 0, 5000, progress=False)
    save_svms(tmp_path / "svms.npz", tmp_path / "svms.json", pre, results, names)
    first = (tmp_path / "svms.npz").read_bytes()
    save_svms(tmp_path / "svms.npz", tmp_path / "svms.json", pre, results, names)
    assert (tmp_path / "svms.npz").read_bytes() == first

    pre2, results2, names2 = load_svms(tmp_path / "svms.npz")
    assert names2 == names
    np.testing.assert_array_equal(pre2.mean, pre.mean)
    for k in (0, 1):
        np.testing.assert_array_equal(results2[k].decision_function(X), results[k].decision_function(X))
        np.testing.assert_array_equal(results2[k].direction_raw, results[k].direction_raw)
        assert results2[k].C == results[k].C and results2[k].cv_scores == results[k].cv_scores
    assert isinstance(results2[2], Skip) and results2[2].reason == results[2].reason

    summary = json.loads((tmp_path / "svms.json").read_text())
    assert summary["n_fitted"] == 2 and summary["n_skipped"] == 1
    assert summary["classes"]["c"]["fitted"] is False and "0 wrong" in summary["classes"]["c"]["skip_reason"]
    assert summary["classes"]["a"]["C"] == results[0].C
    with pytest.raises(FileNotFoundError, match="fit_svms"):
        load_svms(tmp_path / "missing.npz")
