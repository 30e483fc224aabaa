"""Per-class linear SVMs that separate the images a model got right from those
it got wrong, in CLIP embedding space (METHOD.md step 3).

The SVM's normal vector is the class's *failure direction*: images far on its
negative side are prototypically hard. Everything here works on plain arrays;
loading embeddings and predictions is the stage's job.
"""
from __future__ import annotations

import io
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import LinearSVC
from tqdm import tqdm

from failmap.io import atomic_path, write_json
from failmap.ranking import to_jsonable

# A dimension whose train std is below this is constant in practice: dividing
# by it would blow noise up to order one, so it is divided by 1 instead.
MIN_STD = 1e-8


def _as_matrix(X, name: str, dim: int | None = None) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (N, D), got shape {X.shape}")
    if dim is not None and X.shape[1] != dim:
        raise ValueError(f"{name} has dimension {X.shape[1]}, expected {dim} (the preprocessor's)")
    if not np.all(np.isfinite(X)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return X


def _unit(v: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(v)
    if norm == 0:
        raise ValueError("cannot normalise a zero vector")
    return v / norm


@dataclass(eq=False)
class Preprocessor:
    """Standardise with train-split statistics, then L2-normalise each row.

    Standardising puts every CLIP dimension on the same scale so the SVM's
    regularisation does not favour the high-variance ones; the row
    normalisation makes every image count the same regardless of its norm.
    """
    mean: np.ndarray  # (D,) float64
    std: np.ndarray   # (D,) float64, already guarded (no zeros)

    def __post_init__(self):
        self.mean = np.asarray(self.mean, dtype=np.float64)
        self.std = np.asarray(self.std, dtype=np.float64)
        if self.mean.ndim != 1 or self.mean.shape != self.std.shape:
            raise ValueError(f"mean and std must be 1-D of equal length, got {self.mean.shape} and {self.std.shape}")
        if not np.all(self.std > 0):
            raise ValueError("std must be positive in every dimension")

    @property
    def dim(self) -> int:
        return len(self.mean)

    @classmethod
    def fit(cls, X_train) -> "Preprocessor":
        """Per-dimension mean and std of the train-split embeddings."""
        X = _as_matrix(X_train, "X_train")
        if len(X) < 2:
            raise ValueError(f"X_train needs at least 2 rows to estimate a std, got {len(X)}")
        std = X.std(axis=0)
        std = np.where(std < MIN_STD, 1.0, std)
        return cls(mean=X.mean(axis=0), std=std)

    def transform(self, X, subtract_mean: bool = True) -> np.ndarray:
        """(x - mean) / std, then each row scaled to unit L2 norm (zero rows stay zero).

        ``subtract_mean=False`` only divides by std before normalising; it exists
        for difference vectors (see ``failmap.captions.score_captions``).
        """
        X = _as_matrix(X, "X", self.dim)
        Z = (X - self.mean) / self.std if subtract_mean else X / self.std
        norms = np.linalg.norm(Z, axis=1, keepdims=True)
        return Z / np.where(norms == 0, 1.0, norms)

    def to_dict(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean.copy(), "std": self.std.copy()}

    @classmethod
    def from_dict(cls, d) -> "Preprocessor":
        return cls(mean=np.asarray(d["mean"]), std=np.asarray(d["std"]))


@dataclass(frozen=True)
class Skip:
    """A class for which no SVM was fitted, and why."""
    reason: str
    n_val: int
    n_errors: int


@dataclass(eq=False)
class ClassSVM:
    """One class's fitted SVM. Target 1 = model correct, so a positive decision
    value means "looks easy" and a negative one "looks hard"."""
    C: float
    cv_score: float                  # mean CV balanced accuracy of the chosen C
    cv_scores: dict[float, float]    # mean CV balanced accuracy for every C tried
    weight: np.ndarray               # (D,) SVM weight in the preprocessed space, as fitted
    intercept: float
    preprocessor: Preprocessor
    n_val: int
    n_errors: int
    converged: bool                  # False if the final fit hit max_iter

    @property
    def direction(self) -> np.ndarray:
        """Unit failure direction in the preprocessed space (points to the easy side)."""
        return _unit(self.weight)

    @property
    def direction_raw(self) -> np.ndarray:
        """Unit direction in raw CLIP space, for decoding (points to the easy side).

        Before row normalisation the decision is w . (x - mean) / std + b, a
        linear function of the raw embedding x with gradient w / std; so w / std
        is the normal of the SVM's hyperplane drawn in raw space. The L2 row
        normalisation that follows only divides each row by a positive number:
        it cannot move a point across a hyperplane through the (standardised)
        origin, so the side a raw point falls on and the direction that moves
        it from the hard side to the easy side are the same with or without
        it. The intercept is the only term the rescaling touches, and it shifts
        the threshold along the direction, not the direction itself. Decoders
        work on the unit sphere (spherical interpolation), so only the unit
        direction matters.
        """
        return _unit(self.weight / self.preprocessor.std)

    def decision_function_preprocessed(self, Z) -> np.ndarray:
        return np.asarray(Z, dtype=np.float64) @ self.weight + self.intercept

    def decision_function(self, X_raw) -> np.ndarray:
        """Signed decision values of raw CLIP embeddings (N, D) -> (N,)."""
        return self.decision_function_preprocessed(self.preprocessor.transform(X_raw))


def _linear_svc(C: float, seed: int, max_iter: int) -> LinearSVC:
    # dual="auto" lets liblinear pick the primal solver when there are more
    # images than dimensions, the faster choice for a few hundred val images.
    return LinearSVC(C=C, class_weight="balanced", dual="auto", max_iter=max_iter, random_state=seed)


def _validate_grid(c_grid: Sequence[float], folds: int, max_iter: int) -> list[float]:
    grid = sorted(float(c) for c in c_grid)
    if not grid or grid[0] <= 0:
        raise ValueError(f"c_grid must be a non-empty list of positive numbers, got {list(c_grid)}")
    if len(set(grid)) != len(grid):
        raise ValueError(f"c_grid has duplicate values: {list(c_grid)}")
    if int(folds) != folds or folds < 2:
        raise ValueError(f"folds must be an integer >= 2, got {folds}")
    if int(max_iter) != max_iter or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter}")
    return grid


def fit_class_svm(X_val_raw, correct_val, preprocessor: Preprocessor, c_grid: Sequence[float],
                  folds: int, seed: int, max_iter: int, min_errors: int = 1) -> ClassSVM | Skip:
    """Fit one class's SVM on its val images: C by stratified k-fold CV scored
    by balanced accuracy, then a refit on all of them.

    Returns a ``Skip`` (not an exception) when the class has fewer wrong or
    fewer correct predictions than ``folds`` (stratified CV needs at least one
    of each in every fold), or fewer wrong ones than ``min_errors``: a class
    the model hardly gets wrong has no failure mode to find, and a direction
    fitted to a handful of errors is noise that the later stages would decode,
    caption and select pool images by as if it were one.
    """
    grid = _validate_grid(c_grid, folds, max_iter)
    X, correct = check_class_split(X_val_raw, correct_val, preprocessor, min_errors)
    y = correct.astype(np.int64)
    n_errors, n_correct = int((y == 0).sum()), int((y == 1).sum())
    if n_errors < folds or n_correct < folds:
        return Skip(reason=(f"{n_errors} wrong and {n_correct} correct predictions among {len(y)} val images; "
                            f"{folds}-fold CV needs at least {folds} of each"),
                    n_val=len(y), n_errors=n_errors)
    if n_errors < min_errors:
        return Skip(reason=(f"only {n_errors} wrong predictions among {len(y)} val images, fewer than "
                            f"svm.min_errors={min_errors}: too few to fit a failure direction"),
                    n_val=len(y), n_errors=n_errors)

    Z = preprocessor.transform(X)
    splits = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(Z, y))
    cv_scores: dict[float, float] = {}
    with warnings.catch_warnings():
        # An unconverged fit at a large C is still a valid CV candidate; the
        # warning would repeat for every fold. Convergence of the final fit is recorded.
        warnings.simplefilter("ignore", ConvergenceWarning)
        for C in grid:
            fold_scores = []
            for train_idx, test_idx in splits:
                clf = _linear_svc(C, seed, max_iter).fit(Z[train_idx], y[train_idx])
                fold_scores.append(balanced_accuracy_score(y[test_idx], clf.predict(Z[test_idx])))
            cv_scores[C] = float(np.mean(fold_scores))
    # Strict ">" over an ascending grid: ties go to the smallest C, the most regularised model.
    best_C = grid[0]
    for C in grid[1:]:
        if cv_scores[C] > cv_scores[best_C]:
            best_C = C

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf = _linear_svc(best_C, seed, max_iter).fit(Z, y)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    weight = clf.coef_.ravel().astype(np.float64)
    if not np.any(weight):
        return Skip(reason=f"the SVM refit with C={best_C:g} has an all-zero weight vector: no direction found",
                    n_val=len(y), n_errors=n_errors)
    return ClassSVM(C=best_C, cv_score=cv_scores[best_C], cv_scores=cv_scores, weight=weight,
                    intercept=float(clf.intercept_[0]), preprocessor=preprocessor,
                    n_val=len(y), n_errors=n_errors, converged=converged)


def check_class_split(X_val_raw, correct_val, preprocessor: Preprocessor, min_errors) -> tuple[np.ndarray, np.ndarray]:
    """(X, correct) of one class's val images, checked; ``min_errors`` a positive integer."""
    if int(min_errors) != min_errors or min_errors < 1:
        raise ValueError(f"min_errors must be a positive integer, got {min_errors!r}")
    X = _as_matrix(X_val_raw, "X_val_raw", preprocessor.dim)
    correct = np.asarray(correct_val)
    if correct.shape != (len(X),):
        raise ValueError(f"correct_val must have shape ({len(X)},) to match X_val_raw, got {correct.shape}")
    if not np.all((correct == 0) | (correct == 1)):
        raise ValueError("correct_val must hold booleans or 0/1")
    return X, correct


def check_val_split(X_val: np.ndarray, labels_val, correct_val, class_names: Sequence[str]):
    """(labels, correct, number of classes) of a val split, checked against ``X_val`` and ``class_names``."""
    labels, correct = np.asarray(labels_val), np.asarray(correct_val)
    if labels.shape != (len(X_val),) or correct.shape != (len(X_val),):
        raise ValueError(f"labels_val {labels.shape} and correct_val {correct.shape} must both have shape "
                         f"({len(X_val)},) to match X_val")
    n_classes = len(class_names)
    if n_classes == 0:
        raise ValueError("class_names is empty")
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels_val must lie in [0, {n_classes}) for {n_classes} class names, "
                         f"got range [{labels.min()}, {labels.max()}]")
    return labels, correct, n_classes


def fit_all(X_val, labels_val, correct_val, X_train, class_names: Sequence[str],
            c_grid: Sequence[float], folds: int, seed: int, max_iter: int, min_errors: int = 1,
            progress: bool = True) -> tuple[Preprocessor, dict[int, ClassSVM | Skip]]:
    """Fit the train-split preprocessor and one SVM per class on the val split.

    Class ``k`` uses CV seed ``seed + k`` so classes get different fold splits
    while the whole result stays a function of ``seed``.
    """
    X_val = _as_matrix(X_val, "X_val")
    labels, correct, n_classes = check_val_split(X_val, labels_val, correct_val, class_names)
    preprocessor = Preprocessor.fit(X_train)
    if preprocessor.dim != X_val.shape[1]:
        raise ValueError(f"X_train has dimension {preprocessor.dim} but X_val has {X_val.shape[1]}")
    results: dict[int, ClassSVM | Skip] = {}
    for k in tqdm(range(n_classes), desc="fit SVMs", disable=not progress):
        mask = labels == k
        if not mask.any():
            results[k] = Skip(reason="no val images of this class", n_val=0, n_errors=0)
            continue
        results[k] = fit_class_svm(X_val[mask], correct[mask], preprocessor, c_grid, folds, seed + k, max_iter,
                                   min_errors)
    return preprocessor, results


def decision_values(results: dict[int, ClassSVM | Skip], X_raw, labels) -> np.ndarray:
    """Each row's decision value under its own class's SVM; NaN where that class was skipped."""
    labels = np.asarray(labels)
    X = np.asarray(X_raw, dtype=np.float64)
    if labels.shape != (len(X),):
        raise ValueError(f"labels must have shape ({len(X)},) to match X_raw, got {labels.shape}")
    unknown = ~np.isin(labels, list(results))
    if unknown.any():
        raise ValueError(f"labels contain classes with no SVM result: {sorted(set(labels[unknown].tolist()))}")
    out = np.full(len(X), np.nan)
    for k, model in results.items():
        mask = labels == k
        if isinstance(model, ClassSVM) and mask.any():
            out[mask] = model.decision_function(X[mask])
    return out


# ---------------------------------------------------------------- save / load

def _write_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez stamps each member with the current time; DVC wants identical
    bytes for identical results, so members are written with a fixed timestamp."""
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for name in sorted(arrays):
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.asarray(arrays[name]), allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                zf.writestr(info, buf.getvalue())


def save_svms(npz_path: str | Path, json_path: str | Path, preprocessor: Preprocessor,
              results: dict[int, ClassSVM | Skip], class_names: Sequence[str]) -> None:
    """Everything needed to reload in one npz; a human-readable JSON summary beside it."""
    n_classes, dim = len(class_names), preprocessor.dim
    if sorted(results) != list(range(n_classes)):
        raise ValueError(f"results must have one entry per class 0..{n_classes - 1}, got keys {sorted(results)}")
    grid = sorted({C for m in results.values() if isinstance(m, ClassSVM) for C in m.cv_scores})
    arrays = dict(
        mean=preprocessor.mean, std=preprocessor.std,
        class_names=np.asarray(list(class_names), dtype=str),
        fitted=np.zeros(n_classes, bool), converged=np.zeros(n_classes, bool),
        weight=np.zeros((n_classes, dim)), direction=np.zeros((n_classes, dim)),
        direction_raw=np.zeros((n_classes, dim)),
        intercept=np.full(n_classes, np.nan), C=np.full(n_classes, np.nan),
        cv_score=np.full(n_classes, np.nan), c_grid=np.asarray(grid, dtype=np.float64),
        cv_scores=np.full((n_classes, len(grid)), np.nan),
        n_val=np.zeros(n_classes, np.int64), n_errors=np.zeros(n_classes, np.int64),
        skip_reason=np.asarray([""] * n_classes, dtype=object),
    )
    summary = {"dim": dim, "classes": {}}
    for k, name in enumerate(class_names):
        m = results[k]
        arrays["n_val"][k], arrays["n_errors"][k] = m.n_val, m.n_errors
        if isinstance(m, Skip):
            arrays["skip_reason"][k] = m.reason
            summary["classes"][name] = {"fitted": False, "skip_reason": m.reason,
                                        "n_val": m.n_val, "n_errors": m.n_errors}
            continue
        arrays["fitted"][k], arrays["converged"][k] = True, m.converged
        arrays["weight"][k], arrays["intercept"][k] = m.weight, m.intercept
        arrays["direction"][k], arrays["direction_raw"][k] = m.direction, m.direction_raw
        arrays["C"][k], arrays["cv_score"][k] = m.C, m.cv_score
        arrays["cv_scores"][k] = [m.cv_scores.get(C, np.nan) for C in grid]
        summary["classes"][name] = {"fitted": True, "C": m.C, "cv_score": m.cv_score,
                                    "cv_scores": {f"{C:g}": s for C, s in sorted(m.cv_scores.items())},
                                    "converged": m.converged, "n_val": m.n_val, "n_errors": m.n_errors}
    arrays["skip_reason"] = arrays["skip_reason"].astype(str)
    summary["n_fitted"] = int(arrays["fitted"].sum())
    summary["n_skipped"] = n_classes - summary["n_fitted"]
    _write_npz(npz_path, arrays)
    write_json(json_path, to_jsonable(summary))


def read_npz(npz_path: str | Path) -> dict[str, np.ndarray]:
    """Every array of a fit_svms output file, by name."""
    npz_path = Path(npz_path)
    if not npz_path.exists():
        raise FileNotFoundError(f"{npz_path} not found (has the fit_svms stage run?)")
    with np.load(npz_path, allow_pickle=False) as z:
        return {name: z[name] for name in z.files}


def load_svms(npz_path: str | Path) -> tuple[Preprocessor, dict[int, ClassSVM | Skip], list[str]]:
    """Inverse of ``save_svms``: (preprocessor, results by class index, class names)."""
    a = read_npz(npz_path)
    preprocessor = Preprocessor(mean=a["mean"], std=a["std"])
    results: dict[int, ClassSVM | Skip] = {}
    for k in range(len(a["class_names"])):
        n_val, n_errors = int(a["n_val"][k]), int(a["n_errors"][k])
        if not a["fitted"][k]:
            results[k] = Skip(reason=str(a["skip_reason"][k]), n_val=n_val, n_errors=n_errors)
            continue
        cv_scores = {float(C): float(s) for C, s in zip(a["c_grid"], a["cv_scores"][k]) if np.isfinite(s)}
        results[k] = ClassSVM(C=float(a["C"][k]), cv_score=float(a["cv_score"][k]), cv_scores=cv_scores,
                              weight=a["weight"][k].copy(), intercept=float(a["intercept"][k]),
                              preprocessor=preprocessor, n_val=n_val, n_errors=n_errors,
                              converged=bool(a["converged"][k]))
    return preprocessor, results, [str(n) for n in a["class_names"]]
